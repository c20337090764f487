"""The actor that owns one market's :class:`~riskd.core.MarketEngine`.

It applies runs of inputs in order and, after each, routes the engine's
effects exactly as :class:`riskd.core.Engine` does in-process: wallet credits
to the asset's wallet actor, fund effects to the asset's fund actor in one
ordered message (waiting for it, so its flows are published before anything
later), the rest to subscribers.  Same inputs, same order: same state as the pure engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from riskd.actors.actor import Actor
from riskd.actors.fund import FundActor
from riskd.actors.wallet import WalletActor
from riskd.core import (
    Effect,
    Input,
    MarginTransfer,
    MarketEngine,
    MarkPrice,
    Rejected,
    ReserveClaim,
    TakeoverClaim,
    kind_of,
    split_effects,
)
from riskd.core.events import (
    AccountLiquidation,
    AmendOrder,
    CheckOrder,
    MarginCall,
    SettleMarket,
)
from riskd.core.inputs import KINDS

__all__ = ["MarketActor", "needs_release"]

T = TypeVar("T")
In = TypeVar("In", bound=Input)


#: The inputs that may stop a run for cross margin (:func:`needs_release`,
#: ``MarketEngine.cross_order_account``): the others skip both checks.
_MAY_NEED_CROSS = frozenset({MarginTransfer, CheckOrder, AmendOrder})


def needs_release(item: Input) -> bool:
    """A transfer into an isolated margin: a cross account's wallet may have to free it."""
    return type(item) is MarginTransfer and item.amount > 0


class Gauge(Protocol):
    """What the actor reports liquidations in progress to (a prometheus gauge child)."""

    def set(self, value: float) -> None: ...


class Tally(Protocol):
    """What the actor counts unreserved fills on (a prometheus counter child)."""

    def inc(self, amount: float = 1) -> None: ...


