"""Prometheus metrics: what riskd exports, and the one place that updates them.

Labels are only ``market``, ``asset``, ``kind``, ``outcome`` and the like (``move``:
a configured stress step): bounded sets.
Never an account id (per-account detail lives in logs and the query API).
Money is exported in quantums, the asset's smallest integer unit; the
decimals of each asset are published by ``riskd_asset_info`` and
``riskd_asset_decimals``, and each market's settlement asset by ``riskd_market_info``,
so Prometheus can show asset units (deploy/prometheus/riskd-alerts.yml,
group riskd-asset-units) while riskd itself never holds money in a float.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from riskd import __version__, core_build
from riskd.core.events import AdlReason, Effect, FundKind
from riskd.core.mark_guard import GuardReason
from riskd.core.market_status import MarketStatus
from riskd.core.stress import StressRow, move_label
from riskd.effects import EFFECTS, LIQUIDATION_OUTCOMES

__all__ = ["Metrics", "TurnCounter", "TurnGauge", "TurnHistogram", "HistogramChild"]

# ``*_created`` series double the series count and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Batches run from tens of microseconds (a few marks) to tens of milliseconds
# (a cascade): the default buckets (5 ms .. 10 s) would hide all of it.
BATCH_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class _Mailboxes(Collector):
    """Mailbox depth and capacity, read from the actors at scrape time."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, str, str, Callable[[], int], int]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "riskd_actor_mailbox_messages",
            "Messages waiting in an actor's mailbox.",
            labels=["kind", "market", "asset"],
        )
        cap = GaugeMetricFamily(
            "riskd_actor_mailbox_capacity_messages",
            "Capacity of an actor's mailbox; a full mailbox slows the senders.",
            labels=["kind", "market", "asset"],
        )
        for kind, market, asset, read, capacity in self.sources:
            depth.add_metric([kind, market, asset], read())
            cap.add_metric([kind, market, asset], capacity)
        yield depth
        yield cap


