"""The one table of published effect kinds: wire event, log line, metrics.

Everything the daemon tells the outside world about an effect is read from
:data:`EFFECTS`: the ``Event`` a subscriber receives (:mod:`riskd.api.convert`),
the structured log line of a money decision (:class:`riskd.daemon.Daemon`)
and the metrics it moves (:class:`riskd.metrics.Metrics`).  Adding a
published effect kind is one :class:`EffectKind` entry here plus its core
dataclass (and its wire message, if subscribers see it).

How a settled liquidation ended is classified once, by
:func:`liquidation_outcome`: the metrics label and the replay report both
call it.  Every figure comes from the effect's own fields (the ADL overshoot
is the event's ``overshoot``, never recomputed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf.message import Message

from riskd.core.events import (
    AccountLiquidation,
    AdlEvent,
    AdlNotice,
    AdlReason,
    Effect,
    FundFlow,
    LiquidationOrder,
    LiquidationSettled,
    MarginCall,
    MarketSettled,
    MarketStatusChanged,
    MarkGuardChanged,
)
from riskd.core.mark_guard import GuardReason
from riskd.core.market_status import MarketStatus
from riskd.v1 import events_pb2, types_pb2

if TYPE_CHECKING:
    from riskd.metrics import Metrics

__all__ = [
    "EffectKind",
    "EFFECTS",
    "LIQUIDATION_OUTCOMES",
    "liquidation_outcome",
    "encode_event",
]

E = TypeVar("E")

#: The ``outcome`` label values of ``riskd_liquidations_total``.
LIQUIDATION_OUTCOMES = ("surplus", "absorbed", "adl")


def liquidation_outcome(adl_quantity: int, fund_delta: int) -> str:
    """How a settled liquidation ended: part of it closed by ADL, a shortfall the
    fund absorbed, or a surplus (or nothing) left to the fund.

    Takes plain fields so the wire message (the replay report) and the core
    effect (metrics) classify with the same rule.
    """
    if adl_quantity:
        return "adl"
    if fund_delta < 0:
        return "absorbed"
    return "surplus"


@dataclass(frozen=True, kw_only=True, slots=True)
class EffectKind(Generic[E]):
    """One published effect kind.

    ``event``: the ``Event`` oneof field it fills and ``encode`` its message
    (both None: not sent to subscribers).  ``log``: the event name of its log
    line and ``log_fields`` the line's fields (None: not logged; money
    decisions are).  ``observe``: what it adds to the metrics (None: nothing).
    """

    cls: type[E]
    event: str | None = None
    encode: Callable[[E], Message] | None = None
    log: str | None = None
    log_fields: Callable[[E], dict[str, object]] | None = None
    observe: Callable[[Metrics, E], None] | None = None


_ADL_REASON = {
    AdlReason.FUND_EMPTY: events_pb2.ADL_REASON_FUND_EMPTY,
    AdlReason.MARKET_CAP: events_pb2.ADL_REASON_MARKET_CAP,
    AdlReason.DRAWDOWN_LIMIT: events_pb2.ADL_REASON_DRAWDOWN_LIMIT,
    AdlReason.NO_BOOK: events_pb2.ADL_REASON_NO_BOOK,
    AdlReason.BACKSTOP: events_pb2.ADL_REASON_BACKSTOP,
}


# --- LiquidationOrder ---------------------------------------------------------


def _order_event(e: LiquidationOrder) -> Message:
    return events_pb2.LiquidationOrder(
        market=e.market,
        liquidation_id=e.liquidation_id,
        account=e.account,
        side=types_pb2.SIDE_BUY if e.side > 0 else types_pb2.SIDE_SELL,
        quantity=e.quantity,
        worst_price=e.worst_price,
    )


# --- LiquidationSettled -------------------------------------------------------


def _settled_event(e: LiquidationSettled) -> Message:
    return events_pb2.LiquidationSettled(
        market=e.market,
        liquidation_id=e.liquidation_id,
        account=e.account,
        quantity=e.quantity,
        price=e.price,
        fund_delta=e.fund_delta,
        returned_to_trader=e.returned_to_trader,
        adl_quantity=e.adl_quantity,
    )


def _settled_log(e: LiquidationSettled) -> dict[str, object]:
    return {
        "market": e.market,
        "liquidation_id": e.liquidation_id,
        "quantity": e.quantity,
        "price": e.price,
        "fund_delta_quantums": e.fund_delta,
        "returned_quantums": e.returned_to_trader,
        "adl_quantity": e.adl_quantity,
    }


def _settled_metrics(m: Metrics, e: LiquidationSettled) -> None:
    m.liquidations.labels(e.market, liquidation_outcome(e.adl_quantity, e.fund_delta)).inc()


# --- AdlNotice ----------------------------------------------------------------


def _notice_event(e: AdlNotice) -> Message:
    return events_pb2.AdlNotice(
        market=e.market,
        account=e.account,
        liquidation_id=e.liquidation_id,
        side=types_pb2.POSITION_SIDE_LONG if e.side > 0 else types_pb2.POSITION_SIDE_SHORT,
        quantity=e.quantity,
        price=e.price,
        realized_pnl=e.realised,
    )


# --- AdlEvent -----------------------------------------------------------------


def _adl_event(e: AdlEvent) -> Message:
    return events_pb2.AdlExecuted(
        market=e.market,
        liquidation_id=e.liquidation_id,
        quantity=e.quantity,
        price=e.price,
        closed_notional=e.closed_notional,
        deficit=e.deficit,
        haircut=e.haircut,
        overshoot=e.overshoot,
        counterparties=e.counterparties,
        reason=_ADL_REASON[e.reason],
        fund_paid=e.fund_paid,
    )


def _adl_log(e: AdlEvent) -> dict[str, object]:
    return {
        "market": e.market,
        "liquidation_id": e.liquidation_id,
        "quantity": e.quantity,
        "price": e.price,
        "counterparties": e.counterparties,
        "closed_notional_quantums": e.closed_notional,
        "deficit_quantums": e.deficit,
        "fund_paid_quantums": e.fund_paid,
        "overshoot_quantums": e.overshoot,
        "reason": e.reason.value,
    }


def _adl_metrics(m: Metrics, e: AdlEvent) -> None:
    why = e.reason.value
    m.adl_events.labels(e.market, why).inc()
    m.adl_notional.labels(e.market, why).inc(e.closed_notional)
    # A counter only grows: an undershoot (negative) counts as none.
    m.adl_overshoot.labels(e.market, why).inc(max(e.overshoot, 0))


# --- MarginCall ---------------------------------------------------------------


def _margin_call_event(e: MarginCall) -> Message:
    return events_pb2.MarginCall(
        market=e.market,
        account=e.account,
        margin_balance=e.margin_balance,
        maintenance_margin=e.maintenance_margin,
        liquidation_price=e.liquidation_price,
    )


# --- AccountLiquidation ---------------------------------------------------------


def _cross_event(e: AccountLiquidation) -> Message:
    return events_pb2.AccountLiquidation(
        asset=e.asset,
        account=e.account,
        equity=e.equity,
        maintenance_margin=e.maintenance_margin,
        markets=list(e.markets),
        policy=e.policy,
    )


def _cross_log(e: AccountLiquidation) -> dict[str, object]:
    return {
        "asset": e.asset,
        "equity_quantums": e.equity,
        "maintenance_margin_quantums": e.maintenance_margin,
        "markets": list(e.markets),
        "policy": e.policy,
    }


def _cross_metrics(m: Metrics, e: AccountLiquidation) -> None:
    m.cross_liquidations.labels(e.asset, e.policy).inc()


# --- FundFlow -----------------------------------------------------------------


def _flow_event(e: FundFlow) -> Message:
    return events_pb2.FundFlow(
        asset=e.asset,
        market=e.market,
        kind=e.kind.value,
        amount=e.amount,
        balance_after=e.balance_after,
        cause=e.cause,
    )


def _flow_log(e: FundFlow) -> dict[str, object]:
    return {
        "asset": e.asset,
        "market": e.market,
        "kind": e.kind.value,
        "amount_quantums": e.amount,
        "balance_after_quantums": e.balance_after,
        "cause": e.cause,
    }


def _flow_metrics(m: Metrics, e: FundFlow) -> None:
    if e.amount > 0:
        m.fund_inflow.labels(e.asset, e.kind.value).inc(e.amount)
    else:
        m.fund_outflow.labels(e.asset, e.kind.value).inc(-e.amount)
    m.fund_balance.labels(e.asset).set(e.balance_after)


# --- the mark guard and the market lifecycle ----------------------------------


def _guard_wire(reason: str) -> types_pb2.MarkGuardReason.ValueType:
    return types_pb2.MarkGuardReason.Value("MARK_GUARD_REASON_" + (reason or "unspecified").upper())


def _status_wire(status: str) -> types_pb2.MarketStatus.ValueType:
    return types_pb2.MarketStatus.Value("MARKET_STATUS_" + status.upper())


def _guard_event(e: MarkGuardChanged) -> Message:
    return events_pb2.MarkGuardChanged(
        market=e.market,
        reason=_guard_wire(e.reason),
        mark_price=e.mark,
        good_mark_price=e.good_mark,
        index_price=e.index_price,
    )


def _guard_log(e: MarkGuardChanged) -> dict[str, object]:
    return {
        "market": e.market,
        "reason": e.reason or "cleared",
        "mark": e.mark,
        "good_mark": e.good_mark,
        "index_price": e.index_price,
        "ts_ms": e.ts,  # the input's stamp: the same when replay logs it again
    }


def _guard_metrics(m: Metrics, e: MarkGuardChanged) -> None:
    on = GuardReason(e.reason) if e.reason else None
    for reason in GuardReason:
        m.mark_guard.labels(e.market, reason.value).set(1 if reason is on else 0)


def _status_event(e: MarketStatusChanged) -> Message:
    return events_pb2.MarketStatusChanged(
        market=e.market, status=_status_wire(e.status), previous=_status_wire(e.previous)
    )


def _status_log(e: MarketStatusChanged) -> dict[str, object]:
    return {"market": e.market, "status": e.status, "previous": e.previous, "ts_ms": e.ts}


def _status_metrics(m: Metrics, e: MarketStatusChanged) -> None:
    for status in MarketStatus:
        m.market_status.labels(e.market, status.value).set(1 if status.value == e.status else 0)


def _market_settled_event(e: MarketSettled) -> Message:
    return events_pb2.MarketSettled(
        market=e.market,
        asset=e.asset,
        price=e.price,
        positions=e.positions,
        paid_out=e.paid_out,
        fee_pool=e.fee_pool,
        cross_positions=e.cross_positions,
        charged=e.charged,
        deficit=e.deficit,
        haircut=e.haircut,
    )


def _market_settled_log(e: MarketSettled) -> dict[str, object]:
    return {
        "market": e.market,
        "asset": e.asset,
        "price": e.price,
        "positions": e.positions,
        "paid_out_quantums": e.paid_out,
        "fee_pool_quantums": e.fee_pool,
        "cross_positions": e.cross_positions,
        "charged_quantums": e.charged,
        "deficit_quantums": e.deficit,
        "haircut_quantums": e.haircut,
        "ts_ms": e.ts,
    }


# Any: one entry per effect class, each typed by its own class.
_TABLE: tuple[EffectKind[Any], ...] = (
    EffectKind(cls=LiquidationOrder, event="liquidation_order", encode=_order_event),
    EffectKind(
        cls=LiquidationSettled,
        event="liquidation_settled",
        encode=_settled_event,
        log="liquidation_settled",
        log_fields=_settled_log,
        observe=_settled_metrics,
    ),
    EffectKind(
        cls=FundFlow,
        event="fund_flow",
        encode=_flow_event,
        log="fund_flow",
        log_fields=_flow_log,
        observe=_flow_metrics,
    ),
    EffectKind(cls=AdlNotice, event="adl_notice", encode=_notice_event),
    EffectKind(
        cls=AdlEvent,
        event="adl_executed",
        encode=_adl_event,
        log="adl_executed",
        log_fields=_adl_log,
        observe=_adl_metrics,
    ),
    EffectKind(cls=MarginCall, event="margin_call", encode=_margin_call_event),
    EffectKind(
        cls=MarkGuardChanged,
        event="mark_guard_changed",
        encode=_guard_event,
        log="mark_guard_changed",
        log_fields=_guard_log,
        observe=_guard_metrics,
    ),
    EffectKind(
        cls=MarketStatusChanged,
        event="market_status_changed",
        encode=_status_event,
        log="market_status_changed",
        log_fields=_status_log,
        observe=_status_metrics,
    ),
    EffectKind(
        cls=MarketSettled,
        event="market_settled",
        encode=_market_settled_event,
        log="market_settled",
        log_fields=_market_settled_log,
    ),
    EffectKind(
        cls=AccountLiquidation,
        event="account_liquidation",
        encode=_cross_event,
        log="account_liquidation",
        log_fields=_cross_log,
        observe=_cross_metrics,
    ),
)

#: Every published effect kind, by effect class.
EFFECTS: Mapping[type, EffectKind[Any]] = {k.cls: k for k in _TABLE}


def encode_event(seq: int, e: Effect) -> events_pb2.Event | None:
    """A published effect as a wire event; None for internal-only effects."""
    kind = EFFECTS.get(type(e))
    if kind is None or kind.event is None or kind.encode is None:
        return None
    event = events_pb2.Event(sequence=seq, timestamp_ms=getattr(e, "ts", 0))
    getattr(event, kind.event).CopyFrom(kind.encode(e))  # sets the oneof
    return event
