"""The bridge between grpc.aio (its own asyncio thread) and trio (the main thread).

grpcio has no trio support.  Measured on this machine
(``docs/architecture.md``), the cheapest robust bridge runs a ``grpc.aio``
server on a dedicated asyncio thread and crosses into trio with
``TrioToken.run_sync_soon``; results come back with
``loop.call_soon_threadsafe``.  Two ways across:

* :meth:`Portal.post` — the ingest fast path: a sync callback that queues a job
  on an actor without waiting (the caller's credit window bounds it);
* :meth:`Portal.run` — everything else: run a trio coroutine in the daemon's
  nursery and await its result from asyncio, at most ``limit`` at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import trio

from riskd.actors.actor import Actor
from riskd.actors.journal import Pending

__all__ = ["Portal", "GrpcThread", "Unavailable", "call_soon"]

T = TypeVar("T")


class Unavailable(Exception):
    """trio has stopped (or its mailbox is full): the RPC cannot be served."""


class Portal:
    """asyncio → trio calls, bounded."""

    def __init__(self, token: trio.lowlevel.TrioToken, nursery: trio.Nursery, limit: int) -> None:
        self.token = token
        self.nursery = nursery
        self.limit = limit
        self._slots: asyncio.Semaphore | None = None
        # Coalesced crossings: one wakeup of the other thread per burst, not per message.
        self._inbound: collections.deque[Any] = collections.deque()
        self._inbound_scheduled = False
        self._outbound: collections.deque[Any] = collections.deque()
        self._outbound_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` run as a trio task; its exception is re-raised here."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        async with self._slots:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[T] = loop.create_future()

            def deliver(value: Any, error: BaseException | None) -> None:
                if not fut.done():
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(value)

            async def task() -> None:
                try:
                    value = await fn(*args)
                    if isinstance(value, Pending):  # released once durable
                        value = await value.wait()
                except Exception as e:  # delivered to the caller, not lost in trio
                    call_soon(loop, deliver, None, e)
                    if not _is_expected(e):
                        raise
                else:
                    call_soon(loop, deliver, value, None)

            try:
                self.token.run_sync_soon(self.nursery.start_soon, task)
            except trio.RunFinishedError as e:
                raise Unavailable("the engine has stopped") from e
            return await fut

    def post(
        self,
        actor: Actor,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        deliver: Callable[[Any, BaseException | None], None],
        urgent: bool = False,
    ) -> None:
        """Queue ``fn(*args)`` on ``actor`` from asyncio; ``deliver`` runs on ``loop``.

        ``urgent``: ahead of what waits in the actor's mailbox (see :class:`Actor`).
        """
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._inbound.append((actor, fn, args, deliver, urgent))
        if not self._inbound_scheduled:
            self._inbound_scheduled = True
            try:
                self.token.run_sync_soon(self._drain_inbound)
            except trio.RunFinishedError:
                self._inbound_scheduled = False
                while self._inbound:
                    self._inbound.popleft()[3](None, Unavailable("the engine has stopped"))

    def _drain_inbound(self) -> None:  # in trio: must never raise
        self._inbound_scheduled = False  # before draining: a post racing with us reschedules
        inbound = self._inbound
        while inbound:
            actor, fn, args, deliver, urgent = inbound.popleft()
            notify = self._notifier(deliver)
            try:
                actor.post(fn, args, notify, urgent)
            except trio.WouldBlock:
                notify(None, Unavailable(f"{actor.name} mailbox full"))

    def _notifier(self, deliver: Callable[[Any, BaseException | None], None]) -> Any:
        def notify(value: Any, error: BaseException | None) -> None:  # in trio
            if isinstance(value, Pending):  # not before it is durable
                value.then(lambda v: notify(v, None))
                return
            self._outbound.append((deliver, value, error))
            if not self._outbound_scheduled:
                self._outbound_scheduled = True
                assert self._loop is not None
                call_soon(self._loop, self._drain_outbound)

        return notify

    def _drain_outbound(self) -> None:  # in asyncio
        self._outbound_scheduled = False
        outbound = self._outbound
        while outbound:
            deliver, value, error = outbound.popleft()
            deliver(value, error)


def _is_expected(e: Exception) -> bool:
    from riskd.actors.sequencer import SequenceError
    from riskd.core import Rejected

    return isinstance(e, Rejected | SequenceError | Unavailable)


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
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
