"""Pinning riskd's processes to CPUs (``[server] engine_cpus``, ``frontend_cpus``).

The engine's threads (gRPC's, trio's, the journal writer's) hand work to each
other many times per request and take turns at one GIL.  Measured on a
2-CPU host (docs/performance.md, "Where the targets stand: session 15"), the
same riskd answered unary ``CheckOrder`` at half of its capacity with a lower
p99 in each of seven pairs when its threads shared one CPU and the load ran on
the other (2.8-12.4 ms) than when the scheduler spread both over both CPUs
(4.4-30 ms), by 1.2-7x; its capacity fell by 24-40 %.
Where the gateways run on other machines, giving the engine and its front
end a CPU each is the setting that keeps the tail short; the default leaves
the placement to the scheduler (or to ``taskset`` / a container's cpuset).

Linux only (``os.sched_setaffinity``); every thread of the process is pinned,
and threads started later inherit it from the thread that starts them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["CpuError", "available", "check", "pin"]


class CpuError(Exception):
    """A CPU setting this host cannot honour; the message names the key."""


def available() -> frozenset[int]:
    """The CPUs this process may run on (empty where the platform cannot say)."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset()
    return frozenset(os.sched_getaffinity(0))


def check(key: str, cpus: Iterable[int]) -> frozenset[int]:
    """``cpus`` as a set, if this host can pin to them; CpuError naming ``key`` if not."""
    wanted = frozenset(cpus)
    if not wanted:
        return wanted
    if not hasattr(os, "sched_setaffinity"):
        raise CpuError(f"{key}: CPU pinning needs Linux (os.sched_setaffinity)")
    allowed = available()
    if not wanted <= allowed:
        raise CpuError(
            f"{key}: CPU {', '.join(map(str, sorted(wanted - allowed)))} is not available"
            f" to riskd (it may use {_ranges(allowed)})"
        )
    return wanted


def pin(cpus: frozenset[int], pid: int = 0) -> None:
    """Pin every thread of process ``pid`` (0: this one) to ``cpus``, as
    :func:`check` returned them (nothing for none); threads it starts later
    inherit that.  OSError if the kernel refuses."""
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid or 'self'}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue


def _ranges(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> "0-2, 5"."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and runs[-1][-1] == c - 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
