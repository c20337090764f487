"""riskd.heap: the collector kept off a snapshot load, the restored heap frozen, pauses timed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from riskd import heap


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_bulk_load_switches_the_collector_off_and_back_on(collector_on: None) -> None:
    with heap.bulk_load():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_bulk_load_switches_it_back_on_after_an_error(collector_on: None) -> None:
    with pytest.raises(ValueError), heap.bulk_load():
        raise ValueError("a damaged snapshot")
    assert gc.isenabled()


def test_bulk_load_leaves_a_collector_that_was_off_off(collector_on: None) -> None:
    gc.disable()
    with heap.bulk_load():
        pass
    assert not gc.isenabled()


def test_settle_puts_what_is_alive_out_of_the_collectors_walk_until_unsettle() -> None:
    kept = [[i] for i in range(1000)]  # tracked containers, as restored positions are
    gc.collect()
    try:
        heap.settle()
        assert gc.get_freeze_count() >= len(kept)
        assert not any(x is kept for x in gc.get_objects())  # the walks' lists
    finally:
        heap.unsettle()
    assert gc.get_freeze_count() == 0  # at shutdown: collected and finalized as before


def test_collection_times_are_exported_by_generation() -> None:
    registry = CollectorRegistry()
    times = heap.CollectionTimes()
    registry.register(times)
    times.install()
    try:
        gc.collect()  # a full collection: generation 2
        gc.collect(0)
    finally:
        times.uninstall()
    gc.collect()  # not counted: uninstalled
    count = registry.get_sample_value("riskd_gc_pause_seconds_count", {"generation": "2"})
    young = registry.get_sample_value("riskd_gc_pause_seconds_count", {"generation": "0"})
    inf = registry.get_sample_value(
        "riskd_gc_pause_seconds_bucket", {"generation": "2", "le": "+Inf"}
    )
    total = registry.get_sample_value("riskd_gc_pause_seconds_sum", {"generation": "2"})
    assert count == 1 and inf == 1 and young is not None and young >= 1
    assert total is not None and total > 0


def test_a_kept_bulk_load_is_frozen_before_the_collector_is_back(collector_on: None) -> None:
    """Else the first collection after it walks everything it made, all young."""
    try:
        with heap.bulk_load(settle_after=True):
            loaded = [[i] for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(loaded)
        assert gc.get_count()[0] < len(loaded)  # nothing young left to walk
    finally:
        heap.unsettle()
