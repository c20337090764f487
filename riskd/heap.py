"""The cyclic garbage collector and riskd's long-lived heap.

Almost everything riskd holds lives as long as the process: positions,
accounts, open orders, their indexes (10^5 to 10^6 objects).  CPython's
cyclic collector walks every tracked object each time it collects the oldest
generation, holding the GIL throughout, so every thread of the daemon (gRPC,
trio, the journal's writer) stops for the walk: 220-420 ms with 10^6 restored
positions on the 2-vCPU benchmark VM.  And unpickling a snapshot allocates
those objects so fast that the collector runs thousands of times while it
does, re-walking the growing heap: 1.7-3.4 s of a 2.5-4.7 s load of 10^6
positions (``docs/performance.md``, "Restart").

So: no collection while a snapshot is unpickled (:func:`bulk_load`: it
makes no cyclic garbage worth collecting), and once the state is restored
and the journal replayed, :func:`settle` moves every object then alive into
the collector's permanent generation (``gc.freeze()``), which it never walks:
later collections only look at what was allocated since.  Objects frozen
are still freed by reference counting when dropped; one that dies in a
reference cycle stays until :func:`unsettle` gives them back to the collector
at shutdown (so whatever the interpreter finalizes at exit, a journal
connection included, is finalized as before).

:class:`CollectionTimes` times every collection (``gc.callbacks``) as
``riskd_gc_pause_seconds{generation}``: the pause every thread of the
process took at that moment.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["bulk_load", "settle", "unsettle", "CollectionTimes", "PAUSE_BUCKETS"]

#: Seconds: a young collection takes tens of microseconds, a full one over a
#: large unfrozen heap hundreds of milliseconds.
PAUSE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


@contextmanager
def bulk_load(settle_after: bool = False) -> Iterator[None]:
    """No cyclic collection inside (process-wide: the collector has one switch).

    For unpickling a snapshot: the objects it makes are the state itself, none
    of them garbage, and collecting while they pour in re-walks them thousands
    of times.  The collector is switched back on after, unless it was off before.
    Everything made inside is then in the youngest generation, so the next
    collection, whichever it is, walks all of it once (0.6 s at 10^6 positions
    on the loaded VM); ``settle_after``: :func:`settle` first, for a state the
    process keeps (the daemon's, the snapshot writer's), and no walk at all.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if settle_after:
            settle()
        if was_enabled:
            gc.enable()


def settle() -> None:
    """Move every object alive now out of the collector's walks (``gc.freeze()``).

    Called once the state is restored and the journal replayed: from then on a
    collection of the oldest generation walks only what was allocated since
    (new positions, orders), not the restored heap.  O(1): it relinks lists.
    """
    gc.freeze()


def unsettle() -> None:
    """Hand the frozen objects back to the collector (``gc.unfreeze()``), at shutdown:
    what became cyclic garbage meanwhile is collected, and finalized (a SQLite
    connection closed, its WAL checkpointed) as it would have been unfrozen."""
    gc.unfreeze()


class CollectionTimes(Collector):
    """Every collection's pause, by generation, as ``riskd_gc_pause_seconds``.

    The callback runs inside the collector, in whichever thread allocated at
    that moment, possibly while that thread holds a lock of the metrics
    library; so it only adds to plain lists here, and the histogram is built
    from them at scrape time.  Collections never run concurrently (the
    collector holds the GIL throughout and does not re-enter), so no lock.
    """

    def __init__(self) -> None:
        #: Per generation: counts per bucket (one past the last: +Inf), sum.
        self._counts = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in range(3)]
        self._sums = [0.0, 0.0, 0.0]
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        counts = self._counts[generation]
        i = 0
        for bound in PAUSE_BUCKETS:
            if took <= bound:
                break
            i += 1
        counts[i] += 1
        self._sums[generation] += took

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "riskd_gc_pause_seconds",
            "Time each cyclic garbage collection took, by generation (0 youngest, 2 the"
            " whole unfrozen heap): every thread of the process waits that long.",
            labels=["generation"],
        )
        for generation in range(3):
            counts = list(self._counts[generation])
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip((*PAUSE_BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family
