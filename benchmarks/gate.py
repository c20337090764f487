"""The risk gate's speed: CheckOrder through the stream and as a unary call.

Two figures, each against its target (issue 16):

* **stream capacity**: ``check_order`` updates/s through ``IngestService/Ingest``
  at 16 checks per message, riskd against the bare ``grpc.aio`` server of
  :mod:`benchmarks.ingest` (which decodes every field of every update, then
  acks), interleaved and paired per repetition exactly as that benchmark runs
  its cells (:func:`benchmarks.ingest._run_cell`: a fresh server and a fresh
  pipelined client process per cell, window 32).  Target: riskd / bare >= 0.5.
  Also riskd-fe, riskd with its ingest front-end process, the same way.
* **unary latency**: ``IngestService/CheckOrder`` p99 at half of its capacity.
  Capacity first, closed loop (``CONCURRENCY`` calls in flight, one client
  process); then open loop at half that rate, each call's latency measured
  from when it was *due* (no coordinated omission).  Target: p99 <= 2 ms.
  ``--tmpfs [DIR]`` runs that cell a second time with riskd's journal in DIR
  (default /dev/shm, a RAM file system): the software's latency apart from
  the disk's fsync, both printed.  Each of these cells again with the client
  calling riskd's ingest front-end process (``--frontend-listen``), and again
  with riskd on one CPU and the client on the other (each its own core, as when
  the gateways run elsewhere: :func:`benchmarks.harness.pin_apart`).  Then the
  same client against a bare ``grpc.aio`` IngestService that reads each order
  and accepts it (no riskd behind it): the floor a Python gRPC server on this
  machine sets under any answer.  Each cell also prints what the machine took meanwhile
  (:mod:`benchmarks.sched`) and, for riskd, its CPU per call at capacity and
  at half of it, its collector pauses and journal commits.
  ``--unary-only``: these cells alone.

Workload: the set-up stream of :mod:`benchmarks.ingest` (1,000 accounts with
100,000 USDT of BTC-USDT isolated margin each, a mark of 50,000.00, +/-1 BTC
positions), then checks of 0.001-0.010 BTC, either side, within 0.2 % of the
mark, each under a new order id: every one is accepted and reserves margin
(a refusal is flagged as a problem, as in the ingest benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness, ingest, sched
from benchmarks.figures import add as _fig

__all__ = ["run", "main", "build_checks"]

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16
TARGET_RATIO = 0.5
TARGET_P99_MS = 2.0
#: riskd-fe: riskd with its ingest front-end process (benchmarks.ingest).
KINDS = ("bare", "riskd", "riskd-fe")
CONCURRENCY = 16
#: The unary cells (``_unary_cell``), each with what its figure's note says first.
UNARY_CELLS = {
    "disk": "journal on disk",
    "tmpfs": "the software alone: journal on a RAM file system",
    "disk,frontend": "through riskd's ingest front end, journal on disk",
    "tmpfs,frontend": "through riskd's ingest front end, journal on a RAM file system",
    "disk,pinned": "riskd on one CPU, the client on the other, journal on disk",
    "tmpfs,pinned": "riskd on one CPU, the client on the other, journal on a RAM file system",
    "bare": "no riskd: a grpc.aio IngestService that reads the order and accepts it, the same"
    " client",
    "bare,pinned": "the server on one CPU, the client on the other; no riskd: a grpc.aio"
    " IngestService that reads the order and accepts it, the same client",
}
#: Unary calls made one at a time after the paced run (the latency with no queue).
SEQUENTIAL = 500
#: Checks/s the stream is not expected to exceed (pre-built for this x1.5).
MAX_CHECKS_PER_S = 40_000

FULL: dict[str, Any] = {
    "reps": 3,
    "warmup_s": 0.5,
    "measure_s": 2.5,
    "quiet_wait_s": 2.0,
    "spare_s": 20.0,
    "profile": False,
    "profile_s": 0.0,
    "unary_capacity_s": 3.0,
    "unary_paced_s": 6.0,
}
QUICK: dict[str, Any] = {
    "reps": 1,
    "warmup_s": 0.3,
    "measure_s": 1.0,
    "quiet_wait_s": 0.5,
    "spare_s": 1.0,
    "profile": False,
    "profile_s": 0.0,
    "unary_capacity_s": 1.0,
    "unary_paced_s": 2.0,
}

log = harness.logger("gate")


def _order(pb: Any, rng: random.Random, order_id: int) -> Any:
    return pb.CheckOrder(
        market=ingest.MARKET,
        order_id=order_id,
        account=rng.randrange(1, ingest.N_ACCOUNTS + 1),
        side=rng.choice((pb.ORDER_SIDE_BUY, pb.ORDER_SIDE_SELL)),
        price=ingest.MARK0 + rng.randrange(-10, 11) * 10,
        quantity=rng.randrange(1, 11),
    )


def build_checks(batch: int, n_updates: int, seed: int = 11) -> list[bytes]:
    """``n_updates`` check_order updates (whole messages), sequences and order ids from 1."""
    from riskd.v1 import ingest_pb2 as pb

    rng = random.Random(seed)
    out: list[bytes] = []
    seq = 0
    for _ in range(-(-n_updates // batch)):
        updates = []
        for _ in range(batch):
            seq += 1
            updates.append(
                pb.Update(
                    sequence=seq,
                    timestamp_ms=harness.stamp(ingest.T0_MS, seq),
                    check_order=_order(pb, rng, seq),
                )
            )
        out.append(pb.IngestRequest(epoch=ingest.EPOCH, updates=updates).SerializeToString())
    return out


# --- unary worker (a client process) ---------------------------------------------


async def _unary(
    target: str,
    setup: list[bytes],
    capacity_s: float,
    paced_s: float,
    server_pid: int | None = None,
    metrics_port: int | None = None,
    server_kind: str = "riskd",
    frontend_pid: int | None = None,
) -> Any:
    import grpc

    from riskd.v1 import ingest_pb2 as pb
    from riskd.v1 import ingest_pb2_grpc

    channel = grpc.aio.insecure_channel(target)
    await ingest._setup_stream(channel, "gate-setup", setup)
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    meta = (("x-riskd-gateway", "gate-unary"),)
    rng = random.Random(5)
    ids = iter(range(10**9, 2 * 10**9))
    refused = 0

    async def call() -> None:
        nonlocal refused
        r = await stub.CheckOrder(
            pb.CheckOrderRequest(order=_order(pb, rng, next(ids))), metadata=meta
        )
        if not r.accepted:
            refused += 1

    for _ in range(200):  # warm-up
        await call()
    # Capacity: closed loop, CONCURRENCY calls in flight.
    clock = time.perf_counter
    done = 0
    end = clock() + capacity_s

    async def loop() -> None:
        nonlocal done
        while clock() < end:
            await call()
            done += 1

    pids = {"client": os.getpid(), **({server_kind: server_pid} if server_pid else {})}
    if frontend_pid:
        pids["frontend"] = frontend_pid
    at_capacity = sched.window(pids, jitter=False)
    at_capacity.__enter__()
    t0 = clock()
    await asyncio.gather(*(loop() for _ in range(CONCURRENCY)))
    capacity = done / (clock() - t0)
    at_capacity.__exit__()
    # Open loop at half capacity: latency from when each call was due.  Meanwhile
    # what the machine took (run-queue waits, a jitter probe) and riskd's own
    # histograms (collector pauses, journal commits) over the same window.
    rate = capacity / 2
    before = harness.scrape(metrics_port) if metrics_port else []
    machine = sched.window(pids)
    machine.__enter__()
    latencies: list[float] = []

    async def due_at(at: float) -> None:
        wait = at - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        await call()
        latencies.append(clock() - at)

    t0 = clock()
    n = int(rate * paced_s)
    tasks = []
    for i in range(n):
        at = t0 + i / rate
        wait = at - clock() - 0.002
        if wait > 0:
            await asyncio.sleep(wait)
        else:  # behind schedule: the calls already due still get the loop
            await asyncio.sleep(0)
        tasks.append(asyncio.create_task(due_at(at)))
    await asyncio.gather(*tasks)
    sent_rate = n / (clock() - t0)
    machine.__exit__()
    during = harness.since(before, harness.scrape(metrics_port)) if metrics_port else []
    # One call in flight: the path's own latency, with no queue behind it.
    alone: list[float] = []
    for _ in range(SEQUENTIAL):
        t = clock()
        await call()
        alone.append((clock() - t) * 1000)
    await channel.close()
    alone.sort()
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    return {
        "sequential_p50_ms": alone[len(alone) // 2],
        "sequential_p99_ms": alone[min(len(alone) - 1, int(len(alone) * 0.99))],
        "capacity_calls_per_s": capacity,
        "rate_target": rate,
        "rate_sent": sent_rate,
        "calls": len(ms),
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
        "refused": refused,
        "machine": machine.result,
        "machine_at_capacity": at_capacity.result,
        "riskd": riskd_split(during),
    }


def riskd_split(during: list[harness.Sample]) -> dict[str, Any]:
    """riskd's histograms over a window: collector pauses per generation (count,
    total, p99 bucket bound) and the journal's group commits (p50/p99 bucket bounds)."""
    out: dict[str, Any] = {}
    for g in ("0", "1", "2"):
        count = sum(
            x.value
            for x in during
            if x.name == "riskd_gc_pause_seconds_count" and x.labels.get("generation") == g
        )
        total = sum(
            x.value
            for x in during
            if x.name == "riskd_gc_pause_seconds_sum" and x.labels.get("generation") == g
        )
        worst = harness.bucket_quantile(during, "riskd_gc_pause_seconds", 1.0, generation=g)
        out[f"gc{g}"] = {
            "count": int(count),
            "total_ms": 1000 * total,
            "max_ms_le": None if worst is None else 1000 * worst,
        }
    for q in (0.5, 0.99):
        v = harness.bucket_quantile(during, "riskd_journal_commit_seconds", q)
        out[f"commit_p{int(q * 100)}_ms_le"] = None if v is None else 1000 * v
    return out


