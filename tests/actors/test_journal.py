"""The journal actor: its groups, who writes them, the order of releases, the bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskd.actors.journal import COMMIT_HERE_BELOW, COMMIT_HERE_CHARS, Durable, JournalActor
from riskd.storage.faults import StorageFault


class Held:
    """A journal whose appends wait for the test's go-ahead (in the writer thread)."""

    path = "held"
    epoch = 1

    def __init__(self, hold: bool = False) -> None:
        self.groups: list[list[str]] = []
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self.head = "genesis"

    def append(self, records: Sequence[str]) -> None:
        self.gate.wait()
        self.groups.append(list(records))
        self.head = records[-1]


async def test_groups_are_what_queued_while_the_previous_one_was_written() -> None:
    journal = Held(hold=True)
    actor = JournalActor(journal, 16, commit_here_below=0)  # type: ignore[arg-type]
    released: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        first = await actor.submit("a", "a")
        first.then(released.append)
        await trio.testing.wait_all_tasks_blocked()  # "a" is with the writer, held
        for r in ("b", "c"):
            (await actor.submit(r, r)).then(released.append)
        marker = await actor.submit(None, "after c")  # no record: released behind "c"
        marker.then(released.append)
        assert actor.depth == 2 and not released
        journal.gate.set()
        await marker.wait()
        assert journal.groups == [["a"], ["b", "c"]]
        assert released == ["a", "b", "c", "after c"]
        assert actor.written == 3 and actor.head == "c"
        nursery.cancel_scope.cancel()


async def test_a_full_queue_makes_the_submitter_wait_until_a_release() -> None:
    journal = Held(hold=True)
    actor = JournalActor(journal, 2, commit_here_below=0)  # type: ignore[arg-type]
    third: list[Durable[str]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await actor.submit("a", "a")
        await actor.submit("b", "b")

        async def submit_third() -> None:
            third.append(await actor.submit("c", "c"))
            await third[0].wait()
            done.set()

        done = trio.Event()

        nursery.start_soon(submit_third)
        await trio.testing.wait_all_tasks_blocked()
        assert not third  # two unreleased: the third waits for room
        journal.gate.set()
        await done.wait()
        assert [r for g in journal.groups for r in g] == ["a", "b", "c"]
        nursery.cancel_scope.cancel()


async def test_a_record_less_item_with_nothing_before_it_is_released_at_once() -> None:
    actor = JournalActor(Held(), 4)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        done = await actor.submit(None, "x")
        assert done.released and done.value == "x"
        nursery.cancel_scope.cancel()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.text(min_size=1, max_size=3)), min_size=1, max_size=6),
        min_size=1,
        max_size=12,
    ),
    st.integers(min_value=1, max_value=8),
    st.booleans(),
)
def test_every_record_is_written_once_in_order_and_released_in_order(
    turns: list[list[str | None]], capacity: int, in_place: bool
) -> None:
    """Whatever the turns, the bound and who writes (trio in place, or the
    writer thread): records reach the journal in submission order, each once,
    and the answers are released in submission order, each after its record
    (and every record before it) is written."""
    journal = Held()
    below = COMMIT_HERE_BELOW if in_place else 0
    actor = JournalActor(journal, capacity, commit_here_below=below)  # type: ignore[arg-type]
    released: list[int] = []
    written_at_release: list[int] = []
    expected_written: list[int] = []

    def note(v: int) -> None:
        released.append(v)
        written_at_release.append(actor.written)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            n = 0
            records_so_far = 0
            last: list[Durable[int]] = []
            for turn in turns:
                items = []
                for record in turn:
                    records_so_far += record is not None
                    expected_written.append(records_so_far)
                    items.append((record, n, None))
                    n += 1
                out = await actor.submit_many(items)
                for d in out:
                    d.then(note)
                last = out
            await last[-1].wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    records = [r for turn in turns for r in turn if r is not None]
    assert [r for g in journal.groups for r in g] == records
    assert released == list(range(len(released))) == list(range(sum(map(len, turns))))
    assert all(w >= e for w, e in zip(written_at_release, expected_written, strict=True))


def test_an_interval_spaces_commits_but_does_not_delay_one_after_a_quiet_spell() -> None:
    """``journal_commit_interval_seconds``: a group is handed over no sooner than
    the interval after the previous one (trio's virtual clock), and at once
    when the previous one was longer ago."""
    journal = Held()
    actor = JournalActor(journal, 8, interval=1.0)  # type: ignore[arg-type]
    at: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            for record in ("a", "b"):
                await (await actor.submit(record, record)).wait()
                at[record] = trio.current_time()
            await trio.sleep(5.0)
            start = trio.current_time()
            await (await actor.submit("c", "c")).wait()
            at["c"] = trio.current_time() - start
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert journal.groups == [["a"], ["b"], ["c"]]
    assert at["a"] < 1.0  # the first: nothing before it
    assert at["b"] - at["a"] >= 1.0  # right behind "a": held to the interval
    assert at["c"] < 1.0  # after a quiet spell: at once


class Where(Held):
    """A journal that notes which thread wrote each group, and can be slow once."""

    def __init__(self, slow: set[int] | None = None) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.slow = slow or set()

    def append(self, records: Sequence[str]) -> None:
        if len(self.groups) in self.slow:
            time.sleep(COMMIT_HERE_BELOW * 2)
        self.threads.append(threading.get_ident())
        super().append(records)


async def test_an_idle_trio_commits_in_place_and_a_slow_commit_sends_the_next_to_the_writer() -> (
    None
):
    """Idle, trio writes a small group itself (no thread hop); after a commit
    slower than ``commit_here_below`` the next goes to the writer thread, and
    once commits are fast again trio writes them again; a large group goes to
    the writer thread."""
    journal = Where(slow={1})
    actor = JournalActor(journal, 8)  # type: ignore[arg-type]
    trio_thread = threading.get_ident()
    large = "e" * (COMMIT_HERE_CHARS + 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for record in ("a", "b", "c", "d", large):
            await (await actor.submit(record, record)).wait()
        nursery.cancel_scope.cancel()
    assert journal.groups == [["a"], ["b"], ["c"], ["d"], [large]]
    here = [t == trio_thread for t in journal.threads]
    assert here == [True, True, False, True, False]  # "b" took too long: "c" by the writer


async def test_a_busy_trio_hands_the_group_to_the_writer_thread() -> None:
    """While other tasks keep trio busy past ``HAND_WITHIN``, the group is
    written by the writer thread, and trio goes on running them."""
    journal = Where()
    actor = JournalActor(journal, 8)  # type: ignore[arg-type]
    trio_thread = threading.get_ident()
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        busy_until = time.perf_counter() + 0.05

        async def busy() -> None:
            while time.perf_counter() < busy_until:
                await trio.lowlevel.checkpoint()

        nursery.start_soon(busy)
        await (await actor.submit("a", "a")).wait()
        assert time.perf_counter() < busy_until  # written while trio was busy
        nursery.cancel_scope.cancel()
    assert journal.threads != [trio_thread]


async def test_a_failed_commit_in_place_releases_nothing_and_reports_the_fault() -> None:
    class Failing(Held):
        def append(self, records: Sequence[str]) -> None:
            raise StorageFault("journal", "failing", "disk gone")

    faults: list[StorageFault] = []
    actor = JournalActor(Failing(), 4, on_fault=faults.append)  # type: ignore[arg-type]
    with pytest.RaisesGroup(StorageFault):
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            done = await actor.submit("a", "a")
    assert not done.released
    assert [str(f) for f in faults] == [str(StorageFault("journal", "failing", "disk gone"))]
