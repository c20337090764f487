"""The table of input kinds is complete and agrees with the wire, the journal and the engine."""

from __future__ import annotations

import typing

import pytest

from riskd.core import (
    KINDS,
    Engine,
    Input,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarkPrice,
    Owner,
    Rejected,
    kind_of,
)
from riskd.storage.codec import INPUT_TYPES
from riskd.v1 import ingest_pb2


def test_every_input_class_has_one_entry() -> None:
    assert set(typing.get_args(Input)) == set(KINDS)


def test_wire_names_are_the_update_oneof() -> None:
    oneof = {f.name for f in ingest_pb2.Update.DESCRIPTOR.oneofs_by_name["kind"].fields}
    assert {k.wire for k in KINDS.values() if k.wire} == oneof


def test_journal_codec_reads_the_table() -> None:
    assert tuple(KINDS) == INPUT_TYPES


def test_each_entry_names_its_owner_field() -> None:
    for kind in KINDS.values():
        assert kind.key in kind.cls.__dataclass_fields__
        assert kind.key == ("market" if kind.owner is Owner.MARKET else "asset")


def test_liquidation_path() -> None:
    path = {k.cls for k in KINDS.values() if k.liquidation_path}
    assert path == {MarkPrice, LiquidationFill, LiquidationDone}


def test_wallet_leg_only_for_margin_in() -> None:
    leg = KINDS[MarginTransfer].wallet_leg
    assert leg is not None
    assert leg(MarginTransfer(account=1, market="M", amount=5)) == (1, 5)
    assert leg(MarginTransfer(account=1, market="M", amount=-5)) is None


def test_not_an_input_is_refused_naming_kind() -> None:
    with pytest.raises(Rejected) as e:
        kind_of(object())
    assert e.value.field == "kind"
    with pytest.raises(Rejected) as e:
        Engine([]).apply(object())  # type: ignore[arg-type]
    assert e.value.field == "kind"
