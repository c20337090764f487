"""A market's liquidations as one explicit state machine, and the index it owns.

Every stage change of a :class:`~riskd.core.liquidation.Liquidation` is one
row of :data:`TRANSITIONS` (as h11 keeps its connection states in one table):
an event the table has no row for raises :class:`IllegalTransition`, a bug
and never the input's fault.  ::

    AWAITING_FUND  --ORDER-------->  WORKING       book mode: the order goes to the book
    AWAITING_FUND  --FILLED_PART-->  COOLING       takeover: a partial step passed, rest crossed
    WORKING        --FILLED_PART-->  COOLING       book mode: a partial step's order filled
    AWAITING_FUND  --DELEVERAGE--->  AWAITING_ADL  the fund could not pay it all; the backstop's own
    WORKING        --DELEVERAGE--->  AWAITING_ADL  the book gave up
    any live stage --END---------->  SETTLED       flat: closed; open: released, or restarted whole

The machine also owns the liquidation index (live positions by trigger
price) and the queue of liquidations waiting for ADL counterparties.  A
frozen position (in liquidation) is never in the index; :meth:`end` unfreezes
it and the market puts it back (or sweeps or restarts it).  Cross margin and
a pre-trade risk gate are meant to plug in here: read the index, open
liquidations through :meth:`open`, move them by events, never write stages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from mypy_extensions import mypyc_attr

from riskd.core.liquidation import Liquidation, Stage
from riskd.core.liquidation_index import LiquidationIndex
from riskd.core.margin import bankruptcy_threshold_of, liquidation_threshold_of
from riskd.core.market import MarketSpec
from riskd.core.pickling import DictPickled, restore
from riskd.core.position import BACKSTOP_ACCOUNT, NOT_INDEXED, Position
from riskd.errors import RiskdError

__all__ = ["Event", "TRANSITIONS", "IllegalTransition", "LiquidationMachine", "next_stage"]


class Event(enum.Enum):
    """What happens to a liquidation."""

    ORDER = "order"  # book mode: the fund reserved slippage, the order goes to the book
    FILLED_PART = "filled_part"  # a partial step done, the crossed rest frozen until ``until``
    DELEVERAGE = "deleverage"  # the rest goes to ADL (fund short, book gave up, backstop)
    END = "end"  # settled, released or restarted whole: the liquidation is over


#: (stage, event) -> next stage: every legal transition, and only those.
TRANSITIONS: Mapping[tuple[Stage, Event], Stage] = {
    (Stage.AWAITING_FUND, Event.ORDER): Stage.WORKING,
    (Stage.AWAITING_FUND, Event.DELEVERAGE): Stage.AWAITING_ADL,
    (Stage.AWAITING_FUND, Event.FILLED_PART): Stage.COOLING,
    (Stage.AWAITING_FUND, Event.END): Stage.SETTLED,
    (Stage.WORKING, Event.DELEVERAGE): Stage.AWAITING_ADL,
    (Stage.WORKING, Event.FILLED_PART): Stage.COOLING,
    (Stage.WORKING, Event.END): Stage.SETTLED,
    (Stage.COOLING, Event.END): Stage.SETTLED,
    (Stage.AWAITING_ADL, Event.END): Stage.SETTLED,
}


# Two exception bases: mypyc compiles only single-base native classes.
@mypyc_attr(native_class=False)
class IllegalTransition(RiskdError, AssertionError):
    """An event a liquidation's stage has no transition for (a bug in the market)."""

    def __init__(self, liquidation_id: int, stage: Stage, event: Event) -> None:
        super().__init__(
            f"liquidation {liquidation_id}: no transition from {stage.name} on {event.name}"
        )
        self.stage = stage
        self.event = event


# TRANSITIONS keyed by the members' identities: Stage and Event are Python enums,
# whose __hash__ runs as interpreted code (two transitions per liquidation).
_BY_IDENTITY: Final = {(id(s), id(e)): to for (s, e), to in TRANSITIONS.items()}


