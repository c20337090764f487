"""Dataclasses whose ``__init__`` is written out (``init=False``) set every field.

Compiled, a dataclass's generated ``__init__`` runs as interpreted code (with
``object.__setattr__`` per field when frozen): a liquidation built about ten
such objects, a third of a compiled cascade (issue 17).  The classes on that
path, and the input classes decoding builds per update, write their
``__init__`` out instead, which mypyc compiles (with both of
:mod:`riskd.core.pickling`'s mypyc marks: without ``allow_interpreted_subclasses``
a class that inherits ``serializable`` is built from Python code without its
``__init__`` running at all, every field unset).  This checks
each one against its field list, so a field added later without its line in
``__init__`` fails here (in whichever core runs the test).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
import types
import typing
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


def test_every_input_class_is_written_out() -> None:
    # Decoding builds one per update, replay one per journaled update.
    assert set(riskd.core.KINDS) <= set(CLASSES)


def _value(hint: Any, i: int) -> object:
    """A value of the field's type, distinct per field (compiled __init__s check types)."""
    if hint is type:  # compiled, an optional enum field's annotation reads as ``type``
        return None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _value(next(a for a in typing.get_args(hint) if a is not type(None)), i)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[-1]
    if hint is bool:
        return True
    if hint is str:
        return f"field {i}"
    assert hint is int, hint
    return 1_000 + i


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_init_sets_every_field_and_keeps_the_defaults(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    hints = typing.get_type_hints(cls)
    values = {f.name: _value(hints[f.name], i) for i, f in enumerate(fields)}
    by_name = cls(**values)
    assert {f.name: getattr(by_name, f.name) for f in fields} == values
    if not any(f.kw_only for f in fields):
        positional = cls(*(values[f.name] for f in fields))
        assert {f.name: getattr(positional, f.name) for f in fields} == values
    required = {f.name: values[f.name] for f in fields if f.default is dataclasses.MISSING}
    defaults = cls(**required)
    for f in fields:
        if f.default is not dataclasses.MISSING:
            assert getattr(defaults, f.name) == f.default, f.name
    with pytest.raises(TypeError):
        cls(**values, not_a_field=1)
