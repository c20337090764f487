"""Configuration: a TOML file, or the embedded default when none is given.

The default (``riskd/default_config.toml``, printed by ``riskd config``) is
good enough to start with nothing: BTC-USDT and ETH-USDT linear on a USDT fund
and BTC-USD inverse on a BTC fund.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from riskd.access import Policy
from riskd.core import (
    AdlPolicy,
    Asset,
    ContractType,
    FundPolicy,
    LiquidationMode,
    MarketSpec,
    TierTable,
)

__all__ = ["Config", "ServerConfig", "TlsConfig", "default_toml", "load", "parse"]


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
    metrics_listen: str = "127.0.0.1:9464"
    data_dir: str = "riskd-data"
    mailbox_capacity: int = 1024
    stream_window: int = 64
    max_ingest_streams: int = 32
    max_batch_updates: int = 4096
    event_retention: int = 100_000
    invariant_check_seconds: float = 60.0
    snapshot_seconds: float = 300.0
    #: No TLS and no identities: for local development, on loopback only.
    plaintext: bool = False
    tls: TlsConfig | None = None
    #: Updates stamped further ahead of the daemon's clock are refused (0: no limit).
    max_clock_skew_seconds: float = 60.0
    #: Updates stamped longer ago are refused (0: no limit).
    max_update_age_seconds: float = 86_400.0
    #: Default per-gateway budget for ``[access]`` entries that set none
    #: (0: unlimited); in plaintext mode it applies per gateway name.
    gateway_updates_per_second: int = 0
    gateway_burst: int = 0
    #: Per-stream HTTP/2 receive window (0: let gRPC grow it by probing).
    transport_window_bytes: int = 262_144
    #: Open event subscriptions at most, in all and per identity (>= 1 each).
    max_subscriptions: int = 256
    max_subscriptions_per_identity: int = 16

    def check_transport(self) -> None:
        """Exactly one of TLS or plaintext; plaintext only on a loopback address."""
        if self.tls is not None and self.plaintext:
            raise ValueError("server: set either [server.tls] or plaintext = true, not both")
        if self.tls is None and not self.plaintext:
            raise ValueError(
                "server: no transport security configured: set [server.tls] (cert, key,"
                " client_ca), or plaintext = true for local development on loopback"
            )
        if self.plaintext and not is_loopback(self.grpc_listen):
            raise ValueError(
                f"server.grpc_listen: plaintext is for local development and may only listen"
                f" on a loopback address, not {self.grpc_listen!r}; configure [server.tls]"
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
    """Build a validated config from TOML text; errors name the offending key."""
    doc = tomllib.loads(text)
    server_table = dict(_table(doc, "server"))
    tls = server_table.pop("tls", None)
    if tls is not None:
        try:
            server_table["tls"] = TlsConfig(**tls)
        except TypeError as e:
            raise ValueError(f"[server.tls]: {e}; keys are cert, key, client_ca") from e
    try:
        server = ServerConfig(**server_table)
    except TypeError as e:
        raise ValueError(f"[server]: {e}") from e
    server.check_transport()
    assets: dict[str, Asset] = {}
    funds: dict[str, FundPolicy] = {}
    for sym, a in _table(doc, "assets").items():
        assets[sym] = Asset(sym, int(a["decimals"]))
    markets: list[MarketSpec] = []
    for sym, m in _table(doc, "markets").items():
        try:
            spec = _market(sym, m, assets)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"markets.{sym}: {e}") from e
        markets.append(spec)
    for sym, a in _table(doc, "assets").items():
        f = a.get("fund", {})
        funds[sym] = FundPolicy(
            drawdown_limit_ppm=int(f.get("drawdown_limit_ppm", 300_000)),
            window_ms=int(f.get("window_seconds", 28_800)) * 1000,
        )
    if not markets:
        raise ValueError("config defines no markets")
    access = Policy.parse(
        _table(doc, "access"),
        {m.symbol: m.asset.symbol for m in markets},
        server.gateway_updates_per_second,
        server.gateway_burst,
    )
    if server.tls is not None and not access.grants:
        raise ValueError("[server.tls] is set but [access] grants nobody anything")
    return Config(server, tuple(markets), funds, access)


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
        raise ValueError(f"[{key}] must be a table")
    return value


def _market(sym: str, m: dict[str, Any], assets: dict[str, Asset]) -> MarketSpec:
    asset = assets.get(m["asset"])
    if asset is None:
        raise ValueError(f"unknown asset {m['asset']!r}")
    tiers = TierTable((int(f) * asset.scale, int(lev), int(mmr)) for f, lev, mmr in m["tiers"])
    cap = m.get("fund_loss_cap")
    return MarketSpec(
        symbol=sym,
        contract_type=ContractType(m["contract_type"]),
        asset=asset,
        price_decimals=int(m["price_decimals"]),
        tick_size=int(m["tick_size"]),
        quantity_decimals=int(m["quantity_decimals"]),
        step_size=int(m["step_size"]),
        tiers=tiers,
        contract_value=int(m.get("contract_value", 0)),
        liquidation_fee_cap_ppm=int(m.get("liquidation_fee_cap_ppm", 1_000_000)),
        fund_fee_share_ppm=int(m.get("fund_fee_share_ppm", 0)),
        liquidation_mode=LiquidationMode(m.get("liquidation_mode", "takeover")),
        adl_policy=AdlPolicy(m.get("adl_policy", "pnl_leverage")),
        fund_loss_cap=None if cap is None else int(cap) * asset.scale,
        reduce_only=bool(m.get("reduce_only", False)),
    )
