"""What every benchmark shares: starting riskd, stamping a workload, checking a
run did what it should, and printing figures.

Each benchmark module is its measurement; the plumbing is here:

* :func:`start` / :class:`Server`: a fresh server process (riskd, or a
  reference server) logging JSON lines, returned once it logs that it listens;
  ``riskd_root`` runs another source tree's riskd (an A/B of a change).
* :func:`stamp`: gateway timestamps for a pre-built workload that stay inside
  riskd's clock-skew window however long the workload is (a workload stamped
  ``T0 + n ms`` ran past the 60 s window after ~60,000 updates and measured
  rejections, issue 17).
* :func:`scrape`, :func:`unexpected`, :func:`check_state`: the checks.  The
  rule every benchmark follows: a run with unexpected rejections,
  liquidations or ADL, or a failed ``CheckState``, is not a measurement; it
  ends with :func:`exit_on_problems`, which prints why and exits non-zero.
* :func:`median_range`, :func:`si`, :func:`display`: figures and the commands
  that reproduce them, printed the same way everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "Server",
    "start",
    "riskd_command",
    "wait_event",
    "log_records",
    "stamp",
    "STAMPS_PER_MS",
    "Sample",
    "scrape",
    "counters",
    "unexpected",
    "check_state",
    "bucket_quantile",
    "since",
    "exit_on_problems",
    "median_range",
    "si",
    "display",
    "logger",
    "CLOCK_TICK",
    "proc_table",
]

ROOT = Path(__file__).resolve().parent.parent

#: /proc's CPU times are in these ticks per second.
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

#: Updates stamped per millisecond of gateway time: a workload of n updates
#: spans n / STAMPS_PER_MS ms, so even 10^7 updates stay 10 s ahead of the
#: clock they were built by (riskd refuses more than 60 s ahead by default).
STAMPS_PER_MS = 1000

_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

#: Counters that are problems when a workload expects none of them.
_UNEXPECTED = ("riskd_liquidations_total", "riskd_adl_events_total")


def logger(name: str) -> Callable[[str], None]:
    """``log(msg)`` to stderr, prefixed ``[name]`` (stdout is the report)."""

    def log(msg: str) -> None:
        print(f"[{name}] {msg}", file=sys.stderr, flush=True)

    return log


def stamp(t0_ms: int, n: int) -> int:
    """The gateway timestamp of a workload's update ``n`` (from 1), built at ``t0_ms``.

    Non-decreasing in ``n`` (as a gateway's clock), and within the skew
    window for any workload a benchmark builds (see :data:`STAMPS_PER_MS`).
    """
    return t0_ms + n // STAMPS_PER_MS


# --- servers ---------------------------------------------------------------------


class Server:
    """A server process started by :func:`start`."""

    def __init__(
        self,
        kind: str,
        proc: subprocess.Popen[bytes],
        rec: dict[str, Any],
        log_path: Path,
        command: list[str],
    ) -> None:
        self.kind = kind
        self.proc = proc
        self.pid = proc.pid
        self.port: int = rec["grpc_port"]
        self.metrics_port: int | None = rec.get("metrics_port")
        #: riskd's ingest front end (``--frontend-listen``), if it runs one.
        self.frontend_port: int | None = rec.get("frontend_port") or None
        self.log_path = log_path
        self.command = command

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful shutdown), then its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.kind} did not stop in {timeout}s") from None

    def frontend_pid(self) -> int | None:
        """The pid of riskd's ingest front-end process (its log names it), if any."""
        pids = [
            r["pid"]
            for r in log_records(self.log_path.read_text(errors="replace"))
            if r.get("event") == "frontend_started"
        ]
        return pids[-1] if pids else None

    def error_lines(self) -> list[str]:
        """The JSON log lines at level error (none in a clean run)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"level": "error"' in line or '"level":"error"' in line:
                out.append(line)
        return out


def log_records(text: str) -> list[dict[str, Any]]:
    """The JSON records in a log's text (other lines, and torn ones, skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait_event(
    proc: subprocess.Popen[bytes], log_path: Path, event: str, timeout: float = 60.0
) -> dict[str, Any]:
    """The first JSON log line naming ``event`` (the server listens); raises if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                try:
                    rec: dict[str, Any] = json.loads(line)
                except json.JSONDecodeError:
                    continue
                return rec
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log_path.read_text()[-4000:]}")


def serve_reference(servicer: Any, options: Sequence[tuple[str, Any]] = (), **shown: Any) -> None:
    """Serve a reference ``IngestService`` (grpc.aio) on a free loopback port
    until SIGTERM or SIGINT; its port goes out as one ``ref_serving`` line
    (with ``shown``), as :func:`start` reads riskd's."""
    import asyncio

    import grpc

    from riskd.v1 import ingest_pb2_grpc

    async def serve() -> None:
        server = grpc.aio.server(options=[*options, ("grpc.so_reuseport", 0)])
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"event": "ref_serving", **shown, "grpc_port": port}), flush=True)
        await stop.wait()
        await server.stop(1.0)

    asyncio.run(serve())


def riskd_command(data_dir: Path, *extra: str) -> list[str]:
    """``riskd serve`` on ephemeral loopback ports (plaintext development mode)."""
    return [
        sys.executable,
        "-m",
        "riskd.cli",
        "serve",
        "--grpc-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        *extra,
    ]