def per_call(u: dict[str, Any]) -> str:
    """riskd's CPU per call closed loop at capacity and open loop at half of it: a
    call costs more when fewer share a group commit and a thread wake-up."""
    kind = "riskd" if "riskd" in u["machine"] else "bare"
    cap, half = u["machine_at_capacity"].get(kind), u["machine"].get(kind)
    if not cap or not half:
        return f"{kind}'s CPU per call: -"
    out = []
    for who, c, h in (
        (kind, cap, half),
        ("its front end", u["machine_at_capacity"].get("frontend"), u["machine"].get("frontend")),
    ):
        if c and h:
            at_cap = c["cpu_ms_per_s"] / u["capacity_calls_per_s"] * 1000
            at_half = h["cpu_ms_per_s"] / u["rate_sent"] * 1000
            out.append(
                f"{who}'s CPU per call: {at_cap:.0f} µs at capacity ({c['cpu_ms_per_s']:.0f}"
                f" ms/s), {at_half:.0f} µs at half of it ({h['cpu_ms_per_s']:.0f} ms/s)"
            )
    return "; ".join(out)


def describe_split(r: dict[str, Any]) -> str:
    """One line of :func:`riskd_split`."""
    gcs = ", ".join(
        f"gen{g} {r[f'gc{g}']['count']}× ({r[f'gc{g}']['total_ms']:.1f} ms in all,"
        f" worst <= {r[f'gc{g}']['max_ms_le']} ms)"
        for g in "012"
        if r[f"gc{g}"]["count"]
    )
    return (
        f"collections: {gcs or 'none'}; journal group commit p50 <= {r['commit_p50_ms_le']} ms,"
        f" p99 <= {r['commit_p99_ms_le']} ms"
    )


