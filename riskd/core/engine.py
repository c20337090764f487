"""All markets, wallets and funds in one process, effects routed synchronously.

The reference composition of the core: tests, the offline auditor and
simulations drive it directly; the daemon splits the same pieces across actors
(one per market, one per settlement asset) and routes the same effects over
channels.  After :meth:`Engine.apply` returns, every effect it caused has been
routed, so the invariants hold between any two calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mypy_extensions import mypyc_attr

from riskd.core import cross_margin, settlement
from riskd.core.cross_margin import Action, Leg
from riskd.core.errors import Rejected
from riskd.core.events import (
    Effect,
    Fill,
    FundCredit,
    Input,
    ReserveClaim,
    ReserveSettle,
    SettleMarket,
    TakeoverClaim,
    WalletCredit,
    Withdrawal,
)
from riskd.core.inputs import Owner, kind_of
from riskd.core.insurance_fund import FundEffect, FundPolicy, InsuranceFund
from riskd.core.market import MarketSpec
from riskd.core.market_engine import MarketEngine
from riskd.core.pickling import DictPickled
from riskd.core.recent_ids import WithdrawalDecision
from riskd.core.units import Asset
from riskd.core.wallet import Wallets, unsettled_bad_debt, withdrawals_paused

__all__ = ["Engine", "split_effects", "check_new_market", "check_new_asset"]


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class Engine(DictPickled):
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
        self.outbox: list[Effect] = []

    @classmethod
    def view(
        cls,
        markets: dict[str, MarketEngine],
        wallets: dict[str, Wallets],
        funds: dict[str, InsuranceFund],
    ) -> Engine:
        """An engine over parts owned elsewhere (the daemon's actors), for checks."""
        # Built empty, then pointed at the parts (no ``__new__``: mypyc compiles this class).
        engine = cls(())
        engine.markets = markets
        engine.assets = {m.asset: m.spec.asset for m in markets.values()}
        engine.wallets = wallets
        engine.funds = funds
        engine.outbox = []
        return engine

    def add_market(self, spec: MarketSpec) -> MarketEngine:
        """A market begins (``AdminService.AddMarket``), settled in a known asset."""
        check_new_market(spec, self.markets, self.assets)
        m = self.markets[spec.symbol] = MarketEngine(spec)
        return m

    def add_asset(self, asset: Asset, policy: FundPolicy) -> None:
        """A settlement asset begins (``AdminService.AddAsset``): empty wallets and fund."""
        check_new_asset(asset, self.assets)
        self.assets[asset.symbol] = asset
        self.wallets[asset.symbol] = Wallets(asset.symbol)
        self.funds[asset.symbol] = InsuranceFund(asset.symbol, policy)

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

    def apply(self, event: Input | object) -> list[Effect]:
        """Apply one input; return what it published (orders, settlements, ADL, fund flows).

        Typed ``object`` on purpose: compiled, an ``Input`` parameter would raise
        TypeError where a non-input must be refused (INVALID_ARGUMENT, field ``kind``).
        """
        if type(event) is Fill:
            # The most frequent input, applied without the table's generic dispatch
            # (no wallet leg, no order check): what KINDS[Fill] would do.
            market = self.markets.get(event.market)
            if market is None:
                raise Rejected.not_found("market", f"unknown market {event.market!r}")
            market.fill(event)
            if market.effects:
                self._route()
            self.settle_cross(event.ts)
            out, self.outbox = self.outbox, []
            return out
        kind = kind_of(event)
        if kind.owner is Owner.MARKET:
            assert kind.on_market is not None
            market = self.market(kind.owner_of(event), kind.key)
            leg = kind.wallet_leg(event) if kind.wallet_leg is not None else None
            if leg is not None:
                self._wallet_leg(market, *leg)
            account = market.cross_order_account(event)
            if account is not None:  # a cross account's order check: its whole wallet
                market.cross_free = self._order_allowance(market, account)
            if type(event) is SettleMarket:  # its cross positions need their wallets
                self._settle_market(market, event)
            else:
                kind.on_market(market, event)
        elif kind.owner is Owner.WALLET:
            assert kind.on_wallet is not None
            wallet = self.wallet(kind.owner_of(event), kind.key)
            if kind.paused_by_bad_debt:
                self._check_pause(wallet.asset)
                account, amount = getattr(event, "account", 0), getattr(event, "amount", 0)
                if amount > 0:
                    self._cross_release(wallet.asset, account, amount, "amount")
            kind.on_wallet(wallet, event)
        else:
            assert kind.on_fund is not None
            fund = self.funds.get(kind.owner_of(event))
            if fund is None:
                raise Rejected.not_found(kind.key, f"unknown asset {kind.owner_of(event)!r}")
            kind.on_fund(fund, event)
            self.outbox.extend(fund.take_flows())
        self._route()
        self.settle_cross(getattr(event, "ts", 0))
        out, self.outbox = self.outbox, []
        return out

    # --- cross margin (riskd.core.cross_margin) -----------------------------------

    def cross_legs(self, asset: str, account: int) -> list[tuple[MarketEngine, Leg]]:
        """The account's cross positions in ``asset``, by market symbol."""
        out: list[tuple[MarketEngine, Leg]] = []
        for sym in sorted(self.markets):
            m = self.markets[sym]
            if m.asset == asset:
                leg = m.cross_leg(account)
                if leg is not None:
                    out.append((m, leg))
        return out

    def settle_cross(self, ts: int) -> None:
        """Re-check every cross account an input moved or whose band was crossed,
        in (asset, account) order, until none is left (a liquidation's end is one)."""
        while True:
            if not any(m.cross_due for m in self.markets.values()):
                return
            due = sorted(
                {
                    (m.asset, a)
                    for m in self.markets.values()
                    if m.cross_due  # most inputs leave none: no set built
                    for a in m.take_cross_due()
                }
            )
            if not due:
                return
            for asset, account in due:
                self._recheck(asset, account, ts)
            self._route()

    def _recheck(self, asset: str, account: int, ts: int) -> None:
        pairs = self.cross_legs(asset, account)
        wallet = self.wallets[asset]
        plan = cross_margin.plan([leg for _, leg in pairs], wallet.balance(account))
        if plan.action in (Action.NOTHING, Action.WAIT):
            return
        self._allocate(wallet, account, pairs, plan.margins, plan.called)
        call = plan.margin_call(account, ts)
        if call is not None:
            self.markets[call.market].cross_margin_call(call)
            self._route()
        for i, sym in enumerate(plan.liquidate):
            # Routed at once, as the daemon's market actor does (riskd.actors.cross).
            notice = plan.notice(asset, account, ts) if i == 0 else None
            self.markets[sym].liquidate_cross(account, ts, notice)
            self._route()

    @staticmethod
    def _allocate(
        wallet: Wallets,
        account: int,
        pairs: list[tuple[MarketEngine, Leg]],
        margins: dict[str, int],
        called: bool | None = None,
    ) -> None:
        """Move the account's cross wallet into the legs' new margins (a wallet credit
        for what comes back, a debit for what goes out)."""
        taken = 0
        for m, leg in pairs:
            if leg.market in margins:
                taken += m.allocate_cross(account, margins[leg.market], called)
        if taken < 0:
            wallet.credit(account, -taken)
        elif taken > 0:
            wallet.debit(account, taken)

    def _settle_market(self, m: MarketEngine, x: SettleMarket) -> None:
        """Final settlement with cross positions open (:mod:`riskd.core.settlement`):
        each cross account's deficit worked out from its legs and wallet first,
        the market settled with them, then what is left of each band taken into
        its cross wallet; the accounts are re-checked after (``settle_cross``)."""
        wallet = self.wallets[m.asset]
        accounts = [
            (a, [leg for _, leg in self.cross_legs(m.asset, a)], wallet.balance(a))
            for a in m.cross_open()
        ]
        deficits = settlement.cross_deficits(m, x.price, accounts)
        left = m.settle(x.price, x.ts, deficits)
        self._route()  # its wallet credits first, as the daemon's market actor sends them
        for account in sorted(left):
            if left[account] < 0:
                pairs = self.cross_legs(m.asset, account)
                margins = settlement.absorb(
                    [leg for _, leg in pairs], wallet.balance(account), -left[account]
                )
                self._allocate(wallet, account, pairs, margins)
                wallet.debit(account, -left[account])

    def _order_allowance(self, market: MarketEngine, account: int) -> int:
        """:func:`~riskd.core.cross_margin.order_allowance` for a check in ``market``."""
        legs = [leg for _, leg in self.cross_legs(market.asset, account)]
        elsewhere = sum(
            m.cross_reserved(account)
            for m in self.markets.values()
            if m.asset == market.asset and m is not market
        )
        free = self.wallets[market.asset].balance(account)
        return cross_margin.order_allowance(legs, free, elsewhere)

    def _cross_release(self, asset: str, account: int, amount: int, field: str) -> None:
        """Free ``amount`` of a cross account's wallet before it leaves (or refuse);
        what its open orders reserve stays."""
        pairs = self.cross_legs(asset, account)
        reserved = sum(m.cross_reserved(account) for m in self.markets.values() if m.asset == asset)
        if not pairs and not reserved:
            return
        wallet = self.wallets[asset]
        margins = cross_margin.release(
            [leg for _, leg in pairs], wallet.balance(account), amount, field, reserved
        )
        if margins is not None:
            self._allocate(wallet, account, pairs, margins)

    def decide_withdrawal(self, w: Withdrawal) -> WithdrawalDecision:
        """A journaled withdrawal decided again (the daemon's Withdraw, replayed): a
        cross account's refusal is a decision too, as its wallet's is."""
        wallets = self.wallet(w.asset)
        try:
            self._cross_release(w.asset, w.account, w.amount, "amount")
        except Rejected as r:
            return WithdrawalDecision(False, wallets.balance(w.account), r.message)
        return wallets.decide_withdrawal(w.account, w.amount)

    def _check_pause(self, asset: str) -> None:
        """Withdrawals wait while the asset has bad debt not yet placed (as the daemon)."""
        unsettled = [
            u for m in self.markets.values() if m.asset == asset for u in unsettled_bad_debt(m)
        ]
        paused = withdrawals_paused(asset, unsettled, self.funds[asset].reserved_total)
        if paused is not None:
            raise paused

    def _wallet_leg(self, market: MarketEngine, account: int, amount: int) -> None:
        """Wallet -> margin: the market must accept it, then the wallet pays."""
        try:
            market.check_margin_credit(account, amount)
        except Rejected:
            # A wallet short of the amount is the truer reason (not an overflow);
            # not for a cross account, which has no isolated margin here.
            if account not in market.cross:
                self.wallets[market.asset].check_debit(account, amount)
            raise
        self._cross_release(market.asset, account, amount, "amount")
        self.wallets[market.asset].debit(account, amount)

    def _route(self) -> None:
        """Deliver effects until every market is quiet (claims answered at once)."""
        busy = True
        while busy:
            busy = False
            for market in self.markets.values():
                if not market.effects:
                    continue
                effects = market.take_effects()
                busy = True
                fund_effects, wallet_credits, published = split_effects(effects)
                for w in wallet_credits:
                    self.wallets[w.asset].credit(w.account, w.amount)
                self.outbox.extend(published)
                fund = self.funds[market.asset]
                decisions = fund.process(fund_effects)
                self.outbox.extend(fund.take_flows())
                for claim, decision in zip(
                    (e for e in fund_effects if isinstance(e, TakeoverClaim | ReserveClaim)),
                    decisions,
                    strict=True,
                ):
                    market.fund_decision(decision, claim.ts)


def check_new_market(
    spec: MarketSpec, markets: Mapping[str, object], assets: Mapping[str, Asset]
) -> None:
    """Whether ``spec`` may begin: a new symbol, in a declared asset with its decimals."""
    if spec.symbol in markets:
        raise Rejected.precondition("market.symbol", f"market {spec.symbol!r} exists already")
    known = assets.get(spec.asset.symbol)
    if known is None:
        raise Rejected.precondition(
            "market.settle_asset",
            f"asset {spec.asset.symbol!r} is not declared (AddAsset or the configuration adds it)",
        )
    if known != spec.asset:
        raise Rejected.invalid(
            "market.settle_asset", f"{known.symbol} has {known.decimals} decimals"
        )


def check_new_asset(asset: Asset, assets: Mapping[str, Asset]) -> None:
    """Whether ``asset`` may begin: a symbol no asset has (not even one whose
    markets were all settled: its wallets still hold what they paid out)."""
    if asset.symbol in assets:
        raise Rejected.precondition("symbol", f"asset {asset.symbol!r} exists already")


def split_effects(
    effects: Iterable[Effect],
) -> tuple[list[FundEffect], list[WalletCredit], list[Effect]]:
    """A market's effects by destination, each list in the order produced."""
    fund: list[FundEffect] = []
    wallets: list[WalletCredit] = []
    published: list[Effect] = []
    for e in effects:
        if isinstance(e, FundCredit | TakeoverClaim | ReserveClaim | ReserveSettle):
            fund.append(e)
        elif isinstance(e, WalletCredit):
            wallets.append(e)
        else:
            published.append(e)
    return fund, wallets, published
