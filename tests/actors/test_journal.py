"""The journal actor: its writer thread's groups, the order of releases, the bound."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskd.actors.journal import Durable, JournalActor


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
    actor = JournalActor(journal, 16)  # type: ignore[arg-type]
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
    actor = JournalActor(journal, 2)  # type: ignore[arg-type]
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
)
def test_every_record_is_written_once_in_order_and_released_in_order(
    turns: list[list[str | None]], capacity: int
) -> None:
    """Whatever the turns and the bound: records reach the journal in submission
    order, each once, and the answers are released in submission order, each
    after its record (and every record before it) is written."""
    journal = Held()
    actor = JournalActor(journal, capacity)  # type: ignore[arg-type]
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
