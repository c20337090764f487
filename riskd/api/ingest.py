"""The ingest stream: batches of gateway updates in, acknowledgements out.

Per stream, at most ``window`` batches are in flight: the reader stops
reading when the window is full, so HTTP/2 flow control slows the gateway
instead of memory growing.  The first response, sent before anything is
read, carries the last sequence durably applied for this gateway and epoch,
with the rejections kept up to it (a gateway that lost its stream before
reading an ack learns them here): a reconnecting gateway resends from there,
and a duplicate is acknowledged again, with its rejection as first decided,
without being applied twice.

A gateway is identified by its certificate (over TLS; in plaintext
development mode by the ``x-riskd-gateway`` metadata key).  A stream without
an ``x-riskd-epoch`` (or with 0) is a new session: riskd assigns it a fresh
epoch, durably, and names it in the first response, so a rerun gateway that
numbers from 1 again cannot have its updates taken for resends of an earlier
run's.  A stream naming an epoch resumes it (or fences older ones with it).
Every ack says how many of its updates were duplicates.

Each update is checked here before it is sequenced: decodable, stamped
within the allowed clock skew, and for a market (or asset) the gateway is
granted; a refused update is reported in the ack and changes nothing, the
rest of its batch is applied.  Mark prices and liquidation fills are the
liquidation path: a batch of only those goes ahead of the sequencer's queue
(unless its own stream has batches waiting there, which it must not
overtake), and they are never charged to a rate limit.  A gateway over its
rate limit is slowed: its stream is not read until the budget allows
the batch, so HTTP/2 flow control holds the gateway back.  One so far over
that it would wait more than :data:`MAX_PACE_SECONDS` has its stream ended
with RESOURCE_EXHAUSTED and a RetryInfo, after the acks of everything it had
in flight; it reconnects after the delay and resends from the acknowledged
sequence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import structlog

from riskd.access import Grant, Role
from riskd.actors.sequencer import BatchResult, SequenceError, Sequencer, StoredRejection, Update
from riskd.api import convert
from riskd.api.auth import GATEWAY_KEY, Authenticator, Denied
from riskd.api.bridge import Portal, Unavailable
from riskd.api.rate_limit import TokenBucket
from riskd.api.status import GRPC_CODES, abort, abort_rejected
from riskd.config import ServerConfig
from riskd.core import OrderRefused, Refusal, Rejected
from riskd.core.errors import Code
from riskd.core.events import Input, MarkPrice
from riskd.core.inputs import KINDS, Owner
from riskd.errors import RiskdError
from riskd.metrics import Metrics
from riskd.v1 import ingest_pb2, ingest_pb2_grpc

__all__ = ["IngestServicer", "GATEWAY_KEY", "EPOCH_KEY"]

EPOCH_KEY = "x-riskd-epoch"
#: A gateway this close to its budget is slowed; further over, it is refused.
MAX_PACE_SECONDS = 1.0
#: Updates that keep liquidations going: never charged to a rate limit, and a
#: batch of only these goes ahead of the sequencer's queue.
LIQUIDATION_PATH = tuple(k.cls for k in KINDS.values() if k.liquidation_path)
#: The same as a set of types: decoding makes exactly these classes (one lookup per update).
_LIQUIDATION_PATH_TYPES = frozenset(LIQUIDATION_PATH)
#: How long a stream refused over max_ingest_streams waits for the client's first message.
REFUSAL_READ_SECONDS = 0.25


def _stub(wire: str) -> ingest_pb2.Update:
    """An ``Update`` with only its oneof ``wire`` set: names the kind in a kept rejection."""
    update = ingest_pb2.Update()
    getattr(update, wire).SetInParent()
    return update


#: Per core input's type name, a stub of its ``Update`` (rejections kept across reconnects).
_STUBS = {k.name: _stub(k.wire) for k in KINDS.values() if k.wire is not None}
log = structlog.get_logger("riskd.ingest")

Context = grpc.aio.ServicerContext[ingest_pb2.IngestRequest, ingest_pb2.IngestResponse]
UnaryContext = grpc.aio.ServicerContext[ingest_pb2.CheckOrderRequest, ingest_pb2.CheckOrderResponse]
Log = structlog.stdlib.BoundLogger


@dataclass(slots=True)
class Ack:
    """A batch's answer, durable, ready to send."""

    response: ingest_pb2.IngestResponse


