"""The sequencer: the one place every state-changing input gets its turn.

Gateways stream batches concurrently; the sequencer takes them one at a time,
drops what a gateway already sent (its sequence numbers), refuses gaps, splits
each batch into runs of consecutive updates for the same actor and waits for
each run before sending the next.  The result is one total order of inputs,
applied exactly as :meth:`riskd.core.Engine.apply` would apply them in that
order: a restart that replays the same order rebuilds the same state, and a
test can compare the daemon's digest with the pure engine's.

Actors still own their state and run concurrently with queries; what the
sequencer removes is nondeterminism between markets that share a fund.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

from riskd.actors.actor import Actor
from riskd.actors.cross import CrossMargin
from riskd.actors.fund import FundActor
from riskd.actors.journal import Durable, JournalActor
from riskd.actors.market import MarketActor
from riskd.actors.wallet import WalletActor
from riskd.core import (
    Asset,
    Engine,
    InsuranceFund,
    MarketEngine,
    MarketSpec,
    OrderRefused,
    Rejected,
    Wallets,
)
from riskd.core.engine import check_new_asset, check_new_market
from riskd.core.errors import Code
from riskd.core.events import CheckOrder, FundInjection, Input, SettleMarket, Withdrawal
from riskd.core.inputs import KINDS, Journal, Owner, kind_of
from riskd.core.insurance_fund import FundPolicy
from riskd.core.invariants import digest, violations
from riskd.core.market_status import MarketStatus
from riskd.core.recent_ids import (
    DEFAULT_CAPACITY,
    WithdrawalDecision,
    WithdrawalDecisions,
    check_id,
)
from riskd.core.risk_gate import available
from riskd.core.tiers import SpecError
from riskd.core.units import check_positive
from riskd.core.wallet import check_account, unsettled_bad_debt, withdrawals_paused
from riskd.errors import RiskdError
from riskd.metrics import HistogramChild, Metrics
from riskd.storage import codec, records
from riskd.storage.records import (
    AdminInput,
    AssetAdded,
    EpochAssigned,
    FundInjected,
    IngestBatch,
    MarketAdded,
    MarketSettings,
    MarketUpdated,
    Record,
    WithdrawalDecided,
)

__all__ = [
    "Sequencer",
    "SequenceError",
    "SettingsConflict",
    "Reconciled",
    "BatchResult",
    "Posted",
    "Update",
    "StoredRejection",
]

T = TypeVar("T")
#: Sequences per gateway whose rejections are kept for a reconnect (the
#: default stream_window × max_batch_updates).
DEFAULT_RETAINED_SEQUENCES = 64 * 4096
#: Rejections at most in a stream's first response (a few hundred bytes each).
MAX_RESUME_REJECTIONS = 8_192

#: One decoded update: its gateway sequence number and the input, or why it
#: could not be decoded.
Update = tuple[int, Input | Rejected]
#: A rejection kept for a gateway that may not have read its ack: sequence,
#: index in its batch, the input's type name ("" if it did not decode), code
#: value, field, message and a refused order's reason ("": none; absent from
#: those kept before the risk gate).  Plain values: it is pickled into snapshots.
StoredRejection = tuple[int, int, str, str, str, str, str]


class SequenceError(RiskdError):
    """A batch out of order for its gateway: the stream must be refused."""

    def __init__(self, code: Code, field: str, message: str, expected: int) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message
        self.expected = expected


#: Appended to a gateway's name for its unary CheckOrder session: a control
#: character no gateway name may contain (convert.check_symbol).
UNARY_SESSION = "\x1fcheck_order"


@dataclass(frozen=True, slots=True)
class OrderCheck:
    """A unary check's answer: ``refused`` None when accepted; the order's
    reservation and what the account can still commit after it."""

    refused: Rejected | None
    reserved: int
    available: int


@dataclass(slots=True)
class BatchResult:
    acked: int
    rejections: list[tuple[int, Rejected]] = field(default_factory=list)
    duplicates: int = 0
    #: Rejections of resent (duplicate) updates, as first decided.
    repeated: list[StoredRejection] = field(default_factory=list)


@dataclass(slots=True)
class Resume:
    """What a (re)connecting gateway is told first."""

    acked: int
    #: Every rejection with sequence in [rejections_from, acked] (0: none kept).
    rejections_from: int
    rejections: list[StoredRejection]
    #: The epoch the stream writes in: the one it named, or the one assigned to it.
    epoch: int = 0


@dataclass(slots=True)
class _Gateway:
    epoch: int = 0
    last: int = 0  # applied
    durable: int = 0  # applied and in the journal: what a reconnecting gateway is told
    #: Rejections of the last retained sequences, oldest first.
    rejected: deque[StoredRejection] = field(default_factory=deque)

    def __setstate__(self, state: tuple[None, dict[str, object]] | list[object]) -> None:
        # Snapshots from before ``rejected`` existed do not name it.
        self.rejected = deque()
        values: Iterable[tuple[str, object]]
        if isinstance(state, tuple):  # (None, {slot: value})
            values = state[1].items()
        else:  # a list of the fields' values, in order
            values = zip(("epoch", "last", "durable", "rejected"), state, strict=False)
        for name, value in values:
            setattr(self, name, value)


#: One batch as the bridge posts it: gateway, epoch, its updates, when it was
#: read (``time.perf_counter()``; None: not measured) and its lane.
Posted = tuple[str, int, Sequence[Update], float | None, str]


#: What the bridge hears of a posted batch, once durable.
Answer = Durable[BatchResult | SequenceError]


@dataclass(slots=True)
class _Sequenced:
    """A batch given its place in the order, on its way through one turn."""

    g: _Gateway
    gateway: str
    epoch: int
    fresh: list[Update]
    #: Where ``fresh`` began in the gateway's request (the duplicates before it).
    offset: int
    result: BatchResult
    #: The first and last sequence of the duplicates it began with, if any.
    resent: tuple[int, int] | None
    #: When it was read (``time.perf_counter()``) and the durable-time histogram
    #: of its lane; None: not measured (replay, unary writes).
    received: float | None = None
    durable_seconds: HistogramChild | None = None


#: Per streamed input class: whether a market (else a wallet) applies it, and
#: the field naming which (:meth:`Sequencer._owner`, looked up once per class).
_ROUTES: dict[type, tuple[bool, str]] = {
    k.cls: (k.owner is Owner.MARKET, k.key)
    for k in KINDS.values()
    if k.journal is Journal.INGEST and k.owner in (Owner.MARKET, Owner.WALLET)
}


@dataclass(slots=True)
class _Run:
    """Consecutive fresh updates for one actor, across the batches of a turn."""

    actor: MarketActor | WalletActor
    items: list[Input]
    #: The ``(sequence, input)`` of each item, as the batch holds it.
    pairs: list[Update]
    #: ``(index of its first item, batch)`` for each batch the run spans.
    starts: list[tuple[int, _Sequenced]]

    def batch_of(self, i: int) -> _Sequenced:
        """The batch the run's item ``i`` came in."""
        at = bisect.bisect_right(self.starts, i, key=_start_index) - 1
        return self.starts[at][1]


