"""Events out: a bounded, resumable log of what subscribers need to act on.

Liquidation orders to place, settlements, fund flows and ADL notices get one
sequence number each, in the order the engine produced them (numbered by
:meth:`riskd.daemon.Daemon.publish`, a function of the journal, so the numbers
survive restarts and crashes).  The log keeps the last ``retention`` events in
``events.sqlite3`` (the newest in memory); a subscriber resumes from any sequence still held
(``from_sequence`` 0: the oldest one held) and follows new ones.  There is no
per-subscriber queue: each subscriber keeps a cursor into the one log, so a
slow subscriber costs no memory — once it falls behind the retained window its
stream ends with OUT_OF_RANGE, naming the oldest sequence it can resume from.

Subscriptions themselves are bounded: at most ``max_per_identity`` open per
identity and ``max_total`` in all (``[server] max_subscriptions_per_identity``,
``max_subscriptions``); one more is refused with RESOURCE_EXHAUSTED naming the
limit, so a reader cannot hold an unbounded number of streams (each costs a
task and HTTP/2 buffers, not a queue).

Lives on the gRPC thread; the engine appends through ``call_soon_threadsafe``
once the journal records that caused the events are durable.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc

from riskd.access import Grant, Role
from riskd.api.auth import Authenticator, Denied
from riskd.api.status import abort
from riskd.errors import RiskdError
from riskd.metrics import Metrics
from riskd.storage import events as storage_events
from riskd.v1 import events_pb2, events_pb2_grpc

__all__ = ["EventLog", "EventServicer"]

Ctx = grpc.aio.ServicerContext[events_pb2.SubscribeRequest, events_pb2.SubscribeResponse]


class FellBehind(RiskdError):
    STATUS = "OUT_OF_RANGE"

    def __init__(self, oldest: int) -> None:
        super().__init__(f"events before {oldest} are no longer retained")
        self.oldest = oldest


#: Newest events kept in memory; older ones within retention are read from disk.
MEMORY = 4096
_PAGE = 512


class EventLog:
    """The events subscribers may read: numbered by the engine (a function of
    the journal), appended here once the journal records that caused them are
    durable, so a number never names another event after a crash.  The newest
    are kept in memory; older ones within retention are read from ``path``
    (:mod:`riskd.storage.events`)."""

    def __init__(self, retention: int, path: Path | None = None) -> None:
        self._events: deque[tuple[int, str, events_pb2.Event]] = deque(
            maxlen=min(retention, MEMORY) if path is not None else retention
        )
        self.retention = retention
        self.path = path
        self.next_sequence = 1
        self._disk_oldest = 1  # the oldest event the file holds (set at start)
        self._wake = asyncio.Event()

    def start_at(self, next_sequence: int, disk_oldest: int) -> None:
        """Where numbering stands after recovery (before anything is served)."""
        self.next_sequence = next_sequence
        self._disk_oldest = disk_oldest if self.path is not None else next_sequence

    @property
    def oldest(self) -> int:
        if self.path is not None:
            return max(self._disk_oldest, self.next_sequence - self.retention)
        return self._events[0][0] if self._events else self.next_sequence

    def extend(self, events: Iterable[tuple[int, str, events_pb2.Event]]) -> None:
        added = False
        for item in events:
            self._events.append(item)
            self.next_sequence = item[0] + 1
            added = True
        if added:
            self._wake.set()
            self._wake = asyncio.Event()

    async def _older(self, cursor: int) -> list[tuple[int, str, events_pb2.Event]]:
        """Events from ``cursor`` on that memory no longer holds, from disk."""
        assert self.path is not None
        end = self._events[0][0] if self._events else self.next_sequence
        rows = await asyncio.to_thread(
            storage_events.read_range, self.path, cursor, min(end, cursor + _PAGE)
        )
        if not rows or rows[0][0] != cursor:
            raise FellBehind(max(self.oldest, cursor + 1))
        return [(s, m, events_pb2.Event.FromString(b)) for s, m, b in rows]

    async def follow(self, start: int, markets: frozenset[str]) -> AsyncIterator[events_pb2.Event]:
        """Events from sequence ``start`` on (0: the oldest retained), forever.

        0 is the oldest retained so that a gateway starting without state misses
        nothing still held; one that wants only new events names the next sequence.
        """
        cursor = start or self.oldest
        while True:
            wake = self._wake
            while cursor < self.next_sequence:
                oldest = self.oldest
                if cursor < oldest:
                    raise FellBehind(oldest)
                memory = self._events[0][0] if self._events else self.next_sequence
                if cursor < memory:
                    for seq, market, pb in await self._older(cursor):
                        cursor = seq + 1
                        if not markets or market in markets:
                            yield pb
                    continue
                seq, market, pb = self._events[cursor - memory]
                cursor = seq + 1
                if not markets or market in markets:
                    yield pb
            await wake.wait()


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(
        self,
        log: EventLog,
        metrics: Metrics,
        auth: Authenticator,
        max_total: int = 256,
        max_per_identity: int = 16,
    ) -> None:
        self.log = log
        self.metrics = metrics
        self.auth = auth
        self.max_total = max_total
        self.max_per_identity = max_per_identity
        self.open_total = 0
        #: Open subscriptions per identity; an identity with none has no entry,
        #: so the dict never holds more keys than there are open subscriptions.
        self.open_by_identity: dict[str, int] = {}

    async def Subscribe(
        self,
        request: events_pb2.SubscribeRequest,
        context: Ctx,
    ) -> AsyncIterator[events_pb2.SubscribeResponse]:
        if request.from_sequence > self.log.next_sequence:
            await abort(
                context,
                grpc.StatusCode.OUT_OF_RANGE,
                "from_sequence",
                f"no event {request.from_sequence} yet (next is {self.log.next_sequence})",
            )
        requested = frozenset(request.markets)
        grant, markets = await self._markets(context, requested)
        identity = self.auth.gateway(grant, context)  # plaintext: the x-riskd-gateway name
        await self._admit(context, identity)
        # No await between the check in _admit and here: the count cannot be overtaken.
        self.open_total += 1
        self.open_by_identity[identity] = self.open_by_identity.get(identity, 0) + 1
        generation = self.auth.generation
        self.metrics.subscribers.inc()
        try:
            async for event in self.log.follow(request.from_sequence, markets):
                if generation != self.auth.generation:  # the policy was reloaded (SIGHUP)
                    generation = self.auth.generation
                    if (await self._markets(context, requested))[1] != markets:
                        await abort(
                            context,
                            grpc.StatusCode.PERMISSION_DENIED,
                            "markets",
                            "the access policy changed: subscribe again",
                        )
                yield events_pb2.SubscribeResponse(event=event)
        except FellBehind as e:
            await abort(context, grpc.StatusCode.OUT_OF_RANGE, "from_sequence", str(e))
        finally:
            self.metrics.subscribers.dec()
            self.open_total -= 1
            left = self.open_by_identity[identity] - 1
            if left:
                self.open_by_identity[identity] = left
            else:
                del self.open_by_identity[identity]

    async def _admit(self, context: Ctx, identity: str) -> None:
        """Refuse a subscription over either cap (RESOURCE_EXHAUSTED, naming the limit)."""
        mine = self.open_by_identity.get(identity, 0)
        if mine >= self.max_per_identity:
            self.metrics.subscriptions_refused.labels("per_identity").inc()
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "",
                f"{identity!r} already has {mine} event subscriptions open, the most allowed"
                f" per identity (server.max_subscriptions_per_identity = {self.max_per_identity})",
                retry_after=1.0,
            )
        if self.open_total >= self.max_total:
            self.metrics.subscriptions_refused.labels("total").inc()
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "",
                f"{self.open_total} event subscriptions are open, the most riskd serves"
                f" (server.max_subscriptions = {self.max_total})",
                retry_after=1.0,
            )

    async def _markets(
        self, context: Ctx, requested: frozenset[str]
    ) -> tuple[Grant, frozenset[str]]:
        """The caller's grant, and the markets a subscription follows: those asked
        for (all: empty), within the grant."""
        try:
            grant = self.auth.check(context, Role.READER)
        except Denied as d:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, d.field, d.message)
        granted = grant.markets
        if granted is None:
            return grant, requested
        if requested - granted:
            await abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "markets",
                f"not granted: {sorted(requested - granted)}",
            )
        if not (requested or granted):
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, "markets", "none granted")
        return grant, requested or granted
