"""The journal codec: records by field name, strict, versioned; format 1 still read."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from riskd import config as config_mod
from riskd.core import KINDS, Asset, FundPolicy, Journal, Rejected
from riskd.core.errors import Code
from riskd.core.events import (
    CheckOrder,
    Deposit,
    Fill,
    FundingRate,
    FundInjection,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarkPrice,
    SettleMarket,
    Withdrawal,
)
from riskd.core.market import AdlPolicy
from riskd.storage import codec
from riskd.storage.codec import FORMAT, INPUT_TYPES, BadRecord, Codec, UnknownFormat
from riskd.storage.records import (
    AdminInput,
    AssetAdded,
    EpochAssigned,
    FundInjected,
    IngestBatch,
    MarketAdded,
    MarketSettings,
    MarketUpdated,
    WithdrawalDecided,
)

M = "BTC-USDT"
ints = st.integers(min_value=-(2**70), max_value=2**70)  # exact beyond int64, both ways
text = st.text(max_size=12)


def _inputs() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(Fill, text, ints, ints, ints, ints, ints, ints, ints, ints),
        st.builds(MarkPrice, text, ints, ints),
        st.builds(Deposit, ints, text, ints, ints, ints),
        st.builds(MarginTransfer, ints, text, ints, ints),
        st.builds(FundingRate, text, ints, ints),
        st.builds(LiquidationFill, text, ints, ints, ints, ints, ints, ints),
        st.builds(LiquidationDone, text, ints, ints),
        st.builds(Rejected, st.sampled_from(list(Code)), text, text),
    )


@given(
    st.lists(st.tuples(st.integers(1, 2**63), _inputs()), max_size=8),
    text,
    st.integers(0, 2**63),
    st.integers(0, 4096),
)
def test_every_ingest_batch_reads_back_as_written(
    updates: list[tuple[int, Any]], gateway: str, epoch: int, offset: int
) -> None:
    record = IngestBatch(gateway, epoch, tuple(updates), offset)
    text = codec.encode(record)
    assert json.loads(text)["v"] == FORMAT
    decoded = codec.decode(text)
    assert isinstance(decoded, IngestBatch)
    assert _plain(decoded) == _plain(record)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 2**63),
            st.one_of(
                _inputs(),  # and a kind with booleans (JSON's true/false):
                st.builds(CheckOrder, text, ints, ints, ints, ints, ints, st.booleans()),
            ),
        ),
        max_size=6,
    ),
    text,
    st.integers(0, 2**63),
    st.integers(0, 4096),
)
def test_an_ingest_record_is_the_text_json_dumps_gives_it(
    updates: list[tuple[int, Any]], gateway: str, epoch: int, offset: int
) -> None:
    """The ingest record's envelope is written out for speed: byte for byte what
    format 3 defines, ``json.dumps`` of the record's object with its keys sorted."""
    names = {t.__name__: [f.name for f in dataclasses.fields(t)] for t in INPUT_TYPES}
    rows: list[list[Any]] = []
    kinds = set()
    for seq, x in updates:
        if isinstance(x, Rejected):
            rows.append([seq, "!", x.code.value, x.field, x.message])
        else:
            kind = type(x).__name__
            kinds.add(kind)
            rows.append([seq, kind, *(getattr(x, f) for f in names[kind])])
    reference = {
        "v": FORMAT,
        "kind": "ingest",
        "gateway": gateway,
        "epoch": epoch,
        "offset": offset,
        "fields": {k: names[k] for k in kinds},
        "updates": rows,
    }
    want = json.dumps(reference, separators=(",", ":"), sort_keys=True)
    assert codec.encode(IngestBatch(gateway, epoch, tuple(updates), offset)) == want
    assert codec.encode_ingest(gateway, epoch, updates, offset) == want


def _plain(r: IngestBatch) -> tuple[Any, ...]:
    """Rejected is an exception (equal only to itself): compare what it says."""
    return (
        r.gateway,
        r.epoch,
        r.offset,
        [(s, (x.code, x.field, x.message) if isinstance(x, Rejected) else x) for s, x in r.updates],
    )


def test_every_record_kind_reads_back_as_written() -> None:
    specs = {s.symbol: s for s in config_mod.load().markets}
    for record in (
        WithdrawalDecided(7, Withdrawal(4, "USDT", 10**30, 5)),
        FundInjected(FundInjection("USDT", 20, "seed", 9)),
        MarketUpdated(M, {"fund_fee_share_ppm": 0, "adl_policy": AdlPolicy.PRO_RATA_RISK}, 3),
        MarketUpdated(M, {"tiers": specs[M].tiers, "fund_loss_cap": None}, 0),
        EpochAssigned("gw-1", 2**63 - 1),
        MarketSettings(specs, tuple(specs)),
        MarketSettings(specs, ()),
    ):
        assert _comparable(codec.decode(codec.encode(record))) == _comparable(record)