#: riskd_updates_total's label sets (``self._tally``'s keys), made once.
_DUPLICATE = ("any", "duplicate")
_CHECK_REFUSED = (CheckOrder.__name__, "rejected")
_APPLIED_KEYS: dict[type, tuple[str, str]] = {}


def _applied_key(kind: type) -> tuple[str, str]:
    """``(kind's name, "applied")``, one tuple per input class."""
    key = _APPLIED_KEYS.get(kind)
    if key is None:
        key = _APPLIED_KEYS[kind] = (kind.__name__, "applied")
    return key


def _start_index(start: tuple[int, _Sequenced]) -> int:
    return start[0]


def _first(t: tuple[int, Rejected]) -> int:
    return t[0]


def _durable_up_to(b: _Sequenced) -> Callable[[], None]:
    """What to run once a batch is durable: a reconnect is told it is (same
    epoch), and how long it took from being read is measured."""
    g, epoch, acked = b.g, b.epoch, b.result.acked
    received, histogram = b.received, b.durable_seconds

    def durable() -> None:
        if g.epoch == epoch:
            g.durable = max(g.durable, acked)
        if received is not None and histogram is not None:
            histogram.observe(time.perf_counter() - received)

    return durable


class Sequencer(Actor):
    def __init__(
        self,
        markets: dict[str, MarketActor],
        wallets: dict[str, WalletActor],
        funds: dict[str, FundActor],
        metrics: Metrics,
        capacity: int,
        *,
        withdrawal_ids: int = DEFAULT_CAPACITY,
        retained_sequences: int = DEFAULT_RETAINED_SEQUENCES,
    ) -> None:
        super().__init__("sequencer", capacity)
        self.markets = markets
        self.wallets = wallets
        self.funds = funds
        self.metrics = metrics
        self.gateways: dict[str, _Gateway] = {}
        #: riskd_updates_total by (kind, outcome), added to in place as a turn goes.
        self._tally = metrics.updates.values
        #: Per lane: the queue-time and the durable-time histograms' children.
        self._waited: dict[str, tuple[HistogramChild, HistogramChild]] = {}
        # Decisions on withdrawal ids, per asset, make retries safe; rebuilt by replay.
        self.withdrawal_ids = withdrawal_ids
        self.withdrawals: dict[str, WithdrawalDecisions] = {}
        self.retained_sequences = retained_sequences
        #: Where sequenced inputs go before they are acknowledged; None while
        #: replaying (or when running without durability, as some tests do).
        self.journal: JournalActor | None = None
        #: Events published so far (riskd.daemon numbers them): part of the
        #: state, so a replay from a snapshot numbers the next ones the same.
        self.events = 0
        #: The config file's market settings as last journaled (MarketSettings):
        #: what the next start compares the file with.  None: never journaled
        #: (a data directory of format 1).
        self.file_settings: dict[str, MarketSpec] | None = None
        #: Starts the actor of a market added at runtime (set by riskd.daemon;
        #: None: markets cannot be added, as in tools without a nursery).
        self.spawn: Callable[[MarketEngine], Awaitable[MarketActor]] | None = None
        #: The settlement assets markets may be added in (riskd.daemon: the
        #: config's, and those added at runtime).
        self.assets: dict[str, Asset] = {}
        #: Starts the wallet and fund actors of an asset added at runtime and
        #: puts them in ``wallets`` and ``funds`` (set by riskd.daemon; None:
        #: assets cannot be added).
        self.spawn_asset: Callable[[Asset, FundPolicy], Awaitable[None]] | None = None
        #: Assets added at runtime (journaled AssetAdded), whether or not the
        #: file declares them since.
        self.added_assets: dict[str, Asset] = {}
        #: Assets a snapshot holds that no actor runs yet: :meth:`adopt_restored`.
        self.restored_assets: dict[str, tuple[Asset, Wallets, InsuranceFund]] = {}
        #: Markets a snapshot holds that no actor runs yet (added at runtime):
        #: :meth:`adopt_restored` starts them.
        self.restored: dict[str, MarketEngine] = {}
        #: Markets added at runtime (journaled MarketAdded), whether or not the
        #: file declares them since.
        self.added: set[str] = set()
        #: Cross accounts re-checked across the market and wallet actors.
        self.cross = CrossMargin(markets, wallets)
        #: riskd's clock in timestamp_ms, the one gateway stamps are checked
        #: against: it stamps operator inputs when they are sequenced.
        self.clock: Callable[[], int] = now_ms

    def resume(self, gateway: str, epoch: int) -> Resume:
        """The last durable sequence and the kept rejections up to it.

        A gateway that dropped its stream before reading an ack learns here
        what it missed: every rejection of the retained sequences (the last
        ``retained_sequences``, stream_window × max_batch_updates) at or below
        the acknowledged one.
        """
        g = self.gateways.get(gateway)
        if g is None or g.epoch != epoch or not g.durable:
            return Resume(0, 0, [])
        start = max(1, g.last - self.retained_sequences + 1)
        kept = [r for r in g.rejected if r[0] <= g.durable]
        if len(kept) > MAX_RESUME_REJECTIONS:
            # One response must stay under gRPC's 4 MB message limit: the newest
            # ones, and rejections_from says where they start.
            start = kept[-MAX_RESUME_REJECTIONS - 1][0] + 1
            kept = kept[-MAX_RESUME_REJECTIONS:]
        return Resume(g.durable, min(start, g.durable), kept)

    async def open_session(self, gateway: str, epoch: int) -> Durable[Resume]:
        """Where a new stream starts; ``epoch`` 0 asks for a fresh epoch.

        A fresh epoch is one above the newest this gateway used, so no
        (epoch, sequence) pair of an earlier session can be mistaken for a
        resend (as Kafka's InitProducerId).  It is journaled and the stream
        hears of it only once that is durable: a restart can never hand it out
        again.  Any other epoch is the gateway resuming (or fencing with) one
        it owns, as before fresh epochs existed: :meth:`resume`.
        """
        if epoch:
            resume = self.resume(gateway, epoch)
            resume.epoch = epoch
            return Durable.ready(resume)
        g = self.gateways.get(gateway)
        fresh = (g.epoch if g is not None else 0) + 1
        if fresh >= 2**63:
            raise Rejected.invalid(
                "x-riskd-epoch", f"{gateway!r} used the largest epoch; name one explicitly"
            )
        self._begin_epoch(gateway, fresh)
        return await self._durable(EpochAssigned(gateway, fresh), Resume(0, 0, [], fresh))

    def _begin_epoch(self, gateway: str, epoch: int) -> _Gateway:
        """Make ``epoch`` the gateway's current one, numbered from 1 again."""
        g = self.gateways.get(gateway)
        if g is None:
            g = self.gateways[gateway] = _Gateway(epoch)
        else:
            g.epoch, g.last, g.durable = epoch, 0, 0
            g.rejected.clear()
        return g

    async def flushed(self) -> Durable[None]:
        """Released once everything sequenced before it is durable (a stream's end)."""
        return await self._durable(None, None)

    async def _durable(self, record: Record | None, value: T) -> Durable[T]:
        """Journal ``record`` (None: nothing new) and release ``value`` once durable."""
        if self.journal is None:
            return Durable.ready(value)
        return await self.journal.submit(None if record is None else codec.encode(record), value)

    async def ingest(
        self, gateway: str, epoch: int, updates: Sequence[Update], offset: int = 0
    ) -> Durable[BatchResult]:
        """Apply a gateway's batch; ``offset`` is where ``updates`` began in the
        gateway's request (journal replay: the duplicates dropped before it)."""
        started = time.perf_counter()
        batch = self._sequence(gateway, epoch, updates, offset)
        await self._apply_runs([batch])
        (done,) = await self._conclude([batch], started)
        return done

    async def ingest_or_error(
        self,
        gateway: str,
        epoch: int,
        updates: Sequence[Update],
        received: float | None = None,
        lane: str = "other",
    ) -> Durable[BatchResult | SequenceError]:
        """:meth:`ingest_group` of one batch."""
        (done,) = await self.ingest_group([(gateway, epoch, updates, received, lane)])
        return done

    async def ingest_group(self, posted: Sequence[Posted]) -> list[Answer]:
        """Apply batches (of any streams) in the order given, as one turn.

        Exactly what :meth:`ingest` of each in turn would do, and journaled as
        one record per batch, but consecutive updates for the same actor go to
        it in one call even across batches, and the records are queued for the
        journal together: at one update per message a turn per batch cost
        several trio hops per update.  A batch out of order is answered with
        its :class:`SequenceError` (a result: the stream is refused, the
        others go on).  ``received`` (``time.perf_counter()`` when a batch
        was read) measures how long it waited for its turn, per ``lane``
        (``liquidation_path`` for the urgent lane, ``other``).
        """
        started = time.perf_counter()
        answers: list[Answer | None] = []
        batches: list[_Sequenced] = []
        for gateway, epoch, updates, received, lane in posted:
            durable_seconds = None
            if received is not None:
                histograms = self._waited.get(lane)
                if histograms is None:
                    histograms = self._waited[lane] = (
                        self.metrics.queue_seconds.labels(lane),
                        self.metrics.durable_seconds.labels(lane),
                    )
                histograms[0].observe(started - received)
                durable_seconds = histograms[1]
            try:
                b = self._sequence(gateway, epoch, updates, 0)
            except SequenceError as e:
                answers.append(Durable.ready(e))
            else:
                b.received, b.durable_seconds = received, durable_seconds
                batches.append(b)
                answers.append(None)
        await self._apply_runs(batches)
        # A batch's Durable[BatchResult] answers as Durable[BatchResult | SequenceError].
        done = iter(cast(list[Answer], await self._conclude(batches, started)))
        return [a if a is not None else next(done) for a in answers]

    def _sequence(
        self,
        gateway: str,
        epoch: int,
        updates: Sequence[Update],
        offset: int,
    ) -> _Sequenced:
        """A batch's place in its gateway's order: the fresh updates, the
        duplicates' answers; a gap or a stale epoch raises SequenceError."""
        g = self.gateways.get(gateway)
        if g is None or epoch > g.epoch:
            g = self._begin_epoch(gateway, epoch)
        elif epoch < g.epoch:
            raise SequenceError(
                Code.FAILED_PRECONDITION,
                "epoch",
                f"epoch {epoch} is older than the current epoch {g.epoch}",
                0,
            )
        fresh, duplicates = self._fresh(g, updates)
        result = BatchResult(g.last + len(fresh), duplicates=duplicates)
        resent = None
        if duplicates:
            tally = self._tally
            tally[_DUPLICATE] = tally.get(_DUPLICATE, 0) + duplicates
            resent = (updates[0][0], updates[duplicates - 1][0])
        # Taken now: a later batch of the same gateway in this turn follows it.
        g.last = result.acked
        return _Sequenced(g, gateway, epoch, fresh, offset + duplicates, result, resent)

    async def _apply_runs(self, batches: Sequence[_Sequenced]) -> None:
        """Every fresh update of ``batches``, in order, one call per run of one actor."""
        runs: list[_Run] = []
        run: _Run | None = None
        markets, wallets, routes, tally = self.markets, self.wallets, _ROUTES, self._tally
        for b in batches:
            if run is not None:
                run.starts.append((len(run.pairs), b))
            for pair in b.fresh:
                u = pair[1]
                try:
                    if isinstance(u, Rejected):  # refused at decoding
                        raise u
                    route = routes.get(type(u))
                    actor: MarketActor | WalletActor | None = None
                    if route is not None:
                        actor = (markets if route[0] else wallets).get(getattr(u, route[1]))
                    if actor is None:  # routed nowhere: say why
                        actor = self._owner(u)
                except Rejected as r:
                    b.result.rejections.append((pair[0], r))
                    key = (type(u).__name__, "rejected")
                    tally[key] = tally.get(key, 0) + 1
                    continue
                if run is None or actor is not run.actor:
                    run = _Run(actor, [], [], [(0, b)])
                    runs.append(run)
                run.items.append(u)
                run.pairs.append(pair)
        for run in runs:
            actor, items = run.actor, run.items
            if isinstance(actor, MarketActor):  # re-checks cross accounts as it goes
                done = await self.cross.apply(actor, items)
            else:
                done = await _apply(actor, items)
            applied: Counter[type] | dict[type, int] = (
                {type(items[0]): 1} if len(items) == 1 else Counter(map(type, items))
            )
            if done.count(None) != len(done):  # some refused (most runs: none)
                for i, refused in enumerate(done):
                    if refused is not None:
                        kind = type(items[i])
                        applied[kind] -= 1
                        key = (kind.__name__, "rejected")
                        tally[key] = tally.get(key, 0) + 1
                        run.batch_of(i).result.rejections.append((run.pairs[i][0], refused))
            for kind, n in applied.items():
                if n:
                    key = _applied_key(kind)
                    tally[key] = tally.get(key, 0) + n

    async def _conclude(
        self,
        batches: Sequence[_Sequenced],
        started: float,
    ) -> list[Durable[BatchResult]]:
        """Count, keep the rejections, and queue each batch's record: its answer,
        released once that record is durable."""
        records: list[tuple[str | None, BatchResult, Callable[[], None] | None]] = []
        for b in batches:
            result, g = b.result, b.g
            if b.resent is not None:
                # Here, not when sequenced: the first sending may be earlier in this turn.
                result.repeated = self._repeated(g, *b.resent)
            if result.rejections:
                result.rejections.sort(key=_first)
            record = None
            if b.fresh:
                record = codec.encode_ingest(b.gateway, b.epoch, b.fresh, b.offset)
                if result.rejections or g.rejected:  # else nothing to keep or drop
                    self._keep(g, result, b.fresh, b.fresh[0][0] - b.offset)
            records.append((record, result, _durable_up_to(b)))
        self.metrics.batch_seconds.observe_many(time.perf_counter() - started, len(batches))
        if self.journal is None:
            for b in batches:
                b.g.durable = b.g.last
            return [Durable.ready(r) for _, r, _ in records]
        return await self.journal.submit_many(records)

    def _keep(
        self,
        g: _Gateway,
        result: BatchResult,
        fresh: list[Update],
        base: int,
    ) -> None:
        """Keep this batch's rejections for a reconnect (``base``: the sequence at index 0)."""
        kept = g.rejected
        for seq, r in result.rejections:
            u = fresh[seq - fresh[0][0]][1]
            kind = "" if isinstance(u, Rejected) else type(u).__name__
            reason = r.reason.value if isinstance(r, OrderRefused) else ""
            kept.append((seq, seq - base, kind, r.code.value, r.field, r.message, reason))
        # From this batch's last sequence, not the gateway's: later batches of
        # the same turn are sequenced already.
        oldest = result.acked - self.retained_sequences
        while kept and kept[0][0] <= oldest:
            kept.popleft()

    @staticmethod
    def _repeated(g: _Gateway, first: int, last: int) -> list[StoredRejection]:
        """The kept rejections of the resent sequences ``first..last``."""
        out: list[StoredRejection] = []
        for r in reversed(g.rejected):  # resends are of the newest sequences
            if r[0] < first:
                break
            if r[0] <= last:
                out.append(r)
        out.reverse()
        return out

    @staticmethod
    def _fresh(g: _Gateway, updates: Sequence[Update]) -> tuple[list[Update], int]:
        """The updates not applied yet; a gap refuses the whole batch."""
        expected = g.last + 1
        fresh: list[Update] = []
        duplicates = 0
        for pair in updates:
            seq = pair[0]
            if seq < expected and not fresh:
                duplicates += 1
                continue
            if seq != expected:
                raise SequenceError(
                    Code.FAILED_PRECONDITION,
                    "sequence",
                    f"sequence {seq} out of order: expected {expected}",
                    g.last + 1,
                )
            fresh.append(pair)
            expected += 1
        return fresh, duplicates

    def _owner(self, u: Input) -> MarketActor | WalletActor:
        """The actor a streamed input goes to (:data:`riskd.core.inputs.KINDS`)."""
        kind = kind_of(u)
        if kind.journal is not Journal.INGEST:
            raise Rejected.invalid("kind", f"{kind.name} is not a streamed update")
        table: dict[str, MarketActor] | dict[str, WalletActor]
        table = self.markets if kind.owner is Owner.MARKET else self.wallets
        key = kind.owner_of(u)
        actor = table.get(key)
        if actor is None:
            raise Rejected.not_found(kind.key, f"unknown {kind.key} {key!r}")
        return actor

    # --- unary writes, sequenced like everything else ------------------------

    async def check_order(self, gateway: str, c: CheckOrder) -> Durable[OrderCheck]:
        """The unary pre-trade check: ``c`` sequenced as a one-update batch.

        It goes through :meth:`ingest` in the gateway's unary session (its
        name followed by :data:`UNARY_SESSION`, epoch 1, numbered here), so it
        is journaled, replayed and snapshotted exactly as a streamed
        ``check_order``; nobody resumes that session, so its rejections are
        not kept.  The answer adds what the check reserved and what the
        account has left, read before anything else is sequenced.
        """
        (done,) = await self.check_orders([(gateway, c)])
        return done

    async def check_orders(self, checks: list[tuple[str, CheckOrder]]) -> list[Durable[OrderCheck]]:
        """:meth:`check_order` of each ``(gateway, check)`` in turn, as one turn.

        Consecutive checks on one market that no cross wallet is involved in
        go to it in one call, which applies each and reads its figures before
        the next (:meth:`MarketActor.apply_each_and_read`): the same records
        and answers as one by one, with a round trip of the sequencer per run
        instead of several per check (the unary ``CheckOrder``'s CPU).
        """
        out: list[Durable[OrderCheck]] = []
        i = 0
        while i < len(checks):
            market = self.markets.get(checks[i][1].market)
            j = i
            while (
                j < len(checks)
                and market is not None
                and checks[j][1].market == market.engine.symbol
                and _isolated(market.engine, checks[j][1])
            ):
                j += 1
            if j > i:
                assert market is not None
                out += await self._check_isolated(market, checks[i:j])
                i = j
            else:
                out.append(await self._check_one(*checks[i]))
                i += 1
        return out

    async def _check_one(self, gateway: str, c: CheckOrder) -> Durable[OrderCheck]:
        """:meth:`check_order` through :meth:`ingest` (a cross account, an unknown market)."""
        session = gateway + UNARY_SESSION
        g = self.gateways.get(session)
        seq = (g.last if g is not None else 0) + 1
        done = await self.ingest(session, 1, [(seq, c)])
        self.gateways[session].rejected.clear()
        refused = done.value.rejections[0][1] if done.value.rejections else None
        reserved = left = 0
        market = self.markets.get(c.market)
        if market is not None:
            reserved, left = await market.call_here(market.query, partial(_order_margin, c))
            if c.account in market.engine.cross:  # the whole cross wallet's figure
                allowance = await self.cross._order_allowance(market, c.account)
                here = await market.call_here(market.query, partial(_cross_reserved, c.account))
                left = allowance - here
        return done.follow(OrderCheck(refused, reserved, left))

    async def _check_isolated(
        self, market: MarketActor, run: list[tuple[str, CheckOrder]]
    ) -> list[Durable[OrderCheck]]:
        """:meth:`check_order` of orders on ``market`` no cross wallet is involved
        in: what :meth:`ingest` does with each, one record each, but applied and
        their figures read in one turn of the market."""
        started = time.perf_counter()
        batches: list[_Sequenced] = []
        for gateway, c in run:
            g = self.gateways.get(gateway + UNARY_SESSION)
            seq = (g.last if g is not None else 0) + 1
            batches.append(self._sequence(gateway + UNARY_SESSION, 1, [(seq, c)], 0))
        checks = [c for _, c in run]
        answers: list[tuple[Rejected | None, tuple[int, int]]] = []
        while len(answers) < len(checks):
            answers += await market.call_here(
                market.apply_each_and_read, checks[len(answers) :], _order_margin
            )
            due, market.cross_due = market.cross_due, []
            if due:  # as CrossMargin.apply: re-checked before the figures are read
                last = checks[len(answers) - 1]
                await self.cross.settle([(market.engine.asset, a) for a in due], last.ts)
                figures = await market.call_here(market.query, partial(_order_margin, last))
                answers[-1] = (answers[-1][0], figures)
        for b, (refused, _) in zip(batches, answers, strict=True):
            if refused is not None:
                b.result.rejections.append((b.fresh[0][0], refused))
        rejected = sum(1 for refused, _ in answers if refused is not None)
        tally = self._tally
        counted = ((_applied_key(CheckOrder), len(answers) - rejected), (_CHECK_REFUSED, rejected))
        for key, n in counted:
            if n:
                tally[key] = tally.get(key, 0) + n
        done = await self._conclude(batches, started)
        for b in batches:
            b.g.rejected.clear()
        return [
            d.follow(OrderCheck(refused, *figures))
            for d, (refused, figures) in zip(done, answers, strict=True)
        ]

    async def withdraw(
        self, w: Withdrawal, withdrawal_id: int, replaying: bool = False
    ) -> Durable[WithdrawalDecision]:
        """Approve or refuse a withdrawal (with the wallet balance either way), once per id.

        The same id with the same request gets the same decision without moving
        money twice; with a different request, or an id too old to tell
        (:class:`~riskd.core.recent_ids.WithdrawalDecisions`), it is refused
        with FAILED_PRECONDITION on ``withdrawal_id``.  While a bankrupt
        liquidation in the asset is unsettled, new withdrawals are refused on
        ``asset`` and remembered nowhere: the same id goes through later.
        Journal replay skips that check: a journaled withdrawal passed it when
        it was decided (also one journaled before the check existed, whose
        money has left).
        """
        wallet = self.wallets.get(w.asset)
        if wallet is None:
            raise Rejected.not_found("asset", f"unknown asset {w.asset!r}")
        check_id(withdrawal_id, "withdrawal_id")
        check_account(w.account, "account")
        check_positive(w.amount, "amount")
        if not replaying and not w.ts:  # the journal says when it was decided
            w = dataclasses.replace(w, ts=self.clock())
        memory = self.withdrawals.get(w.asset)
        if memory is None:
            memory = self.withdrawals[w.asset] = WithdrawalDecisions(self.withdrawal_ids)
        try:
            seen = memory.recall(withdrawal_id, w.account, w.amount)
            if seen is None and not replaying:
                paused = await self._withdrawals_paused(w.asset)
                if paused is not None:
                    raise paused
        except Rejected:
            # What it was decided on may not be durable yet: answer after it is.
            await (await self.flushed()).wait()
            raise
        if seen is not None:  # a retry: the decision may still be on its way to disk
            return await self._durable(None, seen)
        try:  # a cross account: never unrealised profit, never below its initial margin
            await self.cross.release(w.asset, w.account, w.amount, "amount")
        except Rejected as r:
            decision = WithdrawalDecision(
                False, await wallet.call_here(wallet.balance, w.account), r.message
            )
        else:
            decision = await wallet.call_here(wallet.withdraw, w)
        memory.record(withdrawal_id, w.account, w.amount, decision)
        return await self._durable(WithdrawalDecided(withdrawal_id, w), decision)

    async def _withdrawals_paused(self, asset: str) -> Rejected | None:
        """:func:`~riskd.core.wallet.withdrawals_paused`, from the actors' state now.

        Every market has settled what the sequencer sent it (each run was
        awaited), and their messages to the fund are ahead of this one, so
        replaying the journal reaches the same answer.
        """
        unsettled: list[tuple[str, int, str]] = []
        for m in self.markets.values():
            if m.engine.asset == asset:
                unsettled += await m.call_here(m.query, unsettled_bad_debt)
        fund = self.funds.get(asset)
        reserved = 0 if fund is None else await fund.call_here(_reserved, fund)
        return withdrawals_paused(asset, unsettled, reserved)

    async def inject(self, i: FundInjection, replaying: bool = False) -> Durable[int]:
        fund = self.funds.get(i.asset)
        if fund is None:
            raise Rejected.not_found("asset", f"unknown asset {i.asset!r}")
        if not replaying and not i.ts:
            i = dataclasses.replace(i, ts=self.clock())
        balance = await fund.call_here(fund.inject, i)
        return await self._durable(FundInjected(i), balance)

    async def update_spec(
        self, symbol: str, changes: dict[str, object], ts: int | None = None
    ) -> Durable[MarketSpec]:
        """Change a market's settings (see MarketEngine.update_spec); journaled.

        ``ts`` None: stamped now (an operator's change); replay passes the
        journaled one."""
        market = self.markets.get(symbol)
        if market is None:
            raise Rejected.not_found("market", f"unknown market {symbol!r}")
        if ts is None:
            ts = self.clock()
        spec = await market.call(_update_spec, market.engine, changes, ts)
        return await self._durable(MarketUpdated(symbol, changes, ts), spec)

    async def admin_input(self, x: Input, replaying: bool = False) -> Durable[int]:
        """An operator's change to a market (``Journal.ADMIN`` kinds: status,
        mark guard, settlement), applied between two inputs and journaled;
        answers how many positions the market held just before it."""
        kind = kind_of(x)
        if kind.journal is not Journal.ADMIN:
            raise Rejected.invalid("kind", f"{kind.name} is not an admin change")
        symbol = kind.owner_of(x)
        market = self.markets.get(symbol)
        if market is None:
            raise Rejected.not_found("market", f"unknown market {symbol!r}")
        if not replaying and not x.ts:
            # Stamped here, in the order it takes, and journaled with its stamp:
            # replay gives the same events (and staleness, cool-downs) again.
            x = dataclasses.replace(x, ts=self.clock())
        # Nothing else writes to the market meanwhile: the sequencer is its only writer.
        held = len(market.engine.positions)
        if isinstance(x, SettleMarket):  # its cross positions need their wallets
            await self.cross.settle_market(market, x)
        else:
            [refused] = await _apply(market, [x])
            if refused is not None:
                raise refused
        return await self._durable(AdminInput(x), held)

    async def add_market(
        self, spec: MarketSpec, replaying: bool = False, ts: int | None = None
    ) -> Durable[MarketSpec]:
        """A market begins at runtime (``AdminService.AddMarket``), journaled.

        Its actor starts now; replay starts it again from the record, so the
        market survives a restart without being in the configuration file.
        A market the file declares too (added there after) keeps the recorded
        settings; the file's changes apply as an edit (:meth:`reconcile`).
        """
        if replaying and spec.symbol in self.markets:
            existing = self.markets[spec.symbol]
            await existing.call(_install, existing, spec)
            self.added.add(spec.symbol)
            return Durable.ready(spec)
        check_new_market(spec, self.markets, self.assets)
        if self.spawn is None:
            raise Rejected.precondition("market", "markets cannot be added here")
        self.markets[spec.symbol] = await self.spawn(MarketEngine(spec))
        self.added.add(spec.symbol)
        stamp = self.clock() if ts is None else ts
        return await self._durable(MarketAdded(spec, stamp), spec)

    async def add_asset(
        self, asset: Asset, fund: FundPolicy, ts: int | None = None, replaying: bool = False
    ) -> Durable[Asset]:
        """A settlement asset begins at runtime (``AdminService.AddAsset``), journaled.

        Its wallet and fund actors start now, before anything can name the
        asset; replay starts them again from the record.  An asset the file
        declares too (added there after) keeps the file's fund policy, as every
        declared asset does.
        """
        if replaying and asset.symbol in self.assets:
            self.added_assets[asset.symbol] = asset  # reconcile compares the decimals
            return Durable.ready(asset)
        check_new_asset(asset, self.assets)
        if self.spawn_asset is None:
            raise Rejected.precondition("symbol", "assets cannot be added here")
        await self.spawn_asset(asset, fund)
        self.assets[asset.symbol] = asset
        self.added_assets[asset.symbol] = asset
        stamp = self.clock() if ts is None else ts
        return await self._durable(AssetAdded(asset, fund, stamp), asset)

    async def adopt_restored(self) -> None:
        """Start the actors of runtime-added assets and markets a snapshot brought back."""
        assets, self.restored_assets = self.restored_assets, {}
        for symbol, (asset, wallets, fund) in assets.items():
            if self.spawn_asset is None:
                raise RuntimeError(f"snapshot holds asset {symbol} but assets cannot be added")
            await self.spawn_asset(asset, fund.policy)
            self.assets[symbol] = asset
            self.wallets[symbol].wallets = wallets
            self.funds[symbol].adopt(fund)
        restored, self.restored = self.restored, {}
        for symbol, engine in restored.items():
            if self.spawn is None:
                raise RuntimeError(f"snapshot holds market {symbol} but markets cannot be added")
            self.markets[symbol] = await self.spawn(engine)

    async def replay(self, record: Record | str) -> None:
        """Apply one journal record, exactly as when it was first sequenced.

        The rules every replay follows: :mod:`riskd.storage.records`.
        """
        assert self.journal is None, "replay runs before the journal is attached"
        if isinstance(record, str):
            record = codec.decode(record)
        await records.apply(record, _Replay(self))

    async def barrier(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` once everything sequenced so far has fully settled.

        Markets first (their effects flow on to funds and wallets), then funds
        and wallets; nothing new is sequenced meanwhile, so ``fn`` sees one
        consistent state across all actors (digest, invariants, snapshots).
        """
        for m in self.markets.values():
            await m.call(_nothing)
        for a in (*self.funds.values(), *self.wallets.values()):
            await a.call(_nothing)
        return fn()

    async def position(self) -> tuple[int, str]:
        """Settle everything; the journal position a snapshot can be written at.

        ``(records durable, chain hash after them)``: a snapshot writer process
        rebuilds the state there from the journal
        (:func:`riskd.storage.snapshot.start_writer`), so the sequencer pauses
        only while the actors settle (their effects reach the funds, whose
        ledger entries then reach the ledger writer before the daemon syncs it).
        """
        await self.barrier(_nothing)
        if self.journal is None:
            return 0, ""
        return self.journal.written, self.journal.head

    async def capture(self) -> tuple[int, str, dict[str, Any]]:
        """Settle everything and wait until the journal holds it: ``(records,
        chain hash, state)`` for a snapshot written in process (at shutdown)."""
        await self.barrier(_nothing)
        await (await self.flushed()).wait()
        written = self.journal.written if self.journal is not None else 0
        head = self.journal.head if self.journal is not None else ""
        return written, head, self.state()

    def state(self) -> dict[str, Any]:
        return {
            "markets": {s: m.engine for s, m in self.markets.items()},
            "wallets": {a: w.wallets for a, w in self.wallets.items()},
            "funds": {a: f.fund for a, f in self.funds.items()},
            "gateways": self.gateways,
            "withdrawals": self.withdrawals,
            "events": self.events,
            "added": sorted(self.added),
            "added_assets": dict(self.added_assets),
            # As journal text: the codec reads it whatever the code's classes became.
            "file_settings": None
            if self.file_settings is None
            else codec.encode(MarketSettings(self.file_settings)),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Install a snapshot's state into the actors (before anything runs)."""
        for sym, engine in state["markets"].items():
            if sym in self.markets:
                self.markets[sym].engine = engine
            else:  # added at runtime: its actor starts in adopt_restored
                self.restored[sym] = engine
        # Absent before assets could be added at runtime.
        self.added_assets = dict(state.get("added_assets", {}))
        for asset, wallets in state["wallets"].items():
            if asset in self.wallets:
                self.wallets[asset].wallets = wallets
            elif asset in self.added_assets:  # its actors start in adopt_restored
                added = self.added_assets[asset]
                self.restored_assets[asset] = (added, wallets, state["funds"][asset])
        for asset, fund in state["funds"].items():
            if asset in self.funds:
                self.funds[asset].adopt(fund)  # bounds its ledger in memory
        self.gateways = state["gateways"]
        # Absent before snapshot format 6 (events were not kept): numbering restarts.
        self.events = state.get("events", 0)
        self.added = set(state.get("added", ()))
        self.withdrawals = _decisions(state["withdrawals"], self.withdrawal_ids)
        saved = state.get("file_settings")  # absent from snapshots of format 1 data
        if saved is not None:
            settings = codec.decode(saved)
            assert isinstance(settings, MarketSettings)
            self.file_settings = dict(settings.markets)

    async def reconcile(
        self, file: Sequence[MarketSpec], fresh: bool
    ) -> Reconciled | SettingsConflict:
        """:meth:`_reconcile`; a conflict is a result (raised, it would stop the actor)."""
        try:
            return await self._reconcile(file, fresh)
        except SettingsConflict as e:
            return e

    async def _reconcile(self, file: Sequence[MarketSpec], fresh: bool) -> Reconciled:
        """Bring the markets in line with the config file at start.

        Returns the records to journal, the keys (``markets.SYM.key``) where
        format 1 data keeps a live setting that differs from the file's, and
        the settled markets the file still declares.

        Call after replay, before the journal is attached.  ``fresh``: the journal
        is empty, so the markets begin with the file's settings (journaled, so a
        replay never depends on the file again).  Otherwise each setting the
        file changed since the last start (the journaled :class:`MarketSettings`)
        is applied as ``UpdateMarket`` would apply it, and journaled the same way;
        a setting changed only by ``UpdateMarket`` stays.  A market the data
        directory holds that the file dropped, or a change of what positions are
        measured in, raises :class:`SettingsConflict` naming the key.  Format 1
        data, whose settings were never journaled, keeps its live settings.

        A settled market is past the file: it stays settled whatever the file
        says of it (its settings are never applied, it is never created anew),
        and the file may drop it.
        """
        wanted = {spec.symbol: spec for spec in file}
        for spec in file:  # an asset added at runtime, declared by the file since
            added = self.added_assets.get(spec.asset.symbol)
            if added is not None and added.decimals != spec.asset.decimals:
                raise SettingsConflict(
                    f"assets.{added.symbol}.decimals",
                    f"the data directory's asset has {added.decimals} decimals (AddAsset),"
                    f" the file says {spec.asset.decimals}",
                )
        if fresh:
            self.file_settings = wanted
            return Reconciled([MarketSettings(wanted, tuple(wanted))])
        settled = {s for s, m in self.markets.items() if m.engine.status is MarketStatus.SETTLED}
        listed = sorted(settled & wanted.keys())
        base = self.file_settings
        out: list[Record] = []
        if base is None:
            differ = [
                f"markets.{sym}.{key}"
                for sym, spec in wanted.items()
                if sym not in settled
                for key in _differing(self.markets[sym].engine.spec, spec)
            ]
            self.file_settings = wanted
            return Reconciled([MarketSettings(wanted, ())], differ, listed)
        gone = sorted(base.keys() - wanted.keys() - settled)
        if gone:
            raise SettingsConflict(
                f"markets.{gone[0]}",
                "the data directory holds this market but the configuration no longer"
                " declares it; a market cannot be removed (put it back; reduce_only winds"
                " it down)",
            )
        for sym, spec in wanted.items():
            if sym in settled:
                continue
            old = base.get(sym)
            if old is None and sym in self.added:
                # Added at runtime, declared by the file since: the file's
                # differences from its live settings are an edit.
                old = self.markets[sym].engine.spec
            if old is None:
                continue
            changes = {k: getattr(spec, k) for k in _differing(old, spec)}
            if not changes:
                continue
            market = self.markets[sym]
            ts = self.clock()
            try:
                await market.call(_update_spec, market.engine, changes, ts)
            except Rejected as r:
                key = r.field.removeprefix("market.")
                raise SettingsConflict(
                    f"markets.{sym}.{key}",
                    f"{r.message} (the data directory's market was set up with"
                    f" {getattr(old, key, '?')!r}, the file now says"
                    f" {getattr(spec, key, '?')!r})",
                ) from r
            out.append(MarketUpdated(sym, changes, ts))
        created = tuple(
            sym for sym in wanted if sym not in base and sym not in self.added | settled
        )
        if out or created or base.keys() - wanted.keys():
            out.append(MarketSettings(wanted, created))
            self.file_settings = wanted
        return Reconciled(out, [], listed)

    def check(self) -> tuple[str, list[str]]:
        """Digest and invariant violations of the whole state (call inside :meth:`barrier`)."""
        engine = self.engine_view()
        return digest(engine), violations(engine)

    def engine_view(self) -> Engine:
        return Engine.view(
            {s: m.engine for s, m in self.markets.items()},
            {a: w.wallets for a, w in self.wallets.items()},
            {a: f.fund for a, f in self.funds.items()},
        )


async def _apply(actor: MarketActor | WalletActor, items: list[Input]) -> list[Rejected | None]:
    """``actor.apply(items)`` in the actor, typed once (a market's is a coroutine,
    a wallet's is not: mypy cannot infer the call's result over the union inline)."""
    return await actor.call_here(actor.apply, items)


def _nothing() -> None:
    return None


def now_ms() -> int:
    """Wall-clock time in timestamp_ms, as the ingest checks gateway stamps."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What a start's :meth:`Sequencer.reconcile` found."""

    #: Records to journal (the file's changes, its settings).
    records: list[Record]
    #: ``markets.SYM.key`` where format 1 data keeps a setting the file differs on.
    differ: list[str] = field(default_factory=list)
    #: Settled markets the file still declares (kept settled).
    settled: list[str] = field(default_factory=list)


class SettingsConflict(RiskdError):
    """The config file asks for a market change the data directory cannot take."""

    STATUS = "INVALID_ARGUMENT"  # at start: exit 2

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _differing(old: MarketSpec, new: MarketSpec) -> list[str]:
    a, b = codec.settings_of(old), codec.settings_of(new)
    return [k for k in a if a[k] != b[k]]


def _install(actor: MarketActor, spec: MarketSpec) -> None:
    actor.engine = MarketEngine(spec)


class _Replay:
    """The sequencer as a :class:`riskd.storage.records.Target`: each record goes
    through the code that sequenced it first, the journal not attached."""

    def __init__(self, sequencer: Sequencer) -> None:
        self.s = sequencer

    async def ingest(self, r: IngestBatch) -> None:
        await self.s.ingest(r.gateway, r.epoch, r.updates, r.offset)

    async def withdrawal(self, r: WithdrawalDecided) -> None:
        with contextlib.suppress(Rejected):
            await self.s.withdraw(r.withdrawal, r.withdrawal_id, replaying=True)

    async def injection(self, r: FundInjected) -> None:
        with contextlib.suppress(Rejected):
            await self.s.inject(r.injection, replaying=True)

    async def market_update(self, r: MarketUpdated) -> None:
        with contextlib.suppress(Rejected):
            await self.s.update_spec(r.market, dict(r.changes), r.ts)

    async def epoch(self, r: EpochAssigned) -> None:
        self.s._begin_epoch(r.gateway, r.epoch)

    async def admin(self, r: AdminInput) -> None:
        with contextlib.suppress(Rejected):
            await self.s.admin_input(r.input, replaying=True)

    async def market_added(self, r: MarketAdded) -> None:
        with contextlib.suppress(Rejected):
            await self.s.add_market(r.spec, replaying=True, ts=r.ts)

    async def asset_added(self, r: AssetAdded) -> None:
        with contextlib.suppress(Rejected):
            await self.s.add_asset(r.asset, r.fund, r.ts, replaying=True)

    async def settings(self, r: MarketSettings) -> None:
        s = self.s
        for sym in r.created:
            market, spec = s.markets.get(sym), r.markets[sym]
            if market is not None:
                await market.call(_install, market, spec)
            elif s.spawn is not None and spec.asset.symbol in s.funds:
                # The file dropped it since (allowed once it is settled): the
                # journal still says what it was, and its history needs it.
                # (Not settled: reconcile refuses the file.)
                s.markets[sym] = await s.spawn(MarketEngine(spec))
        s.file_settings = dict(r.markets)


def _cross_reserved(account: int, engine: MarketEngine) -> int:
    return engine.cross_reserved(account)


def _isolated(engine: MarketEngine, c: CheckOrder) -> bool:
    """No cross wallet takes part in the check: the market alone answers it."""
    return c.account not in engine.cross and engine.cross_order_account(c) is None


def _order_margin(c: CheckOrder, engine: MarketEngine) -> tuple[int, int]:
    """What order ``c`` holds and what its account can still commit, at the gate's mark."""
    order = engine.orders.get(c.order_id)
    reserved = order.margin if order is not None and order.account == c.account else 0
    pos, mark = engine.positions.get(c.account), engine.guard_mark
    if pos is None or mark is None:
        return reserved, 0
    return reserved, available(engine.spec, pos, mark, engine.held(c.account))


def _reserved(fund: FundActor) -> int:
    return fund.fund.reserved_total


def _decisions(saved: Any, capacity: int) -> dict[str, WithdrawalDecisions]:
    """Withdrawal decisions from a snapshot, also from before they were kept per asset."""
    # Any: unpickled snapshot state, in one of two shapes (told apart below).
    if not isinstance(saved, OrderedDict):
        return dict(saved)
    out: dict[str, WithdrawalDecisions] = {}
    for (asset, id_), ((account, amount), outcome) in saved.items():
        memory = out.get(asset)
        if memory is None:
            memory = out[asset] = WithdrawalDecisions(capacity)
        if isinstance(outcome, Rejected):
            decision = WithdrawalDecision(False, 0, outcome.message)
        else:
            decision = WithdrawalDecision(True, outcome)
        memory.record(id_, account, amount, decision)
    return out


def _update_spec(engine: MarketEngine, changes: Mapping[str, Any], ts: int) -> MarketSpec:
    # Any: settings by name, checked by MarketSpec's own validation (a bad one: Rejected).
    try:
        spec = dataclasses.replace(engine.spec, **changes)
    except SpecError as e:
        raise Rejected.invalid(f"market.{e.field}", e.reason) from e
    except (TypeError, ValueError) as e:
        raise Rejected.invalid("market", str(e)) from e
    engine.update_spec(spec, ts)
    return spec