@dataclass(slots=True)
class StreamEnd:
    """The reader is done: the stream ends after the acks before this, with
    OK (``error`` None) or with the status ``error`` maps to."""

    error: BaseException | None = None


#: What a stream's reader (and the sequencer's answers) hand its writer.
Outcome = Ack | StreamEnd


@dataclass(slots=True)
class _Stream:
    """One open ingest stream, as its reader sees it."""

    gateway: str
    epoch: int
    grant: Grant
    credits: asyncio.Semaphore
    #: Bounded by the credit window: at most ``window`` acks, then one StreamEnd.
    results: asyncio.Queue[Outcome]
    generation: int
    bucket: TokenBucket | None
    #: This stream's batches in the sequencer's ordinary mailbox.
    normal_in_flight: int = field(default=0)


class Throttled(RiskdError):
    """A gateway over its rate limit: retry after ``delay`` seconds."""

    STATUS = "RESOURCE_EXHAUSTED"

    def __init__(self, gateway: str, delay: float) -> None:
        super().__init__(f"gateway {gateway!r} is over its rate limit; retry in {delay:.3f} s")
        self.delay = delay


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self,
        portal: Portal,
        sequencer: Sequencer,
        server: ServerConfig,
        metrics: Metrics,
        auth: Authenticator,
    ) -> None:
        self.portal = portal
        self.sequencer = sequencer
        self.window = server.stream_window
        self.max_streams = server.max_ingest_streams
        self.max_batch = server.max_batch_updates
        self.max_ahead_ms = int(server.max_clock_skew_seconds * 1000)
        self.max_age_ms = int(server.max_update_age_seconds * 1000)
        self.require_mark_ts = server.require_mark_timestamps
        self.default_rate = (server.gateway_updates_per_second, server.gateway_burst)
        self.metrics = metrics
        self.auth = auth
        self._buckets: dict[str, TokenBucket] = {}
        self.draining = False
        self._readers: set[asyncio.Task[None]] = set()
        self._open = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def Ingest(
        self, request_iterator: AsyncIterator[ingest_pb2.IngestRequest], context: Context
    ) -> AsyncIterator[ingest_pb2.IngestResponse]:
        grant, gateway, epoch = await self._admit(request_iterator, context)
        self._open += 1
        self._idle.clear()
        self.metrics.streams_open.inc()
        results: asyncio.Queue[Outcome] = asyncio.Queue()  # bounded by the credit window
        credits = asyncio.Semaphore(self.window)
        reader: asyncio.Task[None] | None = None
        bound: Log = log.bind(gateway=gateway, peer=context.peer())
        try:
            try:
                resume = await self.portal.write(
                    self.sequencer, self.sequencer.open_session, gateway, epoch
                )
            except Rejected as r:
                await abort(context, GRPC_CODES[r.code], r.field, r.message)
            fresh, epoch = not epoch, resume.epoch
            bound = bound.bind(epoch=epoch)
            bound.info("ingest_stream_opened", acked_sequence=resume.acked, fresh_epoch=fresh)
            yield ingest_pb2.IngestResponse(
                acked_sequence=resume.acked,
                rejections_from=resume.rejections_from,
                rejections=[_stored(r) for r in resume.rejections],
                epoch=epoch,
            )
            stream = _Stream(
                gateway,
                epoch,
                grant,
                credits,
                results,
                self.auth.generation,
                self._bucket(grant, gateway),
            )
            reader = asyncio.create_task(self._read(stream, request_iterator, context))
            self._readers.add(reader)
            async for reply in _replies(results, credits):
                if isinstance(reply, StreamEnd):
                    if reply.error is not None:
                        await self._fail(context, reply.error, bound)
                    break
                yield reply
            bound.info("ingest_stream_closed")
        except Unavailable as e:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "", str(e))
        finally:
            if reader is not None:
                reader.cancel()
                self._readers.discard(reader)
            self._open -= 1
            self.metrics.streams_open.dec()
            if self._open == 0:
                self._idle.set()

    async def _admit(
        self, requests: AsyncIterator[ingest_pb2.IngestRequest], context: Context
    ) -> tuple[Grant, str, int]:
        """Who the stream is from and the epoch it names (0: a fresh one), or the
        status it is refused with (not identified, draining, too many streams)."""
        metadata = dict(context.invocation_metadata() or ())
        try:
            grant = self.auth.identify(context)
            gateway = convert.check_symbol(self.auth.gateway(grant, context), GATEWAY_KEY)
            epoch = int(metadata.get(EPOCH_KEY) or 0)  # 0: a fresh epoch, assigned later
            if not 0 <= epoch < 2**63:
                raise ValueError
        except Denied as d:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, d.field, d.message)
        except Rejected as r:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, r.field, r.message)
        except ValueError:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, EPOCH_KEY, "must be an integer")
        if self.draining:
            await _first_request(requests)  # as below: the status, not a write error
            await abort(context, grpc.StatusCode.UNAVAILABLE, "", "riskd is shutting down")
        if self._open >= self.max_streams:
            # Refusing before the client's first message is through would race
            # its write: grpc then reports that failed write (CANCELLED or
            # INTERNAL) instead of this status.
            await _first_request(requests)
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "",
                f"at most {self.max_streams} ingest streams are served at once",
                retry_after=1.0,
            )
        return grant, gateway, epoch

    async def _read(
        self,
        s: _Stream,
        requests: AsyncIterator[ingest_pb2.IngestRequest],
        context: Context,
    ) -> None:
        """Read, check, pace and post each batch until the stream ends or is refused."""
        end = StreamEnd()
        try:
            async for request in requests:
                refused = self._reauthorize(s, context) or self._refusal(s, request)
                if refused is not None:
                    end = StreamEnd(refused)
                    return
                if not request.updates:
                    continue
                checked = self._checked(request, s.grant)
                if checked is None:
                    end = StreamEnd(Rejected.invalid("updates.sequence", "must be >= 1"))
                    return
                updates, counted = checked
                if s.bucket is not None and counted:  # else nothing to pace (no coroutine)
                    throttled = await self._pace(s, counted)
                    if throttled is not None:
                        end = StreamEnd(throttled)
                        return
                await s.credits.acquire()
                self._post(s, request, updates, counted)
        except grpc.aio.AioRpcError:
            pass  # the client went away: the handler is being cancelled too
        except Exception as e:  # bytes that are not an IngestRequest, say
            end = StreamEnd(Rejected.invalid("updates", f"unreadable request: {e}"))
        finally:
            # Behind every batch already posted, so the stream ends after their acks.
            self.portal.post(
                self.sequencer,
                lambda _v, _e: s.results.put_nowait(end),
                False,
                self.sequencer.flushed,
            )

    def _reauthorize(self, s: _Stream, context: Context) -> Denied | None:
        """After a policy reload (SIGHUP): the gateway's grant again, or why it is gone."""
        if s.generation == self.auth.generation:
            return None
        s.generation = self.auth.generation
        try:
            s.grant = self.auth.check(context, Role.GATEWAY)
        except Denied as d:
            return d
        s.bucket = self._bucket(s.grant, s.gateway)
        return None

    def _refusal(self, s: _Stream, request: ingest_pb2.IngestRequest) -> Rejected | None:
        """Why a whole request ends its stream (too large, another epoch), if it does."""
        if len(request.updates) > self.max_batch:
            return Rejected.invalid(
                "updates", f"{len(request.updates)} updates exceed {self.max_batch}"
            )
        if request.epoch and request.epoch != s.epoch:
            return Rejected.invalid("epoch", f"{request.epoch} differs from {EPOCH_KEY}")
        return None

    async def _pace(self, s: _Stream, counted: int) -> Throttled | None:
        """Charge ``counted`` updates to the gateway's budget, waiting while slightly
        over it; far over it, the stream is refused (returned, not raised)."""
        if s.bucket is None or not counted:
            return None
        delay = s.bucket.take(counted, time.monotonic())
        while 0 < delay <= MAX_PACE_SECONDS:
            # Slightly over budget: stop reading for a while, so flow control
            # slows the gateway without a reconnect.
            self.metrics.paced.inc(delay)
            await asyncio.sleep(delay)
            delay = s.bucket.take(counted, time.monotonic())
        if delay:
            self.metrics.throttled.inc()
            return Throttled(s.gateway, delay)
        return None

    def _post(
        self, s: _Stream, request: ingest_pb2.IngestRequest, updates: list[Update], counted: int
    ) -> None:
        """Hand a checked batch to the sequencer; its ack comes back on ``s.results``."""
        # Marks jump the sequencer's queue (never their own stream's: not
        # while this stream has other batches waiting there).
        urgent = counted == 0 and s.normal_in_flight == 0
        s.normal_in_flight += not urgent

        def deliver(value: BatchResult | SequenceError | None, error: BaseException | None) -> None:
            s.normal_in_flight -= not urgent
            if error is not None:
                s.results.put_nowait(StreamEnd(error))
            elif isinstance(value, BatchResult):
                s.results.put_nowait(Ack(_response(request, value)))
            else:  # a SequenceError: the batch is out of order
                s.results.put_nowait(StreamEnd(value))

        self.portal.post_grouped(
            self.sequencer,
            deliver,
            urgent,
            self.sequencer.ingest_group,
            (
                s.gateway,
                s.epoch,
                updates,
                time.perf_counter(),
                "liquidation_path" if urgent else "other",
            ),
            len(updates),
        )

    def _bucket(self, grant: Grant, gateway: str) -> TokenBucket | None:
        """The gateway's rate limit, shared by all its streams (None: unlimited)."""
        rate, burst = (grant.updates_per_second, grant.burst)
        if not self.auth.tls:
            rate, burst = self.default_rate
        if rate <= 0:
            return None
        burst = burst or rate
        bucket = self._buckets.get(gateway)
        if bucket is None or (bucket.rate, bucket.burst) != (rate, max(burst, 1)):
            bucket = self._buckets[gateway] = TokenBucket(rate, burst, time.monotonic())
        return bucket

    def _checked(
        self, request: ingest_pb2.IngestRequest, grant: Grant
    ) -> tuple[list[Update], int] | None:
        """Check and decode each update, in one pass; also how many are not on
        the liquidation path.  None: an update has sequence 0 (the stream ends).

        At 256 updates per message this runs ~10^5 times a second, so nothing
        is looked up twice and no string is built unless an update is refused.
        """
        out: list[Update] = []
        append = out.append
        counted = 0
        now = time.time_ns() // 1_000_000
        earliest = now - self.max_age_ms if self.max_age_ms else 0
        latest = now + self.max_ahead_ms if self.max_ahead_ms else 2**63 - 1
        scoped = grant.markets is not None
        require_mark_ts = self.require_mark_ts
        decode = convert.decode_stamped
        free = _LIQUIDATION_PATH_TYPES
        for i, u in enumerate(request.updates):
            seq = u.sequence
            if not seq:
                return None
            try:
                ts = u.timestamp_ms
                if ts and not earliest <= ts <= latest:  # earliest >= 0: no negatives
                    raise Rejected.invalid(
                        f"updates[{i}].timestamp_ms",
                        f"{ts} is outside the allowed window [{earliest}, {latest}] around"
                        f" riskd's clock ({now}); 0 means not stamped",
                    )
                x = decode(u, i, ts)
                if not ts and require_mark_ts and type(x) is MarkPrice:
                    raise Rejected.invalid(
                        f"updates[{i}].timestamp_ms",
                        "a mark price must be stamped (server.require_mark_timestamps)",
                    )
                if scoped:
                    try:
                        _authorize(grant, x)
                    except Rejected as r:
                        # The whole path now: it is journaled and may be reported again.
                        path = convert.rejection(seq, i, u, r).field
                        raise Rejected(r.code, path, r.message) from None
                if type(x) not in free:
                    counted += 1
                append((seq, x))
            except Rejected as r:
                counted += 1
                append((seq, r))
        return out, counted

    async def CheckOrder(
        self, request: ingest_pb2.CheckOrderRequest, context: UnaryContext
    ) -> ingest_pb2.CheckOrderResponse:
        """One pre-trade check, sequenced and journaled like a streamed ``check_order``.

        Malformed input, an unknown market, an order id open with other terms
        or a market outside the grant end the call with that status (nothing
        changed); a well-formed order the gate refuses is an answer:
        ``accepted`` false and the refusal.  Each call is one update of the
        gateway's rate limit, shared with its streams (over it:
        RESOURCE_EXHAUSTED with a RetryInfo).
        """
        try:
            grant = self.auth.identify(context)  # the interceptor checked the role
            gateway = convert.check_symbol(self.auth.gateway(grant, context), GATEWAY_KEY)
        except Denied as d:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, d.field, d.message)
        except Rejected as r:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, r.field, r.message)
        if self.draining:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "", "riskd is shutting down")
        bucket = self._bucket(grant, gateway)  # one update of the gateway's budget
        delay = bucket.take(1, time.monotonic()) if bucket is not None else 0.0
        if delay:
            self.metrics.throttled.inc()
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "",
                str(Throttled(gateway, delay)),
                retry_after=delay,
            )
        try:
            ts = request.timestamp_ms
            now = time.time_ns() // 1_000_000
            earliest = now - self.max_age_ms if self.max_age_ms else 0
            latest = now + self.max_ahead_ms if self.max_ahead_ms else 2**63 - 1
            if ts and not earliest <= ts <= latest:
                raise Rejected.invalid(
                    "timestamp_ms",
                    f"{ts} is outside the allowed window [{earliest}, {latest}] around"
                    f" riskd's clock ({now}); 0 means not stamped",
                )
            if not request.HasField("order"):
                raise Rejected.invalid("order", "is required")
            check = convert.check_order(request.order, ts, "order")
            if grant.markets is not None:
                try:
                    _authorize(grant, check)
                except Rejected as r:
                    raise Rejected(r.code, f"order.{r.field}", r.message) from None
            done = await self.portal.write_grouped(
                self.sequencer, self.sequencer.check_orders, (gateway, check)
            )
        except Unavailable as u:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "", str(u))
        except Rejected as r:
            await abort_rejected(context, r)
        refused = done.refused
        if refused is None:
            return ingest_pb2.CheckOrderResponse(
                accepted=True, reserved=done.reserved, available=done.available
            )
        if not isinstance(refused, OrderRefused):  # bad input: no decision was taken
            await abort_rejected(context, refused, "order.")
        return ingest_pb2.CheckOrderResponse(
            accepted=False,
            refusal=convert.REFUSALS[refused.reason],
            field=f"order.{refused.field}",
            message=refused.message,
            available=done.available,
        )

    async def _fail(self, context: Context, item: BaseException, bound: Log) -> None:
        """End the stream with the status ``item`` maps to (always raises)."""
        if isinstance(item, SequenceError):
            bound.warning("ingest_sequence_refused", reason=item.message)
            await abort(context, GRPC_CODES[item.code], item.field, item.message)
        if isinstance(item, Rejected):
            await abort(context, GRPC_CODES[item.code], item.field, item.message)
        if isinstance(item, Denied):
            bound.warning("ingest_denied", reason=item.message)
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, item.field, item.message)
        if isinstance(item, Throttled):
            bound.warning("ingest_throttled", retry_after_s=round(item.delay, 3))
            await abort(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, "", str(item), retry_after=item.delay
            )
        if isinstance(item, Unavailable):
            await abort(context, grpc.StatusCode.UNAVAILABLE, "", str(item))
        bound.error("ingest_internal_error", error=repr(item))
        await abort(context, grpc.StatusCode.INTERNAL, "", "internal error")

    async def drain(self, limit_s: float) -> None:
        """Stop reading every stream; each ends with OK after its in-flight acks."""
        self.draining = True
        for reader in list(self._readers):
            reader.cancel()
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            log.warning("ingest_drain_timeout", open_streams=self._open)


