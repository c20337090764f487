"""The journal's record format: typed records as versioned, self-describing JSON.

JSON keeps integers exact at any size, is readable by ``sqlite3`` and any
auditor, and does not execute anything on load.

Format 4 (this version writes it) is format 3 with the record kind
``asset_added`` (``AddAsset``: the asset, its fund policy, when) and a
``ts`` on ``market_added`` (when the sequencer took it); a format 3
``market_added`` has none and reads as 0.  A riskd that reads only format 3
refuses a format 4 journal by its version.

Format 3 is format 2 with more in it: the record
kinds ``admin`` (an operator's change to a market: its status, its mark
guard, its settlement) and ``market_added`` (``AddMarket``), and the input
kinds and fields of the risk gate and the mark guard (``CheckOrder``,
``AmendOrder``, ``CancelOrder``, a fill's order ids, a mark's index price).
A format 2 record is read as format 3 (nothing in it changed meaning); a
riskd that reads only format 2 refuses a format 3 journal by its version
instead of failing on a kind it does not know.

Format 2.  Every record is one JSON object with
``"v": 2`` and a ``"kind"``; every value is under its field's name.  An
ingest batch, the bulk of the journal, names each input class's fields once
(``"fields": {"Fill": ["market", "trade_id", ...]}``) and its rows carry the
values in that order (``[seq, "Fill", "BTC-USDT", 17, ...]``): decoding maps
them by those names, never by the class's own field order, at about the
size of a positional row.  Decoding is strict: a field the class does not
have, or a required one missing, is an error naming the record, the class
and the field, never a silent guess.  So a field renamed
in code fails loudly on old records, and a reordered one still decodes
right; a field added with a default decodes old records to that default.

Format 1 (no ``"v"``; one-letter keys, inputs as class name + positional
values) is still read: its positions are mapped to names through the field
order format 1 was written with (:data:`_V1_FIELDS`, frozen), then decoded
like format 2.  A record of a format this code does not know (a newer riskd
wrote it) raises :class:`UnknownFormat` naming the version: ``riskd serve``
and ``riskd audit`` refuse the data directory (exit 3) rather than guess.

Changing what a record holds or means bumps :data:`FORMAT` and keeps a
reader for the old one; the upgrade tests (``tests/storage/test_upgrade.py``)
read the golden data directories of every earlier format.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from riskd.core import (
    KINDS,
    Asset,
    Code,
    FundInjection,
    FundPolicy,
    Input,
    MarketSpec,
    Rejected,
    TierTable,
    Withdrawal,
    enum_settings,
)
from riskd.storage.journal import JournalCorrupt
from riskd.storage.records import (
    AdminInput,
    AssetAdded,
    EpochAssigned,
    FundInjected,
    IngestBatch,
    MarketAdded,
    MarketSettings,
    MarketUpdated,
    Record,
    WithdrawalDecided,
)

__all__ = [
    "FORMAT",
    "OLDEST",
    "Codec",
    "CODEC",
    "BadRecord",
    "UnknownFormat",
    "encode",
    "encode_ingest",
    "decode",
    "format_of",
    "decode_all",
    "encode_spec",
    "decode_spec",
    "spec_settings",
    "settings_of",
]

#: The journal format this version writes.
FORMAT = 4
#: The oldest format it still reads.
OLDEST = 1

#: The input classes records may hold: the core's table of input kinds
#: (:data:`riskd.core.inputs.KINDS`), so a new kind is journaled with no edit here.
INPUT_TYPES: tuple[type[Any], ...] = tuple(KINDS)

#: Format 1 stored inputs positionally, in these field orders (as they were
#: when format 2 replaced it; never edit).  Deposits written before
#: ``deposit_id`` existed have four values.
_V1_FIELDS: dict[str, tuple[str, ...]] = {
    "Fill": (
        "market",
        "trade_id",
        "buyer",
        "seller",
        "price",
        "quantity",
        "buyer_fee",
        "seller_fee",
        "ts",
    ),
    "MarkPrice": ("market", "price", "ts"),
    "Deposit": ("account", "asset", "amount", "ts", "deposit_id"),
    "Withdrawal": ("account", "asset", "amount", "ts"),
    "MarginTransfer": ("account", "market", "amount", "ts"),
    "FundingRate": ("market", "rate_e8", "ts"),
    "LiquidationFill": (
        "market",
        "liquidation_id",
        "counterparty",
        "price",
        "quantity",
        "counterparty_fee",
        "ts",
    ),
    "LiquidationDone": ("market", "liquidation_id", "ts"),
    "FundInjection": ("asset", "amount", "cause", "ts"),
}

_REJECTED = "!"

#: Every record's encoder, made once (``json.dumps`` with these options builds
#: one per call): compact, keys sorted, ASCII.
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def _value_encoder() -> Callable[[Any], str]:
    """``_JSON.encode`` of a value that holds no dict (an ingest record's rows,
    its numbers), with the C encoder made once.

    ``_JSON.encode`` builds the C encoder anew on every call (~1 µs: as much
    as encoding a 13-field row), and with ``check_circular`` it files every
    list in a dict of ids; rows are never circular, and with no dict inside
    neither ``sort_keys`` nor the markers change a byte
    (``tests/storage/test_codec.py`` compares).
    """
    make = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed
    if make is None:  # an interpreter without the C accelerator
        return _JSON.encode
    encoder = make(
        None,  # markers: no circularity check
        _JSON.default,
        json.encoder.encode_basestring_ascii,
        _JSON.indent,
        _JSON.key_separator,
        _JSON.item_separator,
        _JSON.sort_keys,
        _JSON.skipkeys,
        _JSON.allow_nan,
    )
    join = "".join

    def encode(value: Any) -> str:
        # Any: rows of ints and strings, as the getters read them.
        return join(encoder(value, 0))

    return encode


_encode_value = _value_encoder()
_encode_text = json.encoder.encode_basestring_ascii

#: Sets of input kinds whose ``fields`` text an ingest record reuses (bounded:
#: there are 2^16 sets, a few ever seen).
_MAX_FIELDS_TEXTS = 256


class BadRecord(JournalCorrupt):
    """A record that does not decode into its class (a field unknown or missing)."""


class UnknownFormat(JournalCorrupt):
    """A record written in a format this riskd does not know (a newer one wrote it)."""

    def __init__(self, version: object, where: str = "") -> None:
        super().__init__(
            f"{where}journal format version {version!r}: this riskd reads versions {OLDEST}"
            f" to {FORMAT}; run the riskd release that wrote it (or a newer one)"
        )
        self.version = version


def spec_settings() -> tuple[str, ...]:
    """MarketSpec's settings: its fields, less the constants derived from them."""
    return tuple(f.name for f in dataclasses.fields(MarketSpec) if not f.name.startswith("_"))


