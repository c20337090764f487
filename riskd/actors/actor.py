"""The actor primitive: one task, one bounded mailbox, calls run one at a time.

An actor's state is touched only by the functions it runs from its mailbox,
one after another, so no lock is ever needed.  ``call`` waits for the result;
``cast`` only waits for room in the mailbox.  A full mailbox makes the sender
wait: that is how overload pushes back to the gRPC stream (and, through its
credit window, to HTTP/2 flow control) instead of growing memory.

A message posted ``urgent`` goes ahead of everything waiting in the mailbox
(its own bounded lane): the ingest stream uses it for mark prices, so the
prices that drive liquidations never queue behind a flood of fills.

An exception other than :class:`~riskd.core.Rejected` escaping a handler is a
bug that may have left state half-changed: it is not caught here, so it takes
the daemon down and a restart rebuilds the state from durable storage.

:meth:`Actor.call_here` runs a call in the caller's own task when the actor
is idle (its task waits on an empty mailbox): the call is still the next and
only thing the actor runs, and a message arriving meanwhile waits until it
returns, so one handler at a time, in arrival order, holds as ever; what it
saves is the round trip's two scheduling passes (the sequencer's turn).

An actor whose task has ended (cancelled at shutdown, or crashed) answers
every call still waiting, and every later one, with :class:`ActorStopped`:
a caller never waits forever on a mailbox nobody reads (the daemon's
shutdown after a crash used to hang exactly there).
"""

from __future__ import annotations

import contextlib
import functools
from collections import deque
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import Generic, ParamSpec, TypeVar, overload

import trio

from riskd.core import Rejected
from riskd.errors import RiskdError

__all__ = ["Actor", "ActorStopped"]

T = TypeVar("T")
P = ParamSpec("P")


class _Reply(Generic[T]):
    __slots__ = ("done", "value", "error", "notify")

    def __init__(self, notify: Callable[[_Reply[T]], None] | None = None) -> None:
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.notify = notify


class ActorStopped(RiskdError):
    """The actor's task has ended: no answer will come."""

    STATUS = "UNAVAILABLE"


#: A function to run in the actor, its arguments, and who waits for the result.
#: The types line up where the message is built (``call``/``cast``/``post``
#: are ParamSpec-typed); inside the mailbox only "a call" is left.
_Message = tuple[Callable[..., object], tuple[object, ...], "_Reply[object] | None"]


def _bind(fn: Callable[..., object], kwargs: dict[str, object]) -> Callable[..., object]:
    """Keyword arguments folded into the function (the mailbox carries positional ones)."""
    return functools.partial(fn, **kwargs) if kwargs else fn


def _wake() -> None:
    """Sent to an idle actor when an urgent message arrives: look at the lane."""