class MarketActor(Actor):
    def __init__(
        self,
        engine: MarketEngine,
        fund: FundActor,
        wallet: WalletActor,
        publish: Callable[[list[Effect]], None],
        capacity: int,
        on_mark: Callable[[str, int], None] | None = None,
        in_progress: Gauge | None = None,
        unreserved: Tally | None = None,
    ) -> None:
        super().__init__(f"market:{engine.symbol}", capacity)
        self.engine = engine
        self.fund = fund
        self.wallet = wallet
        self._publish = publish
        self._on_mark = on_mark
        self._in_progress = in_progress  # a gauge child: liquidations not yet settled
        self._shown = -1  # what it was last set to (-1: never): set when it changes
        self._unreserved = unreserved  # a counter child: fills naming no open order
        # Cross accounts the last apply left to re-check (riskd.actors.cross takes them).
        self.cross_due: list[int] = []

    async def apply(self, items: list[Input]) -> list[Rejected | None]:
        """Apply inputs in order; one result per input (None = applied).

        Stops early, with fewer results, where cross margin needs the other
        actors (:mod:`riskd.actors.cross`): after an input that left a cross
        account to re-check, and before a transfer into an isolated margin that
        is not the first item (the cross wallet may have to free it first).
        """
        results: list[Rejected | None] = []
        engine = self.engine
        unreserved = engine.unreserved_fills
        on_mark = self._on_mark
        for item in items:
            cls = type(item)
            if (
                results
                and cls in _MAY_NEED_CROSS
                and (needs_release(item) or engine.cross_order_account(item) is not None)
            ):
                break  # the sequencer works out the cross wallet first
            try:
                kind = KINDS.get(cls)
                if kind is None:
                    kind = kind_of(item)  # raises, naming the input
                if kind.on_market is None:
                    raise Rejected.invalid("kind", f"{kind.name} does not go to a market")
                leg = kind.wallet_leg(item) if kind.wallet_leg is not None else None
                if leg is not None:
                    await self._wallet_leg(*leg)
                kind.on_market(engine, item)  # no coroutine per update on the hot path
                if on_mark is not None and isinstance(item, MarkPrice):
                    on_mark(engine.symbol, item.ts)
                results.append(None)
            except Rejected as e:
                results.append(e)
            if engine.effects:
                await self._route()
            if engine.cross_due:
                self.cross_due = engine.take_cross_due()
                break
        if self._in_progress is not None and len(engine.liquidations) != self._shown:
            self._shown = len(engine.liquidations)
            self._in_progress.set(self._shown)
        if self._unreserved is not None and engine.unreserved_fills != unreserved:
            self._unreserved.inc(engine.unreserved_fills - unreserved)
        return results

    async def apply_each_and_read(
        self, items: list[In], read: Callable[[In, MarketEngine], T]
    ) -> list[tuple[Rejected | None, T]]:
        """Each item :meth:`apply`-ed, then ``read(item, engine)``, before the
        next: nothing comes between an item and its reading, and the caller
        saves a round trip per item (the unary ``CheckOrder``'s figures).
        Stops after an item that left cross accounts to re-check (``cross_due``)."""
        out: list[tuple[Rejected | None, T]] = []
        for item in items:
            [refused] = await self.apply([item])
            out.append((refused, read(item, self.engine)))
            if self.cross_due:
                break
        return out

    async def _wallet_leg(self, account: int, amount: int) -> None:
        """Wallet -> margin: validate here, then debit the wallet actor (the entry credits)."""
        try:
            self.engine.check_margin_credit(account, amount)
        except Rejected:
            # A wallet short of the amount is the truer reason (not an overflow);
            # not for a cross account, which has no isolated margin here.
            if account not in self.engine.cross:
                await self.wallet.call(self.wallet.check_debit, account, amount)
            raise
        await self.wallet.call(self.wallet.debit, account, amount)

    async def _route(self) -> None:
        engine = self.engine
        while effects := engine.take_effects():
            fund_effects, wallet_credits, published = split_effects(effects)
            for w in wallet_credits:
                await self.wallet.cast(self.wallet.credit, w.account, w.amount)
            if published:
                self._publish(published)
            if not fund_effects:
                continue
            claims = [e for e in fund_effects if isinstance(e, TakeoverClaim | ReserveClaim)]
            # Called, not cast, even without claims: the fund publishes its flows
            # while this market waits, so event numbers follow the journal's order.
            # In this task when the fund is idle (Actor.call_here): a fill with a
            # fee makes a fund effect, so a round trip here was one per fill.
            decisions = await self.fund.call_here(self.fund.process, fund_effects)
            for claim, decision in zip(claims, decisions, strict=True):
                engine.fund_decision(decision, claim.ts)

    async def liquidate_cross(
        self, account: int, ts: int, notice: AccountLiquidation | None = None
    ) -> list[int]:
        """Start liquidating the account's cross position here (its margin already
        set by the re-check), routing what follows as :meth:`apply` does; the
        cross accounts to re-check now."""
        self.engine.liquidate_cross(account, ts, notice)
        if self.engine.effects:
            await self._route()
        return self.engine.take_cross_due()

    async def settle(
        self, x: SettleMarket, deficits: dict[int, int]
    ) -> tuple[dict[int, int], list[int]]:
        """Final settlement (``MarketEngine.settle``), routed as :meth:`apply` routes:
        what is left of each cross band, and the cross accounts to re-check."""
        left = self.engine.settle(x.price, x.ts, deficits)
        if self.engine.effects:
            await self._route()
        return left, self.engine.take_cross_due()

    async def cross_margin_call(self, call: MarginCall) -> None:
        """Publish a cross account's margin call here (its re-check decided it)."""
        self.engine.cross_margin_call(call)
        await self._route()

    def query(self, fn: Callable[[MarketEngine], T]) -> T:
        """Run a read-only function against the engine (for the query API)."""
        return fn(self.engine)
