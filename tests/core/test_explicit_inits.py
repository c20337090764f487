"""Dataclasses whose ``__init__`` is written out (``init=False``) set every field.

Compiled, a dataclass's generated ``__init__`` runs as interpreted code (with
``object.__setattr__`` per field when frozen): a liquidation built about ten
such objects, a third of a compiled cascade (issue 17).  The classes on that
path write their ``__init__`` out instead, which mypyc compiles.  This checks
each one against its field list, so a field added later without its line in
``__init__`` fails here (in whichever core runs the test).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import pytest

import riskd.core


def _written_out() -> list[type[Any]]:
    found = []
    for info in pkgutil.iter_modules(riskd.core.__path__):
        module = importlib.import_module(f"riskd.core.{info.name}")
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and obj.__module__ == module.__name__
                and dataclasses.is_dataclass(obj)
                and not obj.__dataclass_params__.init  # type: ignore[attr-defined]
            ):
                found.append(obj)
    return sorted(found, key=lambda c: c.__qualname__)


CLASSES = _written_out()


def test_the_cascade_path_classes_are_written_out() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"FundFlow", "LedgerEntry", "LiquidationSettled", "TakeoverClaim", "Waterfall"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_init_sets_every_field_and_keeps_the_defaults(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    values = {f.name: object() for f in fields}
    by_name = cls(**values)
    assert all(getattr(by_name, f.name) is values[f.name] for f in fields)
    if not any(f.kw_only for f in fields):
        positional = cls(*(values[f.name] for f in fields))
        assert all(getattr(positional, f.name) is values[f.name] for f in fields)
    required = {f.name: values[f.name] for f in fields if f.default is dataclasses.MISSING}
    defaults = cls(**required)
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert getattr(defaults, f.name) == f.default, f.name
    with pytest.raises(TypeError):
        cls(**values, not_a_field=1)
