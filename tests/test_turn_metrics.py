"""The sequencer's own metric types export what prometheus-client's would, byte for byte.

``riskd.metrics.TurnHistogram``, ``TurnCounter`` and ``TurnGauge`` keep their
values in plain lists and dicts (no lock per observation); a scrape must not
tell them from the library's ``Histogram``, ``Counter`` and ``Gauge`` fed the
same observations, so dashboards, alert rules and benchmarks read them as before.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from riskd.metrics import BATCH_BUCKETS, TurnCounter, TurnGauge, TurnHistogram

# Bucket bounds themselves, just either side of them, zero and far beyond the last.
durations = st.one_of(
    st.sampled_from([0.0, *BATCH_BUCKETS, 1e-9, 3.0, 1e6]),
    st.floats(0, 5, allow_nan=False),
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["other", "liquidation_path"]), durations, st.integers(1, 4))
    )
)
def test_turn_histogram_exports_what_a_prometheus_histogram_does(
    observations: list[tuple[str, float, int]],
) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    h = Histogram("x_seconds", "doc.", ["kind"], buckets=BATCH_BUCKETS, registry=theirs)
    t = TurnHistogram("x_seconds", "doc.", ["kind"], buckets=BATCH_BUCKETS, registry=ours)
    plain_h = Histogram("y_seconds", "doc.", buckets=BATCH_BUCKETS, registry=theirs)
    plain_t = TurnHistogram("y_seconds", "doc.", buckets=BATCH_BUCKETS, registry=ours)
    h.labels("other")  # declared at zero, as Metrics.declare does
    t.labels("other")
    for kind, seconds, n in observations:
        h.labels(kind).observe(seconds)
        t.labels(kind).observe(seconds)
        for _ in range(n):
            plain_h.observe(seconds)
        plain_t.observe_many(seconds, n)
    assert generate_latest(ours) == generate_latest(theirs)


@given(
    st.lists(
        st.tuples(st.sampled_from(["Fill", "MarkPrice"]), st.sampled_from(["applied", "x"])),
    ),
    st.lists(st.tuples(st.sampled_from(["BTC-USDT", "ETH-USDT"]), st.floats(0, 2e9))),
)
def test_turn_counter_and_gauge_export_what_prometheus_ones_do(
    counted: list[tuple[str, str]], marks: list[tuple[str, float]]
) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    c = Counter("u", "doc.", ["kind", "outcome"], registry=theirs)
    tc = TurnCounter("u", "doc.", ["kind", "outcome"], registry=ours)
    g = Gauge("m_seconds", "doc.", ["market"], registry=theirs)
    tg = TurnGauge("m_seconds", "doc.", ["market"], registry=ours)
    for key in counted:
        c.labels(*key).inc(2)
        tc.values[key] = tc.values.get(key, 0) + 2
    for market, seconds in marks:
        g.labels(market).set(seconds)
        tg.values[(market,)] = seconds
    assert generate_latest(ours) == generate_latest(theirs)