class Actor:
    """Base class: subclasses add methods and invoke them through ``call``/``cast``."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._inbox, self._mailbox = trio.open_memory_channel[_Message](capacity)
        self._urgent: deque[_Message] = deque()
        self._idle = False
        self._stopped = False
        #: A :meth:`call_here` is running in its caller's task.
        self._lent = False
        #: Set when that call returns, if the actor's task is waiting for it.
        self._handed_back: trio.Event | None = None
        #: A message taken from the mailbox while a call_here ran, that urgent
        #: ones overtook: the next one from the mailbox.
        self._held: _Message | None = None

    @property
    def depth(self) -> int:
        """Messages waiting in the mailbox (read by the metrics collector)."""
        held = self._held is not None
        return self._inbox.statistics().current_buffer_used + len(self._urgent) + held

    @overload
    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call(
        self, fn: Callable[P, T | Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T | Awaitable[T]:
        """Run ``fn(*args)`` inside the actor and return its result."""
        reply: _Reply[object] = _Reply()
        message = (_bind(fn, kwargs), args, reply)
        # As ``send`` would: a cancelled caller queues nothing (no pass when not).
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                # Room in the mailbox: no scheduling pass just to queue it (waiting
                # for the reply below is this call's checkpoint).
                self._inbox.send_nowait(message)
            except trio.WouldBlock:
                await self._inbox.send(message)
        except trio.BrokenResourceError:
            raise ActorStopped(f"{self.name} has stopped") from None
        await reply.done.wait()
        if reply.error is not None:
            raise reply.error
        # run() awaited an awaitable result: what is stored is fn's final value.
        return reply.value  # type: ignore[return-value]

    @overload
    async def call_here(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def call_here(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def call_here(
        self, fn: Callable[P, T | Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T | Awaitable[T]:
        """:meth:`call`, run in the caller's task when the actor is idle.

        Idle: its task is parked on an empty mailbox (no message handed to it
        and not yet run: trio hands a message straight to a waiting receiver,
        which then no longer counts as waiting), nothing is in the urgent lane
        and no other ``call_here`` is running.  ``fn`` is then exactly what the
        actor would run next; it runs at once, and should a message reach the
        actor while ``fn`` awaits (another actor's answer), the actor's task
        runs it only once ``fn`` has returned.  Otherwise, :meth:`call`.

        For callers that are not cancelled while the actor works (the
        sequencer: only shutdown cancels it, and cancels the actors' own tasks
        alike), since a cancellation reaching ``fn`` here would stop it half
        way, where :meth:`call` would stop waiting and let it finish.  An
        exception other than :class:`~riskd.core.Rejected` reaches the caller
        (whose crash takes the daemon down, as the actor's would).
        """
        if (
            self._lent
            or self._urgent
            or self._stopped
            or not self._inbox.statistics().tasks_waiting_receive
        ):
            return await self.call(fn, *args, **kwargs)
        await trio.lowlevel.checkpoint_if_cancelled()  # as call (it does not yield otherwise)
        self._lent = True
        try:
            result = _bind(fn, kwargs)(*args)
            if isawaitable(result):
                result = await result
            return result  # type: ignore[return-value]  # fn's final value, as call's
        finally:
            self._lent = False
            back, self._handed_back = self._handed_back, None
            if back is not None:
                back.set()

    async def cast(self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue ``fn(*args)`` for the actor; errors in it crash the actor."""
        message = (_bind(fn, kwargs), args, None)
        await trio.lowlevel.checkpoint_if_cancelled()  # as call: cancelled, nothing queued
        try:
            try:
                # As call: room in the mailbox, no scheduling pass just to queue it
                # (a market casts a wallet credit per position that closes).
                self._inbox.send_nowait(message)
            except trio.WouldBlock:
                await self._inbox.send(message)
        except trio.BrokenResourceError:
            raise ActorStopped(f"{self.name} has stopped") from None

    def post(
        self,
        fn: Callable[..., T | Awaitable[T]],
        args: tuple[object, ...],
        notify: Callable[[T | None, BaseException | None], None],
        urgent: bool = False,
    ) -> None:
        """Queue a call without waiting; ``notify(value, error)`` gets the outcome.

        For callbacks run by ``TrioToken.run_sync_soon`` from the gRPC thread,
        which must never block.  Raises :class:`trio.WouldBlock` when the
        mailbox (or, ``urgent``, the urgent lane) is full: callers size their
        credit windows so it never is.
        """
        reply: _Reply[object] = _Reply(
            lambda r: notify(r.value, r.error)  # type: ignore[arg-type]  # fn's T, see call
        )
        if self._stopped:
            notify(None, ActorStopped(f"{self.name} has stopped"))
            return
        if not urgent:
            self._inbox.send_nowait((fn, args, reply))
            return
        if len(self._urgent) >= self.capacity:
            raise trio.WouldBlock
        self._urgent.append((fn, args, reply))
        if self._idle:
            # WouldBlock: the mailbox filled up meanwhile, so the actor wakes anyway.
            with contextlib.suppress(trio.WouldBlock):
                self._inbox.send_nowait((_wake, (), None))

    async def _next(self) -> _Message:
        while True:
            urgent = bool(self._urgent)
            if urgent:
                message = self._urgent.popleft()
            elif self._held is not None:
                message, self._held = self._held, None
            else:
                self._idle = True
                try:
                    message = await self._mailbox.receive()
                finally:
                    self._idle = False
                if message[0] is _wake:
                    continue
            if self._lent:  # a call_here came first: it runs to its end before this
                back = self._handed_back = trio.Event()
                try:
                    await back.wait()
                except BaseException:  # answered by _stop
                    if urgent:
                        self._urgent.appendleft(message)
                    else:
                        self._held = message
                    raise
                if not urgent and self._urgent:  # urgent ones came meanwhile: first
                    self._held = message
                    continue
            return message

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        reply: _Reply[object] | None = None
        try:
            while True:
                reply = None
                fn, args, reply = await self._next()
                if reply is None:
                    result = fn(*args)
                    if isawaitable(result):
                        await result
                    continue
                try:
                    result = fn(*args)
                    if isawaitable(result):
                        result = await result
                except Rejected as e:
                    reply.error = e
                else:
                    reply.value = result
                reply.done.set()
                if reply.notify is not None:
                    reply.notify(reply)
        finally:
            self._stop(reply)

    def _stop(self, current: _Reply[object] | None) -> None:
        """Answer the call in progress and everything queued: this actor is gone."""
        self._stopped = True
        waiting = [current] if current is not None else []
        waiting += [r for _, _, r in self._urgent if r is not None]
        self._urgent.clear()
        if self._held is not None and self._held[2] is not None:
            waiting.append(self._held[2])
        self._held = None
        while True:
            try:
                _, _, r = self._mailbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if r is not None:
                waiting.append(r)
        self._mailbox.close()  # later sends raise BrokenResourceError: ActorStopped
        for r in waiting:
            if r.done.is_set():
                continue
            r.error = ActorStopped(f"{self.name} has stopped")
            r.done.set()
            if r.notify is not None:
                with contextlib.suppress(Exception):  # a callback must not mask the cause
                    r.notify(r)