async def _first_request(requests: AsyncIterator[ingest_pb2.IngestRequest]) -> None:
    """Wait (briefly) for the client's first message, or its end, and drop it."""
    try:
        async with asyncio.timeout(REFUSAL_READ_SECONDS):
            await anext(aiter(requests), None)
    except Exception:  # a timeout, a broken stream: refuse all the same
        pass


def _authorize(grant: Grant, x: Input) -> None:
    """Refuse an update for a market (or asset) the gateway is not granted."""
    kind = KINDS[type(x)]
    owner = kind.owner_of(x)
    if kind.owner is not Owner.MARKET:  # a deposit: named by its asset
        if not grant.covers_asset(owner):
            raise Rejected(
                Code.PERMISSION_DENIED,
                kind.key,
                f"{grant.identity!r} serves no market settled in {owner!r}",
            )
    elif not grant.covers_market(owner):
        raise Rejected(
            Code.PERMISSION_DENIED, "market", f"{grant.identity!r} may not send for {owner!r}"
        )


def _stored(r: StoredRejection) -> ingest_pb2.Rejection:
    """A rejection as first reported (its index in the batch it came in)."""
    seq, index, kind, code, field, message, *rest = r  # 6 values: kept before the risk gate
    refused = Rejected(Code(code), field, message)
    if rest and rest[0]:
        refused = OrderRefused(Refusal(rest[0]), field, message)
    return convert.rejection(seq, index, _STUBS.get(kind), refused)