def start(
    command: list[str],
    log_path: Path,
    *,
    kind: str = "riskd",
    event: str = "riskd_serving",
    riskd_root: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Server:
    """Start ``command`` (its output to ``log_path``); return once it logs ``event``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cwd = ROOT
    if riskd_root is not None:  # another riskd tree (a prototype): first on the path
        cwd = riskd_root
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(riskd_root), str(ROOT), *filter(None, [full_env.get("PYTHONPATH")])]
        )
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=full_env
        )
    return Server(kind, proc, wait_event(proc, log_path, event, timeout), log_path, command)


@contextlib.contextmanager
def pin_apart(*pids: int | None) -> Iterator[str]:
    """The server's processes (every thread) on the first CPU, this process and
    the children it starts meanwhile (the load) on the others: each side its own
    core, as on a host whose gateways run elsewhere.  Yields what was done; this
    process's CPUs are given back on exit."""
    from riskd import cpus as riskd_cpus  # what [server] engine_cpus does

    mine = os.sched_getaffinity(0)
    cpus = sorted(mine)
    if len(cpus) < 2:
        yield "not pinned (one CPU)"
        return
    for pid in filter(None, pids):
        riskd_cpus.pin(frozenset(cpus[:1]), pid)
    os.sched_setaffinity(0, set(cpus[1:]))
    try:
        yield f"server on CPU {cpus[0]}, load on CPU {','.join(map(str, cpus[1:]))}"
    finally:
        os.sched_setaffinity(0, mine)


# --- checks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(port: int) -> list[Sample]:
    """Every sample on riskd's metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        m = _SERIES.match(line)
        if m and not line.startswith("#"):
            out.append(Sample(m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return out


def counters(samples: Iterable[Sample], *prefixes: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of the samples whose name starts with a prefix."""
    out: dict[str, float] = {}
    for s in samples:
        if s.name.startswith(prefixes):
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def unexpected(
    samples: Iterable[Sample], *, liquidations: bool = False, rejections: bool = False
) -> list[str]:
    """Why a run's counters say the workload did not do what it should ([]: it did).

    A rejected update (at decoding, ``kind="Rejected"``, or by an actor) is a
    problem unless ``rejections``; a liquidation or ADL unless ``liquidations``.
    """
    bad = []
    for s in samples:
        if not s.value:
            continue
        refused = s.labels.get("outcome") == "rejected" or s.labels.get("kind") == "Rejected"
        if not rejections and s.name == "riskd_updates_total" and refused:
            bad.append(f"riskd_updates_total{{kind={s.labels.get('kind')!r}}} = {s.value:g}")
        if not liquidations and s.name in _UNEXPECTED:
            bad.append(f"{s.name}{{{','.join(s.labels.values())}}} = {s.value:g}")
    return bad


def since(before: Iterable[Sample], after: Iterable[Sample]) -> list[Sample]:
    """``after`` less ``before``, series by series: the counters and histogram
    buckets of what happened between two scrapes."""
    was = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in before}
    return [
        Sample(s.name, s.labels, s.value - was.get((s.name, tuple(sorted(s.labels.items()))), 0.0))
        for s in after
    ]


def bucket_quantile(samples: Iterable[Sample], name: str, q: float, **labels: str) -> float | None:
    """The upper bound of the histogram bucket ``name`` holding quantile ``q``
    (None: no observations), e.g. ``bucket_quantile(s, "riskd_journal_commit_seconds", 0.99)``."""
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    )
    if not buckets or not buckets[-1][1]:
        return None
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= q * total)


def check_state(target: str, timeout: float = 60.0) -> tuple[str, list[str]]:
    """``AdminService/CheckState`` on a plaintext riskd: (digest, invariant violations)."""
    import grpc

    from riskd.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        r = admin_pb2_grpc.AdminServiceStub(channel).CheckState(
            admin_pb2.CheckStateRequest(), timeout=timeout
        )
    return r.digest, list(r.violations)


def exit_on_problems(what: str, problems: Sequence[str]) -> None:
    """The rule: a run with problems prints them and exits non-zero (not a figure)."""
    if not problems:
        return
    print(f"{what}: NOT A MEASUREMENT, {len(problems)} problem(s):", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)


# --- figures ---------------------------------------------------------------------


def median_range(xs: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max): how every repeated figure is reported."""
    return statistics.median(xs), min(xs), max(xs)


def si(x: float) -> str:
    """1.20M, 35.1k, 5120: rates in a table."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def display(cmd: Sequence[str]) -> str:
    """A command as a reader can paste it (the venv's python shown relative)."""
    parts = list(cmd)
    if parts and parts[0] == sys.executable:
        try:
            parts[0] = str(Path(sys.executable).relative_to(ROOT))
        except ValueError:
            parts[0] = "python"
    return shlex.join(parts)


def proc_table() -> dict[int, tuple[int, float, float]]:
    """Every process: pid -> (parent, its own CPU s, its exited children's CPU s)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own = (int(fields[11]) + int(fields[12])) / CLOCK_TICK
        waited = (int(fields[13]) + int(fields[14])) / CLOCK_TICK
        out[int(name)] = (int(fields[1]), own, waited)
    return out
