"""The compiled core (mypyc, ``make setup``) and the pure one (``RISKD_PURE=1``).

CI runs the whole suite with ``RISKD_EXPECT_COMPILED=1`` and this directory
again with ``RISKD_PURE=1``: the first test fails if the core that runs is not
the one expected (a build that silently fell back to the .py sources).  The
second runs the same inputs through the other core in a child process and
hands snapshots across in both directions: the same acceptances, the same
published effects, the same state digest, and a snapshot of either continues
in the other.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pickle
import subprocess
import sys
from importlib.machinery import ExtensionFileLoader
from pathlib import Path
from typing import Any

import pytest
from test_invariants_stateful import new_engine, random_inputs

import riskd
import riskd.core
from riskd.core import Engine, Rejected, digest
from riskd.core.recent_ids import WithdrawalDecision, WithdrawalDecisions

HERE = Path(__file__).resolve().parent
CORE = Path(riskd.core.__path__[0])
MODULES = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")

# Inputs of every kind, bad ones included, with liquidations and ADL.
EVENTS = random_inputs(seed=20_261_207, n=300)
HALF = len(EVENTS) // 2


def expected_build() -> str | None:
    if os.environ.get("RISKD_PURE") == "1":
        return "pure"
    if os.environ.get("RISKD_EXPECT_COMPILED") == "1":
        return "compiled"
    return None


def apply_all(engine: Engine, events: list[Any]) -> tuple[list[bool], str]:
    accepted, published = [], []
    for e in events:
        try:
            published.extend(engine.apply(e))
            accepted.append(True)
        except Rejected:
            accepted.append(False)
    return accepted, repr(published)


def withdrawal_decisions() -> WithdrawalDecisions:
    decisions = WithdrawalDecisions(capacity=4, refusals=2)
    for i in range(1, 8):
        decisions.record(
            i, 7, 100 * i, WithdrawalDecision(i % 3 != 0, 10 * i, "why" * (i % 3 == 0))
        )
    return decisions


def test_the_core_that_runs_is_the_one_expected() -> None:
    loaders = {m: importlib.import_module(f"riskd.core.{m}").__loader__ for m in MODULES}
    kinds = {
        m: "compiled" if isinstance(x, ExtensionFileLoader) else "pure" for m, x in loaders.items()
    }
    assert len(set(kinds.values())) == 1, f"a mix of compiled and pure modules: {kinds}"
    assert riskd.core_build() == next(iter(kinds.values()))
    expected = expected_build()
    if expected is not None:
        assert riskd.core_build() == expected, (
            f"expected the {expected} core, running the {riskd.core_build()} one"
            " (compiled: `make setup` builds riskd/core in place)"
        )


def test_no_compiled_class_extends_a_python_class() -> None:
    """mypyc lays a native class's fields over what a Python base keeps in the
    instance (a crash in the garbage collector): such a class, e.g. an
    exception extending :class:`riskd.errors.RiskdError`, is marked
    ``@mypyc_attr(native_class=False)``."""
    if riskd.core_build() != "compiled":
        pytest.skip("the pure core runs")
    wrong = []
    for m in MODULES:
        module = importlib.import_module(f"riskd.core.{m}")
        for name, cls in vars(module).items():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            if "__mypyc_attrs__" not in cls.__dict__:
                continue  # not native
            for base in cls.__mro__[1:]:
                if base.__module__ not in ("builtins", "typing", "collections.abc") and (
                    "__mypyc_attrs__" not in base.__dict__
                ):
                    wrong.append(f"{module.__name__}.{name} extends {base.__qualname__}")
    assert not wrong, wrong


def test_every_core_dataclass_pickles_in_one_shape() -> None:
    """A frozen dataclass compiled by mypyc pickles as a dict and cannot be
    restored; every dataclass says its shape (riskd.core.pickling): it derives
    from the base for its shape or pickles itself."""
    missing = []
    for m in MODULES:
        tree = ast.parse((CORE / f"{m}.py").read_text())
        for node in tree.body:
            if not isinstance(node, ast.ClassDef) or not any(
                "dataclass" in ast.unparse(d) for d in node.decorator_list
            ):
                continue
            frozen = any("frozen=True" in ast.unparse(d) for d in node.decorator_list)
            shape = "FieldsPickled" if frozen else "SlotsPickled"
            bases = {ast.unparse(b) for b in node.bases}
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if shape not in bases and not {"__getstate__", "__setstate__"} <= methods:
                missing.append(f"riskd.core.{m}.{node.name}")
    assert not missing, missing


# Run in the other core: the whole sequence from scratch, the parent's
# snapshot of the first half continued with the second, and a snapshot back.
CHILD = """
import json, pickle, sys
sys.path.insert(0, sys.argv[1])
import riskd
from riskd.core import digest
from test_compiled import EVENTS, HALF, apply_all, new_engine, vars_of

snapshot = pickle.load(sys.stdin.buffer)
fresh = new_engine()
accepted, published = apply_all(fresh, EVENTS)
engine = snapshot["engine"]
loaded = digest(engine)
continued = apply_all(engine, EVENTS[HALF:])[0]
with open(sys.argv[2], "wb") as f:
    pickle.dump({"engine": engine, "decisions": snapshot["decisions"]}, f)
print(json.dumps({
    "build": riskd.core_build(), "digest": digest(fresh), "accepted": accepted,
    "published": published, "loaded": loaded, "continued": continued,
    "after": digest(engine), "decisions": repr(vars_of(snapshot["decisions"])),
}))
"""


def vars_of(decisions: WithdrawalDecisions) -> object:
    return (decisions.refusals, list(decisions.refused.items()), decisions.approved.__getstate__())


def test_both_cores_agree_and_read_each_others_snapshots(tmp_path: Path) -> None:
    here = riskd.core_build()
    env = dict(os.environ)
    if here == "compiled":
        env["RISKD_PURE"] = "1"
    else:
        if not list(CORE.glob("engine.*.so")):
            pytest.skip("the core is not compiled here (`make setup` compiles it)")
        env.pop("RISKD_PURE", None)
    whole = new_engine()
    accepted, published = apply_all(whole, EVENTS)
    assert 0 < accepted.count(False) < len(EVENTS)
    assert "LiquidationSettled" in published and "AdlEvent" in published
    half = new_engine()
    apply_all(half, EVENTS[:HALF])
    decisions = withdrawal_decisions()
    snapshot = pickle.dumps({"engine": half, "decisions": decisions}, pickle.HIGHEST_PROTOCOL)
    before = digest(half)
    continued = apply_all(half, EVENTS[HALF:])[0]

    back = tmp_path / "back.pickle"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(HERE), str(back)],
        input=snapshot,
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr.decode()
    other = json.loads(child.stdout)
    assert other["build"] != here
    assert other["digest"] == digest(whole)
    assert other["accepted"] == accepted
    assert other["published"] == published
    assert other["loaded"] == before
    assert other["continued"] == continued
    assert other["after"] == digest(whole) == digest(half)
    assert other["decisions"] == repr(vars_of(decisions))
    returned = pickle.loads(back.read_bytes())
    assert digest(returned["engine"]) == digest(whole)
    assert repr(vars_of(returned["decisions"])) == repr(vars_of(decisions))
    # And the returned engine goes on like one that never left.
    assert apply_all(returned["engine"], EVENTS[:20]) == apply_all(whole, EVENTS[:20])
    assert digest(returned["engine"]) == digest(whole)
