"""The journal actor: group commit behind one bounded mailbox.

The sequencer applies an input, then hands its record here and moves on; this
actor writes everything waiting in one transaction (in a worker thread, so
trio keeps serving) and only then releases the acknowledgements of what it
wrote.  Fast batches share one fsync; a slow disk fills the mailbox and
slows the sequencer, never memory.

An error writing is fatal (:mod:`riskd.storage.faults`): the group that
failed is never released, so nothing in it (or queued after it) is
acknowledged, and the process logs the cause once and exits with status 4,
to be restarted from the journal once the disk is fixed.  Exiting at once,
rather than unwinding the daemon, is what keeps it from waiting forever on
actors that will never answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

from riskd.storage.faults import StorageFault, fail_stop
from riskd.storage.journal import Journal

__all__ = ["JournalActor", "Durable"]

T = TypeVar("T")
U = TypeVar("U")
MAX_GROUP = 1024


class Durable(Generic[T]):
    """A result that may be released only once its journal record is durable.

    Every write the sequencer serves answers with one (already released when
    nothing had to be journaled, or no journal is attached), so a caller
    never has to tell "a value" from "a value on its way to disk" apart:
    ``await d.wait()`` in trio, ``d.then(callback)`` from a callback.
    """

    # The event and the callback list are made only when someone waits: most
    # answers (one per ingest batch) are only ever handed a callback or read.
    __slots__ = ("value", "_released", "_event", "_callbacks")

    def __init__(self, value: T) -> None:
        self.value = value
        self._released = False
        self._event: trio.Event | None = None
        self._callbacks: list[Callable[[T], None]] | None = None

    @classmethod
    def ready(cls, value: T) -> Durable[T]:
        """A result with nothing (more) to wait for."""
        d = cls(value)
        d._released = True
        return d

    @property
    def released(self) -> bool:
        return self._released

    def then(self, callback: Callable[[T], None]) -> None:
        if self._released:
            callback(self.value)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    async def wait(self) -> T:
        if not self._released:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
        else:
            await trio.lowlevel.checkpoint()  # as waiting on a set Event did
        return self.value

    def follow(self, value: U) -> Durable[U]:
        """``value``, released when this one is (an answer worked out after its record
        was queued, with no record of its own)."""
        out: Durable[U] = Durable(value)
        self.then(lambda _: out._release())
        return out

    def _release(self) -> None:
        self._released = True
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None:
            for cb in callbacks:
                cb(self.value)


class JournalActor:
    def __init__(
        self,
        journal: Journal,
        capacity: int,
        written: int = 0,
        head: str = "",
        on_fault: Callable[[StorageFault], object] = fail_stop,
        on_commit: Callable[[float], None] | None = None,
    ) -> None:
        self.journal = journal
        #: Told how long each group commit took (seconds): riskd_journal_commit_seconds.
        self.on_commit = on_commit
        self.capacity = capacity
        self.written = written  # records durable in the journal
        self.head = head  # their chain hash: where a snapshot of this state sits
        self.on_fault = on_fault
        #: Called before each record is queued; what it returns runs once the
        #: record is durable (riskd.daemon: the events it published).
        self.seal: Callable[[], Awaitable[Callable[[], None] | None]] | None = None
        self._send, self._receive = trio.open_memory_channel[
            tuple[str | None, Durable[object], Callable[[], None] | None]
        ](capacity)

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    async def submit(
        self, record: str | None, value: T, on_durable: Callable[[], None] | None = None
    ) -> Durable[T]:
        """Queue a record (None: just wait for what is queued before it)."""
        if self.seal is not None:
            # Events the engine published for this record (and any before it)
            # become visible only once it is durable.
            released = await self.seal()
            if released is not None:
                on_durable = _both(on_durable, released)
        pending = Durable(value)
        await self._send.send((record, pending, on_durable))  # type: ignore[arg-type]  # T is an object
        return pending

    async def submit_many(
        self, items: Sequence[tuple[str | None, T, Callable[[], None] | None]]
    ) -> list[Durable[T]]:
        """:meth:`submit` of each ``(record, value, on_durable)`` in order, sealed once.

        Queued without a trio checkpoint per record while the mailbox has room
        (a sequencer turn of many small batches used to pay one each).
        """
        if not items:
            return []
        released = await self.seal() if self.seal is not None else None
        out: list[Durable[T]] = []
        for i, (record, value, on_durable) in enumerate(items):
            if released is not None and i == len(items) - 1:
                on_durable = _both(on_durable, released)
            pending = Durable(value)
            item = (record, pending, on_durable)
            try:
                self._send.send_nowait(item)  # type: ignore[arg-type]  # T is an object
            except trio.WouldBlock:
                await self._send.send(item)  # type: ignore[arg-type]
            out.append(pending)
        return out

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for first in self._receive:
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            records = [r for r, _, _ in group if r is not None]
            if records:
                started = time.perf_counter()
                try:
                    await trio.to_thread.run_sync(self.journal.append, records)
                except StorageFault as fault:
                    self.on_fault(fault)
                    raise  # on_fault did not end the process (a test): release nothing
                except Exception as e:  # a backend that does not speak StorageFault
                    self.on_fault(StorageFault("journal", getattr(self.journal, "path", ""), e))
                    raise
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - started)
                self.written += len(records)
                self.head = self.journal.head
            for _, pending, on_durable in group:
                if on_durable is not None:
                    on_durable()
                pending._release()


def _both(first: Callable[[], None] | None, then: Callable[[], None]) -> Callable[[], None]:
    if first is None:
        return then

    def both() -> None:
        first()
        then()

    return both
