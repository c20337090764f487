"""The actor primitive: one task, one bounded mailbox, calls run one at a time.

An actor's state is touched only by the functions it runs from its mailbox,
one after another, so no lock is ever needed.  ``call`` waits for the result;
``cast`` only waits for room in the mailbox.  A full mailbox makes the sender
wait: that is how overload pushes back to the gRPC stream (and, through its
credit window, to HTTP/2 flow control) instead of growing memory.

An exception other than :class:`~riskd.core.Rejected` escaping a handler is a
bug that may have left state half-changed: it is not caught here, so it takes
the daemon down and a restart rebuilds the state from durable storage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from inspect import isawaitable
from typing import Any, Generic, TypeVar, overload

import trio

from riskd.core import Rejected

__all__ = ["Actor"]

T = TypeVar("T")


class _Reply(Generic[T]):
    __slots__ = ("done", "value", "error", "notify")

    def __init__(self, notify: Callable[[_Reply[T]], None] | None = None) -> None:
        self.done = trio.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.notify = notify


_Message = tuple[Callable[..., Any], tuple[Any, ...], "_Reply[Any] | None"]


class Actor:
    """Base class: subclasses add methods and invoke them through ``call``/``cast``."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._inbox, self._mailbox = trio.open_memory_channel[_Message](capacity)

    @property
    def depth(self) -> int:
        """Messages waiting in the mailbox (read by the metrics collector)."""
        return self._inbox.statistics().current_buffer_used

    @overload
    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...
    @overload
    async def call(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` inside the actor and return its result."""
        reply: _Reply[Any] = _Reply()
        await self._inbox.send((fn, args, reply))
        await reply.done.wait()
        if reply.error is not None:
            raise reply.error
        return reply.value

    async def cast(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue ``fn(*args)`` for the actor; errors in it crash the actor."""
        await self._inbox.send((fn, args, None))

    def post(
        self,
        fn: Callable[..., T | Awaitable[T]],
        args: tuple[Any, ...],
        notify: Callable[[T | None, BaseException | None], None],
    ) -> None:
        """Queue a call without waiting; ``notify(value, error)`` gets the outcome.

        For callbacks run by ``TrioToken.run_sync_soon`` from the gRPC thread,
        which must never block.  Raises :class:`trio.WouldBlock` when the
        mailbox is full: callers size their credit windows so it never is.
        """
        reply: _Reply[T] = _Reply(lambda r: notify(r.value, r.error))
        self._inbox.send_nowait((fn, args, reply))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for fn, args, reply in self._mailbox:
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
