"""Journal records: the sequenced inputs, as JSON text.

JSON keeps integers exact at any size, is readable by ``sqlite3`` and any
auditor, and does not execute anything on load.  A record is exactly what the
sequencer applied, so replaying records in order rebuilds the same state.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from riskd.core import Rejected, TierTable
from riskd.core.errors import Code
from riskd.core.events import (
    Deposit,
    Fill,
    FundingRate,
    FundInjection,
    Input,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarkPrice,
    Withdrawal,
)
from riskd.core.market import enum_settings

__all__ = ["encode", "decode", "encode_input", "decode_input", "encode_spec", "decode_spec"]

_INPUTS: dict[str, type[Any]] = {
    t.__name__: t
    for t in (
        Fill,
        MarkPrice,
        Deposit,
        Withdrawal,
        MarginTransfer,
        FundingRate,
        LiquidationFill,
        LiquidationDone,
        FundInjection,
    )
}


def encode(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


# Field names per input type, looked up once: this runs for every journaled update.
_FIELDS = {name: tuple(f.name for f in dataclasses.fields(t)) for name, t in _INPUTS.items()}


def encode_input(x: Input | Rejected) -> list[Any]:
    if isinstance(x, Rejected):
        return ["!", x.code.value, x.field, x.message]
    name = type(x).__name__
    return [name, *map(x.__getattribute__, _FIELDS[name])]


def decode_input(row: list[Any]) -> Input | Rejected:
    if row[0] == "!":
        return Rejected(Code(row[1]), row[2], row[3])
    cls = _INPUTS[row[0]]
    result: Input = cls(*row[1:])
    return result


def encode_spec(changes: dict[str, Any]) -> dict[str, Any]:
    """Market-spec changes as JSON values (tiers as rows, enums as their values)."""
    out: dict[str, Any] = {}
    for k, v in changes.items():
        if isinstance(v, TierTable):
            out[k] = [list(r) for r in v.as_rows()]
        elif isinstance(v, enum.Enum):  # any enum setting (see enum_settings)
            out[k] = v.value
        else:
            out[k] = v
    return out


def decode_spec(changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(changes)
    if "tiers" in out:
        out["tiers"] = TierTable((int(f), int(lev), int(mmr)) for f, lev, mmr in out["tiers"])
    for name, kind in enum_settings():
        if name in out:
            out[name] = kind(out[name])
    return out
