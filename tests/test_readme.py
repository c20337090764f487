"""README.md's snippets run as written: every ```python and ```sh block, in
order, against a real ``riskd serve`` (plaintext, loopback), from a copy of the
repository root with the virtual environment on PATH (what ``source
.venv/bin/activate`` does).

The daemon listens on free ports; the README's ``127.0.0.1:50051`` and
``127.0.0.1:9464`` (``make run``'s addresses) are rewritten to them. A block
preceded by ``<!-- illustrative: why -->`` is not run (``make run`` serves until
Ctrl-C); ``<!-- expect: TEXT -->`` adds a line its output must contain. Every
block must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .api.conftest import start_daemon

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Written by the snippets or by riskd: created in the copy, never in the checkout.
NOT_LINKED = {"riskd-data", "riskd.toml", "typo.toml", "replay-out", ".git"}
MAX_ILLUSTRATIVE = 3  # keep the unrun blocks few


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    notes: tuple[str, ...]  # the HTML comments just above it

    @property
    def illustrative(self) -> bool:
        return any(n.startswith("illustrative:") for n in self.notes)

    @property
    def expect(self) -> list[str]:
        return [n.removeprefix("expect:").strip() for n in self.notes if n.startswith("expect:")]


def blocks(text: str) -> list[Block]:
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.fullmatch(r"```(\w+)", lines[i])
        if not m:
            i += 1
            continue
        start = i
        end = lines.index("```", i + 1)
        notes = []
        j = start - 1
        while j >= 0 and (c := re.fullmatch(r"<!--\s*(.*?)\s*-->", lines[j])):
            notes.append(c.group(1))
            j -= 1
        out.append(
            Block(start + 1, m.group(1), "\n".join(lines[start + 1 : end]) + "\n", tuple(notes))
        )
        i = end + 1
    return out


def runnable() -> list[Block]:
    return [b for b in blocks(README.read_text()) if b.lang in {"python", "sh"}]


def test_blocks_are_found_and_few_are_illustrative() -> None:
    found = runnable()
    langs = {b.lang for b in found}
    assert langs == {"python", "sh"}, langs
    unrun = [b for b in found if b.illustrative]
    assert len(unrun) <= MAX_ILLUSTRATIVE, [b.line for b in unrun]
    # The parser sees the markers (a typo in one would run the block).
    assert any(b.expect for b in found)
    text = README.read_text()
    assert text.count("<!-- illustrative:") == len(unrun)
    assert text.count("<!-- expect:") == sum(len(b.expect) for b in found)


def test_every_readme_snippet_runs_against_a_real_daemon(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (repo / entry.name).symlink_to(entry)
    venv = Path(sys.prefix)
    if not (repo / ".venv").exists():
        (repo / ".venv").symlink_to(venv)  # CI's and `make`'s venv is ROOT/.venv
    daemon = start_daemon(tmp_path)
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONPATH", None)
    ran = 0
    try:
        for b in runnable():
            if b.illustrative:
                continue
            code = b.code.replace("127.0.0.1:50051", daemon.target).replace(
                "127.0.0.1:9464", f"127.0.0.1:{daemon.metrics_port}"
            )
            if b.lang == "python":
                script = tmp_path / f"readme_{b.line}.py"
                script.write_text(code)
                argv = [sys.executable, str(script)]
            else:
                argv = ["bash", "-e", "-o", "pipefail", "-c", code]
            proc = subprocess.run(
                argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120
            )
            where = (
                f"README.md:{b.line} ({b.lang})\n{code}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
            assert proc.returncode == 0, where
            for text in b.expect:
                assert text in proc.stdout + proc.stderr, where
            ran += 1
        assert daemon.process.poll() is None, daemon.log.read_text()
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()
    assert ran >= 5


@pytest.mark.parametrize("name", ["riskd", "grpcurl", "python"])
def test_the_tools_the_readme_names_are_in_the_venv(name: str) -> None:
    assert (Path(sys.prefix) / "bin" / name).exists(), f".venv/bin/{name} (make setup)"


def test_docs_index_lists_every_page() -> None:
    docs = ROOT / "docs"
    index = (docs / "index.md").read_text()
    linked = set(re.findall(r"\]\(([\w.-]+)\)", index))
    pages = {p.name for p in docs.iterdir() if p.suffix in {".md", ".png"}} - {"index.md"}
    assert pages <= linked, pages - linked
    assert linked <= pages, linked - pages  # no link to a page that is not there
    assert "docs/index.md" in README.read_text()
