"""One pickled shape per core class, whether the core runs compiled or not.

Snapshots pickle the core's objects by module and class name.  CPython and
mypyc would pickle the same class in different shapes: a slotted class as
``(None, {slot: value})``, a frozen slotted dataclass as the list of its field
values, a plain class as its ``__dict__``; a class compiled by mypyc as a dict
of its native attributes, and mypyc cannot restore a frozen dataclass at all.
So every class a snapshot holds pickles in the shape pure Python always gave
it (:func:`slots_state`, :func:`dict_state`, :func:`fields_state`) and
restores from any of the three (:func:`restore`): a snapshot written by either
core, or by a riskd from before the compiled one, loads in the other.

A class gets this by deriving from the base named for its shape:
:class:`FieldsPickled` (frozen slotted dataclasses), :class:`SlotsPickled`
(slotted classes, slotted dataclasses), :class:`DictPickled` (plain classes).
A class with a history of shapes overrides ``__setstate__`` and still calls
:func:`restore`.  Pure Python gives a frozen slotted dataclass the same two
methods itself (``dataclasses`` adds them); the base is what the compiled
class runs.

The native classes are also marked ``@mypyc_attr(allow_interpreted_subclasses=True,
serializable=True)``: serializable so unpickling creates them without calling
``__init__``; allow_interpreted_subclasses because without it a serializable
class constructed from Python code would skip ``__init__`` altogether.  The
bases carry both marks, mypyc's rule for a base of such a class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from mypy_extensions import mypyc_attr

__all__ = [
    "FieldsPickled",
    "SlotsPickled",
    "DictPickled",
    "slots_state",
    "dict_state",
    "fields_state",
    "restore",
]

# Attribute names no snapshot carries: Python's own machinery.
_NOT_STATE = frozenset({"__dict__", "__weakref__"})


def _declared(cls: type) -> list[str]:
    """Attribute names the class and its bases declare: __slots__ (pure), or mypyc's list."""
    names: dict[str, None] = {}
    for c in reversed(cls.__mro__):
        for key in ("__slots__", "__mypyc_attrs__"):
            declared: str | Iterable[str] = c.__dict__.get(key, ())
            for name in (declared,) if isinstance(declared, str) else declared:
                if name not in _NOT_STATE:
                    names[name] = None
    return list(names)


def _set(obj: object, names: Iterable[str]) -> dict[str, object]:
    return {n: getattr(obj, n) for n in names if hasattr(obj, n)}


def slots_state(obj: object) -> tuple[None, dict[str, object]]:
    """A slotted class's state as CPython pickles it: (no dict, the set slots)."""
    return None, _set(obj, _declared(type(obj)))


def dict_state(obj: object) -> dict[str, object]:
    """A plain class's state as CPython pickles it: its attributes by name."""
    plain: dict[str, object] | None = getattr(obj, "__dict__", None)
    if plain is not None:
        return dict(plain)
    return _set(obj, _declared(type(obj)))


def fields_state(obj: object) -> list[object]:
    """A frozen slotted dataclass's state as CPython pickles it: its field values in order."""
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]  # type: ignore[arg-type]


def restore(obj: object, state: object) -> None:
    """Set ``obj``'s attributes from any of the three shapes above.

    ``object.__setattr__`` on purpose: frozen dataclasses refuse ``setattr``.
    """
    items: Iterable[tuple[str, object]]
    if isinstance(state, list):
        names = [f.name for f in dataclasses.fields(obj)]  # type: ignore[arg-type]
        items = zip(names, state, strict=True)
    elif isinstance(state, tuple):
        merged: dict[str, object] = {}
        for part in state:
            if part:
                assert isinstance(part, dict), type(part)
                merged.update(part)
        items = merged.items()
    else:
        assert isinstance(state, dict), type(state)
        items = state.items()
    for name, value in items:
        object.__setattr__(obj, name, value)


# Empty __slots__: the pure subclasses keep theirs (no __dict__ comes from a base).


# Marked too: a subclass that writes its __init__ out (compiled natively, see
# tests/core/test_explicit_inits.py) needs both marks, and so its base.
@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class FieldsPickled:
    """Base of a frozen slotted dataclass: pickled as its field values in order."""

    __slots__ = ()

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class SlotsPickled:
    """Base of a slotted class: pickled as ``(None, {slot: value})``."""

    __slots__ = ()

    def __getstate__(self) -> tuple[None, dict[str, object]]:
        return slots_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class DictPickled:
    """Base of a plain class: pickled as its attributes by name."""

    __slots__ = ()

    def __getstate__(self) -> dict[str, object]:
        return dict_state(self)

    # Any: a subclass that reads older shapes takes the dict it expects.
    def __setstate__(self, state: Any) -> None:
        restore(self, state)
