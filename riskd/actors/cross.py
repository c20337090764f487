"""Cross margin across the actors: the sequencer's side of :mod:`riskd.core.cross_margin`.

A cross account's positions live in several market actors and its wallet in
the asset's wallet actor; the account's re-check reads them all.  It runs in
the sequencer's task, between two inputs, exactly where
:meth:`riskd.core.Engine.apply` runs :meth:`~riskd.core.Engine.settle_cross`:

1. a market actor's :meth:`~riskd.actors.market.MarketActor.apply` stops after
   an input that left a cross account to re-check (its band crossed, a
   position closed), and before a transfer into an isolated margin;
2. :class:`CrossMargin` gathers the account's legs (a call to each market
   actor of the asset, by symbol) and its wallet balance (a call to the
   wallet actor), computes the :class:`~riskd.core.cross_margin.Plan`, sets
   the legs' margins and the wallet (calls), and starts the liquidations
   (a call to each market concerned, which asks its fund as usual);
3. the markets it called answer with the accounts they now want re-checked
   (a liquidation ended, a counterparty's band crossed); it repeats until
   none is left, then the rest of the run goes on.

Only the sequencer sends to markets and wallets here (``Actor.call_here``:
in its own task when the actor is idle, so a re-check is not a round trip of
trio's run loop per leg), and it waits for each answer before sending the
next: markets never send to the sequencer or to each other, the fund and
wallet actors never send to anyone, so no cycle of blocking sends exists
(docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

from riskd.actors.market import MarketActor, needs_release
from riskd.actors.wallet import WalletActor
from riskd.core import Input, MarketEngine, Rejected, cross_margin, settlement
from riskd.core.cross_margin import Action, Leg
from riskd.core.events import MarginTransfer, SettleMarket

__all__ = ["CrossMargin"]


class CrossMargin:
    """Cross accounts re-checked across market actors, driven by the sequencer."""

    def __init__(
        self, markets: Mapping[str, MarketActor], wallets: Mapping[str, WalletActor]
    ) -> None:
        self.markets = markets
        self.wallets = wallets

    async def apply(self, actor: MarketActor, items: list[Input]) -> list[Rejected | None]:
        """``actor.apply(items)``, re-checking cross accounts after each input that
        needs it, as the pure engine does."""
        out: list[Rejected | None] = []
        while len(out) < len(items):
            first = items[len(out)]
            if needs_release(first):
                assert isinstance(first, MarginTransfer)
                refused = await self._before_transfer(actor, first)
                if refused is not None:
                    out.append(refused)
                    continue
            account = actor.engine.cross_order_account(first)
            if account is not None:  # an order check: what the whole cross wallet can commit
                free = await self._order_allowance(actor, account)
                await actor.call_here(actor.query, partial(_allow, free))
            # In this task when the market is idle (Actor.call_here): the round
            # trip was half of the turn less the core at one update per message.
            out += await actor.call_here(actor.apply, items[len(out) :])
            due, actor.cross_due = actor.cross_due, []
            if due:
                ts = getattr(items[len(out) - 1], "ts", 0)
                await self.settle([(actor.engine.asset, a) for a in due], ts)
        return out

    async def settle(self, due: list[tuple[str, int]], ts: int) -> None:
        """Re-check ``due`` accounts in (asset, account) order, then those the
        re-checks made due, until none is left (Engine.settle_cross)."""
        todo = sorted(set(due))
        while todo:
            more: set[tuple[str, int]] = set()
            for asset, account in todo:
                more |= await self._recheck(asset, account, ts)
            todo = sorted(more)

    def _of(self, asset: str) -> list[MarketActor]:
        return [
            self.markets[s] for s in sorted(self.markets) if self.markets[s].engine.asset == asset
        ]

    async def legs(self, asset: str, account: int) -> list[tuple[MarketActor, Leg]]:
        out: list[tuple[MarketActor, Leg]] = []
        for m in self._of(asset):
            leg = await m.call_here(m.query, lambda e: e.cross_leg(account))
            if leg is not None:
                out.append((m, leg))
        return out

    async def _recheck(self, asset: str, account: int, ts: int) -> set[tuple[str, int]]:
        pairs = await self.legs(asset, account)
        wallet = self.wallets[asset]
        free = await wallet.call_here(wallet.balance, account)
        plan = cross_margin.plan([leg for _, leg in pairs], free)
        if plan.action in (Action.NOTHING, Action.WAIT):
            return set()
        await self._allocate(wallet, account, pairs, plan.margins, plan.called)
        due: set[tuple[str, int]] = set()
        call = plan.margin_call(account, ts)
        if call is not None:
            m = self.markets[call.market]
            await m.call_here(m.cross_margin_call, call)
        for i, sym in enumerate(plan.liquidate):
            m = self.markets[sym]
            notice = plan.notice(asset, account, ts) if i == 0 else None
            due |= {(asset, a) for a in await m.call_here(m.liquidate_cross, account, ts, notice)}
        return due

    @staticmethod
    async def _allocate(
        wallet: WalletActor,
        account: int,
        pairs: list[tuple[MarketActor, Leg]],
        margins: dict[str, int],
        called: bool | None = None,
    ) -> None:
        taken = 0
        for m, leg in pairs:
            if leg.market in margins:
                margin = margins[leg.market]
                taken += await m.call_here(m.query, partial(_allocate, account, margin, called))
        if taken < 0:
            await wallet.call_here(wallet.credit, account, -taken)
        elif taken > 0:
            await wallet.call_here(wallet.debit, account, taken)

    async def settle_market(self, actor: MarketActor, x: SettleMarket) -> None:
        """Final settlement with cross positions open, as Engine._settle_market:
        the deficits from each cross account's legs and wallet, the market settled
        with them, what is left of each band taken into its cross wallet, then
        the accounts re-checked.  Rejected (nothing changed) if it may not."""
        asset = actor.engine.asset
        wallet = self.wallets[asset]
        open_ = await actor.call_here(actor.query, _cross_open)
        # Gathered with one call per actor, not per account (nothing changes meanwhile).
        legs: dict[int, list[Leg]] = {a: [] for a in open_}
        for m in self._of(asset):
            for a, leg in await m.call_here(m.query, partial(_cross_legs, open_)):
                legs[a].append(leg)
        balances = await wallet.call_here(wallet.balances, open_)
        accounts = [(a, legs[a], b) for a, b in zip(open_, balances, strict=True)]
        deficits = await actor.call_here(actor.query, partial(_deficits, x.price, accounts))
        left, due = await actor.call_here(actor.settle, x, deficits)
        for account in sorted(left):
            if left[account] < 0:
                pairs = await self.legs(asset, account)
                free = await wallet.call_here(wallet.balance, account)
                margins = settlement.absorb([leg for _, leg in pairs], free, -left[account])
                await self._allocate(wallet, account, pairs, margins)
                await wallet.call_here(wallet.debit, account, -left[account])
        await self.settle([(asset, a) for a in due], x.ts)

    async def _reserved(self, asset: str, account: int, but: MarketActor | None = None) -> int:
        """What the account's open orders in the asset's markets (but one) hold of its
        cross wallet."""
        held = 0
        for m in self._of(asset):
            if m is not but:
                held += await m.call_here(m.query, partial(_cross_reserved, account))
        return held

    async def _order_allowance(self, actor: MarketActor, account: int) -> int:
        """Engine._order_allowance, from the actors."""
        asset = actor.engine.asset
        pairs = await self.legs(asset, account)
        elsewhere = await self._reserved(asset, account, actor)
        wallet = self.wallets[asset]
        free = await wallet.call_here(wallet.balance, account)
        return cross_margin.order_allowance([leg for _, leg in pairs], free, elsewhere)

    async def release(self, asset: str, account: int, amount: int, field: str) -> None:
        """Free ``amount`` of the account's cross wallet before it leaves; Rejected
        (and nothing changed) beyond what is available, less what its open orders
        reserve (Engine._cross_release)."""
        pairs: list[tuple[MarketActor, Leg]] = []
        reserved = 0
        for m in self._of(asset):  # one call per market: this runs for every transfer in
            leg, held = await m.call_here(m.query, partial(_leg_and_reserved, account))
            reserved += held
            if leg is not None:
                pairs.append((m, leg))
        if not pairs and not reserved:
            return
        wallet = self.wallets[asset]
        free = await wallet.call_here(wallet.balance, account)
        margins = cross_margin.release([leg for _, leg in pairs], free, amount, field, reserved)
        if margins is not None:
            await self._allocate(wallet, account, pairs, margins)

    async def _before_transfer(self, actor: MarketActor, t: MarginTransfer) -> Rejected | None:
        """As Engine._wallet_leg: the market's own refusal comes first (the market
        gives it when the transfer is applied), then the cross wallet's."""
        try:
            await actor.call_here(actor.query, lambda e: e.check_margin_credit(t.account, t.amount))
        except Rejected:
            return None
        try:
            await self.release(actor.engine.asset, t.account, t.amount, "amount")
        except Rejected as r:
            return r
        return None

    async def view(self, asset: str, account: int) -> cross_margin.AccountView:
        """The account view (QueryService.GetCrossAccount)."""
        pairs = await self.legs(asset, account)
        wallet = self.wallets[asset]
        free = await wallet.call_here(wallet.balance, account)
        quintiles = [await m.call_here(m.query, lambda e: _quintile(e, account)) for m, _ in pairs]
        return cross_margin.account_view(account, asset, [leg for _, leg in pairs], free, quintiles)


def _cross_open(engine: MarketEngine) -> list[int]:
    return engine.cross_open()


def _cross_legs(accounts: list[int], engine: MarketEngine) -> list[tuple[int, Leg]]:
    return [(a, leg) for a in accounts if (leg := engine.cross_leg(a)) is not None]


def _deficits(
    price: int, accounts: Sequence[tuple[int, Sequence[Leg], int]], engine: MarketEngine
) -> dict[int, int]:
    return settlement.cross_deficits(engine, price, accounts)


def _leg_and_reserved(account: int, engine: MarketEngine) -> tuple[Leg | None, int]:
    return engine.cross_leg(account), engine.cross_reserved(account)


def _cross_reserved(account: int, engine: MarketEngine) -> int:
    return engine.cross_reserved(account)


def _allow(free: int, engine: MarketEngine) -> None:
    engine.cross_free = free


def _quintile(engine: MarketEngine, account: int) -> int:
    v = engine.view(account)
    return v.adl_quintile if v is not None else 0


def _allocate(account: int, margin: int, called: bool | None, e: MarketEngine) -> int:
    return e.allocate_cross(account, margin, called)