class HistogramChild:
    """One label set of a :class:`TurnHistogram`: counts per bucket (the last
    one +Inf) and the sum, in plain lists."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: the first bound >= amount, as prometheus' ``amount <= bound``.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def observe_many(self, amount: float, n: int) -> None:
        """``observe(amount)`` ``n`` times (a turn's batches share one duration)."""
        self.counts[bisect_left(self.bounds, amount)] += n
        total = self.total
        for _ in range(n):  # not amount * n: the same float sum as n observations
            total += amount
        self.total = total


class TurnHistogram(Collector):
    """A histogram observed several times per sequencer turn, from trio's thread.

    What a prometheus-client ``Histogram`` exports, sample for sample, but an
    observation is a ``bisect`` and two additions on plain lists: the
    library's takes a lock per bucket and per sum and walks the buckets in
    Python (~2-3 µs each; three per ingest batch were ~8 % of the turn less
    the core at one update per message).  Observed from one thread only (the
    trio thread: the sequencer, the journal actor), read by the scrape
    thread, which copies the counts first: a scrape between an observation's
    bucket and its sum sees the sum one observation behind, as the library's
    separate locks allow too.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = BATCH_BUCKETS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._le = [
            floatToGoString(b)  # type: ignore[no-untyped-call]
            for b in (*self.bounds, float("inf"))
        ]
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        if not self.labelnames:
            self._children[()] = HistogramChild(self.bounds)
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: labels {self.labelnames}, got {values!r}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HistogramChild(self.bounds)
        return child

    def observe(self, amount: float) -> None:
        self._children[()].observe(amount)

    def observe_many(self, amount: float, n: int) -> None:
        self._children[()].observe_many(amount, n)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            counts, total = list(child.counts), child.total
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(self._le, counts, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, total)
        yield family


class _TurnFamily(Collector):
    """A labelled family whose values trio's thread stores in place.

    ``values`` maps each label set (a tuple of the values) to its value: a
    dict store where a prometheus-client child's ``inc``/``set`` takes a
    lock (~2 µs a call on the sequencer's turn).  Exported as that client's
    own family would be; the scrape thread copies the dict before reading it.
    """

    family: type[CounterMetricFamily] | type[GaugeMetricFamily]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield self.family(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        family = self.family(self.name, self.documentation, labels=self.labelnames)
        for values, value in dict(self.values).items():
            family.add_metric(list(values), value)
        yield family


class TurnCounter(_TurnFamily):
    """A labelled counter the sequencer adds to as a turn goes
    (``values[key] = values.get(key, 0) + n``), instead of building a tally
    per turn and calling a prometheus child per key (exported ``NAME_total``)."""

    family = CounterMetricFamily


class TurnGauge(_TurnFamily):
    """A labelled gauge set in place (a market's last mark time)."""

    family = GaugeMetricFamily


class Metrics:
    """All of riskd's metrics on one registry (a fresh one per daemon or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # A registry of its own (so tests and several daemons in one process
        # do not collide) still carries the process_* (CPU, memory, open fds)
        # and python_* families everyone's dashboards expect; the collectors
        # are stateless readers of /proc and the interpreter, safe to share.
        for shared in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(shared)
        build = Gauge(
            "riskd_build_info",
            "The running riskd: its version, those of Python and grpcio, and whether its"
            " core is compiled (mypyc) or pure Python (value is 1).",
            ["version", "python", "grpcio", "core"],
            registry=r,
        )
        build.labels(__version__, platform.python_version(), grpc.__version__, core_build()).set(1)
        self.asset_info = Gauge(
            "riskd_asset_info",
            "Settlement assets and their decimals (value is 1).",
            ["asset", "decimals"],
            registry=r,
        )
        self.asset_decimals = Gauge(
            "riskd_asset_decimals",
            "Decimals of a settlement asset: a quantum is 10^-decimals of a unit"
            " (for dividing the *_quantums metrics into units).",
            ["asset"],
            registry=r,
        )
        self.market_info = Gauge(
            "riskd_market_info",
            "Markets and their settlement asset, the unit of the market's money metrics"
            " (value is 1).",
            ["market", "asset"],
            registry=r,
        )
        self.fund_balance = Gauge(
            "riskd_insurance_fund_balance_quantums",
            "Insurance fund balance (free + reserved), in quantums of its asset.",
            ["asset"],
            registry=r,
        )
        self.fund_reserved = Gauge(
            "riskd_insurance_fund_reserved_quantums",
            "Part of the fund earmarked for working book-mode liquidations.",
            ["asset"],
            registry=r,
        )
        self.fund_inflow = Counter(
            "riskd_insurance_fund_inflow_quantums",
            "Units paid into the insurance fund, by kind.",
            ["asset", "kind"],
            registry=r,
        )
        self.fund_outflow = Counter(
            "riskd_insurance_fund_outflow_quantums",
            "Units paid out of the insurance fund, by kind.",
            ["asset", "kind"],
            registry=r,
        )
        self.cross_liquidations = Counter(
            "riskd_cross_liquidations",
            "Cross-margin liquidations started, by reason: all_at_once, step_down"
            " (one step) or bankrupt (closed whole); each position closed also counts"
            " in riskd_liquidations_total.",
            ["asset", "reason"],
            registry=r,
        )
        self.liquidations = Counter(
            "riskd_liquidations",
            "Completed liquidations by outcome: surplus (fund took a fee),"
            " absorbed (fund paid a shortfall) or adl (closed against counterparties).",
            ["market", "outcome"],
            registry=r,
        )
        self.adl_events = Counter(
            "riskd_adl_events",
            "Auto-deleveraging executions, by reason: fund_empty, market_cap, drawdown_limit"
            " (the limit that stopped the insurance fund), no_book (the book gave up on a"
            " liquidation order) or backstop (the fund's backstop inventory went bankrupt).",
            ["market", "reason"],
            registry=r,
        )
        self.adl_notional = Counter(
            "riskd_adl_closed_notional_quantums",
            "Notional closed by ADL, in quantums of the settlement asset, by reason.",
            ["market", "reason"],
            registry=r,
        )
        self.adl_overshoot = Counter(
            "riskd_adl_overshoot_quantums",
            "Profit taken from ADL counterparties beyond the deficit it covered, by reason.",
            ["market", "reason"],
            registry=r,
        )
        self.updates = TurnCounter(
            "riskd_updates",
            "Gateway updates by kind and outcome (applied, rejected, duplicate).",
            ["kind", "outcome"],
            registry=r,
        )
        self.batch_seconds = TurnHistogram(
            "riskd_batch_duration_seconds",
            "Time to apply one ingest batch, from sequencing to acknowledgement.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = TurnHistogram(
            "riskd_ingest_queue_seconds",
            "Time an ingest batch waited between being read and being sequenced, by kind:"
            " liquidation_path (only marks and liquidation fills; ahead of the queue) or other.",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.durable_seconds = TurnHistogram(
            "riskd_ingest_durable_seconds",
            "Time from reading an ingest batch to its journal record being durable (its ack"
            " and events released), by kind as riskd_ingest_queue_seconds.",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.journal_commit_seconds = TurnHistogram(
            "riskd_journal_commit_seconds",
            "Time one group commit of the journal took (write and fsync): every acknowledgement"
            " and every event waits for one, or two when it came in during another.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.streams_open = Gauge(
            "riskd_ingest_streams_open", "Open gateway ingest streams.", registry=r
        )
        self.throttled = Counter(
            "riskd_ingest_throttled",
            "Ingest streams ended with RESOURCE_EXHAUSTED: a gateway over its rate limit.",
            registry=r,
        )
        self.paced = Counter(
            "riskd_ingest_paced_seconds",
            "Time ingest streams were not read because their gateway was over its rate limit.",
            registry=r,
        )
        self.denied = Counter(
            "riskd_rpc_denied",
            "Calls refused with PERMISSION_DENIED before reaching a handler (role or identity).",
            registry=r,
        )
        self.subscribers = Gauge("riskd_event_subscribers", "Open event subscriptions.", registry=r)
        self.subscriptions_refused = Counter(
            "riskd_event_subscriptions_refused",
            "Event subscriptions refused with RESOURCE_EXHAUSTED, by the limit reached"
            " (per_identity or total).",
            ["limit"],
            registry=r,
        )
        self.denied_unrecorded = Counter(
            "riskd_rpc_denied_unrecorded",
            "Denied calls over the per-identity record rate: counted here and summarised in"
            " the next denied line (admin audit log, rpc_denied log), not written one by one.",
            registry=r,
        )
        self.frontend_restarts = Counter(
            "riskd_frontend_restarts",
            "Times the ingest front-end process (server.frontend_listen) exited unexpectedly"
            " and was started again.",
            registry=r,
        )
        self.mark_timestamp = TurnGauge(
            "riskd_mark_price_timestamp_seconds",
            "Timestamp of the last mark price applied, per market: the gateway's, or for an"
            " unstamped one (timestamp_ms 0) riskd's clock when it applied it.",
            ["market"],
            registry=r,
        )
        # Per market: the label set a mark stores its time under, made once.
        self._mark_keys: dict[str, tuple[str]] = {}
        self.liquidations_in_progress = Gauge(
            "riskd_liquidations_in_progress",
            "Liquidations started and not yet settled (waiting for the fund, the book or ADL).",
            ["market"],
            registry=r,
        )
        self.mark_guard = Gauge(
            "riskd_mark_guard",
            "1 while a market's mark guard is on for this reason (stale, jump, divergence,"
            " admin): its liquidations are paused and pre-trade checks use the last good mark.",
            ["market", "reason"],
            registry=r,
        )
        self.market_status = Gauge(
            "riskd_market_status",
            "1 for a market's lifecycle status (open, halted, close_only, settled).",
            ["market", "status"],
            registry=r,
        )
        self.fills_unreserved = Counter(
            "riskd_fills_unreserved",
            "Fills applied where a side named none of its open orders (no pre-trade check"
            " reserved margin for it): the trade happened, the gate was bypassed.",
            ["market"],
            registry=r,
        )
        self.invariant_violations = Gauge(
            "riskd_invariant_violations",
            "Invariants (conservation, balanced open interest, no negative balance, no"
            " surviving liquidatable position) found broken by the last periodic check.",
            registry=r,
        )
        self.invariant_check_timestamp = Gauge(
            "riskd_invariant_check_timestamp_seconds",
            "Wall-clock time of the last completed invariant check.",
            registry=r,
        )
        # Stress coverage (riskd.core.stress), refreshed with the invariant check.
        stress_labels = ["asset", "market", "move"]
        self.stress_shortfall = Gauge(
            "riskd_fund_stress_shortfall_quantums",
            "Losses beyond bankruptcy, in quantums of the asset, that the fund would be asked"
            " for if the market's mark moved by `move` now.",
            stress_labels,
            registry=r,
        )
        self.stress_payable = Gauge(
            "riskd_fund_stress_payable_quantums",
            "What the fund could pay of riskd_fund_stress_shortfall_quantums now (its free"
            " balance within the market's loss cap and the drawdown guard).",
            stress_labels,
            registry=r,
        )
        self.stress_coverage = Gauge(
            "riskd_fund_stress_coverage_ratio",
            "riskd_fund_stress_payable_quantums / riskd_fund_stress_shortfall_quantums"
            " (1 when there is no shortfall).",
            stress_labels,
            registry=r,
        )
        self.stress_timestamp = Gauge(
            "riskd_fund_stress_timestamp_seconds",
            "Wall-clock time the stress coverage gauges were last computed.",
            registry=r,
        )
        self._mailboxes = _Mailboxes()
        r.register(self._mailboxes)

    def declare(self, markets: Iterable[str], assets: Iterable[str]) -> None:
        """Create every label set at zero, so the first event is an increase, not a birth."""
        for m in markets:
            for outcome in LIQUIDATION_OUTCOMES:
                self.liquidations.labels(m, outcome)
            for reason in AdlReason:
                self.adl_events.labels(m, reason.value)
                self.adl_notional.labels(m, reason.value)
                self.adl_overshoot.labels(m, reason.value)
            self.liquidations_in_progress.labels(m)
            self.fills_unreserved.labels(m)
            self.market_state(m, MarketStatus.OPEN, None)
        for lane in ("liquidation_path", "other"):
            self.queue_seconds.labels(lane)
            self.durable_seconds.labels(lane)
        for limit in ("per_identity", "total"):
            self.subscriptions_refused.labels(limit)
        for a in assets:
            for why in ("all_at_once", "step_down", "bankrupt"):
                self.cross_liquidations.labels(a, why)
            self.fund_balance.labels(a).set(0)
            self.fund_reserved.labels(a).set(0)
            for kind in FundKind:
                self.fund_inflow.labels(a, kind.value)
                self.fund_outflow.labels(a, kind.value)

    def mark_applied(self, market: str, seconds: float) -> None:
        """riskd_mark_price_timestamp_seconds of ``market``: a mark was applied."""
        key = self._mark_keys.get(market)
        if key is None:
            key = self._mark_keys[market] = (market,)
        self.mark_timestamp.values[key] = seconds

    def market_state(self, market: str, status: MarketStatus, guard: GuardReason | None) -> None:
        """A market's lifecycle status and mark guard, each label set at 1 or 0."""
        for st in MarketStatus:
            self.market_status.labels(market, st.value).set(1 if st is status else 0)
        for reason in GuardReason:
            self.mark_guard.labels(market, reason.value).set(1 if reason is guard else 0)

    def describe(
        self, assets: Iterable[tuple[str, int]], markets: Iterable[tuple[str, str]]
    ) -> None:
        """Publish each asset's decimals and each market's settlement asset."""
        for asset, decimals in assets:
            self.asset_info.labels(asset, str(decimals)).set(1)
            self.asset_decimals.labels(asset).set(decimals)
        for market, asset in markets:
            self.market_info.labels(market, asset).set(1)

    def stress(self, rows: Iterable[StressRow], now: float) -> None:
        """Publish one stress computation (rows from :func:`riskd.core.stress.every_market`)."""
        for row in rows:
            labels = (row.asset, row.market, move_label(row.move_ppm))
            self.stress_shortfall.labels(*labels).set(row.shortfall)
            self.stress_payable.labels(*labels).set(row.payable)
            self.stress_coverage.labels(*labels).set(row.coverage_ppm / 1_000_000)
        self.stress_timestamp.set(now)

    def watch_mailbox(
        self, kind: str, market: str, asset: str, read: Callable[[], int], capacity: int
    ) -> None:
        self._mailboxes.sources.append((kind, market, asset, read, capacity))

    def observe(self, effects: Iterable[Effect]) -> None:
        """Count what a batch of published effects says happened (:data:`riskd.effects.EFFECTS`)."""
        table = EFFECTS
        for e in effects:
            kind = table.get(type(e))
            if kind is not None and kind.observe is not None:
                kind.observe(self, e)
