"""Group commit behind a bounded channel, for the derived files
(``events.sqlite3``, ``ledger.sqlite3``).

Producers put items on the channel and move on; :meth:`GroupWriter.run`
takes whatever is waiting (up to :data:`MAX_GROUP`) and writes it in one
transaction in a worker thread.  A :class:`Marker` (:meth:`GroupWriter.sync`)
makes that write fsync'd and is released once it is.  A write that fails is
a storage fault: fail-stop, exit 4 (:mod:`riskd.storage.faults`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from riskd.storage.faults import StorageFault

__all__ = ["MAX_GROUP", "GroupWriter", "Marker"]

T = TypeVar("T")
#: Items one transaction takes at most.
MAX_GROUP = 256


class Marker:
    """Released once everything queued before it is on disk (fsync'd)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = trio.Event()


class GroupWriter(Generic[T]):
    def __init__(self, capacity: int, on_fault: Callable[[StorageFault], object]) -> None:
        self.capacity = capacity
        self.on_fault = on_fault
        self._send, self._receive = trio.open_memory_channel[T | Marker](capacity)

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    async def _put(self, item: T | Marker) -> None:
        await self._send.send(item)

    async def _sync(self, marker: Marker) -> None:
        await self._send.send(marker)
        await marker.done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for first in self._receive:
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    group.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            items = [g for g in group if not isinstance(g, Marker)]
            syncs = [g for g in group if isinstance(g, Marker)]
            try:
                await trio.to_thread.run_sync(self._write, items, syncs)
            except StorageFault as fault:
                self.on_fault(fault)
                raise
            for s in syncs:
                s.done.set()

    def _write(self, items: list[T], syncs: list[Marker]) -> None:
        """Write ``items`` in one transaction, fsync'd when ``syncs``."""
        raise NotImplementedError