def settings_of(spec: MarketSpec) -> dict[str, Any]:
    """Every setting of ``spec`` as JSON values: comparable (a TierTable is equal
    only to itself), and what a settings record holds."""
    return encode_spec({k: getattr(spec, k) for k in spec_settings()})


def encode_spec(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Market settings as JSON values (tiers as rows, enums as values, the asset as an object)."""
    out: dict[str, Any] = {}
    for k, v in changes.items():
        if isinstance(v, TierTable):
            out[k] = [list(r) for r in v.as_rows()]
        elif isinstance(v, enum.Enum):  # any enum setting (see enum_settings)
            out[k] = v.value
        elif isinstance(v, Asset):
            out[k] = {"symbol": v.symbol, "decimals": v.decimals}
        else:
            out[k] = v
    return out


def decode_spec(changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(changes)
    if "tiers" in out:
        out["tiers"] = TierTable((int(f), int(lev), int(mmr)) for f, lev, mmr in out["tiers"])
    if "asset" in out:
        out["asset"] = Asset(**out["asset"])
    for name, kind in enum_settings():
        if name in out:
            out[name] = kind(out[name])
    return out


def format_of(value: Mapping[str, Any]) -> int:
    """The format a decoded JSON record was written in; UnknownFormat if not known."""
    v = value.get("v", 1)
    if type(v) is not int or not OLDEST <= v <= FORMAT:
        raise UnknownFormat(v)
    return v


class Codec:
    """Encodes and decodes :mod:`riskd.storage.records`; ``inputs``: the input classes
    (tests pass altered copies to prove decoding goes by field name)."""

    def __init__(self, inputs: Iterable[type[Any]] = INPUT_TYPES) -> None:
        self._inputs: dict[str, type[Any]] = {t.__name__: t for t in inputs}
        # Looked up once: encoding runs for every journaled update, decoding for
        # every record a start replays.
        self._fields = {
            name: tuple(f.name for f in dataclasses.fields(t)) for name, t in self._inputs.items()
        }
        self._required = {
            name: {
                f.name
                for f in dataclasses.fields(t)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            }
            for name, t in self._inputs.items()
        }
        self._settings = spec_settings()
        # Per input class: its name and a getter of its fields' values in the
        # journal's order (an ingest batch's rows; a tuple encodes as a list).
        self._getters: dict[type[Any], tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
            t: (name, _values_of(self._fields[name])) for name, t in self._inputs.items()
        }
        # An ingest record's "fields" as JSON text, per set of kinds in it.
        self._fields_text: dict[frozenset[str], str] = {}

    # --- inputs ----------------------------------------------------------------

    def _input_fields(self, x: Input) -> dict[str, Any]:
        return {f: getattr(x, f) for f in self._fields[type(x).__name__]}

    def _input(self, name: str, values: Any, where: str) -> Any:
        cls = self._inputs.get(name)
        if cls is None:
            raise BadRecord(f"{where}: unknown input type {name!r}")
        if not isinstance(values, dict):
            raise BadRecord(f"{where}: {name} is not an object of named fields")
        unknown = values.keys() - set(self._fields[name])
        if unknown:
            raise BadRecord(f"{where}: {name} has no field {', '.join(sorted(unknown))}")
        try:
            return cls(**values)
        except TypeError as e:  # a required field missing
            raise BadRecord(f"{where}: {name}: {e}") from e

    def _v1_input(self, row: Any, where: str) -> Input | Rejected:
        if not isinstance(row, list) or not row:
            raise BadRecord(f"{where}: not a format 1 input row")
        if row[0] == _REJECTED:
            return Rejected(Code(row[1]), row[2], row[3])
        names = _V1_FIELDS.get(row[0])
        if names is None:
            raise BadRecord(f"{where}: unknown input type {row[0]!r}")
        if len(row) - 1 > len(names):
            raise BadRecord(
                f"{where}: {row[0]} has {len(row) - 1} values, format 1 had {len(names)}"
            )
        result: Input = self._input(row[0], dict(zip(names, row[1:], strict=False)), where)
        return result

    # --- records ---------------------------------------------------------------

    def encode(self, record: Record) -> str:
        """One record as compact JSON text, in the current format."""
        if isinstance(record, IngestBatch):
            return self.encode_ingest(record.gateway, record.epoch, record.updates, record.offset)
        out: dict[str, Any] = {"v": FORMAT}
        match record:
            case WithdrawalDecided():
                out.update(
                    kind="withdrawal",
                    withdrawal_id=record.withdrawal_id,
                    withdrawal=self._input_fields(record.withdrawal),
                )
            case FundInjected():
                out.update(kind="injection", injection=self._input_fields(record.injection))
            case MarketUpdated():
                out.update(
                    kind="market_update",
                    market=record.market,
                    changes=encode_spec(record.changes),
                    ts=record.ts,
                )
            case EpochAssigned():
                out.update(kind="epoch", gateway=record.gateway, epoch=record.epoch)
            case MarketSettings():
                out.update(
                    kind="settings",
                    markets={sym: settings_of(spec) for sym, spec in record.markets.items()},
                    created=list(record.created),
                )
            case AdminInput():
                x = record.input
                out.update(kind="admin", type=type(x).__name__, input=self._input_fields(x))
            case MarketAdded():
                out.update(kind="market_added", market=settings_of(record.spec), ts=record.ts)
            case AssetAdded():
                a, f = record.asset, record.fund
                out.update(
                    kind="asset_added",
                    asset={"symbol": a.symbol, "decimals": a.decimals},
                    fund={"drawdown_limit_ppm": f.drawdown_limit_ppm, "window_ms": f.window_ms},
                    ts=record.ts,
                )
            case _:
                raise TypeError(f"not a journal record: {type(record).__name__}")
        return _JSON.encode(out)

    def encode_ingest(
        self,
        gateway: str,
        epoch: int,
        updates: Iterable[tuple[int, Input | Rejected]],
        offset: int,
    ) -> str:
        """:meth:`encode` of ``IngestBatch(gateway, epoch, updates, offset)``, without
        building one (the sequencer journals every batch).

        The text ``json.dumps(..., sort_keys=True)`` gives the record, with the
        envelope written out around the rows and the ``fields`` of a set of
        kinds encoded once (``tests/storage/test_codec.py`` compares the two):
        at one update per record the envelope was half the cost.
        """
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        kinds: set[str] = set()
        getters = self._getters
        for seq, x in updates:
            got = getters.get(type(x))
            if got is not None:
                kinds.add(got[0])
                append((seq, got[0], *got[1](x)))
            elif isinstance(x, Rejected):
                append((seq, _REJECTED, x.code.value, x.field, x.message))
            else:
                kind = type(x).__name__
                kinds.add(kind)
                append((seq, kind, *map(x.__getattribute__, self._fields[kind])))
        key = frozenset(kinds)
        fields = self._fields_text.get(key)
        if fields is None:
            fields = _JSON.encode({k: self._fields[k] for k in sorted(kinds)})
            if len(self._fields_text) < _MAX_FIELDS_TEXTS:
                self._fields_text[key] = fields
        encode = _encode_value
        return (
            f'{{"epoch":{encode(epoch)},"fields":{fields},'
            f'"gateway":{_encode_text(gateway)},"kind":"ingest",'
            f'"offset":{encode(offset)},"updates":{encode(rows)},"v":{FORMAT}}}'
        )

    def decode(self, text: str) -> Record:
        """One record from its text, whichever known format wrote it."""
        try:
            value = json.loads(text)
        except ValueError as e:
            raise BadRecord(f"not JSON: {e}") from e
        if not isinstance(value, dict):
            raise BadRecord("not a JSON object")
        try:
            if format_of(value) == 1:
                return self._decode_v1(value)
            return self._decode_v2(value)
        except (KeyError, TypeError, ValueError) as e:
            # Values of the wrong shape inside a known kind (a key missing, a bad enum).
            raise BadRecord(f"{value.get('kind', value.get('k'))!r} record: {e!r}") from e

    def _decode_v2(self, r: dict[str, Any]) -> Record:
        kind = r.get("kind")
        fields = set(r) - {"v", "kind"}
        expected = _V2_FIELDS.get(kind) if isinstance(kind, str) else None
        if expected is None:
            raise BadRecord(f"unknown record kind {kind!r}")
        if r["v"] < 4 and kind in _SINCE_V4:
            expected = expected - _SINCE_V4[kind]
        if fields != expected:
            extra, missing = sorted(fields - expected), sorted(expected - fields)
            raise BadRecord(f"{kind} record: unknown fields {extra}, missing fields {missing}")
        match kind:
            case "ingest":
                return self._ingest(r)
            case "withdrawal":
                w = self._input("Withdrawal", r["withdrawal"], "withdrawal record")
                return WithdrawalDecided(r["withdrawal_id"], w)
            case "injection":
                return FundInjected(
                    self._input("FundInjection", r["injection"], "injection record")
                )
            case "market_update":
                return self._update(r["market"], r["changes"], r["ts"])
            case "epoch":
                return EpochAssigned(r["gateway"], r["epoch"])
            case "admin":
                return AdminInput(self._input(r["type"], r["input"], "admin record"))
            case "market_added":
                values = r["market"]
                return MarketAdded(self._spec(str(values.get("symbol")), values), r.get("ts", 0))
            case "asset_added":
                return AssetAdded(Asset(**r["asset"]), FundPolicy(**r["fund"]), r["ts"])
            case _:  # "settings"
                return MarketSettings(
                    {sym: self._spec(sym, values) for sym, values in r["markets"].items()},
                    tuple(r["created"]),
                )

    def _ingest(self, r: dict[str, Any]) -> IngestBatch:
        """Rows are positional, in the order the record's own ``fields`` names: each
        name is checked against the class once per record, then values go by name."""
        makers: dict[str, Any] = {}
        for name, names in r["fields"].items():
            cls = self._inputs.get(name)
            if cls is None:
                raise BadRecord(f"ingest record: unknown input type {name!r}")
            have = self._fields[name]
            unknown = set(names) - set(have)
            if unknown:
                raise BadRecord(f"ingest record: {name} has no field {', '.join(sorted(unknown))}")
            missing_fields = self._required[name] - set(names)
            if missing_fields:
                missing = ", ".join(sorted(missing_fields))
                raise BadRecord(f"ingest record: {name} lacks required field {missing}")
            if tuple(names) == have:
                makers[name] = cls  # the same order: positional is by name
            else:
                makers[name] = _by_name(cls, tuple(names))
        updates: list[tuple[int, Input | Rejected]] = []
        for row in r["updates"]:
            seq, name = row[0], row[1]
            if name == _REJECTED:
                updates.append((seq, Rejected(Code(row[2]), row[3], row[4])))
                continue
            make = makers.get(name)
            if make is None:
                raise BadRecord(f"ingest record, sequence {seq}: {name!r} not in its fields")
            if len(row) - 2 != len(r["fields"][name]):
                raise BadRecord(f"ingest record, sequence {seq}: {name} has {len(row) - 2} values")
            updates.append((seq, make(*row[2:])))
        return IngestBatch(r["gateway"], r["epoch"], tuple(updates), r["offset"])

    def _update(self, market: str, changes: dict[str, Any], ts: int) -> MarketUpdated:
        unknown = changes.keys() - set(self._settings)
        if unknown:
            raise BadRecord(f"market change of {market}: no setting {sorted(unknown)}")
        return MarketUpdated(market, decode_spec(changes), ts)

    def _spec(self, symbol: str, values: dict[str, Any]) -> MarketSpec:
        unknown = values.keys() - set(self._settings)
        if unknown:
            raise BadRecord(f"settings record, market {symbol}: no setting {sorted(unknown)}")
        try:
            return MarketSpec(**decode_spec(values))
        except TypeError as e:
            raise BadRecord(f"settings record, market {symbol}: {e}") from e

    def _decode_v1(self, r: dict[str, Any]) -> Record:
        match r["k"]:
            case "ingest":
                return IngestBatch(
                    r["g"],
                    r["e"],
                    tuple(
                        (seq, self._v1_input(row, f"ingest record, sequence {seq}"))
                        for seq, row in r["u"]
                    ),
                    r.get("o", 0),
                )
            case "withdraw":
                w = self._v1_input(r["w"], "withdraw record")
                if not isinstance(w, Withdrawal):
                    raise BadRecord("withdraw record: not a Withdrawal")
                return WithdrawalDecided(r["id"], w)
            case "inject":
                i = self._v1_input(r["i"], "inject record")
                if not isinstance(i, FundInjection):
                    raise BadRecord("inject record: not a FundInjection")
                return FundInjected(i)
            case "spec":
                return self._update(r["m"], r["c"], r["t"])
            case "epoch":
                return EpochAssigned(r["g"], r["e"])
            case kind:
                raise BadRecord(f"unknown record kind {kind!r}")


def decode_all(texts: Iterable[str], after: int, path: object) -> list[Record]:
    """Records numbered ``after + 1`` on, decoded; the first that does not decode is
    raised naming ``path`` and its number (before anything is applied)."""
    out: list[Record] = []
    decode = CODEC.decode
    for n, text in enumerate(texts, after + 1):
        try:
            out.append(decode(text))
        except UnknownFormat as e:
            raise UnknownFormat(e.version, f"{path}: record {n}: ") from None
        except BadRecord as e:
            raise BadRecord(f"{path}: record {n}: {e}") from None
    return out


def _values_of(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function from an input to its values of ``names``, as a tuple (even of one)."""
    if not names:
        return lambda x: ()
    get = operator.attrgetter(*names)
    if len(names) > 1:
        return get
    return lambda x: (get(x),)


def _by_name(cls: type[Any], names: tuple[str, ...]) -> Any:
    def make(*values: Any) -> Any:
        return cls(**dict(zip(names, values, strict=True)))

    return make


#: Format 2's to 4's keys per kind, besides "v" and "kind": exactly these, no more, no
#: fewer (``admin`` and ``market_added`` are format 3's, ``asset_added`` format 4's).
_V2_FIELDS: dict[str, set[str]] = {
    "ingest": {"gateway", "epoch", "offset", "fields", "updates"},
    "withdrawal": {"withdrawal_id", "withdrawal"},
    "injection": {"injection"},
    "market_update": {"market", "changes", "ts"},
    "epoch": {"gateway", "epoch"},
    "settings": {"markets", "created"},
    "admin": {"type", "input"},
    "market_added": {"market", "ts"},
    "asset_added": {"asset", "fund", "ts"},
}
#: Keys a kind gained in format 4 (absent from its format 2 and 3 records).
_SINCE_V4: dict[str, set[str]] = {"market_added": {"ts"}}

CODEC = Codec()
encode = CODEC.encode
encode_ingest = CODEC.encode_ingest
decode = CODEC.decode
