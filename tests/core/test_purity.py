"""The core stays pure: no I/O frameworks imported, no floating point anywhere in its source."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import riskd.core

CORE = Path(riskd.core.__file__).parent
SOURCES = sorted(CORE.glob("*.py"))
FORBIDDEN_MODULES = ("trio", "grpc", "prometheus_client", "structlog")


def test_importing_the_core_loads_no_io_framework() -> None:
    code = (
        "import json, sys\n"
        "import riskd.core, riskd.core.engine, riskd.core.invariants\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=CORE.parents[1],
    )
    loaded = json.loads(out.stdout)
    assert "riskd.core.engine" in loaded  # the probe really imported the core
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN_MODULES]
    assert bad == []


def float_uses(source: str) -> list[str]:
    """Float literals and calls to ``float`` in Python source, ignoring comments and strings."""
    found = []
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.NUMBER:
            text = tok.string.lower().replace("_", "")
            is_hex = text.startswith(("0x", "0o", "0b"))
            if "." in text or "j" in text or (not is_hex and "e" in text):
                found.append(f"{tok.start[0]}: literal {tok.string}")
        elif tok.type == tokenize.NAME and tok.string == "float":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is not None and nxt.string == "(":
                found.append(f"{tok.start[0]}: float(")
    return found


def test_float_detector_works() -> None:
    sample = 'x = 1.5\ny = float(3)\nz = 2e3\n# 0.5 in a comment\ns = "7.25"\nh = 0xE1\nq = 10**6\n'
    assert float_uses(sample) == ["1: literal 1.5", "2: float(", "3: literal 2e3"]


def test_core_has_sources() -> None:
    names = {p.stem for p in SOURCES}
    assert {"units", "tiers", "margin", "market_engine", "engine", "invariants"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_float_in_core_source(path: Path) -> None:
    assert float_uses(path.read_text()) == []


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_true_division_only_on_fractions(path: Path) -> None:
    """``/`` on ints yields a float: only modules computing with Fraction may use it."""
    text = path.read_text()
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    slashes = [t.start[0] for t in tokens if t.type == tokenize.OP and t.string in ("/", "/=")]
    if slashes:
        assert "from fractions import Fraction" in text, f"{path.name}: / on lines {slashes}"
