"""The bridge between grpc.aio (its own asyncio thread) and trio (the main thread).

grpcio has no trio support.  Measured on this machine
(``docs/architecture.md``), the cheapest robust bridge runs a ``grpc.aio``
server on a dedicated asyncio thread and crosses into trio with
``TrioToken.run_sync_soon``; results come back with
``loop.call_soon_threadsafe``.  Two ways across:

* :meth:`Portal.post` — a sync callback that queues a write on an actor
  without waiting (the caller's credit window bounds it); the answer comes
  back to ``deliver`` once durable;
* :meth:`Portal.post_grouped` — the ingest fast path: as ``post``, but the
  posts that cross in one wake-up of trio, consecutive and for the same
  function, go to the actor as one message (a list) and are answered one by
  one;
* :meth:`Portal.call`, :meth:`Portal.query` and :meth:`Portal.write` —
  everything else: run a function in an actor (a query of a market's engine;
  a sequencer write, answered once durable) from asyncio and await its
  result, at most ``limit`` at a time.

Each is typed end to end (ParamSpec): what a call site passes is checked
against the function that will run on the trio side.  A write answers with a
:class:`~riskd.actors.journal.Durable`, which the bridge waits on, so no
caller ever sees an acknowledgement before its record is on disk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, ParamSpec, TypeVar, cast, overload

import grpc
import trio

from riskd.actors.actor import Actor
from riskd.actors.journal import Durable
from riskd.actors.market import MarketActor
from riskd.core import MarketEngine
from riskd.errors import RiskdError

__all__ = [
    "Portal",
    "GrpcThread",
    "Unavailable",
    "call_soon",
    "post_in_trio",
    "Deliver",
    "MAX_GROUP_WEIGHT",
]

T = TypeVar("T")
A = TypeVar("A")
R = TypeVar("R")
P = ParamSpec("P")
#: Posts of one group carry at most this much work (their ``weight``, say
#: updates) when more than one: an urgent message waits for a whole group.
MAX_GROUP_WEIGHT = 512

#: Where a posted write's outcome goes (run on the asyncio loop): its value
#: once durable, or the error that refused it.
Deliver = Callable[[T | None, BaseException | None], None]


class Unavailable(RiskdError):
    """trio has stopped (or its mailbox is full): the RPC cannot be served."""

    STATUS = "UNAVAILABLE"


@dataclass(slots=True)
class _Post(Generic[T]):
    """A write posted from asyncio, waiting for trio to pick it up."""

    actor: Actor
    #: Answers a Durable[T]; grouped, a list of them.
    fn: Callable[..., Awaitable[object]]
    args: tuple[object, ...]
    deliver: Deliver[T]
    urgent: bool
    #: ``fn`` takes a list of ``args[0]`` of posts like this one (post_grouped).
    grouped: bool = False
    weight: int = 0
    #: A full mailbox: wait for room (as ``Actor.call`` does), not Unavailable.
    patient: bool = False


@dataclass(slots=True)
class _Outcome(Generic[T]):
    """A posted write's outcome, waiting for asyncio to pick it up."""

    deliver: Deliver[T]
    value: T | None
    error: BaseException | None


