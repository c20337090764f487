"""All markets, wallets and funds in one process, effects routed synchronously.

The reference composition of the core: tests, the offline auditor and
simulations drive it directly; the daemon splits the same pieces across actors
(one per market, one per settlement asset) and routes the same effects over
channels.  After :meth:`Engine.apply` returns, every effect it caused has been
routed, so the invariants hold between any two calls.
"""

from __future__ import annotations

from collections.abc import Iterable

from riskd.core.errors import Rejected
from riskd.core.events import (
    Deposit,
    Effect,
    Fill,
    FundCredit,
    FundDecision,
    FundingRate,
    FundInjection,
    FundKind,
    Input,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarkPrice,
    ReserveClaim,
    ReserveSettle,
    TakeoverClaim,
    WalletCredit,
    Withdrawal,
)
from riskd.core.insurance_fund import FundPolicy, InsuranceFund
from riskd.core.market import MarketSpec
from riskd.core.market_engine import MarketEngine
from riskd.core.units import Asset
from riskd.core.wallet import Wallets

__all__ = ["Engine"]


class Engine:
    """The whole risk state, applied one input at a time."""

    def __init__(
        self,
        markets: Iterable[MarketSpec],
        policies: dict[str, FundPolicy] | None = None,
    ) -> None:
        self.markets: dict[str, MarketEngine] = {}
        self.assets: dict[str, Asset] = {}
        for spec in markets:
            if spec.symbol in self.markets:
                raise ValueError(f"duplicate market {spec.symbol}")
            known = self.assets.setdefault(spec.asset.symbol, spec.asset)
            if known != spec.asset:
                raise ValueError(f"asset {spec.asset.symbol} declared with two decimals")
            self.markets[spec.symbol] = MarketEngine(spec)
        policies = policies or {}
        self.wallets = {a: Wallets(a) for a in self.assets}
        self.funds = {a: InsuranceFund(a, policies.get(a)) for a in self.assets}
        self.injections = dict.fromkeys(self.assets, 0)
        self.outbox: list[Effect] = []

    def market(self, symbol: str, field: str = "market") -> MarketEngine:
        m = self.markets.get(symbol)
        if m is None:
            raise Rejected.not_found(field, f"unknown market {symbol!r}")
        return m

    def wallet(self, asset: str, field: str = "asset") -> Wallets:
        w = self.wallets.get(asset)
        if w is None:
            raise Rejected.not_found(field, f"unknown asset {asset!r}")
        return w

    def apply(self, event: Input) -> list[Effect]:
        """Apply one input; return what it published (orders, settlements, ADL, fund flows)."""
        match event:
            case Fill():
                self.market(event.market).fill(event)
            case MarkPrice():
                self.market(event.market).mark_price(event)
            case FundingRate():
                self.market(event.market).funding(event)
            case LiquidationFill():
                self.market(event.market).liquidation_fill(event)
            case LiquidationDone():
                self.market(event.market).liquidation_done(event)
            case Deposit():
                self.wallet(event.asset).deposit(event.account, event.amount)
            case Withdrawal():
                self.wallet(event.asset).withdraw(event.account, event.amount)
            case MarginTransfer():
                self._transfer(event)
            case FundInjection():
                fund = self.funds.get(event.asset)
                if fund is None:
                    raise Rejected.not_found("asset", f"unknown asset {event.asset!r}")
                fund.inject(event.amount, event.cause, event.ts)
                self.injections[event.asset] += event.amount
                self.outbox.extend(fund.take_flows())
            case _:
                raise Rejected.invalid("kind", f"unknown input {type(event).__name__}")
        self._route()
        out, self.outbox = self.outbox, []
        return out

    def _transfer(self, t: MarginTransfer) -> None:
        market = self.market(t.market)
        if t.amount > 0:
            market.check_margin_credit(t.account, t.amount)
            self.wallets[market.asset].debit(t.account, t.amount)
            market.credit_margin(t.account, t.amount, t.ts)
        elif t.amount < 0:
            market.withdraw_margin(t.account, -t.amount, t.ts)
        else:
            raise Rejected.invalid("amount", "must not be 0")

    def _route(self) -> None:
        """Deliver effects until every market is quiet (claims answered at once)."""
        busy = True
        while busy:
            busy = False
            for market in self.markets.values():
                for effect in market.take_effects():
                    busy = True
                    self._deliver(market, effect)

    def _deliver(self, market: MarketEngine, effect: Effect) -> None:
        fund = self.funds[market.asset]
        decision: FundDecision | None = None
        match effect:
            case WalletCredit():
                self.wallets[effect.asset].credit(effect.account, effect.amount)
            case FundCredit(kind=FundKind.BACKSTOP_RETURN):
                fund.backstop_returned(effect)
            case FundCredit():
                fund.credit(effect)
            case TakeoverClaim():
                decision = fund.takeover(effect)
            case ReserveClaim():
                decision = fund.reserve(effect)
            case ReserveSettle():
                fund.settle(effect)
            case _:
                self.outbox.append(effect)
        self.outbox.extend(fund.take_flows())
        if decision is not None:
            market.fund_decision(decision, effect.ts)  # type: ignore[union-attr]
