"""Configuration: a TOML file, or the embedded default when none is given.

The default (``riskd/default_config.toml``, printed by ``riskd config``) is
good enough to start with nothing: BTC-USDT and ETH-USDT linear on a USDT fund
and BTC-USD inverse on a BTC fund.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from riskd.access import ACCESS_KEYS, Policy
from riskd.core import (
    Asset,
    FundPolicy,
    MarketSpec,
    TierTable,
)
from riskd.core.stress import DEFAULT_MOVES_PPM, check_moves
from riskd.core.tiers import SpecError
from riskd.core.units import INT64_MAX, PPM
from riskd.errors import RiskdError

__all__ = [
    "Config",
    "ConfigError",
    "ServerConfig",
    "TlsConfig",
    "SERVER_LIMITS",
    "default_toml",
    "load",
    "parse",
]

#: Longest period a seconds setting may name (a year): beyond it, a typo.
MAX_SECONDS = 366 * 86_400.0
MAX_FUND_WINDOW_SECONDS = 366 * 86_400
#: An asset's fund settings when [assets.X.fund] (or AddAsset) leaves them out.
DEFAULT_DRAWDOWN_LIMIT_PPM = 300_000
DEFAULT_FUND_WINDOW_SECONDS = 28_800

#: ``[server]`` numbers and their inclusive ranges.  A number not listed must
#: be >= 0 (and an integer fit in int64, a float be at most a year).  0 means
#: "off" only where the key's comment says so; counts and sizes are >= 1.
SERVER_LIMITS: dict[str, tuple[int, int] | tuple[float, float]] = {
    "mailbox_capacity": (1, 1_000_000),
    "stream_window": (1, 65_536),
    "max_ingest_streams": (1, 100_000),
    "max_batch_updates": (1, 1_000_000),
    "event_retention": (1, 100_000_000),
    "invariant_check_seconds": (0.0, MAX_SECONDS),
    "snapshot_seconds": (0.0, MAX_SECONDS),
    "journal_commit_interval_seconds": (0.0, 0.1),
    "max_clock_skew_seconds": (0.0, MAX_SECONDS),
    "max_update_age_seconds": (0.0, MAX_SECONDS),
    "gateway_updates_per_second": (0, INT64_MAX),
    "gateway_burst": (0, INT64_MAX),
    # HTTP/2 windows are 31-bit.
    "transport_window_bytes": (0, 2**31 - 1),
    "max_subscriptions": (1, 1_000_000),
    "max_subscriptions_per_identity": (1, 1_000_000),
    "withdrawal_ids_remembered": (1, 10_000_000),
    "fund_ledger_memory": (1, 10_000_000),
}

#: A market's fill price band when its table does not set one: 5 %.
DEFAULT_FILL_PRICE_BAND_PPM = 50_000

#: Market keys given in whole settlement-asset units (scaled to quantums).
WHOLE_UNITS = frozenset({"fund_loss_cap", "max_position_notional"})


class ConfigError(RiskdError, ValueError):
    """A bad setting: the message starts with its dotted key
    (``server.stream_window: must be in 1..65536, got 0``)."""

    STATUS = "INVALID_ARGUMENT"

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """PEM files: the server's certificate chain and key, and the CA that
    signs client certificates (every client must present one)."""

    cert: str
    key: str
    client_ca: str


@dataclass(frozen=True, slots=True)
class ServerConfig:
    grpc_listen: str = "127.0.0.1:50051"
    #: The ingest front-end process's address ("": none; IngestService on grpc_listen only).
    frontend_listen: str = ""
    metrics_listen: str = "127.0.0.1:9464"
    data_dir: str = "riskd-data"
    mailbox_capacity: int = 1024
    stream_window: int = 64
    max_ingest_streams: int = 32
    max_batch_updates: int = 4096
    event_retention: int = 100_000
    invariant_check_seconds: float = 60.0
    snapshot_seconds: float = 300.0
    #: A journal commit starts at least this long after the previous one did
    #: (0: as soon as the writer is free): under load each carries more records.
    journal_commit_interval_seconds: float = 0.0
    #: No TLS and no identities: for local development, on loopback only.
    plaintext: bool = False
    tls: TlsConfig | None = None
    #: Updates stamped further ahead of the daemon's clock are refused (0: no limit).
    max_clock_skew_seconds: float = 60.0
    #: Updates stamped longer ago are refused (0: no limit).
    max_update_age_seconds: float = 86_400.0
    #: Refuse mark prices without a timestamp (else they age from when riskd applies them).
    require_mark_timestamps: bool = False
    #: Default per-gateway budget for ``[access]`` entries that set none
    #: (0: unlimited); in plaintext mode it applies per gateway name.
    gateway_updates_per_second: int = 0
    gateway_burst: int = 0
    #: Per-stream HTTP/2 receive window (0: let gRPC grow it by probing).
    transport_window_bytes: int = 262_144
    #: Open event subscriptions at most, in all and per identity (>= 1 each).
    max_subscriptions: int = 256
    max_subscriptions_per_identity: int = 16
    #: Approved withdrawal ids remembered per asset for retries (about 100 bytes each).
    withdrawal_ids_remembered: int = 100_000
    #: Fund ledger entries kept in memory per asset (the rest in ledger.sqlite3).
    fund_ledger_memory: int = 10_000
    #: Mark moves (ppm of the mark) the stress coverage gauges report, and
    #: GetStressCoverage's default (riskd.core.stress).
    stress_moves_ppm: tuple[int, ...] = DEFAULT_MOVES_PPM
    #: CPUs the engine process's threads may run on, and the front end's
    #: (riskd.cpus; empty: whatever riskd was started with).
    engine_cpus: tuple[int, ...] = ()
    frontend_cpus: tuple[int, ...] = ()

    def check_transport(self) -> None:
        """Listen addresses are ``host:port``; exactly one of TLS or plaintext;
        plaintext only on a loopback address.  (Run again after command-line
        overrides.)"""
        for key in ("grpc_listen", "metrics_listen"):
            _check_listen(f"server.{key}", getattr(self, key))
        if self.frontend_listen:
            _check_listen("server.frontend_listen", self.frontend_listen)
        if self.tls is not None and self.plaintext:
            raise ConfigError("server", "set either [server.tls] or plaintext = true, not both")
        if self.tls is None and not self.plaintext:
            raise ConfigError(
                "server",
                "no transport security configured: set [server.tls] (cert, key, client_ca),"
                " or plaintext = true for local development on loopback",
            )
        if self.plaintext and not is_loopback(self.grpc_listen):
            raise ConfigError(
                "server.grpc_listen",
                "plaintext is for local development and may only listen on a loopback"
                f" address, not {self.grpc_listen!r}; configure [server.tls]",
            )
        if self.plaintext and self.frontend_listen and not is_loopback(self.frontend_listen):
            raise ConfigError(
                "server.frontend_listen",
                "plaintext is for local development and may only listen on a loopback"
                f" address, not {self.frontend_listen!r}; configure [server.tls]",
            )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    markets: tuple[MarketSpec, ...]
    funds: dict[str, FundPolicy] = field(default_factory=dict)
    access: Policy = field(default_factory=lambda: Policy(()))

    @property
    def assets(self) -> dict[str, Asset]:
        return {m.asset.symbol: m.asset for m in self.markets}


def default_toml() -> str:
    return resources.files("riskd").joinpath("default_config.toml").read_text()


def load(path: str | Path | None = None) -> Config:
    """Read a config file, or the embedded default."""
    text = default_toml() if path is None else Path(path).read_text()
    return parse(text)


def parse(text: str) -> Config:
    """Build a validated config from TOML text.

    Strict: a key riskd does not know, a value of the wrong type or out of
    range anywhere is a :class:`ConfigError` naming it (``markets.BTC-USDT.tiers[2]``),
    never ignored; a typo must not silently leave a default in force.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("(file)", f"not valid TOML: {e}") from e
    _no_unknown_keys("", doc, {"server", "assets", "markets", "access"})
    server = _server(_table(doc, "server"))
    server.check_transport()
    asset_tables = _table(doc, "assets")
    assets: dict[str, Asset] = {}
    funds: dict[str, FundPolicy] = {}
    for sym, a in asset_tables.items():
        assets[sym], funds[sym] = _asset(sym, a)
    markets: list[MarketSpec] = []
    for sym, m in _table(doc, "markets").items():
        markets.append(_market(sym, m, assets))
    if not markets:
        raise ConfigError("markets", "the config defines no markets")
    settled = {m.asset.symbol for m in markets}
    for sym in assets:
        if sym not in settled:
            raise ConfigError(f"assets.{sym}", f"no market settles in {sym}: remove it or add one")
    access_table = _table(doc, "access")
    _check_access(access_table)
    try:
        access = Policy.parse(
            access_table,
            {m.symbol: m.asset.symbol for m in markets},
            server.gateway_updates_per_second,
            server.gateway_burst,
        )
    except ValueError as e:
        # Policy's messages start with the key they are about ("access.gw.roles: ...").
        key, _, reason = str(e).partition(": ")
        raise ConfigError(key, reason) from e
    if server.tls is not None and not access.grants:
        raise ConfigError("access", "[server.tls] is set but [access] grants nobody anything")
    return Config(server, tuple(markets), funds, access)


