"""events.sqlite3: bounded retention, the cut at start, fail-stop on a write error,
and the event count a snapshot carries (riskd.storage.events)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.config import default_toml, parse
from riskd.daemon import Daemon
from riskd.storage import StorageFault
from riskd.storage.events import EventStore, EventWriter, cut, read_range


def _rows(first: int, n: int) -> list[tuple[int, str, bytes]]:
    return [(s, "BTC-USDT" if s % 2 else "", b"e%d" % s) for s in range(first, first + n)]


@settings(max_examples=40, deadline=None)
@given(
    retention=st.integers(1, 20),
    batches=st.lists(st.integers(0, 15), max_size=12),
    keep=st.integers(0, 200),
)
def test_the_file_holds_the_newest_retained_events_and_cuts_back_to_a_count(
    retention: int, batches: list[int], keep: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"
        store = EventStore(path)
        written = 0
        for n in batches:
            store.write(_rows(written + 1, n), retention, full=n % 2 == 0)
            written += n
        expect = list(range(max(1, written - retention + 1), written + 1)) if written else []
        held = [s for s, _, _ in read_range(path, 0, written + 1)]
        assert held == expect
        assert read_range(path, 0, written + 1) == [r for r in _rows(1, written) if r[0] in expect]
        oldest = cut(store, keep)
        after = [s for s, _, _ in read_range(path, 0, written + 1)]
        if keep in expect:
            # What a snapshot at ``keep`` covers stays; the rest is numbered again by replay.
            assert after == [s for s in expect if s <= keep] and oldest == after[0]
        else:
            # The file does not reach the snapshot: nothing before it can be served.
            assert after == [] and oldest == keep + 1
        store.close()


def test_the_writer_group_commits_and_syncs(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    writer = EventWriter(path, retention=1000, capacity=2)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for i in range(10):  # more than the channel holds: submit waits, never grows
                await writer.submit(_rows(10 * i + 1, 10))
            await writer.sync()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert [s for s, _, _ in read_range(path, 1, 101)] == list(range(1, 101))


def test_a_write_that_fails_is_a_storage_fault(tmp_path: Path) -> None:
    faults: list[StorageFault] = []
    writer = EventWriter(tmp_path, retention=10, on_fault=faults.append)  # a directory

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await writer.submit(_rows(1, 1))

    with pytest.raises((StorageFault, BaseExceptionGroup)):
        trio.run(main)
    assert len(faults) == 1 and "events" in str(faults[0])


def test_snapshots_carry_the_event_count_and_older_ones_still_load(tmp_path: Path) -> None:
    config = parse(default_toml())
    d = Daemon(config)
    d.sequencer.events = 42
    state = d.sequencer.state()
    assert state["events"] == 42
    again = Daemon(config)
    again.sequencer.restore(state)
    assert again.sequencer.events == 42
    # Snapshot format 5 had no count: it loads, numbering starts again.
    del state["events"]
    older = Daemon(config)
    older.sequencer.restore(state)
    assert older.sequencer.events == 0
