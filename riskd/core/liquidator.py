"""How a market liquidates: from the trigger to the settlement, for one market.

:class:`Liquidator` is the procedure; :class:`~riskd.core.liquidation_machine.
LiquidationMachine` the state it moves (stages by its transition table, the
index, the ADL queue).  It works on its market's positions only through
``MarketEngine.change`` (which keeps the index right) and ends a
liquidation only through :meth:`Liquidator._end`.

A liquidation starts when :meth:`MarketEngine.scan` finds a position the mark
has crossed (:meth:`Liquidator.start`): the market asks its fund (a
``TakeoverClaim`` or, in book mode, a ``ReserveClaim``); the fund's answer
(:meth:`Liquidator.fund_decision`) passes the position to the backstop,
places a book order, or sends the rest to ADL (:meth:`Liquidator._adl`).
The waterfall (:func:`riskd.core.liquidation.waterfall`) splits every
closing's result, and nothing here rounds in anyone's favour but the fund's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from riskd.core import adl
from riskd.core.events import (
    AdlEvent,
    AdlNotice,
    AdlReason,
    FundDecision,
    LiquidationOrder,
    LiquidationSettled,
    ReserveClaim,
    ReserveSettle,
    TakeoverClaim,
)
from riskd.core.liquidation import (
    Liquidation,
    Stage,
    adl_price,
    close_result,
    execution_price,
    takeover_result,
    waterfall,
)
from riskd.core.liquidation_machine import Event
from riskd.core.margin import (
    is_liquidatable,
    maintenance_margin,
    margin_balance,
    notional,
)
from riskd.core.market import LiquidationMode, PartialLiquidation, TakeoverPrice
from riskd.core.pickling import DictPickled
from riskd.core.position import BACKSTOP_ACCOUNT, Position
from riskd.core.units import PPM, ceil_div, sign

if TYPE_CHECKING:
    from riskd.core.market_engine import MarketEngine

__all__ = ["Liquidator"]


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class Liquidator(DictPickled):
    """The liquidation procedure of one market (``m``), which owns all the state."""

    def __init__(self, market: MarketEngine) -> None:
        self.m = market

    def fund_decision(self, d: FundDecision, ts: int) -> None:
        """The fund's answer to a claim this market made."""
        liq = self.m.machine.active[d.liquidation_id]
        if liq.stage is not Stage.AWAITING_FUND:
            raise AssertionError(f"decision for liquidation {liq.id} in stage {liq.stage}")
        pos = self.m.positions[liq.account]
        if not liq.takeover:
            liq.reserved = d.granted
            self.m.machine.move(liq, Event.ORDER)
            liq.worst_price = execution_price(self.m.spec, pos, d.granted)
            self.m.effects.append(
                LiquidationOrder(
                    market=self.m.symbol,
                    liquidation_id=liq.id,
                    account=liq.account,
                    side=-sign(pos.size),
                    quantity=liq.quantity,
                    worst_price=liq.worst_price,
                    ts=ts,
                )
            )
        elif d.absorbed:
            self._take_over(liq, pos, d.granted, ts)
        else:
            # The fund pays what it may (held for this liquidation) and the
            # position is deleveraged at the price that payment makes it solvent at.
            liq.reserved = d.granted
            liq.fee = liq.shortfall = 0
            liq.adl_reason = d.reason
            self.m.machine.move(liq, Event.DELEVERAGE)
        self.m.scan(ts)  # retries waiting ADL too

    def start(self, pos: Position, ts: int, whole: bool = False) -> None:
        """Freeze ``pos`` and ask the fund; ``whole``: no partial step this time."""
        assert self.m.mark is not None
        spec, mark = self.m.spec, self.m.mark
        takeover = spec.liquidation_mode is LiquidationMode.TAKEOVER or pos.is_backstop
        liq = self.m.machine.open(pos, takeover=takeover, price=mark, ts=ts)
        if pos.is_backstop:  # the fund's own inventory: nobody left to ask
            liq.adl_reason = AdlReason.BACKSTOP
            self.m.machine.move(liq, Event.DELEVERAGE)
            self.retry_adl(ts)
            return
        part = 0 if whole else self._part(pos, mark)
        liq.quantity = part or abs(pos.size)
        if liq.takeover:
            value, remaining = takeover_result(spec, pos, sign(pos.size) * liq.quantity, mark)
            if not part and remaining > 0 and spec.takeover_price is TakeoverPrice.BANKRUPTCY:
                # BitMEX: a solvent position passes at its bankruptcy price; the
                # surplus stays in the backstop's position instead of being a fee.
                liq.price = execution_price(spec, pos)
                value, remaining = takeover_result(spec, pos, pos.size, liq.price)
            n = abs(value)
            split = waterfall(remaining, n, spec.liquidation_fee_cap_ppm, 0)
            liq.fee, liq.shortfall = split.fee, split.uncovered
            self.m.effects.append(
                TakeoverClaim(
                    asset=self.m.asset,
                    market=self.m.symbol,
                    liquidation_id=liq.id,
                    ts=ts,
                    notional=n,
                    fee=liq.fee,
                    shortfall=liq.shortfall,
                    margin_wanted=spec.tiers.initial(n),
                    loss_cap=spec.fund_loss_cap,
                )
            )
        else:
            size = abs(pos.size)
            self.m.effects.append(
                ReserveClaim(
                    asset=self.m.asset,
                    market=self.m.symbol,
                    liquidation_id=liq.id,
                    ts=ts,
                    notional=ceil_div(notional(spec, pos, mark) * liq.quantity, size),
                    wanted=ceil_div(maintenance_margin(spec, pos, mark) * liq.quantity, size),
                    loss_cap=spec.fund_loss_cap,
                )
            )

    def _part(self, pos: Position, mark: int) -> int:
        """What the market's partial-liquidation policy closes of a solvent ``pos``.

        0: close it whole (policy ``full``, a bankrupt position, or a part
        that would be all of it).
        """
        spec = self.m.spec
        policy = spec.partial_policy
        if policy is PartialLiquidation.FULL or close_result(spec, pos, mark)[1] <= 0:
            return 0
        if policy is PartialLiquidation.TIER_STEP:
            return self._partial(pos, mark)
        step = spec.step_size
        part = ceil_div(ceil_div(abs(pos.size) * spec.partial_fraction_ppm, PPM), step) * step
        return part if part < abs(pos.size) else 0

    def _partial(self, pos: Position, mark: int) -> int:
        """Quantity that steps a solvent position down one tier (0: close it whole)."""
        spec = self.m.spec
        num, den = spec.notional(1, mark)
        t = spec.tiers.tier_for(notional(spec, pos, mark))
        if t.floor == 0:
            return 0
        keep = (t.floor * den - 1) // num
        keep -= keep % spec.step_size
        part = abs(pos.size) - keep
        return part if 0 < part < abs(pos.size) else 0

    def _take_over(self, liq: Liquidation, pos: Position, granted: int, ts: int) -> None:
        """The fund paid: the position (or its part) passes to the backstop at ``liq.price``
        (the trigger mark, or the bankruptcy price: ``takeover_price``)."""
        backstop = self.m.positions.get(BACKSTOP_ACCOUNT)
        if backstop is None:
            backstop = self.m.positions[BACKSTOP_ACCOUNT] = Position(BACKSTOP_ACCOUNT)
        size = sign(pos.size) * liq.quantity
        if backstop.liquidation:
            # The backstop itself waits for ADL counterparties: do not add to a
            # bankrupt book.  The fund's cover stands (the trader's margin is
            # made whole at the mark), its margin grant goes back, and the
            # position is deleveraged at the mark instead.
            self.m.change(pos, margin=liq.shortfall - liq.fee)
            liq.paid_in = liq.shortfall
            liq.fee = liq.shortfall = 0
            liq.adl_reason = AdlReason.BACKSTOP
            self.m.sweep_backstop_margin(granted, ts)
            self.m.machine.move(liq, Event.DELEVERAGE)
            return
        value = self.m.spec.trade_value(size, liq.price)  # the backstop's, see takeover_result
        self.m.change(pos, qty=-size, value=-value, margin=liq.shortfall - liq.fee)
        self.m.change(backstop, qty=size, value=value, margin=granted)
        returned = 0 if pos.size else self._end(liq, pos, ts)
        self._settled(
            liq,
            quantity=liq.quantity,
            price=liq.price,
            fund_delta=liq.fee - liq.shortfall,
            returned=returned,
            adl_quantity=0,
            ts=ts,
        )
        if backstop.size == 0:
            self.m.sweep(backstop, ts)
        if pos.size:  # a partial step: the rest stays open
            self._stepped(liq, pos, ts)

    def _stepped(self, liq: Liquidation, pos: Position, ts: int) -> None:
        """A partial step is done: release the rest, or let it cool down.

        Policy ``fraction`` (Hyperliquid): a rest still crossed at the mark
        stays frozen (COOLING) until ``partial_cooldown_ms`` after the step
        began, then goes whole (see :meth:`_cool`); riskd never leaves a
        crossed position unattended.  Otherwise the rest is released and, if
        still crossed, the next scan steps it again.
        """
        spec, mark = self.m.spec, self.m.mark
        assert mark is not None
        if self.m.guarded:  # the mark decides nothing: released, the next good one rescans
            self._end(liq, pos, ts)
            return
        if (
            spec.partial_policy is PartialLiquidation.FRACTION
            and spec.partial_cooldown_ms
            and is_liquidatable(spec, pos, mark)
        ):
            self.m.machine.move(liq, Event.FILLED_PART)
            liq.until = liq.ts + spec.partial_cooldown_ms
            return
        self._end(liq, pos, ts)

    def cool(self, ts: int) -> None:
        """Positions cooling down after a partial step: released once no longer
        crossed; closed whole once the cool-down is over or they are bankrupt."""
        mark = self.m.mark
        assert mark is not None
        for liq in self.m.machine.cooling():
            pos = self.m.positions[liq.account]
            if not is_liquidatable(self.m.spec, pos, mark):
                self._end(liq, pos, ts)
            elif ts >= liq.until or close_result(self.m.spec, pos, mark)[1] <= 0:
                self._end(liq, pos, ts, again=True)

    def settle(
        self, liq: Liquidation, pos: Position, notional_: int, price: int, adl_qty: int, ts: int
    ) -> None:
        """Settle a flat liquidated position by the waterfall, from its margin ``R``.

        The fund's part was fixed before the close (its reservation or its
        partial payment), and the close's price made ``R`` + that part >= 0, so
        nothing is left uncovered here.  The backstop pays no fee: its rest goes
        back to the fund whole, as its own return.
        """
        split = waterfall(pos.margin, notional_, self.m.spec.liquidation_fee_cap_ppm, liq.reserved)
        if split.uncovered:
            raise AssertionError(f"{self.m.symbol}: liquidation {liq.id} left {split.uncovered}")
        fee = 0 if pos.is_backstop else split.fee
        self.m.change(pos, margin=split.paid - fee)
        self._reserve_settle(liq, paid=split.paid, fee=fee, ts=ts)
        returned = self._end(liq, pos, ts)
        self._settled(
            liq,
            quantity=liq.quantity,
            price=price,
            fund_delta=fee - split.paid - liq.paid_in,
            returned=returned,
            adl_quantity=adl_qty,
            ts=ts,
        )

    def settle_step(self, liq: Liquidation, pos: Position, ts: int, gave_up: bool = False) -> None:
        """Book mode: a partial step's order is done; the position stays open.

        The waterfall on what the step left in the margin: the capped fee on
        the filled notional, or slippage below zero paid from the reservation.
        """
        split = waterfall(pos.margin, liq.filled_notional, self.m.spec.liquidation_fee_cap_ppm, 0)
        paid = min(max(-pos.margin, 0), liq.reserved)
        self.m.change(pos, margin=paid - split.fee)
        self._reserve_settle(liq, paid=paid, fee=split.fee, ts=ts)
        self._settled(
            liq,
            quantity=liq.filled,
            price=liq.price,
            fund_delta=split.fee - paid,
            returned=0,
            adl_quantity=0,
            ts=ts,
        )
        assert self.m.mark is not None
        if gave_up and not self.m.guarded and is_liquidatable(self.m.spec, pos, self.m.mark):
            self._end(liq, pos, ts, again=True)
        else:
            self._stepped(liq, pos, ts)

    def _end(self, liq: Liquidation, pos: Position, ts: int, *, again: bool = False) -> int:
        """The one way a liquidation ends; returns the margin a flat position got back.

        Flat: its margin goes back to its owner.  Open: released into the
        index, or (``again``: still crossed after a step or a cool-down)
        liquidated whole under a new liquidation.
        """
        self.m.machine.end(liq, pos)
        if pos.size == 0:
            returned = pos.margin
            self.m.sweep(pos, ts)
            return returned
        if again:
            self.start(pos, ts, whole=True)
        else:
            self.m.machine.track(self.m.spec, pos)
        return 0

    def retry_adl(self, ts: int) -> None:
        """Try every liquidation waiting for ADL counterparties, oldest first."""
        waiting = self.m.machine.awaiting_adl
        for lid in list(waiting):
            liq = self.m.machine.active.get(lid)
            if liq is None or liq.stage is not Stage.AWAITING_ADL or self._adl(liq, ts):
                waiting.pop(lid, None)

    def _adl(self, liq: Liquidation, ts: int) -> bool:
        """Close the bankrupt position against ranked opposite positions at its BP."""
        spec = self.m.spec
        pos = self.m.positions[liq.account]
        q = pos.size
        # At the bankruptcy price if the mark is beyond it, else at the mark (a
        # book-mode order the book gave up on may still be solvent): nobody gains
        # from ADL, and the fund's book-mode reservation is not for counterparties.
        mark = self.m.mark if self.m.mark is not None else liq.price
        price = adl_price(spec, pos, mark, liq.reserved)
        # A counterparty must stay solvent at the execution price (inverse: 2
        # quanta spare for the rounding of its share), or closing it would just
        # move the hole.  One that waits for ADL itself qualifies if it is
        # solvent there: two such positions net out against each other.
        spare = 0 if spec.is_linear else 2
        takes = adl.allocate(self._counterparties(q, price, spare), abs(q), spec, mark)
        if sum(x for _, x in takes) < abs(q):
            return False  # wait: the missing counterparties are being liquidated themselves
        _, at_mark = close_result(spec, pos, mark)
        deficit = max(-at_mark, 0) + liq.paid_in
        total = spec.trade_value(-q, price)
        self.m.change(pos, qty=-q, value=total)
        fund_paid = liq.paid_in + min(max(-pos.margin, 0), liq.reserved)
        haircut = 0
        left_qty, left_value = abs(q), -total
        for cp, x in takes:
            cp_value = left_value if x == left_qty else -total * x // abs(q)
            left_qty -= x
            left_value -= cp_value
            cp_qty = sign(q) * x
            realised = self.m.change(cp, qty=cp_qty, value=cp_value)
            haircut += cp_value - spec.trade_value(cp_qty, mark)
            self.m.effects.append(
                AdlNotice(
                    market=self.m.symbol,
                    liquidation_id=liq.id,
                    account=cp.account,
                    side=-sign(q),
                    quantity=x,
                    price=price,
                    realised=realised,
                    ts=ts,
                )
            )
            if cp.liquidation:
                if cp.size == 0:  # a waiting one netted out: it is done too
                    cp_liq = self.m.machine.active[cp.liquidation]
                    self._conclude(cp_liq, cp, price, abs(cp_value), x, ts)
            elif not cp.size:
                self.m.sweep(cp, ts)
        self.m.effects.append(
            AdlEvent(
                market=self.m.symbol,
                asset=self.m.asset,
                liquidation_id=liq.id,
                quantity=abs(q),
                price=price,
                closed_notional=abs(total),
                deficit=deficit,
                haircut=haircut,
                overshoot=haircut + fund_paid - deficit,
                counterparties=len(takes),
                ts=ts,
                reason=liq.adl_reason or AdlReason.FUND_EMPTY,
                fund_paid=fund_paid,
            )
        )
        self._conclude(liq, pos, price, abs(total), abs(q), ts)
        return True

    def _counterparties(self, q: int, price: int, spare: int) -> Iterator[Position]:
        """The ranked positions opposite ``q`` that qualify, lazily: the queue stops at
        the first that cover it.  (A generator function: compiled, a generator
        expression becomes a list, which made every ADL test every counterparty.)"""
        spec = self.m.spec
        for p in self.m.ranked_for_adl(q < 0):
            if (
                p.size
                and (p.size > 0) != (q > 0)
                and p.liquidation in self._awaiting_adl_or_none(p)
                and margin_balance(spec, p, price) >= spare
            ):
                yield p

    def _awaiting_adl_or_none(self, pos: Position) -> tuple[int, ...]:
        """Liquidation ids a counterparty may carry: none, or one waiting for ADL."""
        return (0, pos.liquidation) if self.m.machine.waiting_for_adl(pos.liquidation) else (0,)

    def _conclude(
        self, liq: Liquidation, pos: Position, price: int, notional_: int, adl_qty: int, ts: int
    ) -> None:
        """Settle a liquidation whose position ADL has closed."""
        if liq.takeover:
            self.settle(liq, pos, notional_, price, adl_qty, ts)
        else:
            liq.filled_notional += notional_
            self.settle(liq, pos, liq.filled_notional, liq.price, adl_qty, ts)

    def _reserve_settle(self, liq: Liquidation, *, paid: int, fee: int, ts: int) -> None:
        """The fund's final word on a liquidation (released, paid, taken), if it has one."""
        if liq.reserved or paid or fee:
            self.m.effects.append(
                ReserveSettle(
                    asset=self.m.asset,
                    market=self.m.symbol,
                    liquidation_id=liq.id,
                    ts=ts,
                    reserved=liq.reserved,
                    shortfall=paid,
                    fee=fee,
                )
            )

    def _settled(
        self,
        liq: Liquidation,
        *,
        quantity: int,
        price: int,
        fund_delta: int,
        returned: int,
        adl_quantity: int,
        ts: int,
    ) -> None:
        self.m.effects.append(
            LiquidationSettled(
                market=self.m.symbol,
                liquidation_id=liq.id,
                account=liq.account,
                quantity=quantity,
                price=price,
                fund_delta=fund_delta,
                returned_to_trader=returned,
                adl_quantity=adl_quantity,
                ts=ts,
            )
        )
