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
from typing import Any

import grpc
import structlog

from riskd.access import Grant, Role
from riskd.actors.sequencer import BatchResult, SequenceError, Sequencer, StoredRejection, Update
from riskd.api import convert
from riskd.api.auth import GATEWAY_KEY, Authenticator, Denied
from riskd.api.bridge import Portal, Unavailable
from riskd.api.rate_limit import TokenBucket
from riskd.api.status import GRPC_CODES, abort
from riskd.config import ServerConfig
from riskd.core import Rejected
from riskd.core.errors import Code
from riskd.core.events import Deposit, LiquidationDone, LiquidationFill, MarkPrice
from riskd.metrics import Metrics
from riskd.v1 import ingest_pb2, ingest_pb2_grpc

__all__ = ["IngestServicer", "GATEWAY_KEY", "EPOCH_KEY"]

EPOCH_KEY = "x-riskd-epoch"
#: A gateway this close to its budget is slowed; further over, it is refused.
MAX_PACE_SECONDS = 1.0
#: Updates that keep liquidations going: never charged to a rate limit, and a
#: batch of only these goes ahead of the sequencer's queue.
LIQUIDATION_PATH = (MarkPrice, LiquidationFill, LiquidationDone)
_EOS = object()
#: How long a stream refused over max_ingest_streams waits for the client's first message.
REFUSAL_READ_SECONDS = 0.25
#: The ``Update`` oneof name of each core input, for rejections kept across reconnects.
_KINDS = {
    "Fill": "fill",
    "MarkPrice": "mark_price",
    "Deposit": "deposit",
    "MarginTransfer": "margin_transfer",
    "FundingRate": "funding_rate",
    "LiquidationFill": "liquidation_fill",
    "LiquidationDone": "liquidation_done",
}
_STUBS: dict[str, ingest_pb2.Update] = {}
for _name, _kind in _KINDS.items():
    _STUBS[_name] = ingest_pb2.Update()
    getattr(_STUBS[_name], _kind).SetInParent()
log = structlog.get_logger("riskd.ingest")

Context = grpc.aio.ServicerContext[ingest_pb2.IngestRequest, ingest_pb2.IngestResponse]