def _check_listen(key: str, address: str) -> None:
    host, colon, port = address.rpartition(":")
    # gRPC would take port 99999 as 34463 (mod 65536) without a word.
    if not colon or not host.strip("[]") or not port.isascii() or not port.isdigit():
        raise ConfigError(key, f"must be host:port, got {address!r}")
    if not 0 <= int(port) <= 65_535:
        raise ConfigError(key, f"port must be in 0..65535, got {address!r}")


def is_loopback(address: str) -> bool:
    """Whether a ``host:port`` listen address is reachable only from this machine."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(key, f"must be a table ([{key}]), got {_kind(value)}")
    return value


def _kind(value: object) -> str:
    """A TOML value's type in TOML's words, for error messages."""
    match value:
        case bool():
            return f"a boolean ({str(value).lower()})"
        case int():
            return f"an integer ({value})"
        case float():
            return f"a float ({value})"
        case str():
            return f"a string ({value[:40]!r}{'...' if len(value) > 40 else ''})"
        case list():
            return "an array"
        case dict():
            return "a table"
    return type(value).__name__


def _no_unknown_keys(where: str, table: dict[str, Any], known: set[str]) -> None:
    for key in table:
        if key not in known:
            name = f"{where}.{key}" if where else key
            raise ConfigError(name, f"unknown key (known: {', '.join(sorted(known))})")


def _integer(key: str, value: object, low: int, high: int) -> int:
    # TOML booleans are not numbers, and 1.5 is not an amount of anything.
    if type(value) is not int:
        raise ConfigError(key, f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be in {low}..{high}, got {value}")
    return value


def _number(key: str, value: object, low: float, high: float) -> float:
    if type(value) not in (int, float):
        raise ConfigError(key, f"must be a number, got {_kind(value)}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or not low <= number <= high:
        raise ConfigError(key, f"must be in {low:g}..{high:g}, got {value}")
    return number


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_kind(value)}")
    if not value:
        raise ConfigError(key, "must not be empty")
    return value


def _server(table: dict[str, Any]) -> ServerConfig:
    hints = get_type_hints(ServerConfig)
    _no_unknown_keys("server", table, set(hints))
    values: dict[str, Any] = {}
    for key, value in table.items():
        where = f"server.{key}"
        kind = hints[key]
        if key == "tls":
            values[key] = _tls(value)
        elif key == "stress_moves_ppm":
            values[key] = _moves(where, value)
        elif key in ("engine_cpus", "frontend_cpus"):
            values[key] = _cpus(where, value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(where, f"must be true or false, got {_kind(value)}")
            values[key] = value
        elif kind is int:
            values[key] = _integer(where, value, *SERVER_LIMITS.get(key, (0, INT64_MAX)))
        elif kind is float:
            values[key] = _number(where, value, *SERVER_LIMITS.get(key, (0, MAX_SECONDS)))
        elif kind is str:
            values[key] = _string(where, value)
        else:  # pragma: no cover - a new ServerConfig field of a type parse() does not know
            raise ConfigError(where, f"riskd cannot read a {kind} from TOML")
    return ServerConfig(**values)


def _moves(key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"must be an array of integers (ppm), got {_kind(value)}")
    if not value:
        raise ConfigError(key, "must not be empty")
    moves = tuple(_integer(f"{key}[{i}]", v, -PPM + 1, 10 * PPM) for i, v in enumerate(value))
    why = check_moves(moves)
    if why:
        raise ConfigError(key, why)
    return moves


def _cpus(key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"must be an array of CPU numbers, got {_kind(value)}")
    cpus = tuple(_integer(f"{key}[{i}]", v, 0, 65_535) for i, v in enumerate(value))
    if len(set(cpus)) != len(cpus):
        raise ConfigError(key, f"names a CPU twice: {list(cpus)}")
    return cpus


def _tls(value: object) -> TlsConfig:
    if not isinstance(value, dict):
        raise ConfigError("server.tls", f"must be a table ([server.tls]), got {_kind(value)}")
    keys = {"cert", "key", "client_ca"}
    _no_unknown_keys("server.tls", value, keys)
    for key in sorted(keys - set(value)):
        raise ConfigError(f"server.tls.{key}", "required (a PEM file path)")
    return TlsConfig(**{k: _string(f"server.tls.{k}", value[k]) for k in sorted(keys)})


def _asset(sym: str, table: object) -> tuple[Asset, FundPolicy]:
    where = f"assets.{sym}"
    if not isinstance(table, dict):
        raise ConfigError(where, f"must be a table ([{where}]), got {_kind(table)}")
    _no_unknown_keys(where, table, {"decimals", "fund"})
    if "decimals" not in table:
        raise ConfigError(f"{where}.decimals", "required")
    decimals = _integer(f"{where}.decimals", table["decimals"], 0, 18)
    try:
        asset = Asset(sym, decimals)
    except ValueError as e:
        raise ConfigError(where, str(e)) from e
    fund = table.get("fund", {})
    if not isinstance(fund, dict):
        raise ConfigError(f"{where}.fund", f"must be a table, got {_kind(fund)}")
    _no_unknown_keys(f"{where}.fund", fund, {"drawdown_limit_ppm", "window_seconds"})
    policy = FundPolicy(
        drawdown_limit_ppm=_integer(
            f"{where}.fund.drawdown_limit_ppm",
            fund.get("drawdown_limit_ppm", DEFAULT_DRAWDOWN_LIMIT_PPM),
            1,
            PPM,
        ),
        window_ms=1000
        * _integer(
            f"{where}.fund.window_seconds",
            fund.get("window_seconds", DEFAULT_FUND_WINDOW_SECONDS),
            60,
            MAX_FUND_WINDOW_SECONDS,
        ),
    )
    return asset, policy


def _check_access(table: dict[str, Any]) -> None:
    """Keys and types of the ``[access]`` entries (their meaning is :meth:`Policy.parse`'s)."""
    for identity, entry in table.items():
        where = f"access.{identity}"
        if not isinstance(entry, dict):
            raise ConfigError(where, f"must be a table ([{where}]), got {_kind(entry)}")
        _no_unknown_keys(where, entry, set(ACCESS_KEYS))
        for key in ("roles", "markets"):
            if key in entry:
                names = entry[key]
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ConfigError(
                        f"{where}.{key}", f"must be an array of strings, got {_kind(names)}"
                    )
        for key in ("updates_per_second", "burst"):
            if key in entry:
                _integer(f"{where}.{key}", entry[key], 0, INT64_MAX)


def _market_keys() -> dict[str, Any]:
    """The TOML keys of a ``[markets.X]`` table and the type each is read as:
    every settable MarketSpec field (so a field added there is read here)."""
    hints = get_type_hints(MarketSpec)
    keys = {
        f.name: hints[f.name]
        for f in dataclasses.fields(MarketSpec)
        if f.init and not f.name.startswith("_") and f.name != "symbol"
    }
    keys["asset"] = str
    return keys


def _market(sym: str, m: object, assets: dict[str, Asset]) -> MarketSpec:
    where = f"markets.{sym}"
    if not isinstance(m, dict):
        raise ConfigError(where, f"must be a table ([{where}]), got {_kind(m)}")
    keys = _market_keys()
    _no_unknown_keys(where, m, set(keys))
    required = [
        f.name
        for f in dataclasses.fields(MarketSpec)
        if f.init and f.name != "symbol" and f.default is dataclasses.MISSING
    ]
    for key in required:
        if key not in m:
            raise ConfigError(f"{where}.{key}", "required")
    asset = assets.get(_string(f"{where}.asset", m["asset"]))
    if asset is None:
        raise ConfigError(
            f"{where}.asset", f"unknown asset {m['asset']!r} (declared: {', '.join(assets)})"
        )
    values: dict[str, Any] = {"symbol": sym, "asset": asset}
    # Fill sanity is on unless a market turns it off (0): a gateway must not be
    # able to pay itself from the fund by default (riskd.core.fill_sanity).
    values["fill_price_band_ppm"] = DEFAULT_FILL_PRICE_BAND_PPM
    for key, value in m.items():
        at = f"{where}.{key}"
        kind = keys[key]
        if key == "asset":
            continue
        if key == "tiers":
            values[key] = _tiers(at, value, asset)
        elif key in WHOLE_UNITS:
            # Whole settlement-asset units, as the tier floors.
            limit = INT64_MAX // asset.scale
            whole = _integer(at, value, 0, limit)
            values[key] = whole * asset.scale
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            choices = [str(c.value) for c in kind]
            if value not in choices:
                raise ConfigError(at, f"must be one of {', '.join(choices)}, got {_kind(value)}")
            values[key] = kind(value)
        elif kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(at, f"must be true or false, got {_kind(value)}")
            values[key] = value
        elif kind is int or kind == (int | None):
            values[key] = _integer(at, value, -INT64_MAX - 1, INT64_MAX)
        else:  # pragma: no cover - a new MarketSpec field of a type parse() does not know
            raise ConfigError(at, f"riskd cannot read a {kind} from TOML")
    try:
        return MarketSpec(**values)
    except SpecError as e:
        raise ConfigError(f"{where}.{e.field}", e.reason) from e
    except ValueError as e:
        raise ConfigError(where, str(e)) from e


def _tiers(at: str, rows: object, asset: Asset) -> TierTable:
    if not isinstance(rows, list) or not rows:
        raise ConfigError(at, "must be a non-empty array of [floor, max leverage, MMR ppm]")
    triples: list[tuple[int, int, int]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 3 or any(type(x) is not int for x in row):
            raise ConfigError(
                f"{at}[{i}]",
                "must be [notional floor (whole units), max leverage, maintenance margin"
                f" rate (ppm)], three integers; got {row!r}",
            )
        floor, lev, mmr = row
        if not 0 <= floor <= INT64_MAX // asset.scale:
            raise ConfigError(
                f"{at}[{i}]",
                f"notional floor {floor} {asset.symbol} is {floor * asset.scale} quantums,"
                " beyond int64",
            )
        triples.append((floor * asset.scale, lev, mmr))
    try:
        return TierTable(triples)
    except SpecError as e:
        raise ConfigError(at.rsplit(".", 1)[0] + "." + e.field, e.reason) from e