async def _replies(
    results: asyncio.Queue[Outcome], credits: asyncio.Semaphore
) -> AsyncIterator[ingest_pb2.IngestResponse | StreamEnd]:
    """A stream's acks in order, each returning its credit, then its StreamEnd.

    Acks are cumulative: every ack already waiting is folded into one response.
    """
    item = await results.get()
    while isinstance(item, Ack):
        credits.release()
        response = item.response
        following: Outcome | None = None
        while not results.empty():
            following = results.get_nowait()
            if not isinstance(following, Ack):
                break
            credits.release()
            response = _fold(response, following.response)
            following = None
        yield response
        item = following if following is not None else await results.get()
    yield item


def _fold(
    acked: ingest_pb2.IngestResponse, following: ingest_pb2.IngestResponse
) -> ingest_pb2.IngestResponse:
    """Two consecutive acks as one (acks are cumulative; rejections add up)."""
    following.duplicates += acked.duplicates
    if not acked.rejections:
        return following
    acked.rejections.extend(following.rejections)
    acked.acked_sequence = following.acked_sequence
    acked.duplicates = following.duplicates
    return acked


def _response(request: ingest_pb2.IngestRequest, result: BatchResult) -> ingest_pb2.IngestResponse:
    response = ingest_pb2.IngestResponse(acked_sequence=result.acked, duplicates=result.duplicates)
    if result.repeated:
        response.rejections.extend(_stored(r) for r in result.repeated)
    if result.rejections:
        where = {u.sequence: (i, u) for i, u in enumerate(request.updates)}
        for seq, r in result.rejections:
            i, u = where[seq]
            response.rejections.append(convert.rejection(seq, i, u, r))
    return response