def _fsync_ms(directory: Path, n: int = 200) -> tuple[float, float]:
    """p50 and p99 of one small write + fsync in ``directory``: the floor under any
    durable answer (riskd's journal commits with synchronous=FULL)."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(n):
            os.write(fd, b"x" * 256)
            t = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return times[n // 2], times[min(n - 1, n * 99 // 100)]


def _unary_cell(
    tmp: Path,
    setup_path: Path,
    cfg: dict[str, Any],
    bare: bool = False,
    frontend: bool = False,
    pin: bool = False,
) -> dict[str, Any]:
    """One riskd with its data directory (journal) in ``tmp``, and one unary client.

    ``bare``: the same client against :func:`worker_bare` instead (no riskd: the
    transport alone, for the floor under any answer from a Python gRPC server).
    ``frontend``: riskd with its ingest front-end process, the client calling that.
    ``pin``: the server on one CPU, the client on the others
    (:func:`benchmarks.harness.pin_apart`)."""
    if bare:
        server = harness.start(
            [sys.executable, "-m", "benchmarks.gate", "bare"],
            tmp / "unary.bare.log",
            kind="bare",
            event="ref_serving",
        )
    else:
        extra = ("--frontend-listen", "127.0.0.1:0") if frontend else ()
        name = "unary-fe" if frontend else "unary-pinned" if pin else "unary"
        server = harness.start(
            harness.riskd_command(tmp / f"data-{name}", *extra), tmp / f"{name}.riskd.log"
        )
    target = f"127.0.0.1:{server.frontend_port}" if frontend else server.target
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.gate",
        "unary",
        "--target",
        target,
        "--setup",
        str(setup_path),
        "--capacity-s",
        str(cfg["unary_capacity_s"]),
        "--paced-s",
        str(cfg["unary_paced_s"]),
        "--server-pid",
        str(server.pid),
        "--server-kind",
        server.kind,
    ]
    if server.metrics_port is not None:
        cmd += ["--metrics-port", str(server.metrics_port)]
    if frontend:
        cmd += ["--frontend-pid", str(server.frontend_pid())]
    violations: list[str] = []
    try:
        apart = harness.pin_apart(server.pid) if pin else contextlib.nullcontext("")
        with apart:  # the client started meanwhile inherits this process's CPUs
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if out.returncode != 0 or not out.stdout.strip():
            raise RuntimeError(f"unary client failed:\n{out.stderr[-3000:]}")
        r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        if not bare:
            _, violations = harness.check_state(server.target)
    finally:
        code = server.stop()
    r["fsync_p50_ms"], r["fsync_p99_ms"] = _fsync_ms(tmp)
    r["problems"] = []
    if violations:
        r["problems"].append(f"CheckState: {violations[:3]}")
    if r["refused"]:
        r["problems"].append(f"{r['refused']} checks refused")
    if code != 0:
        r["problems"].append(f"server exit code {code}")
    r["command"] = harness.display(cmd)
    return r


def worker_bare() -> None:
    """``IngestService`` with nothing behind it, on ``grpc.aio`` as riskd's: the
    stream acks each message; ``CheckOrder`` reads every field of the order and
    accepts it (no sequencing, no journal, no thread hop).  Prints its port as
    JSON (``ref_serving``) and runs until SIGTERM."""

    from riskd.v1 import ingest_pb2, ingest_pb2_grpc

    class Bare(ingest_pb2_grpc.IngestServiceServicer):  # type: ignore[misc]
        async def Ingest(self, request_iterator: Any, context: Any) -> Any:
            yield ingest_pb2.IngestResponse(acked_sequence=0)
            async for request in request_iterator:
                last = request.updates[-1].sequence if request.updates else 0
                yield ingest_pb2.IngestResponse(acked_sequence=last)

        async def CheckOrder(self, request: Any, context: Any) -> Any:
            o = request.order
            touched = len(o.market) + o.order_id + o.account + o.side + o.price + o.quantity
            return ingest_pb2.CheckOrderResponse(
                accepted=True, reserved=touched & 1, available=request.timestamp_ms
            )

    harness.serve_reference(Bare())


# --- driver ------------------------------------------------------------------------


def run(quick: bool = False, tmpfs: Path | None = None, unary_only: bool = False) -> dict[str, Any]:
    """``tmpfs``: also run the unary cell with riskd's journal there (a RAM file
    system such as /dev/shm), so the software's latency shows apart from the disk's.
    ``unary_only``: skip the stream cells (the latency figures alone)."""
    cfg = dict(QUICK if quick else FULL)
    command = (
        "python -m benchmarks.gate"
        + (" --quick" if quick else "")
        + (f" --tmpfs {tmpfs}" if tmpfs else "")
        + (" --unary-only" if unary_only else "")
    )
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="riskd-bench-gate-"))
    try:
        setup = ingest.build_setup()
        span = cfg["warmup_s"] + cfg["measure_s"]
        setup_path = tmp / "setup.pickle"
        setup_path.write_bytes(pickle.dumps(setup, protocol=5))
        workload = tmp / "checks.pickle"
        # The reference: the ingest benchmark's fills through riskd, same batch size.
        fills = tmp / "fills"
        fills_workload = fills / "fills.pickle"
        if not unary_only:
            with workload.open("wb") as f:
                msgs = build_checks(BATCH, int(MAX_CHECKS_PER_S * span * 1.5))
                pickle.dump({"batch": BATCH, "setup": setup, "measured": msgs}, f, protocol=5)
            fills.mkdir()
            with fills_workload.open("wb") as f:
                msgs = ingest.build_workload(BATCH, int(MAX_CHECKS_PER_S * span * 1.5))
                pickle.dump({"batch": BATCH, "setup": setup, "measured": msgs}, f, protocol=5)
        ingest._SPARE[0] = cfg["spare_s"]
        cells: list[dict[str, Any]] = []
        fill_cells: list[dict[str, Any]] = []
        for rep in range(0 if unary_only else cfg["reps"]):
            order = KINDS if rep % 2 == 0 else KINDS[::-1]
            for kind in order:
                c = ingest._quiet_cell(kind, BATCH, rep, tmp, workload, cfg, None)
                cells.append(c)
                log(
                    f"rep {rep} {kind:<6} {c['updates_per_s']:9.0f} checks/s  server "
                    f"{c['server_cpu']:.2f} client {c['client_cpu']:.2f} foreign "
                    f"{c['foreign_cpu']:.2f} cores"
                    + (f"  PROBLEMS {c['problems']}" if c["problems"] else "")
                )
            c = ingest._quiet_cell("riskd", BATCH, rep, fills, fills_workload, cfg, None)
            fill_cells.append(c)
            log(
                f"rep {rep} riskd  {c['updates_per_s']:9.0f} fills/s   server "
                f"{c['server_cpu']:.2f} foreign {c['foreign_cpu']:.2f} cores"
                + (f"  PROBLEMS {c['problems']}" if c["problems"] else "")
            )
        unaries = {"disk": _unary_cell(tmp, setup_path, cfg)}
        unaries["bare"] = _unary_cell(tmp, setup_path, cfg, bare=True)
        unaries["bare,pinned"] = _unary_cell(tmp, setup_path, cfg, bare=True, pin=True)
        unaries["disk,frontend"] = _unary_cell(tmp, setup_path, cfg, frontend=True)
        unaries["disk,pinned"] = _unary_cell(tmp, setup_path, cfg, pin=True)
        if tmpfs is not None:
            ram = Path(tempfile.mkdtemp(prefix="riskd-bench-gate-", dir=tmpfs))
            try:
                unaries["tmpfs"] = _unary_cell(ram, setup_path, cfg)
                unaries["tmpfs,frontend"] = _unary_cell(ram, setup_path, cfg, frontend=True)
                unaries["tmpfs,pinned"] = _unary_cell(ram, setup_path, cfg, pin=True)
            finally:
                shutil.rmtree(ram, ignore_errors=True)
        for where, u in unaries.items():
            log(
                f"unary ({where}): capacity {u['capacity_calls_per_s']:.0f} calls/s; at "
                f"{u['rate_sent']:.0f}/s p50 {u['p50_ms']:.2f} ms p99 {u['p99_ms']:.2f}"
                f" ms max {u['max_ms']:.2f} ms; one at a time p50 {u['sequential_p50_ms']:.2f}"
                f" ms p99 {u['sequential_p99_ms']:.2f} ms; fsync there p50"
                f" {u['fsync_p50_ms']:.3f} ms"
            )
            log(f"  meanwhile: {sched.describe(u['machine'])}")
            log(f"  {per_call(u)}")
            if where != "bare":
                log(f"  riskd: {describe_split(u['riskd'])}")
        unary = unaries["disk"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures: dict[str, dict[str, Any]] = {}
    by = {k: [c for c in cells if c["kind"] == k] for k in KINDS}
    if cells:
        _stream_figures(figures, by, fill_cells, cfg["reps"], command)
    for where in ("disk", "tmpfs"):
        if where in unaries:
            _fig(
                figures,
                "unary_capacity_calls_per_s" + ("" if where == "disk" else f"[{where}]"),
                round(unaries[where]["capacity_calls_per_s"], 1),
                "calls/s",
                command,
                note=f"closed loop, {CONCURRENCY} in flight, journal on {where}",
            )
    for where, what in UNARY_CELLS.items():
        if where not in unaries:
            continue
        u = unaries[where]
        name = "unary_p99_ms" + ("" if where == "disk" else f"[{where}]")
        of_riskd = not where.startswith("bare")
        _fig(
            figures,
            name,
            round(u["p99_ms"], 3),
            "ms",
            command,
            target=f"<= {TARGET_P99_MS}" if of_riskd else None,
            ok=u["p99_ms"] <= TARGET_P99_MS if of_riskd else None,
            note=f"{what}; capacity {u['capacity_calls_per_s']:.0f} calls/s, open loop at"
            f" {u['rate_sent']:.0f} calls/s (half of it); p50 {u['p50_ms']:.2f} ms, max"
            f" {u['max_ms']:.2f} ms, {u['calls']} calls; one call at a time: p50"
            f" {u['sequential_p50_ms']:.2f} ms, p99 {u['sequential_p99_ms']:.2f} ms"
            + (
                f"; fsync there p50 {u['fsync_p50_ms']:.3f} ms, p99 {u['fsync_p99_ms']:.3f} ms"
                " (a check answers once journaled)"
                if of_riskd
                else ""
            ),
        )
        g = figures[name]
        verdict = (
            f"target {g['target']}: {'ok' if g['meets_target'] else 'MISSED'}; " if of_riskd else ""
        )
        print(f"unary CheckOrder p99 ({where}) {g['value']:.3f} ms ({verdict}{g['note']})")
    errors = [
        f"{c['kind']} rep {c['rep']}: {'; '.join(c['problems'])}"
        for c in cells + fill_cells
        if c["problems"]
    ]
    errors += [f"unary ({w}): {p}" for w, u in unaries.items() for p in u["problems"]]
    runtime = time.perf_counter() - started
    print(f"gate: {runtime:.1f}s{' (quick)' if quick else ''}; command: {command}")
    return {
        "figures": figures,
        "errors": errors,
        "details": {
            "cells": cells,
            "fill_cells": fill_cells,
            "unary": unary,
            "unary_tmpfs": unaries.get("tmpfs"),
            "config": cfg,
            "stream_checks_per_s_median": {
                k: statistics.median(c["updates_per_s"] for c in cs) for k, cs in by.items() if cs
            },
        },
        "runtime_s": runtime,
        "quick": quick,
    }


def _stream_figures(
    figures: dict[str, dict[str, Any]],
    by: dict[str, list[dict[str, Any]]],
    fill_cells: list[dict[str, Any]],
    reps: int,
    command: str,
) -> None:
    """The stream cells' figures (ratio to bare, to fills, CPU per check), printed."""
    for k, cs in by.items():
        u = harness.median_range([c["updates_per_s"] for c in cs])
        _fig(
            figures,
            f"{k}_checks_per_s[batch={BATCH}]",
            round(u[0], 1),
            "checks/s",
            command,
            note=f"median of {len(cs)} [{u[1]:.0f}-{u[2]:.0f}]",
        )
    ingest.paired_ratio(
        figures, f"stream_ratio[batch={BATCH}]", by["riskd"], by["bare"], reps, command,
        "riskd/bare check_order updates/s", TARGET_RATIO,
    )  # fmt: skip
    ingest.paired_ratio(
        figures, f"checks_vs_fills[batch={BATCH}]", by["riskd"], fill_cells, reps, command,
        "riskd check_order updates/s / riskd fill updates/s (the ingest benchmark's workload)",
    )  # fmt: skip
    per_check = statistics.median(c["server_cpu_us_per_msg"] for c in by["riskd"]) / BATCH
    per_fill = statistics.median(c["server_cpu_us_per_msg"] for c in fill_cells) / BATCH
    per_bare = statistics.median(c["server_cpu_us_per_msg"] for c in by["bare"]) / BATCH
    _fig(
        figures,
        "server_cpu_us_per_update",
        round(per_check, 1),
        "µs",
        command,
        note=f"riskd's CPU per check_order; per fill {per_fill:.1f}, bare per check "
        f"{per_bare:.1f} (a ratio of CPU costs, less sensitive to other load on the machine)",
    )
    if by.get("riskd-fe"):
        cpu = statistics.median(c["server_cpu_us_per_msg"] for c in by["riskd-fe"]) / BATCH
        fe_cpu = statistics.median(c["frontend_cpu_us_per_msg"] for c in by["riskd-fe"]) / BATCH
        ingest.paired_ratio(
            figures, f"stream_ratio_frontend[batch={BATCH}]", by["riskd-fe"], by["bare"], reps,
            command, "riskd-fe/bare check_order updates/s", TARGET_RATIO,
            f"; CPU per check: engine {cpu:.1f} µs, front end {fe_cpu:.1f} µs",
        )  # fmt: skip
        g = figures[f"stream_ratio_frontend[batch={BATCH}]"]
        print(f"check_order through the front end: riskd-fe/bare {g['value']:.3f} ({g['note']})")
    ratio = figures[f"stream_ratio[batch={BATCH}]"]
    print(
        f"check_order through the stream at batch {BATCH}: riskd/bare {ratio['value']:.3f} "
        f"(target {ratio['target']}: {'ok' if ratio['meets_target'] else 'MISSED'};"
        f" {ratio['note']})"
    )
    h = figures["server_cpu_us_per_update"]
    print(
        f"riskd checks/fills {figures[f'checks_vs_fills[batch={BATCH}]']['value']:.3f}; "
        f"server CPU per check {h['value']:.1f} µs ({h['note']})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gate", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="1 repetition, short windows")
    p.add_argument("--json", metavar="PATH", type=Path, help="also write the result as JSON")
    p.add_argument(
        "--tmpfs",
        metavar="DIR",
        type=Path,
        nargs="?",
        const=Path("/dev/shm"),
        help="also measure unary CheckOrder with the journal in DIR, a RAM file system"
        " (default /dev/shm): the software's latency apart from the disk's fsync",
    )
    p.add_argument(
        "--unary-only",
        action="store_true",
        help="only the unary CheckOrder cells (capacity, latency at half of it)",
    )
    sub = p.add_subparsers(dest="worker")
    u = sub.add_parser("unary", help="one unary client run against a riskd (prints JSON)")
    u.add_argument("--target", required=True)
    u.add_argument("--setup", required=True, help="pickle of the set-up stream's messages")
    u.add_argument("--capacity-s", type=float, default=FULL["unary_capacity_s"])
    u.add_argument("--paced-s", type=float, default=FULL["unary_paced_s"])
    u.add_argument("--server-pid", type=int, help="riskd's pid: its run-queue waits")
    u.add_argument("--metrics-port", type=int, help="riskd's metrics: its histograms")
    u.add_argument("--server-kind", default="riskd", help="what the server is (riskd, bare)")
    u.add_argument("--frontend-pid", type=int, help="riskd's ingest front end's pid")
    sub.add_parser("bare", help="the bare grpc.aio IngestService (prints its port as JSON)")
    ns = p.parse_args(argv)
    if ns.worker == "bare":
        worker_bare()
        return
    if ns.worker == "unary":
        setup = pickle.loads(Path(ns.setup).read_bytes())
        r = asyncio.run(
            _unary(
                ns.target,
                setup,
                ns.capacity_s,
                ns.paced_s,
                ns.server_pid,
                ns.metrics_port,
                ns.server_kind,
                ns.frontend_pid,
            )
        )
        print(json.dumps(r), flush=True)
        return
    if ns.tmpfs is not None and not ns.tmpfs.is_dir():
        p.error(f"--tmpfs: {ns.tmpfs} is not a directory")
    out = run(quick=ns.quick, tmpfs=ns.tmpfs, unary_only=ns.unary_only)
    if ns.json:
        ns.json.write_text(json.dumps(out, indent=2) + "\n")
    harness.exit_on_problems("benchmarks.gate", out["errors"])


if __name__ == "__main__":
    main()