class Portal:
    """asyncio → trio calls, bounded."""

    def __init__(self, token: trio.lowlevel.TrioToken, nursery: trio.Nursery, limit: int) -> None:
        self.token = token
        self.nursery = nursery
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None
        # Coalesced crossings: one wakeup of the other thread per burst, not per message.
        self._inbound: collections.deque[_Post[object]] = collections.deque()
        self._inbound_scheduled = False
        self._outbound: collections.deque[_Outcome[object]] = collections.deque()
        self._outbound_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @overload
    async def call(
        self, actor: Actor, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def call(
        self, actor: Actor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    async def call(
        self, actor: Actor, fn: Callable[P, T | Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args)`` run inside ``actor`` (between two of its messages)."""

        async def task() -> T:
            value: T = await actor.call(fn, *args, **kwargs)  # type: ignore[arg-type]
            return value

        return await self._cross(task)

    async def query(self, market: MarketActor, fn: Callable[[MarketEngine], T]) -> T:
        """Await ``fn(engine)`` read inside the market's actor."""
        return await self.call(market, market.query, fn)

    async def write(
        self,
        actor: Actor,
        fn: Callable[P, Awaitable[Durable[T]]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Await a write run inside ``actor``; its value once its record is durable.

        Posted, as :meth:`post` posts: no trio task per call, and the answer
        comes back from the journal's release (the profile of a unary
        ``CheckOrder`` counted each hop of the other way).  A full mailbox is
        waited on, as :meth:`call` waits."""
        one = functools.partial(fn, **kwargs) if kwargs else fn
        return await self._posted(
            lambda deliver: _Post(actor, one, args, deliver, False, patient=True)
        )

    async def write_grouped(
        self, actor: Actor, fn: Callable[[list[A]], Awaitable[list[Durable[T]]]], arg: A
    ) -> T:
        """:meth:`write` of ``fn([arg])``, grouped as :meth:`post_grouped` groups
        (weight 1): the unary writes that cross in one wake-up of trio are one
        call of ``fn``; each caller gets its own value once durable."""
        return await self._posted(
            lambda deliver: _Post(actor, fn, (arg,), deliver, False, True, 1, patient=True)
        )

    async def _posted(self, job: Callable[[Deliver[T]], _Post[T]]) -> T:
        """Post ``job(deliver)`` within the bound on calls in flight; its value."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            loop = self._loop = asyncio.get_running_loop()
            fut: asyncio.Future[T]
            deliver: Deliver[T]
            fut, deliver = _future(loop)
            self._inbound.append(job(deliver))  # type: ignore[arg-type]
            if not self._inbound_scheduled:
                self._schedule_inbound()
            return await fut

    async def _cross(self, task: Callable[[], Awaitable[T]]) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[T]
            deliver: Deliver[T]
            fut, deliver = _future(loop)

            async def in_trio() -> None:
                try:
                    value = await task()
                except Exception as e:  # delivered to the caller, not lost in trio
                    call_soon(loop, deliver, None, e)
                    if not _is_expected(e):
                        raise
                else:
                    call_soon(loop, deliver, value, None)

            try:
                self.token.run_sync_soon(self.nursery.start_soon, in_trio)
            except trio.RunFinishedError as e:
                raise Unavailable("the engine has stopped") from e
            return await fut

    def post(
        self,
        actor: Actor,
        deliver: Deliver[T],
        urgent: bool,
        fn: Callable[P, Awaitable[Durable[T]]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> None:
        """Queue the write ``fn(*args)`` on ``actor`` from asyncio, without waiting.

        ``deliver`` runs on this loop once its result is durable (or with the
        error).  ``urgent``: ahead of what waits in the actor's mailbox (see
        :class:`Actor`).
        """
        if kwargs:
            raise TypeError("Portal.post takes positional arguments only")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._inbound.append(_Post(actor, fn, args, deliver, urgent))  # type: ignore[arg-type]
        if not self._inbound_scheduled:
            self._schedule_inbound()

    def post_grouped(
        self,
        actor: Actor,
        deliver: Deliver[T],
        urgent: bool,
        fn: Callable[[list[A]], Awaitable[list[Durable[T]]]],
        arg: A,
        weight: int,
    ) -> None:
        """:meth:`post` of ``fn([arg])``, grouped with the posts next to it.

        Consecutive grouped posts of the same ``fn`` on the same actor and
        lane that cross together become one ``fn([arg, ...])`` (up to
        :data:`MAX_GROUP_WEIGHT` of ``weight``), which answers one
        :class:`Durable` per ``arg``, in order; each ``deliver`` gets its own.
        """
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        job = _Post(actor, fn, (arg,), deliver, urgent, True, weight)
        self._inbound.append(job)  # type: ignore[arg-type]
        if not self._inbound_scheduled:
            self._schedule_inbound()

    def _schedule_inbound(self) -> None:
        self._inbound_scheduled = True
        try:
            self.token.run_sync_soon(self._drain_inbound)
        except trio.RunFinishedError:
            self._inbound_scheduled = False
            while self._inbound:
                self._inbound.popleft().deliver(None, Unavailable("the engine has stopped"))

    def _drain_inbound(self) -> None:  # in trio: must never raise
        self._inbound_scheduled = False  # before draining: a post racing with us reschedules
        inbound = self._inbound
        while inbound:
            job = inbound.popleft()
            if not job.grouped:
                notify = self._notifier(job.deliver)
                one = cast(Callable[..., Awaitable[Durable[object]]], job.fn)
                post_in_trio(
                    self.nursery, job.actor, one, job.args, notify, job.urgent, job.patient
                )
                continue
            group = [job]
            weight = job.weight
            while inbound and weight < MAX_GROUP_WEIGHT:
                nxt = inbound[0]
                if not (
                    nxt.grouped
                    and nxt.actor is job.actor
                    and nxt.urgent == job.urgent
                    and nxt.patient == job.patient
                    and nxt.fn == job.fn
                ):
                    break
                group.append(inbound.popleft())
                weight += nxt.weight
            notify_all = self._group_notifier([j.deliver for j in group])
            many = cast(Callable[..., Awaitable[list[Durable[object]]]], job.fn)
            args = ([j.args[0] for j in group],)
            post_in_trio(self.nursery, job.actor, many, args, notify_all, job.urgent, job.patient)

    def _group_notifier(
        self, delivers: list[Deliver[object]]
    ) -> Callable[[list[Durable[object]] | None, BaseException | None], None]:
        def notify(done: list[Durable[object]] | None, error: BaseException | None) -> None:
            if done is None:
                for deliver in delivers:
                    self._send_back(_Outcome(deliver, None, error))
                return
            for d, deliver in zip(done, delivers, strict=True):
                d.then(functools.partial(self._durable_back, deliver))

        return notify

    def _durable_back(self, deliver: Deliver[object], value: object) -> None:  # in trio
        self._send_back(_Outcome(deliver, value, None))

    def _notifier(
        self, deliver: Deliver[object]
    ) -> Callable[[Durable[object] | None, BaseException | None], None]:
        def notify(done: Durable[object] | None, error: BaseException | None) -> None:  # in trio
            if done is not None:  # not before it is durable
                done.then(lambda value: self._send_back(_Outcome(deliver, value, None)))
            else:
                self._send_back(_Outcome(deliver, None, error))

        return notify

    def _send_back(self, outcome: _Outcome[object]) -> None:  # in trio
        self._outbound.append(outcome)
        if not self._outbound_scheduled:
            self._outbound_scheduled = True
            assert self._loop is not None
            call_soon(self._loop, self._drain_outbound)

    def _drain_outbound(self) -> None:  # in asyncio
        self._outbound_scheduled = False
        outbound = self._outbound
        while outbound:
            o = outbound.popleft()
            o.deliver(o.value, o.error)


def post_in_trio(
    nursery: trio.Nursery,
    actor: Actor,
    fn: Callable[..., Awaitable[R]],
    args: tuple[object, ...],
    notify: Callable[[R | None, BaseException | None], None],
    urgent: bool,
    patient: bool,
) -> None:
    """Queue ``fn(*args)`` on ``actor`` from trio without waiting; ``notify`` gets
    its result or error.  A full mailbox refuses an impatient post (UNAVAILABLE:
    a stream's batch, which its gateway resends) and is waited on, in a task of
    ``nursery``, by a patient one (a unary call, whose caller waits anyway)."""
    try:
        actor.post(fn, args, notify, urgent)
    except trio.WouldBlock:
        if patient:
            nursery.start_soon(_post_patiently, actor, fn, args, notify)
        else:
            notify(None, Unavailable(f"{actor.name} mailbox full"))


async def _post_patiently(
    actor: Actor,
    fn: Callable[..., Awaitable[R]],
    args: tuple[object, ...],
    notify: Callable[[R | None, BaseException | None], None],
) -> None:
    """A patient post that found the mailbox full: waits for room, then as posted."""
    try:
        done = await actor.call(fn, *args)
    except Exception as e:  # delivered to the caller, not lost in trio
        notify(None, e)
        if not _is_expected(e):
            raise
    else:
        notify(done, None)


def _is_expected(e: Exception) -> bool:
    from riskd.actors.sequencer import SequenceError
    from riskd.core import Rejected

    return isinstance(e, Rejected | SequenceError | Unavailable)


def _future(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Future[T], Deliver[T]]:
    """A future on ``loop`` and the :data:`Deliver` that settles it (once)."""
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(value: T | None, error: BaseException | None) -> None:
        if not fut.done():
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)  # type: ignore[arg-type]  # None only with an error

    return fut, deliver


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    """``loop.call_soon_threadsafe`` that ignores a closed loop (nobody is waiting)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


class GrpcThread:
    """A grpc.aio server running in its own thread with its own asyncio loop."""

    def __init__(self, build: Callable[[], Awaitable[grpc.aio.Server]]) -> None:
        self._build = build
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="grpc", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: grpc.aio.Server | None = None
        self._stop: asyncio.Event | None = None
        self._grace = 5.0

    def start(self) -> None:
        """Start the thread; block until the server listens (or failed to)."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def run_coroutine(self, coro: Awaitable[T]) -> T:
        """Run a coroutine on the gRPC loop from another thread and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def stop(self, grace: float) -> None:
        """Stop the server (after the caller drained the streams) and join the thread."""
        if self.loop is not None and self._stop is not None:
            self._grace = grace
            call_soon(self.loop, self._stop.set)
        self._thread.join()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to start() if it happened before listening
            self._error = e
            self._started.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.server = await self._build()
        await self.server.start()
        self._started.set()
        await self._stop.wait()
        await self.server.stop(self._grace)
