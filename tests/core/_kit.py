"""Shared market specs, helpers and a small driver for riskd's pure core.

Units: ``U`` is one USDT (6 decimals) and ``BTC`` one bitcoin (8 decimals), both
in quantums.  Linear BTC-USDT prices have 2 decimals (tick 0.10 USDT) and
quantities 3 decimals (step 0.001 BTC); inverse BTC-USD prices have 1 decimal
(tick 0.5 USD) and quantities are whole contracts of 100 USD.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import pytest

from riskd.core import (
    Asset,
    Code,
    ContractType,
    Deposit,
    Engine,
    Fill,
    FundInjection,
    FundPolicy,
    MarginTransfer,
    MarketSpec,
    MarkPrice,
    Rejected,
    TierTable,
    digest,
    violations,
)

U = 10**6  # one USDT in quantums
BTC = 10**8  # one BTC in quantums

USDT_ASSET = Asset("USDT", 6)
BTC_ASSET = Asset("BTC", 8)

#: DOMAIN.md §3 "Tiers": Binance BTCUSDT brackets (floor in USDT quantums, max leverage, MMR ppm).
BTCUSDT_BRACKETS = [
    (0, 125, 4_000),
    (50_000 * U, 100, 5_000),
    (250_000 * U, 50, 10_000),
    (1_000_000 * U, 20, 25_000),
    (10_000_000 * U, 10, 50_000),
]

#: Inverse BTC-USD brackets, floors in BTC quantums of notional.
BTCUSD_BRACKETS = [
    (0, 100, 5_000),
    (50 * BTC, 50, 10_000),
    (200 * BTC, 20, 25_000),
]

E = TypeVar("E")


def btc_usdt_spec(
    symbol: str = "BTC-USDT", tiers: TierTable | None = None, **kw: Any
) -> MarketSpec:
    """Linear BTC-USDT: price 0.01 units on a 0.10 tick, quantity 0.001 BTC; ``kw`` overrides."""
    fields: dict[str, Any] = {
        "contract_type": ContractType.LINEAR,
        "asset": USDT_ASSET,
        "price_decimals": 2,
        "tick_size": 10,
        "quantity_decimals": 3,
        "step_size": 1,
        "tiers": tiers or TierTable(BTCUSDT_BRACKETS),
    }
    fields.update(kw)
    return MarketSpec(symbol, **fields)


def btc_usd_spec(symbol: str = "BTC-USD", tiers: TierTable | None = None, **kw: Any) -> MarketSpec:
    """Inverse BTC-USD: 100 USD contracts settled in BTC, 0.5 USD tick; ``kw`` overrides."""
    fields: dict[str, Any] = {
        "contract_type": ContractType.INVERSE,
        "asset": BTC_ASSET,
        "price_decimals": 1,
        "tick_size": 5,
        "quantity_decimals": 0,
        "step_size": 1,
        "tiers": tiers or TierTable(BTCUSD_BRACKETS),
        "contract_value": 100,
    }
    fields.update(kw)
    return MarketSpec(symbol, **fields)


def usdt(price: str) -> int:
    """A BTC-USDT price in its integer units: ``usdt("25100.40") == 2_510_040``."""
    whole, _, frac = price.partition(".")
    return int(whole) * 100 + int((frac + "00")[:2])


def of_type(effects: Iterable[object], cls: type[E]) -> list[E]:
    return [e for e in effects if isinstance(e, cls)]


def assert_rejected(engine: Engine, event: object, code: Code, field: str) -> Rejected:
    """``event`` is refused with ``code`` on ``field`` and the state is untouched."""
    before = digest(engine)
    with pytest.raises(Rejected) as info:
        engine.apply(event)  # type: ignore[arg-type]
    assert info.value.code is code, info.value
    assert info.value.field == field, info.value
    assert digest(engine) == before, f"rejected {event} changed the state"
    return info.value


class Desk:
    """An :class:`Engine` plus helpers that fund accounts and open positions."""

    def __init__(self, *specs: MarketSpec, policies: dict[str, FundPolicy] | None = None) -> None:
        self.engine = Engine(specs, policies)
        self.trade_id = 0
        self.published: list[object] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def apply(self, event: object) -> list[object]:
        out = self.engine.apply(event)  # type: ignore[arg-type]
        self.published.extend(out)
        return list(out)

    def asset_of(self, market: str) -> str:
        return self.engine.markets[market].asset

    def margin(self, account: int, market: str, amount: int) -> None:
        """Deposit ``amount`` and move it into the isolated margin at once."""
        if amount > 0:
            self.apply(Deposit(account, self.asset_of(market), amount))
            self.apply(MarginTransfer(account, market, amount))

    def fill(
        self,
        market: str,
        buyer: int,
        seller: int,
        price: int,
        qty: int,
        buyer_fee: int = 0,
        seller_fee: int = 0,
        ts: int = 0,
    ) -> list[object]:
        self.trade_id += 1
        return self.apply(
            Fill(market, self.trade_id, buyer, seller, price, qty, buyer_fee, seller_fee, ts)
        )

    def open(
        self,
        market: str,
        long: int,
        short: int,
        price: int,
        qty: int,
        long_margin: int,
        short_margin: int,
        ts: int = 0,
    ) -> list[object]:
        """Fund both sides' isolated margin, then ``long`` buys ``qty`` from ``short``."""
        self.margin(long, market, long_margin)
        self.margin(short, market, short_margin)
        return self.fill(market, long, short, price, qty, ts=ts)

    def mark(self, market: str, price: int, ts: int = 0) -> list[object]:
        return self.apply(MarkPrice(market, price, ts))

    def inject(self, asset: str, amount: int, ts: int = 0) -> list[object]:
        return self.apply(FundInjection(asset, amount, "seed", ts))

    def pos(self, market: str, account: int) -> Any:
        return self.engine.markets[market].positions.get(account)

    def wallet(self, asset: str, account: int) -> int:
        return int(self.engine.wallets[asset].balance(account))

    def fund(self, asset: str) -> int:
        return int(self.engine.funds[asset].balance)

    def check(self) -> None:
        broken = violations(self.engine)
        assert broken == [], broken