def next_stage(liquidation_id: int, stage: Stage, event: Event) -> Stage:
    """The stage ``event`` leads to from ``stage``; IllegalTransition if none."""
    to = _BY_IDENTITY.get((id(stage), id(event)))
    if to is None:
        raise IllegalTransition(liquidation_id, stage, event)
    return to


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class LiquidationMachine(DictPickled):
    """One market's liquidations, their index and their ADL queue."""

    def __init__(self) -> None:
        self.index = LiquidationIndex()
        self.active: dict[int, Liquidation] = {}
        # Liquidation ids waiting for ADL counterparties, oldest first.
        self.awaiting_adl: dict[int, None] = {}
        # Ids of the COOLING ones: every input looks at them, so it need not
        # walk every liquidation in progress (a cascade, a book full of orders).
        self.cooling_ids: set[int] = set()
        self.next_id = 1

    def __setstate__(self, state: dict[str, object]) -> None:
        """Snapshots from before ``cooling_ids``: derived from the stages."""
        restore(self, state)
        if "cooling_ids" not in state:
            self.recount_cooling()

    def recount_cooling(self) -> None:
        """Rebuild ``cooling_ids`` from the stages (loading an older snapshot)."""
        self.cooling_ids = {i for i, x in self.active.items() if x.stage is Stage.COOLING}

    # --- the index of live positions ------------------------------------------

    @staticmethod
    def threshold_of(spec: MarketSpec, pos: Position) -> int:
        """The threshold a live, open position is indexed at (its trigger: bankruptcy
        for the backstop); NOT_INDEXED for a flat or frozen one, which the index never holds."""
        if pos.liquidation:
            return NOT_INDEXED
        return LiquidationMachine.threshold_for(spec, pos.account, pos.size, pos.basis, pos.margin)

    @staticmethod
    def threshold_for(spec: MarketSpec, account: int, size: int, basis: int, margin: int) -> int:
        """:meth:`threshold_of` a live position of ``account`` with these numbers: a
        fill computes it once for its planned side, checks it against the mark
        (:func:`riskd.core.fill_sanity.check_side`) and indexes the side at it."""
        if size == 0:
            return NOT_INDEXED
        if account == BACKSTOP_ACCOUNT:
            return bankruptcy_threshold_of(spec, size, basis, margin)
        return liquidation_threshold_of(spec, size, basis, margin)

    def track(self, spec: MarketSpec, pos: Position) -> None:
        """Put a live, open position in the index at its trigger (bankruptcy for the backstop)."""
        threshold = self.threshold_of(spec, pos)
        if threshold != NOT_INDEXED:
            pos.threshold = threshold
            self.index.add(pos.size > 0, pos)

    def retrack(self, spec: MarketSpec, pos: Position, long_before: bool) -> None:
        """``pos``'s numbers changed since it was tracked (at ``pos.threshold``, on the
        long side if ``long_before``): out of the index at its old threshold and in
        at its new one, nothing if neither its threshold nor its side changed."""
        self.reindex(pos, long_before, self.threshold_of(spec, pos))

    def reindex(self, pos: Position, long_before: bool, new: int) -> None:
        """:meth:`retrack` with ``pos``'s new threshold known (:meth:`threshold_of` its
        numbers now)."""
        old, long = pos.threshold, pos.size > 0
        if old == new and (new == NOT_INDEXED or long == long_before):
            return
        if old != NOT_INDEXED:
            self.index.remove(long_before, pos)
        pos.threshold = new
        if new != NOT_INDEXED:
            self.index.add(long, pos)

    def untrack(self, pos: Position) -> None:
        if pos.threshold != NOT_INDEXED:
            self.index.remove(pos.size > 0, pos)
            pos.threshold = NOT_INDEXED

    # --- transitions ------------------------------------------------------------

    def open(self, pos: Position, *, takeover: bool, price: int, ts: int) -> Liquidation:
        """Freeze ``pos`` (out of the index) under a new liquidation awaiting the fund."""
        self.untrack(pos)
        liq = Liquidation(self.next_id, pos.account, takeover, price, abs(pos.size), ts)
        self.next_id += 1
        self.active[liq.id] = liq
        pos.liquidation = liq.id
        return liq

    def move(self, liq: Liquidation, event: Event) -> None:
        """Take ``event`` (not END: :meth:`end`); one entering AWAITING_ADL joins the queue."""
        if event is Event.END:
            raise IllegalTransition(liq.id, liq.stage, event)
        liq.stage = next_stage(liq.id, liq.stage, event)
        if liq.stage is Stage.AWAITING_ADL:
            self.awaiting_adl[liq.id] = None
        elif liq.stage is Stage.COOLING:
            self.cooling_ids.add(liq.id)

    def end(self, liq: Liquidation, pos: Position) -> None:
        """The liquidation is over: forget it and unfreeze ``pos`` (the caller re-homes it)."""
        liq.stage = next_stage(liq.id, liq.stage, Event.END)
        del self.active[liq.id]
        self.awaiting_adl.pop(liq.id, None)
        self.cooling_ids.discard(liq.id)
        pos.liquidation = 0

    # --- reads --------------------------------------------------------------------

    def working(self, liquidation_id: int) -> Liquidation | None:
        """A book-mode liquidation whose order is in the book, or None."""
        liq = self.active.get(liquidation_id)
        return liq if liq is not None and liq.stage is Stage.WORKING else None

    def cooling(self) -> list[Liquidation]:
        """The COOLING liquidations, oldest first (as ``active`` lists them)."""
        return [self.active[i] for i in sorted(self.cooling_ids)]

    def waiting_for_adl(self, liquidation_id: int) -> bool:
        return liquidation_id in self.awaiting_adl
