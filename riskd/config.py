"""Configuration: a TOML file, or the embedded default when none is given.

The default (``riskd/default_config.toml``, printed by ``riskd config``) is
good enough to start with nothing: BTC-USDT and ETH-USDT linear on a USDT fund
and BTC-USD inverse on a BTC fund.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from riskd.core import (
    AdlPolicy,
    Asset,
    ContractType,
    FundPolicy,
    LiquidationMode,
    MarketSpec,
    TierTable,
)

__all__ = ["Config", "ServerConfig", "default_toml", "load", "parse"]


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


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    markets: tuple[MarketSpec, ...]
    funds: dict[str, FundPolicy] = field(default_factory=dict)

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
    server = ServerConfig(**_table(doc, "server"))
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
    return Config(server, tuple(markets), funds)


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
