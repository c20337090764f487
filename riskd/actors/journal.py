"""The journal actor: group commit behind one bounded mailbox.

The sequencer applies an input, then hands its record here and moves on; this
actor writes everything waiting in one transaction (in trio when it has
nothing else to do, else in the actor's writer thread, so trio keeps serving
meanwhile) and only then releases the acknowledgements of what it wrote.
Fast batches share one fsync; a slow disk fills the mailbox and slows the
sequencer, never memory.

An error writing is fatal (:mod:`riskd.storage.faults`): the group that
failed is never released, so nothing in it (or queued after it) is
acknowledged, and the process logs the cause once and exits with status 4,
to be restarted from the journal once the disk is fixed.  Exiting at once,
rather than unwinding the daemon, is what keeps it from waiting forever on
actors that will never answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio
from trio.testing import wait_all_tasks_blocked

from riskd.storage.faults import StorageFault, fail_stop
from riskd.storage.journal import Journal

__all__ = ["JournalActor", "Durable"]

T = TypeVar("T")
U = TypeVar("U")
MAX_GROUP = 1024
#: The longest a group waits for the trio thread to fall idle before it is written.
HAND_WITHIN = 0.001
#: An idle trio thread commits a group itself while the last commit took less
#: than this (seconds); a slower one (a stalling disk, a remote journal) sends
#: the next to the writer thread, so trio keeps serving meanwhile.
COMMIT_HERE_BELOW = 0.002
#: ... and while the group's records are at most this many characters: a large
#: group (batches of hundreds of updates) takes longer to write, and the next
#: large batch is better applied meanwhile.
COMMIT_HERE_CHARS = 16_384


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
    """Group commit behind a bounded queue, in trio when idle, else in a writer thread.

    One group at a time: the records queued while the previous group was
    written and released are written once the trio thread has nothing left
    to run, or after :data:`HAND_WITHIN`.  Idle, while commits take less than
    ``commit_here_below`` and for a group of at most :data:`COMMIT_HERE_CHARS`,
    trio appends them in one transaction itself and releases what is now
    durable, in order.  Otherwise they are handed to the writer thread (the
    actor's own, for its life), which appends them and reports back through
    ``TrioToken.run_sync_soon``, where the actor releases them.  Why not
    ``trio.to_thread`` per commit, as before: each call also paid a capacity
    limiter, an outcome, a task reschedule and two renamings of the worker
    thread, a cost the trio thread paid per commit (docs/performance.md, "The
    engine per message, session 15").

    Only trio touches what awaits release, the records not yet written and
    the counters; the journal is written by one side at a time (whoever
    holds the group being written: nothing else writes it while the actor
    runs), and the group handed to the writer passes under one lock.
    Bounded: ``submit`` waits while ``capacity`` items are unreleased.
    """

    def __init__(
        self,
        journal: Journal,
        capacity: int,
        written: int = 0,
        head: str = "",
        on_fault: Callable[[StorageFault], object] = fail_stop,
        on_commit: Callable[[float], None] | None = None,
        interval: float = 0.0,
        commit_here_below: float = COMMIT_HERE_BELOW,
    ) -> None:
        self.journal = journal
        #: 0: every group goes to the writer thread (:data:`COMMIT_HERE_BELOW`).
        self.commit_here_below = commit_here_below
        self._last_commit = 0.0  # seconds the last commit took
        #: A group is handed over at least this long after the previous one
        #: (``[server] journal_commit_interval_seconds``).
        self.interval = interval
        self._handed_at = -interval
        #: Told how long each group commit took (seconds): riskd_journal_commit_seconds.
        self.on_commit = on_commit
        self.capacity = capacity
        self.written = written  # records durable in the journal
        self.head = head  # their chain hash: where a snapshot of this state sits
        self.on_fault = on_fault
        #: Called before each record is queued; what it returns runs once the
        #: record is durable (riskd.daemon: the events it published).
        self.seal: Callable[[], Awaitable[Callable[[], None] | None]] | None = None
        # In trio only: everything submitted and not yet released, in order,
        # and how many of those carry a record that the writer has not yet
        # reported durable.
        self._unreleased: deque[tuple[bool, Durable[object], Callable[[], None] | None]] = deque()
        self._room: trio.Event | None = None  # waited on while the queue is full
        self._failed: trio.Event = trio.Event()
        self._fault: BaseException | None = None
        self._bug: Exception | None = None
        self._waiting: list[str] = []  # records not yet handed to the writer
        self._writing = False  # a group is with the writer, its release not yet run
        # Shared with the writer thread, under the lock: the group handed over.
        self._lock = threading.Condition(threading.Lock())
        self._group: list[str] | None = None
        self._stop = False
        self._kick = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def depth(self) -> int:
        """Records queued for the writer, not yet in a commit."""
        return len(self._waiting)

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
        await trio.lowlevel.checkpoint()  # a schedule point, as a channel send was
        pending = Durable(value)
        await self._queue([(record, pending, on_durable)])  # type: ignore[list-item]
        return pending

    async def submit_many(
        self, items: Sequence[tuple[str | None, T, Callable[[], None] | None]]
    ) -> list[Durable[T]]:
        """:meth:`submit` of each ``(record, value, on_durable)`` in order, sealed once.

        Queued without a trio checkpoint while the queue has room (a sequencer
        turn of many small batches used to pay one each).
        """
        if not items:
            return []
        released = await self.seal() if self.seal is not None else None
        out: list[Durable[T]] = []
        queued: list[tuple[str | None, Durable[object], Callable[[], None] | None]] = []
        last = len(items) - 1
        for i, (record, value, on_durable) in enumerate(items):
            if released is not None and i == last:
                on_durable = _both(on_durable, released)
            pending = Durable(value)
            queued.append((record, pending, on_durable))  # type: ignore[arg-type]
            out.append(pending)
        await self._queue(queued)
        return out

    async def _queue(
        self, items: list[tuple[str | None, Durable[object], Callable[[], None] | None]]
    ) -> None:
        """Hand ``items`` to the writer in order, waiting for room when full."""
        unreleased = self._unreleased
        at = 0
        while at < len(items):
            room = self.capacity - len(unreleased)
            if room <= 0:
                if self._room is None:
                    self._room = trio.Event()
                await self._room.wait()
                continue
            chunk = items[at : at + room]
            at += len(chunk)
            records = [r for r, _, _ in chunk if r is not None]
            for record, pending, on_durable in chunk:
                if record is None and not unreleased:
                    # Nothing before it waits: durable already (as a group of no records).
                    if on_durable is not None:
                        on_durable()
                    pending._release()
                else:
                    unreleased.append((record is not None, pending, on_durable))
            if records:
                self._waiting += records
                self._hand()

    def _hand(self) -> None:
        """Have what waits handed to the writer, unless it holds a group not yet
        released: one group at a time (a writer that took whatever waited the
        moment it was free made smaller groups, so more commits of ~100-200 µs
        of CPU each, and no less CPU per message in all)."""
        if self._writing or not self._waiting:
            return
        self._kick.set()

    def _take_group(self) -> list[str] | None:
        """The next group, now the writer's (None: one is being written, or none waits)."""
        if self._writing or not self._waiting:
            return None
        group = self._waiting[:MAX_GROUP]
        del self._waiting[:MAX_GROUP]
        self._writing = True
        return group

    def _hand_over(self, group: list[str]) -> None:
        with self._lock:
            self._group = group
            self._lock.notify()

    def _commit_here(self, group: list[str]) -> None:
        """Write ``group`` in the trio thread, which has nothing else to run:
        no hand-over to the writer thread and no report back, two thread
        wake-ups a commit fewer (measured: docs/performance.md, "Committing in
        place, session 16").  SQLite lets go of the GIL while it writes and
        syncs, so the gRPC thread goes on reading meanwhile."""
        try:
            head, seconds = _append(self.journal, group)
        except Exception as e:
            self._crashed(e)
            return
        self._committed(len(group), head, seconds)

    def _committed(self, n: int, head: str, seconds: float) -> None:
        """In trio, after a commit (reported by the writer, or in place): ``n``
        more records are durable; release them and every record-less item
        queued before the next record."""
        if self.on_commit is not None:
            self.on_commit(seconds)
        self._last_commit = seconds
        self.written += n
        self.head = head
        unreleased = self._unreleased
        try:
            while unreleased:
                has_record, pending, on_durable = unreleased[0]
                if has_record:
                    if n == 0:
                        break
                    n -= 1
                unreleased.popleft()
                if on_durable is not None:
                    on_durable()
                pending._release()
        except Exception as e:  # a bug in a callback: raised by run(), as before
            self._bug = e
            self._failed.set()
            return
        if self._room is not None and len(unreleased) < self.capacity:
            self._room.set()
            self._room = None
        self._writing = False
        self._hand()

    def _crashed(self, fault: BaseException) -> None:
        """In trio (the writer's report, or in place): a commit failed; nothing
        more is released."""
        self._fault = fault
        self._failed.set()

    def _write(self) -> None:
        """The writer thread: commit what waits, report each commit to trio."""
        _name_os_thread(b"riskd-journal")
        token = self._token
        assert token is not None
        lock = self._lock
        journal = self.journal
        while True:
            with lock:
                while self._group is None and not self._stop:
                    lock.wait()
                if self._stop:
                    return
                group: list[str] = self._group  # type: ignore[assignment]  # not None: looped
                self._group = None
            try:
                head, seconds = _append(journal, group)
            except BaseException as e:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(self._crashed, e)
                return
            try:
                token.run_sync_soon(self._committed, len(group), head, seconds)
            except trio.RunFinishedError:
                return

    async def _hander(self) -> None:
        """Write each group once the trio thread has nothing left to run (or
        after :data:`HAND_WITHIN`), so that what the turns under way still
        queue joins it: each commit costs the process ~100-200 µs of CPU, mostly
        the fsync, whatever its size.  Idle, trio commits a small group itself
        while commits are fast (:meth:`_commit_here`); busy, for a large group
        or after a slow commit, the writer thread does, and trio goes on with
        the next turns.
        (``wait_all_tasks_blocked`` is trio's public "the run queue is empty"
        signal; it lives in ``trio.testing``.)"""
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            if self.interval:
                await trio.sleep_until(self._handed_at + self.interval)
            idle = False
            with trio.move_on_after(HAND_WITHIN):
                await wait_all_tasks_blocked()
                idle = True
            if self.interval:
                self._handed_at = trio.current_time()
            group = self._take_group()
            if group is None:
                continue
            if (
                idle
                and self._last_commit < self.commit_here_below
                and sum(map(len, group)) <= COMMIT_HERE_CHARS
            ):
                self._commit_here(group)
            else:
                self._hand_over(group)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        writer = threading.Thread(target=self._write, name="journal", daemon=True)
        writer.start()
        try:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._hander)
                await self._failed.wait()
                nursery.cancel_scope.cancel()
        finally:
            with self._lock:
                self._stop = True
                self._lock.notify()
            # A commit in progress finishes (its outcome is then known) before the
            # journal can be closed under it.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.join)
        if self._bug is not None:
            raise self._bug
        fault = self._fault
        if isinstance(fault, StorageFault):
            self.on_fault(fault)
            raise fault  # on_fault did not end the process (a test): release nothing
        assert fault is not None
        # A backend that does not speak StorageFault.
        wrapped = StorageFault("journal", getattr(self.journal, "path", ""), fault)
        self.on_fault(wrapped)
        raise wrapped


def _append(journal: Journal, group: list[str]) -> tuple[str, float]:
    """Commit ``group``: the chain hash after it, and how long the commit took."""
    started = time.perf_counter()
    journal.append(group)
    return journal.head, time.perf_counter() - started


def _name_os_thread(name: bytes) -> None:
    """Name the calling thread for ``top -H`` and /proc (``benchmarks.ingest``'s
    per-thread CPU): Linux's ``prctl(PR_SET_NAME)``; elsewhere nothing."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _both(first: Callable[[], None] | None, then: Callable[[], None]) -> Callable[[], None]:
    if first is None:
        return then

    def both() -> None:
        first()
        then()

    return both
