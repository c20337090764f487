"""What the machine took from a latency run, apart from what riskd did.

On a shared machine a latency tail is often a process that was ready to run
and waited for a core.  Three readings, over the same window as a run:

* :func:`threads`: per process, summed over its threads, the CPU time and
  the time spent *runnable but waiting* for a core (``/proc/PID/task/*/
  schedstat``, kernel scheduler statistics): a process that waited 300 ms
  for a core during a 6 s run lost that to the machine, not to its code;
* :func:`pressure`: the kernel's CPU pressure (``/proc/pressure/cpu``,
  "some"): the share of the window in which at least one task was runnable
  and waiting;
* :func:`jitter` (``python -m benchmarks.sched jitter``): a process that
  only sleeps 1 ms at a time and records how late it wakes: the scheduling
  delay the machine imposes on any thread woken by I/O, riskd's included
  (the fixed floor under every wakeup on riskd's path: gRPC thread, trio
  thread, journal thread).

Readings are missing (None) where the kernel does not expose them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sched", "threads", "pressure", "rates", "Jitter", "window", "describe"]


@dataclass(frozen=True, slots=True)
class Sched:
    """A process's threads, summed: on a core and runnable-but-waiting (seconds)."""

    cpu_s: float
    wait_s: float
    slices: int

    def __sub__(self, other: Sched) -> Sched:
        return Sched(
            self.cpu_s - other.cpu_s, self.wait_s - other.wait_s, self.slices - other.slices
        )


def threads(pid: int) -> Sched | None:
    """Scheduler statistics of every live thread of ``pid``, summed."""
    cpu = wait = slices = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            run_ns, wait_ns, n = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue  # exited meanwhile, or no schedstats in this kernel
        cpu += run_ns
        wait += wait_ns
        slices += n
    return Sched(cpu / 1e9, wait / 1e9, slices)


def pressure() -> float | None:
    """Total microseconds some task waited for a CPU, since boot (PSI "some")."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return float(line.rsplit("total=", 1)[1]) if "total=" in line else None


class Jitter:
    """The jitter probe as a process: start it, later :meth:`stop` for its figures."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sched", "jitter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> dict[str, float]:
        assert self.proc.stdin is not None
        out, _ = self.proc.communicate("", timeout=30)
        lines = out.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}


def _jitter() -> dict[str, float]:
    """Sleep 1 ms at a time until stdin closes; how late each wakeup came (ms)."""
    import selectors

    late: list[float] = []
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    clock = time.perf_counter
    while True:
        t = clock()
        if sel.select(0.001):  # stdin readable: EOF, the run is over
            break
        late.append((clock() - t - 0.001) * 1000)
    late.sort()
    n = len(late)
    if not n:
        return {}
    return {
        "wakeups": n,
        "p50_ms": late[n // 2],
        "p99_ms": late[min(n - 1, n * 99 // 100)],
        "p999_ms": late[min(n - 1, n * 999 // 1000)],
        "max_ms": late[-1],
    }


class window:
    """The machine's readings over a run: ``with window({"riskd": pid}) as w: ...``,
    then ``w.result`` (per process: CPU and run-queue wait in ms per second of the
    window; CPU pressure %; the jitter probe's lateness)."""

    def __init__(self, pids: dict[str, int], jitter: bool = True) -> None:
        self.pids = pids
        self.jitter = jitter
        self.result: dict[str, Any] = {}

    def __enter__(self) -> window:
        self._probe = Jitter() if self.jitter else None
        if self._probe is not None:
            time.sleep(0.3)  # its interpreter started before the window opens
        self._t0 = time.perf_counter()
        self._psi0 = pressure()
        self._load0 = _loadavg()
        self._before = {k: threads(p) for k, p in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        psi = pressure()
        out: dict[str, Any] = {"wall_s": wall, "loadavg": [self._load0, _loadavg()]}
        for k, p in self.pids.items():
            after, before = threads(p), self._before[k]
            if after is not None and before is not None:
                out[k] = rates(after - before, wall)
        if psi is not None and self._psi0 is not None:
            out["cpu_pressure_pct"] = 100 * (psi - self._psi0) / 1e6 / wall
        if self._probe is not None:
            out["jitter"] = self._probe.stop()
        self.result = out


def rates(d: Sched, wall: float) -> dict[str, float]:
    """``d`` over ``wall`` seconds: CPU and run-queue wait in ms per second."""
    return {
        "cpu_ms_per_s": 1000 * d.cpu_s / wall,
        "runqueue_wait_ms_per_s": 1000 * d.wait_s / wall,
        "wait_per_slice_ms": 1000 * d.wait_s / max(d.slices, 1),
    }


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def describe(r: dict[str, Any]) -> str:
    """One line of a :class:`window`'s result."""
    parts = [f"load average {r['loadavg'][0]}→{r['loadavg'][1]}"]
    if "cpu_pressure_pct" in r:
        parts.append(f"CPU pressure {r['cpu_pressure_pct']:.0f} %")
    for k, v in r.items():
        if isinstance(v, dict) and "runqueue_wait_ms_per_s" in v:
            parts.append(
                f"{k} on CPU {v['cpu_ms_per_s']:.0f} ms/s, runnable but waiting"
                f" {v['runqueue_wait_ms_per_s']:.0f} ms/s ({v['wait_per_slice_ms']:.2f} ms per"
                " wakeup)"
            )
    j = r.get("jitter")
    if j:
        parts.append(
            f"a 1 ms sleeper woke late p50 {j['p50_ms']:.2f} / p99 {j['p99_ms']:.2f} /"
            f" max {j['max_ms']:.1f} ms"
        )
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sched")
    p.add_argument("probe", choices=["jitter"])
    p.parse_args(argv)
    print(json.dumps(_jitter()), flush=True)


if __name__ == "__main__":
    main()
