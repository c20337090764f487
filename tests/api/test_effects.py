"""The table of published effect kinds (riskd.effects): wire, log and metrics from one entry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from riskd.core.events import AdlEvent, AdlReason, FundDecision, LiquidationSettled
from riskd.effects import EFFECTS, LIQUIDATION_OUTCOMES, encode_event, liquidation_outcome
from riskd.metrics import Metrics
from riskd.v1 import events_pb2

ints = st.integers(min_value=-(2**62), max_value=2**62)


def test_every_wire_event_kind_has_exactly_one_entry() -> None:
    oneof = events_pb2.Event.DESCRIPTOR.oneofs_by_name["kind"]
    wire = sorted(f.name for f in oneof.fields)
    table = sorted(k.event for k in EFFECTS.values() if k.event is not None)
    assert table == wire
    for kind in EFFECTS.values():  # an encoder exactly where there is an event
        assert (kind.event is None) == (kind.encode is None), kind.cls
        assert (kind.log is None) == (kind.log_fields is None), kind.cls


def test_an_internal_effect_is_not_sent() -> None:
    decision = FundDecision(market="BTC-USDT", liquidation_id=1, absorbed=True, granted=0)
    assert encode_event(1, decision) is None


@given(adl=ints, delta=ints)
def test_liquidation_outcome_is_one_label(adl: int, delta: int) -> None:
    outcome = liquidation_outcome(adl, delta)
    assert outcome in LIQUIDATION_OUTCOMES
    assert (outcome == "adl") == (adl != 0)
    if not adl:
        assert (outcome == "absorbed") == (delta < 0)


@given(
    adl=st.integers(min_value=0, max_value=10**9),
    delta=ints,
    overshoot=st.integers(min_value=-(10**12), max_value=10**12),
)
def test_wire_and_metrics_read_the_effects_own_fields(adl: int, delta: int, overshoot: int) -> None:
    m = Metrics()
    settled = LiquidationSettled(
        market="BTC-USDT",
        liquidation_id=7,
        account=3,
        quantity=5,
        price=100,
        fund_delta=delta,
        returned_to_trader=0,
        adl_quantity=adl,
        ts=9,
    )
    event = AdlEvent(
        market="BTC-USDT",
        asset="USDT",
        liquidation_id=7,
        quantity=5,
        price=100,
        closed_notional=500,
        deficit=1,
        haircut=2,
        overshoot=overshoot,
        counterparties=1,
        ts=9,
        reason=AdlReason.NO_BOOK,
    )
    m.observe([settled, event])
    sample = m.registry.get_sample_value
    outcome = liquidation_outcome(adl, delta)
    assert sample("riskd_liquidations_total", {"market": "BTC-USDT", "outcome": outcome}) == 1
    labels = {"market": "BTC-USDT", "reason": "no_book"}
    assert sample("riskd_adl_overshoot_quantums_total", labels) == max(overshoot, 0)
    wire = encode_event(4, event)
    assert wire is not None and wire.WhichOneof("kind") == "adl_executed"
    assert (wire.sequence, wire.timestamp_ms, wire.adl_executed.overshoot) == (4, 9, overshoot)
    settled_wire = encode_event(5, settled)
    assert settled_wire is not None
    assert settled_wire.liquidation_settled.fund_delta == delta