def _comparable(r: Any) -> Any:
    """Tier tables are equal only to themselves: compare settings as JSON values."""
    if isinstance(r, MarketSettings):
        return {s: codec.settings_of(spec) for s, spec in r.markets.items()}, r.created
    if isinstance(r, MarketUpdated):
        return r.market, codec.encode_spec(r.changes), r.ts
    return r


def _reordered_fill() -> type[Any]:
    """A copy of Fill whose fields are reversed (as a refactoring might reorder them)."""
    fields = [(f.name, f.type, f) for f in reversed(dataclasses.fields(Fill))]
    rebuilt = [
        (name, typ, dataclasses.field(default=f.default))
        if f.default is not dataclasses.MISSING
        else (name, typ)
        for name, typ, f in fields
    ]
    # Required fields first, as a dataclass wants them.
    rebuilt.sort(key=lambda t: len(t) == 3)
    return dataclasses.make_dataclass("Fill", rebuilt, frozen=True)


def test_a_reordered_input_class_decodes_old_records_into_the_right_fields() -> None:
    fill = Fill(M, 11, 1, 2, 5_000_000, 100, 3, 4, 1_700_000_000_000)
    reordered = _reordered_fill()
    assert [f.name for f in dataclasses.fields(reordered)] != [
        f.name for f in dataclasses.fields(Fill)
    ]
    other = Codec([reordered if t is Fill else t for t in INPUT_TYPES])
    for record in (
        IngestBatch("gw", 1, ((1, fill),)),
        # Format 1: positional, as HEAD wrote them before format 2.
        '{"e":1,"g":"gw","k":"ingest","u":[[1,["Fill","BTC-USDT",11,1,2,5000000,100,3,4,'
        "1700000000000]]]}",
    ):
        text = record if isinstance(record, str) else codec.encode(record)
        decoded = other.decode(text)
        assert isinstance(decoded, IngestBatch)
        [(_, got)] = decoded.updates
        assert type(got) is reordered
        assert {f.name: getattr(got, f.name) for f in dataclasses.fields(got)} == {
            f.name: getattr(fill, f.name) for f in dataclasses.fields(Fill)
        }
    # The same values by position (``cls(*row[1:])``, what format 2 replaced) put
    # the market into ``quantity``.
    wrong = reordered(*(getattr(fill, f.name) for f in dataclasses.fields(Fill)))
    assert wrong.quantity == M


def test_a_renamed_field_fails_loudly_naming_it() -> None:
    renamed = dataclasses.make_dataclass(
        "MarkPrice",
        [("market", str), ("price_e2", int), ("ts", int, 0), ("index_price", int, 0)],
        frozen=True,
    )
    other = Codec([renamed if t is MarkPrice else t for t in INPUT_TYPES])
    text = codec.encode(IngestBatch("gw", 1, ((1, MarkPrice(M, 5, 6)),)))
    with pytest.raises(BadRecord, match="MarkPrice has no field price"):
        other.decode(text)
    v1 = '{"e":1,"g":"gw","k":"ingest","u":[[1,["MarkPrice","BTC-USDT",5,6]]]}'
    with pytest.raises(BadRecord, match="MarkPrice has no field price"):
        other.decode(v1)
    with pytest.raises(BadRecord, match="withdrawal record: Withdrawal has no field wallet"):
        codec.decode(
            '{"v":2,"kind":"withdrawal","withdrawal_id":1,'
            '"withdrawal":{"wallet":1,"asset":"USDT","amount":1,"ts":0}}'
        )