class Throttled(Exception):
    """A gateway over its rate limit: retry after ``delay`` seconds."""

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
        metadata = dict(context.invocation_metadata() or ())
        try:
            grant = self.auth.identify(context)
            gateway = convert.check_symbol(self.auth.gateway(grant, context), GATEWAY_KEY)
            epoch = int(metadata.get(EPOCH_KEY) or 0)  # 0: a fresh epoch, assigned below
            if not 0 <= epoch < 2**63:
                raise ValueError
        except Denied as d:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, d.field, d.message)
        except Rejected as r:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, r.field, r.message)
        except ValueError:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, EPOCH_KEY, "must be an integer")
        if self.draining:
            await _first_request(request_iterator)  # as below: the status, not a write error
            await abort(context, grpc.StatusCode.UNAVAILABLE, "", "riskd is shutting down")
        if self._open >= self.max_streams:
            # Refusing before the client's first message is through would race
            # its write: grpc then reports that failed write (CANCELLED or
            # INTERNAL) instead of this status.
            await _first_request(request_iterator)
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "",
                f"at most {self.max_streams} ingest streams are served at once",
                retry_after=1.0,
            )
        self._open += 1
        self._idle.clear()
        self.metrics.streams_open.inc()
        results: asyncio.Queue[Any] = asyncio.Queue()  # bounded by the credit window
        credits = asyncio.Semaphore(self.window)
        reader: asyncio.Task[None] | None = None
        bound = log.bind(gateway=gateway, peer=context.peer())
        try:
            try:
                resume = await self.portal.run(
                    self.sequencer.call, self.sequencer.open_session, gateway, epoch
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
            reader = asyncio.create_task(
                self._read(request_iterator, context, grant, gateway, epoch, credits, results)
            )
            self._readers.add(reader)
            item = await results.get()
            while item is not _EOS:
                if not isinstance(item, ingest_pb2.IngestResponse):
                    await self._fail(context, item, bound)
                credits.release()
                # Acks are cumulative: fold every ack already waiting into one response.
                following = None
                while not results.empty():
                    following = results.get_nowait()
                    if not isinstance(following, ingest_pb2.IngestResponse):
                        break
                    credits.release()
                    following.duplicates += item.duplicates
                    if item.rejections:
                        item.rejections.extend(following.rejections)
                        item.acked_sequence = following.acked_sequence
                        item.duplicates = following.duplicates
                    else:
                        item = following
                    following = None
                yield item
                item = following if following is not None else await results.get()
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

    async def _read(
        self,
        requests: AsyncIterator[ingest_pb2.IngestRequest],
        context: Context,
        grant: Grant,
        gateway: str,
        epoch: int,
        credits: asyncio.Semaphore,
        results: asyncio.Queue[Any],
    ) -> None:
        normal_in_flight = 0  # this stream's batches in the sequencer's ordinary mailbox

        def on_batch(request: ingest_pb2.IngestRequest, urgent: bool) -> Any:
            def deliver(value: Any, error: BaseException | None) -> None:
                nonlocal normal_in_flight
                normal_in_flight -= not urgent
                if error is not None:
                    results.put_nowait(error)
                elif isinstance(value, SequenceError):
                    results.put_nowait(value)
                else:
                    results.put_nowait(_response(request, value))

            return deliver

        end: Any = _EOS
        generation = self.auth.generation
        bucket = self._bucket(grant, gateway)
        try:
            async for request in requests:
                if generation != self.auth.generation:  # the policy was reloaded (SIGHUP)
                    generation = self.auth.generation
                    try:
                        grant = self.auth.check(context, Role.GATEWAY)
                    except Denied as d:
                        end = d
                        return
                    bucket = self._bucket(grant, gateway)
                if len(request.updates) > self.max_batch:
                    end = Rejected.invalid(
                        "updates", f"{len(request.updates)} updates exceed {self.max_batch}"
                    )
                    return
                if request.epoch and request.epoch != epoch:
                    end = Rejected.invalid("epoch", f"{request.epoch} differs from {EPOCH_KEY}")
                    return
                if not request.updates:
                    continue
                if any(u.sequence == 0 for u in request.updates):
                    end = Rejected.invalid("updates.sequence", "must be >= 1")
                    return
                updates, counted = self._decode(request, grant)
                if bucket is not None and counted:
                    delay = bucket.take(counted, time.monotonic())
                    while 0 < delay <= MAX_PACE_SECONDS:
                        # Slightly over budget: stop reading for a while, so
                        # flow control slows the gateway without a reconnect.
                        self.metrics.paced.inc(delay)
                        await asyncio.sleep(delay)
                        delay = bucket.take(counted, time.monotonic())
                    if delay:
                        self.metrics.throttled.inc()
                        end = Throttled(gateway, delay)
                        return
                await credits.acquire()
                # Marks jump the sequencer's queue (never their own stream's:
                # not while this stream has other batches waiting there).
                urgent = counted == 0 and normal_in_flight == 0
                normal_in_flight += not urgent
                lane = "liquidation_path" if urgent else "other"
                self.portal.post(
                    self.sequencer,
                    self.sequencer.ingest_or_error,
                    (gateway, epoch, updates, time.perf_counter(), lane),
                    on_batch(request, urgent),
                    urgent,
                )
        except grpc.aio.AioRpcError:
            pass  # the client went away: the handler is being cancelled too
        except Exception as e:  # bytes that are not an IngestRequest, say
            end = Rejected.invalid("updates", f"unreadable request: {e}")
        finally:
            # Behind every batch already posted, so the stream ends after their acks.
            self.portal.post(
                self.sequencer, self.sequencer.flushed, (), lambda _v, _e: results.put_nowait(end)
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

    def _decode(self, request: ingest_pb2.IngestRequest, grant: Grant) -> tuple[list[Update], int]:
        """Decode and check each update; also how many are not on the liquidation path."""
        out: list[Update] = []
        counted = 0
        now = time.time_ns() // 1_000_000
        earliest = now - self.max_age_ms if self.max_age_ms else 0
        latest = now + self.max_ahead_ms if self.max_ahead_ms else 2**63 - 1
        scoped = grant.markets is not None
        for i, u in enumerate(request.updates):
            try:
                ts = u.timestamp_ms
                if ts and not earliest <= ts <= latest:  # earliest >= 0: no negatives
                    raise Rejected.invalid(
                        f"updates[{i}].timestamp_ms",
                        f"{ts} is outside the allowed window [{earliest}, {latest}] around"
                        f" riskd's clock ({now}); 0 means not stamped",
                    )
                x = convert.decode_update(u, f"updates[{i}]")
                if not ts and self.require_mark_ts and isinstance(x, MarkPrice):
                    raise Rejected.invalid(
                        f"updates[{i}].timestamp_ms",
                        "a mark price must be stamped (server.require_mark_timestamps)",
                    )
                if scoped:
                    try:
                        _authorize(grant, x)
                    except Rejected as r:
                        # The whole path now: it is journaled and may be reported again.
                        path = convert.rejection(u.sequence, i, u, r).field
                        raise Rejected(r.code, path, r.message) from None
                if not isinstance(x, LIQUIDATION_PATH):
                    counted += 1
                out.append((u.sequence, x))
            except Rejected as r:
                counted += 1
                out.append((u.sequence, r))
        return out, counted

    async def _fail(self, context: Context, item: Any, bound: Any) -> None:
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


def _authorize(grant: Grant, x: Any) -> None:
    """Refuse an update for a market (or asset) the gateway is not granted."""
    if isinstance(x, Deposit):
        if not grant.covers_asset(x.asset):
            raise Rejected(
                Code.PERMISSION_DENIED,
                "asset",
                f"{grant.identity!r} serves no market settled in {x.asset!r}",
            )
    elif not grant.covers_market(x.market):
        raise Rejected(
            Code.PERMISSION_DENIED, "market", f"{grant.identity!r} may not send for {x.market!r}"
        )


def _stored(r: StoredRejection) -> ingest_pb2.Rejection:
    """A rejection as first reported (its index in the batch it came in)."""
    seq, index, kind, code, field, message = r
    return convert.rejection(seq, index, _STUBS.get(kind), Rejected(Code(code), field, message))


def _response(request: ingest_pb2.IngestRequest, result: BatchResult) -> ingest_pb2.IngestResponse:
    response = ingest_pb2.IngestResponse(acked_sequence=result.acked, duplicates=result.duplicates)
    response.rejections.extend(_stored(r) for r in result.repeated)
    if result.rejections:
        where = {u.sequence: (i, u) for i, u in enumerate(request.updates)}
        for seq, r in result.rejections:
            i, u = where[seq]
            response.rejections.append(convert.rejection(seq, i, u, r))
    return response