def test_a_field_added_with_a_default_reads_old_records_as_the_default() -> None:
    # Format 1 deposits before deposit ids: four values.
    old = codec.decode('{"e":1,"g":"gw","k":"ingest","u":[[1,["Deposit",7,"USDT",5,17]]]}')
    assert isinstance(old, IngestBatch)
    assert old.updates == ((1, Deposit(7, "USDT", 5, 17, deposit_id=0)),)
    # Format 2 names its fields: one that leaves deposit_id out gets the default.
    text = (
        '{"v":2,"kind":"ingest","gateway":"g","epoch":1,"offset":0,'
        '"fields":{"Deposit":["account","asset","amount"]},"updates":[[1,"Deposit",7,"USDT",5]]}'
    )
    new = codec.decode(text)
    assert isinstance(new, IngestBatch) and new.updates == ((1, Deposit(7, "USDT", 5)),)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"v":2,"kind":"teleport"}', "unknown record kind 'teleport'"),
        ('{"v":2,"kind":"epoch","gateway":"g"}', r"missing fields \['epoch'\]"),
        ('{"v":2,"kind":"epoch","gateway":"g","epoch":1,"x":1}', r"unknown fields \['x'\]"),
        (
            '{"v":2,"kind":"ingest","gateway":"g","epoch":1,"offset":0,'
            '"fields":{"MarkPrice":["market"]},"updates":[]}',
            "MarkPrice lacks required field price",
        ),
        (
            '{"v":2,"kind":"ingest","gateway":"g","epoch":1,"offset":0,'
            '"fields":{"MarkPrice":["market","price"]},"updates":[[1,"MarkPrice","M",1,2]]}',
            "MarkPrice has 3 values",
        ),
        ('{"v":2,"kind":"market_update","market":"M","changes":{"fee":1},"ts":0}', "no setting"),
        ('{"k":"ingest","g":"g","e":1,"u":[[1,["Teleport",1]]]}', "unknown input type"),
        ('{"k":"ingest","g":"g","e":1,"u":[[1,["MarkPrice","M",1,2,3]]]}', "4 values"),
        ("[1]", "not a JSON object"),
        ("{", "not JSON"),
    ],
)
def test_malformed_records_are_refused_naming_what(text: str, match: str) -> None:
    with pytest.raises(BadRecord, match=match):
        codec.decode(text)


@pytest.mark.parametrize("version", [FORMAT + 1, 99, 0, "2", None])
def test_an_unknown_format_version_is_refused_naming_it(version: object) -> None:
    text = json.dumps({"v": version, "kind": "epoch", "gateway": "g", "epoch": 1})
    with pytest.raises(UnknownFormat, match=f"format version {version!r}") as e:
        codec.decode(text)
    assert e.value.version == version
    with pytest.raises(UnknownFormat, match=r"j.sqlite3: record 12: journal format version"):
        codec.decode_all([codec.encode(EpochAssigned("g", 1)), text], 10, "j.sqlite3")


# --- the codec reads the core's table of input kinds ---------------------------------


def _any_input(kind: Any) -> st.SearchStrategy[Any]:
    """Any value of one input kind, built from its fields' types (so a new kind is covered)."""
    hints = {f.name: f.type for f in dataclasses.fields(kind.cls)}
    # Booleans as booleans: the compiled core checks a field's type as it is set.
    types = {"str": text, str: text, "bool": st.booleans(), bool: st.booleans()}
    return st.builds(kind.cls, **{n: types.get(t, ints) for n, t in hints.items()})


@given(st.data())
def test_every_kind_in_the_table_reads_back_as_written(data: st.DataObject) -> None:
    for kind in KINDS.values():
        x = data.draw(_any_input(kind))
        if kind.journal is Journal.WITHDRAWAL:
            record: Any = WithdrawalDecided(1, x)
        elif kind.journal is Journal.INJECTION:
            record = FundInjected(x)
        elif kind.journal is Journal.ADMIN:
            record = AdminInput(x)
        else:
            record = IngestBatch("g", 1, ((1, x),), 0)
        assert codec.decode(codec.encode(record)) == record


def test_the_bytes_written_stay_put() -> None:
    """Format 4 as journals hold it: a change here breaks every existing data directory.

    (Earlier formats' bytes are pinned by the golden directories, which must still read.)"""
    batch = IngestBatch(
        "gw",
        3,
        (
            (5, Fill(M, 11, 1, 2, 5_000_000, 100, 3, 4, 1_700)),
            (6, Deposit(9, "USDT", 10, 7, 8)),
            (7, Rejected.invalid("price", "bad")),
        ),
        2,
    )
    assert codec.encode(batch) == (
        '{"epoch":3,"fields":{"Deposit":["account","asset","amount","ts","deposit_id"],'
        '"Fill":["market","trade_id","buyer","seller","price","quantity","buyer_fee",'
        '"seller_fee","ts","buyer_order_id","seller_order_id"]},"gateway":"gw","kind":"ingest",'
        '"offset":2,"updates":[[5,"Fill","BTC-USDT",11,1,2,5000000,100,3,4,1700,0,0],'
        '[6,"Deposit",9,"USDT",10,7,8],[7,"!","INVALID_ARGUMENT","price","bad"]],"v":4}'
    )
    assert codec.encode(WithdrawalDecided(4, Withdrawal(1, "USDT", 5, 6))) == (
        '{"kind":"withdrawal","v":4,"withdrawal":{"account":1,"amount":5,"asset":"USDT",'
        '"ts":6},"withdrawal_id":4}'
    )
    assert codec.encode(FundInjected(FundInjection("BTC", 5, "seed", 1))) == (
        '{"injection":{"amount":5,"asset":"BTC","cause":"seed","ts":1},"kind":"injection","v":4}'
    )
    assert codec.encode(AdminInput(SettleMarket(M, 5_000_000, 9))) == (
        '{"input":{"market":"BTC-USDT","price":5000000,"ts":9},"kind":"admin",'
        '"type":"SettleMarket","v":4}'
    )
    assert codec.encode(AssetAdded(Asset("USDC", 6), FundPolicy(500_000, 3_600_000), 9)) == (
        '{"asset":{"decimals":6,"symbol":"USDC"},"fund":{"drawdown_limit_ppm":500000,'
        '"window_ms":3600000},"kind":"asset_added","ts":9,"v":4}'
    )


def test_an_added_asset_and_a_stamped_added_market_read_back_and_format_3_has_no_stamp() -> None:
    added = AssetAdded(Asset("USDC", 6), FundPolicy(), 1_796_000_000_000)
    assert codec.decode(codec.encode(added)) == added
    spec = config_mod.load().markets[0]
    market = MarketAdded(spec, 1_796_000_000_001)
    back = codec.decode(codec.encode(market))
    # (A TierTable equals only itself: the specs compare as settings.)
    assert isinstance(back, MarketAdded) and back.ts == market.ts
    assert codec.settings_of(back.spec) == codec.settings_of(spec)
    v3 = json.loads(codec.encode(market))
    del v3["ts"]
    v3["v"] = 3
    old = codec.decode(json.dumps(v3))
    assert isinstance(old, MarketAdded) and old.ts == 0
    v3["ts"] = 5  # format 3 had no stamp: a record with one is not format 3's
    with pytest.raises(BadRecord, match="unknown fields"):
        codec.decode(json.dumps(v3))
    bad = json.loads(codec.encode(added))
    bad["asset"]["decimals"] = 19
    with pytest.raises(BadRecord, match="asset_added"):
        codec.decode(json.dumps(bad))


def test_format_1_rows_of_every_kind_it_had_still_decode() -> None:
    rows = {
        "Fill": [M, 1, 2, 3, 4, 5, 6, 7, 8],
        "MarkPrice": [M, 4, 5],
        "Deposit": [1, "USDT", 2, 3],  # before deposit_id existed
        "Withdrawal": [1, "USDT", 2, 3],
        "MarginTransfer": [1, M, -2, 3],
        "FundingRate": [M, 7, 1],
        "LiquidationFill": [M, 1, 2, 3, 4, 5, 6],
        "LiquidationDone": [M, 1, 2],
        "FundInjection": ["USDT", 5, "seed", 1],
    }
    text = json.dumps(
        {
            "k": "ingest",
            "g": "g",
            "e": 1,
            "u": [[i, [n, *v]] for i, (n, v) in enumerate(rows.items(), 1)],
        }
    )
    decoded = codec.decode(text)
    assert isinstance(decoded, IngestBatch)
    assert [type(x).__name__ for _, x in decoded.updates] == list(rows)
    assert decoded.updates[2][1] == Deposit(1, "USDT", 2, 3, 0)


def test_a_new_input_kind_is_journaled_with_no_codec_edit() -> None:
    """What adding a kind to the table asks of the codec: nothing."""
    Halt = dataclasses.make_dataclass(
        "Halt",
        [("market", str), ("reason", str), ("ts", int, dataclasses.field(default=0))],
        frozen=True,
    )
    c = Codec((*INPUT_TYPES, Halt))
    record = IngestBatch("g", 1, ((1, Halt(M, "maintenance", 5)), (2, MarkPrice(M, 3, 4))), 0)
    assert c.decode(c.encode(record)) == record


def test_an_added_market_reads_back_with_every_setting() -> None:
    spec = dataclasses.replace(
        config_mod.load().markets[0],
        symbol="SOL-USDT",
        mark_max_jump_ppm=50_000,
        mark_stale_after_ms=10_000,
    )
    text = codec.encode(MarketAdded(spec))
    back = codec.decode(text)
    assert isinstance(back, MarketAdded)
    assert codec.settings_of(back.spec) == codec.settings_of(spec)
    with pytest.raises(BadRecord, match="no setting"):
        codec.decode(text.replace('"mark_max_jump_ppm"', '"mark_max_leap_ppm"'))
