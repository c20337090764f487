"""End-to-end ingest throughput: riskd against a bare ``grpc.aio`` server, interleaved.

What it measures (the issue's figures): updates/s through ``IngestService/Ingest``
at 1, 16 and 256 updates per message, for

* **riskd**: the real daemon (``python -m riskd.cli serve``), so gRPC, the
  asyncio→trio bridge, the sequencer and the market actor all do their work;
* **bare**: a ``grpc.aio`` server (``python -m benchmarks.ingest bare-server``)
  that decodes every field of every update of the same messages, then acks
  (``IngestResponse(acked_sequence=last)``), after the same initial response
  riskd sends, so one client drives both;

and the ratio riskd / bare per batch size (issue 17's targets: >= 0.8 at 1,
>= 0.5 at 16, >= 0.25 at 256, where engine work dominates).

Method (as in ``shared/research/transport.md``): every cell is a fresh server
process plus a fresh pipelined ``grpc.aio`` client process
(``python -m benchmarks.ingest client ...``), all on 127.0.0.1.  The client
loads pre-serialized messages before timing, keeps at most ``WINDOW`` batches
unacknowledged, checks every ack (each ends a message; acks are cumulative, so
one may cover several), warms up, then counts acknowledged messages over a
fixed window and reads CPU from ``/proc``: the server's (per thread too), its
own, and every other process's ("foreign": another job on this 2-core machine
skews a cell, so it is waited out or the cell repeated, and flagged if it
stays).  Runs are interleaved: each repetition runs every server at every
batch size, rotating which goes first; figures are medians with [min-max] over
repetitions, and the ratio is the median of the per-repetition (paired) ratios.
A third server, ``inline`` (riskd's decoder and ``riskd.core.Engine.apply`` in
the handler, no trio, no actors), separates the engine's cost from the
daemon's plumbing.  A fourth, ``riskd-fe``, is the daemon with its ingest
front-end process (``--frontend-listen``; the client streams to that port):
its CPU is given per process, the engine's and the front end's
(``--no-frontend`` leaves it out, e.g. for ``--riskd-root`` of a tree
without one).

Workload: before timing, one un-timed stream (its own gateway id) deposits
1,000,000 USDT into each of 1,000 accounts, moves 100,000 USDT of it into each
BTC-USDT isolated margin, sets a mark of 50,000.00 and opens +/-1 BTC per
account (pairs of fills).  The measured stream (a fresh gateway id, so
sequences start at 1) is 90 % fills of 0.001-0.010 BTC between random pairs
near the mark, fees 0, and 10 % marks moving within +/-1 % of 50,000.00.
Positions are kept between 0.2 and 3 BTC on their side, leverage <= ~1.5x:
nothing is ever liquidated, swept or rejected (checked from riskd's metrics
after each run).  The same bytes go to both servers; riskd needs fresh
sequence numbers, so the list is sized for riskd's rate and the bare server,
which is faster, cycles through it (its acks are checked modulo the list).

The full run also profiles riskd at batch 256 and 1: cProfile in every Python
thread (trio's main thread; the ``grpc`` thread that runs asyncio), and py-spy
(sampling, all threads) when it is installed (``pip install py-spy``; not a
dependency).

A change to riskd, measured against the tree before it: ``python -m
benchmarks.ingest ab BEFORE AFTER [--kinds riskd,riskd-fe] [--batches 1,16]``
runs riskd from each source tree on the same workload, cell by cell,
interleaved, and prints msgs/s and riskd's CPU per message (medians; no bare
server, so no ratio).

Run ``python -m benchmarks.ingest --help`` for the worker commands.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.figures import add as _fig

__all__ = ["run", "main", "build_setup", "build_workload"]

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/riskd.v1.IngestService/Ingest"
MARKET = "BTC-USDT"
ASSET = "USDT"
EPOCH = 1
T0_MS = time.time_ns() // 1_000_000  # riskd refuses updates stamped far from its clock

BATCHES = (1, 16, 256)
TARGETS = {1: 0.8, 16: 0.5, 256: 0.25}  # issue 17
WINDOW = 32  # batches in flight per stream (riskd's server window is 64)

N_ACCOUNTS = 1000
DEPOSIT = 10**12  # 1,000,000.000000 USDT per account
MARGIN = 10**11  # 100,000 USDT into each BTC-USDT isolated margin
MARK0 = 5_000_000  # 50,000.00 (price_decimals 2, tick 10)
MARK_LO, MARK_HI = 4_950_000, 5_050_000  # +/- 1 %
BASE_QTY = 1000  # 1 BTC (quantity_decimals 3)
MIN_QTY, MAX_QTY = 200, 3000  # |position| bounds kept by the generator
MARK_SHARE = 0.10

FULL: dict[str, Any] = {
    "reps": 3,
    "warmup_s": 0.5,
    "measure_s": 2.5,
    "profile": True,
    "profile_s": 3.0,
    "quiet_wait_s": 2.0,  # per cell, at most, for other processes to calm down
    "spare_s": 40.0,  # in all, for such waits and for repeating noisy cells
}
QUICK: dict[str, Any] = {
    "reps": 1,
    "warmup_s": 0.3,
    "measure_s": 1.0,
    "profile": False,
    "profile_s": 2.0,
    "quiet_wait_s": 0.5,
    "spare_s": 1.0,
}
#: Updates/s that riskd and the inline reference are not expected to exceed
#: (at 256 the inline cell outran 80k/s in every repetition of session 14's runs,
#: after the fill's fourth pass): the measured stream is pre-built for this
#: rate over warm-up + window, x1.5.  A run that still runs out stops early
#: (flagged ``exhausted``) and is measured up to there; the bare server cycles.
MAX_UPDATES_PER_S = {1: 6_000, 16: 60_000, 256: 160_000}
PROFILE_BATCHES = (256, 1)
#: Other processes using more than this many cores during a cell make it
#: unreliable on a 2-core machine: such a cell is measured again (ATTEMPTS in
#: all, while the run is before its deadline) and flagged if it stays noisy.
QUIET_CORES = 0.25
ATTEMPTS = 3


log = harness.logger("ingest")


# --- workload ------------------------------------------------------------------


def _pb() -> Any:
    from riskd.v1 import ingest_pb2

    return ingest_pb2


def build_setup(batch: int = 256) -> list[bytes]:
    """The un-timed set-up stream: deposits, margin, a mark, +/-1 BTC per account."""
    pb = _pb()
    updates: list[Any] = []
    for a in range(1, N_ACCOUNTS + 1):
        updates.append(
            pb.Update(deposit=pb.Deposit(account=a, asset=ASSET, amount=DEPOSIT, deposit_id=a))
        )
    for a in range(1, N_ACCOUNTS + 1):
        updates.append(
            pb.Update(margin_transfer=pb.MarginTransfer(account=a, market=MARKET, amount=MARGIN))
        )
    updates.append(pb.Update(mark_price=pb.MarkPrice(market=MARKET, price=MARK0)))
    for i in range(N_ACCOUNTS // 2):
        updates.append(
            pb.Update(
                fill=pb.Fill(
                    market=MARKET,
                    trade_id=i + 1,
                    buyer_account=2 * i + 1,
                    seller_account=2 * i + 2,
                    price=MARK0,
                    quantity=BASE_QTY,
                )
            )
        )
    for seq, u in enumerate(updates, 1):
        u.sequence = seq
        u.timestamp_ms = harness.stamp(T0_MS, 0)
    return [
        pb.IngestRequest(epoch=EPOCH, updates=updates[i : i + batch]).SerializeToString()
        for i in range(0, len(updates), batch)
    ]


def build_workload(batch: int, n_updates: int, seed: int = 7) -> list[bytes]:
    """``n_updates`` (rounded up to whole messages) fills and marks, sequences from 1."""
    pb = _pb()
    rng = random.Random(seed)
    rand, randrange = rng.random, rng.randrange
    # After the set-up: odd accounts long BASE_QTY, even ones short.
    size = [0] + [BASE_QTY if a % 2 else -BASE_QTY for a in range(1, N_ACCOUNTS + 1)]
    mark = MARK0
    trade_id = N_ACCOUNTS // 2
    n_msgs = -(-n_updates // batch)
    Update, Fill, Mark, Request = pb.Update, pb.Fill, pb.MarkPrice, pb.IngestRequest

    def ok(a: int, s: int) -> bool:
        return MIN_QTY <= s <= MAX_QTY if a % 2 else -MAX_QTY <= s <= -MIN_QTY

    out: list[bytes] = []
    seq = 0
    for _ in range(n_msgs):
        updates = []
        for _ in range(batch):
            seq += 1
            ts = harness.stamp(T0_MS, seq)
            if rand() < MARK_SHARE:
                mark = min(max(mark + randrange(-50, 51) * 10, MARK_LO), MARK_HI)
                mp = Mark(market=MARKET, price=mark)
                updates.append(Update(sequence=seq, timestamp_ms=ts, mark_price=mp))
                continue
            q = randrange(1, 11)
            while True:
                a, b = randrange(1, N_ACCOUNTS + 1), randrange(1, N_ACCOUNTS + 1)
                if a == b:
                    continue
                if not (ok(a, size[a] + q) and ok(b, size[b] - q)):
                    a, b = b, a
                    if not (ok(a, size[a] + q) and ok(b, size[b] - q)):
                        continue
                break
            size[a] += q
            size[b] -= q
            trade_id += 1
            price = mark + randrange(-10, 11) * 10
            updates.append(
                Update(
                    sequence=seq,
                    timestamp_ms=ts,
                    fill=Fill(
                        market=MARKET,
                        trade_id=trade_id,
                        buyer_account=a,
                        seller_account=b,
                        price=price,
                        quantity=q,
                    ),
                )
            )
        out.append(Request(epoch=EPOCH, updates=updates).SerializeToString())
    return out


# --- the bare server -----------------------------------------------------------


def _touch(request: Any) -> tuple[int, int]:
    """Read every field of every update (as riskd's decoder does); (last sequence, checksum)."""
    total = request.epoch
    last = 0
    for u in request.updates:
        last = u.sequence
        total += u.timestamp_ms
        kind = u.WhichOneof("kind")
        if kind == "fill":
            f = u.fill
            total += (
                len(f.market)
                + f.trade_id
                + f.buyer_account
                + f.seller_account
                + f.price
                + f.quantity
                + f.buyer_fee
                + f.seller_fee
            )
        elif kind == "mark_price":
            m = u.mark_price
            total += len(m.market) + m.price
        elif kind == "deposit":
            d = u.deposit
            total += d.account + len(d.asset) + d.amount + d.deposit_id
        elif kind == "margin_transfer":
            t = u.margin_transfer
            total += t.account + len(t.market) + t.amount
        elif kind == "funding_rate":
            r = u.funding_rate
            total += len(r.market) + r.rate_e8
        elif kind == "liquidation_fill":
            lf = u.liquidation_fill
            total += (
                len(lf.market)
                + lf.liquidation_id
                + lf.counterparty_account
                + lf.price
                + lf.quantity
                + lf.counterparty_fee
            )
        elif kind == "liquidation_done":
            ld = u.liquidation_done
            total += len(ld.market) + ld.liquidation_id
        elif kind == "check_order":  # benchmarks.gate
            c = u.check_order
            total += (
                len(c.market)
                + c.order_id
                + c.account
                + c.side
                + c.price
                + c.quantity
                + c.reduce_only
                + c.post_only
                + c.leverage
            )
    return last, total


def worker_ref_server(mode: str) -> None:
    """An IngestService without riskd's plumbing; prints its port as JSON; runs until SIGTERM.

    ``bare``: decode every field of every update (:func:`_touch`), ack.
    ``inline``: riskd's own decoder and :meth:`riskd.core.Engine.apply` per update,
    in the handler (no trio, no sequencer, no actors, no metrics), ack with
    rejections like riskd: the same engine work without the daemon around it.
    """

    from riskd.v1 import ingest_pb2, ingest_pb2_grpc

    Response = ingest_pb2.IngestResponse
    handle: Any
    if mode == "bare":
        checksum = [0]

        def handle(request: Any) -> Any:
            last, total = _touch(request)
            checksum[0] += total
            return Response(acked_sequence=last)

    else:
        from riskd import config as config_mod
        from riskd.api import convert
        from riskd.core import Engine, Rejected

        cfg = config_mod.load()
        engine = Engine(cfg.markets, cfg.funds)
        decode, apply = convert.decode_update, engine.apply

        def handle(request: Any) -> Any:
            last = 0
            rejected = []
            for i, u in enumerate(request.updates):
                last = u.sequence
                try:
                    apply(decode(u, i))
                except Rejected as r:
                    rejected.append(convert.rejection(u.sequence, i, u, r))
            return Response(acked_sequence=last, rejections=rejected)

    class Reference(ingest_pb2_grpc.IngestServiceServicer):  # type: ignore[misc]
        async def Ingest(self, request_iterator: Any, context: Any) -> Any:
            yield Response(acked_sequence=0)  # what riskd says first: nothing applied yet
            async for request in request_iterator:
                yield handle(request)

    harness.serve_reference(
        Reference(),
        [
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ],
        mode=mode,
    )


# --- the client ----------------------------------------------------------------


_TICK = harness.CLOCK_TICK


def _cpu_s(pid: int) -> float:
    """user+sys CPU seconds of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """user+sys CPU seconds per thread ("main" is the process's first thread)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, _, rest = f.read().rpartition(")")
            fields = rest.split()
        except OSError:
            continue
        name = "main" if tid == str(pid) else f"{head.split('(', 1)[1]}:{tid}"
        out[name] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


def _others_cpu_s(exclude: set[int]) -> dict[int, float]:
    """CPU seconds of every other process (another job competing for the cores), by pid."""
    return {pid: own for pid, (_, own, _) in harness.proc_table().items() if pid not in exclude}


def _others_delta(a: dict[int, float], z: dict[int, float]) -> float:
    """CPU seconds other processes used between two samples (exited ones are missed)."""
    return sum(max(v - a.get(pid, 0.0), 0.0) for pid, v in z.items())


def _steal_s() -> float:
    """CPU seconds the hypervisor gave to other guests, from /proc/stat."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / _TICK


class _Snap:
    __slots__ = ("t", "acked", "server", "frontend", "client", "threads", "others", "steal")

    def __init__(self, t: float, acked: int, pid: int, frontend_pid: int | None = None) -> None:
        self.t = t
        self.acked = acked
        self.server = _cpu_s(pid)
        self.frontend = _cpu_s(frontend_pid) if frontend_pid else 0.0
        self.client = time.process_time()
        self.threads = _thread_cpu_s(pid)
        self.others = _others_cpu_s({pid, os.getpid(), frontend_pid or pid})
        self.steal = _steal_s()


async def _setup_stream(channel: Any, gateway: str, msgs: list[bytes]) -> dict[str, Any]:
    """Send every message (window WINDOW), wait for every ack; un-timed."""
    import grpc

    from riskd.v1 import ingest_pb2

    stub = channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=ingest_pb2.IngestResponse.FromString
    )
    call = stub(metadata=(("x-riskd-gateway", gateway), ("x-riskd-epoch", str(EPOCH))))
    first = await call.read()
    credits = asyncio.Semaphore(WINDOW)

    async def writer() -> None:
        for m in msgs:
            await credits.acquire()
            await call.write(m)
        await call.done_writing()

    task = asyncio.create_task(writer())
    acks = rejections = 0
    last = first.acked_sequence
    while (r := await call.read()) is not grpc.aio.EOF:
        acks += 1
        rejections += len(r.rejections)
        last = r.acked_sequence
        credits.release()
    await task
    return {"acks": acks, "rejections": rejections, "last": last, "code": str(await call.code())}


async def _measured_stream(
    channel: Any,
    gateway: str,
    msgs: list[bytes],
    batch: int,
    warmup_s: float,
    measure_s: float,
    server_pid: int,
    cycle: bool,
    frontend_pid: int | None = None,
) -> dict[str, Any]:
    import grpc

    from riskd.v1 import ingest_pb2

    stub = channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=ingest_pb2.IngestResponse.FromString
    )
    call = stub(metadata=(("x-riskd-gateway", gateway), ("x-riskd-epoch", str(EPOCH))))
    first = await call.read()
    if first is grpc.aio.EOF or first.acked_sequence != 0:
        raise RuntimeError(f"bad first response {first!r}: the gateway id must be fresh")
    n = len(msgs)
    credits = asyncio.Semaphore(WINDOW)
    clock = time.perf_counter
    stop = asyncio.Event()
    state = {"sent": 0, "exhausted": False}
    t0 = clock()

    async def writer() -> None:
        write, acquire = call.write, credits.acquire
        i = 0
        while not stop.is_set():
            await acquire()
            if stop.is_set():
                break
            if i >= n and not cycle:
                state["exhausted"] = True
                break
            await write(msgs[i % n])
            i += 1
        state["sent"] = i
        await call.done_writing()

    task = asyncio.create_task(writer())
    acked = mismatches = rejections = 0
    start: _Snap | None = None
    end: _Snap | None = None
    t_warm = t0 + warmup_s
    t_end = t_warm + measure_s
    release = credits.release
    while (r := await call.read()) is not grpc.aio.EOF:
        seq = r.acked_sequence
        if cycle:  # one ack per message, sequences repeating with the list
            if seq != (acked % n + 1) * batch:
                mismatches += 1
            k = 1
        else:  # cumulative: one response may acknowledge several messages
            k = seq // batch - acked
            if seq % batch or k < 1:
                mismatches += 1
                k = max(k, 1)
        if r.rejections:
            rejections += len(r.rejections)
        acked += k
        for _ in range(k):
            release()
        if end is None:
            now = clock()
            if start is None:
                if now >= t_warm:
                    start = _Snap(now, acked, server_pid, frontend_pid)
            elif now >= t_end:
                end = _Snap(now, acked, server_pid, frontend_pid)
                stop.set()
                release()  # wake the writer if it waits for a credit
    await task
    code = await call.code()
    if end is None and start is not None:  # ran out of messages before the window closed
        end = _Snap(clock(), acked, server_pid, frontend_pid)
    if start is None or end is None or end.acked <= start.acked:
        raise RuntimeError(f"nothing measured: {acked} acks, exhausted={state['exhausted']}")
    seconds = end.t - start.t
    msgs_n = end.acked - start.acked
    server = end.server - start.server
    frontend = end.frontend - start.frontend
    client = end.client - start.client
    threads = {
        k: round((v - start.threads.get(k, 0.0)) / msgs_n * 1e6, 1)
        for k, v in sorted(end.threads.items(), key=lambda kv: -kv[1])
        if v - start.threads.get(k, 0.0) > 0
    }
    return {
        "msgs": msgs_n,
        "updates": msgs_n * batch,
        "seconds": seconds,
        "msgs_per_s": msgs_n / seconds,
        "updates_per_s": msgs_n * batch / seconds,
        "server_cpu": server / seconds,
        "client_cpu": client / seconds,
        "server_cpu_us_per_msg": server / msgs_n * 1e6,
        # riskd-fe: the front-end process's own (server_* is then the engine's).
        "frontend_cpu": frontend / seconds,
        "frontend_cpu_us_per_msg": frontend / msgs_n * 1e6,
        "server_thread_cpu_us_per_msg": threads,
        # CPU of everything else on the machine (other processes), in cores.
        "foreign_cpu": _others_delta(start.others, end.others) / seconds,
        "steal_cpu": (end.steal - start.steal) / seconds,
        "sent": state["sent"],
        "acked": acked,
        "mismatches": mismatches,
        "rejections": rejections,
        "exhausted": state["exhausted"],
        "code": str(code),
    }


def worker_client(ns: argparse.Namespace) -> dict[str, Any]:
    import grpc

    with open(ns.workload, "rb") as f:
        doc = pickle.load(f)
    msgs: list[bytes] = doc["measured"]
    batch: int = doc["batch"]

    async def go() -> dict[str, Any]:
        channel = grpc.aio.insecure_channel(
            ns.target, options=[("grpc.max_send_message_length", 4 * 1024 * 1024)]
        )
        try:
            setup = None
            if ns.setup:
                setup = await _setup_stream(channel, f"{ns.gateway}-s", doc["setup"])
            print(json.dumps({"event": "measuring"}), flush=True)
            out = await _measured_stream(
                channel,
                ns.gateway,
                msgs,
                batch,
                ns.warmup,
                ns.measure,
                ns.server_pid,
                ns.cycle,
                ns.frontend_pid,
            )
            out["setup"] = setup
            return out
        finally:
            await channel.close()

    out = asyncio.run(go())
    out["batch"] = batch
    return out


# --- profiling riskd -----------------------------------------------------------


def worker_cprofile_riskd(prefix: str, argv: list[str]) -> int:
    """Run ``riskd.cli`` with cProfile in every Python thread; dump one .prof per thread."""
    import cProfile
    import threading

    # Imported before profiling starts, so imports do not show up.
    import riskd.cli
    import riskd.daemon

    done: list[tuple[str, cProfile.Profile]] = []
    lock = threading.Lock()
    original = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        p = cProfile.Profile()
        p.enable()
        try:
            original(self)
        finally:
            p.disable()
            with lock:
                done.append((self.name, p))

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    main_profile = cProfile.Profile()
    main_profile.enable()
    try:
        rc = riskd.cli.main(argv)
    finally:
        main_profile.disable()
        main_profile.dump_stats(f"{prefix}.MainThread.prof")
        with lock:
            for i, (name, p) in enumerate(done):
                p.dump_stats(f"{prefix}.{re.sub(r'[^A-Za-z0-9_-]', '_', name)}.{i}.prof")
    return rc


def _short(path: str) -> str:
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    m = re.search(r"/lib/python3\.\d+/(.*)$", path)
    if m:
        return m.group(1)
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return path


def _func_name(key: tuple[str, int, str]) -> str:
    file, line, fn = key
    if file == "~":
        return fn
    return f"{_short(file)}:{line}({fn})"


#: Functions whose self time is waiting, not work (excluded from the tables).
_IDLE = re.compile(
    r"method '(e?poll|select)' of 'select\.|method 'acquire' of '_thread\.|"
    r"threading\.py:\d+\(run\)$"
)


def _cprofile_tables(files: list[Path], updates: int, top: int = 15) -> dict[str, Any]:
    """Top functions per thread by self and by cumulative time; per-update costs."""
    import pstats

    out: dict[str, Any] = {}
    for path in files:
        thread = path.name.split(".", 1)[1].removesuffix(".prof")
        st = pstats.Stats(str(path))
        rows = []
        total_tt = 0.0
        idle = 0.0
        for key, (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            name = _func_name(key)
            if _IDLE.search(name):  # waiting (epoll, locks), not working: wall time
                idle += tt
                continue
            total_tt += tt
            rows.append((name, nc, tt, ct))
        if total_tt < 0.1:  # threads that only waited (metrics HTTP, grpc's poller)
            continue

        def fmt(r: tuple[str, int, float, float]) -> dict[str, Any]:
            return {
                "function": r[0],
                "ncalls": r[1],
                "tottime_s": round(r[2], 4),
                "cumtime_s": round(r[3], 4),
                "self_us_per_update": round(r[2] / updates * 1e6, 3) if updates else None,
                "cum_us_per_update": round(r[3] / updates * 1e6, 3) if updates else None,
            }

        out[thread] = {
            "total_self_s": round(total_tt, 3),
            "idle_s": round(idle, 3),
            "by_self": [fmt(r) for r in sorted(rows, key=lambda r: -r[2])[:top]],
            "by_cumulative": [fmt(r) for r in sorted(rows, key=lambda r: -r[3])[:top]],
        }
    return out


def _pyspy_tables(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    incl_n: dict[str, int] = {}
    per_thread: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        if thread != "?":
            frames = frames[1:]
            if frames and frames[0].startswith("thread"):
                thread = frames[0]
                frames = frames[1:]
        per_thread[thread] = per_thread.get(thread, 0) + n
        total += n
        # "fn (file:line)" -> "fn (file)": one row per function, not per line.
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        if not frames:
            continue
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            incl_n[f] = incl_n.get(f, 0) + n

    def rows(d: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": c, "share": round(c / total, 4)}
            for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    return {
        "samples": total,
        "threads": {t: round(c / total, 4) for t, c in per_thread.items()} if total else {},
        "by_self": rows(self_n),
        "by_inclusive": rows(incl_n),
    }


# --- processes -------------------------------------------------------------------

KINDS = ("bare", "inline", "riskd", "riskd-fe")


def _start(
    kind: str, tmp: Path, tag: str, riskd_root: Path | None, cprofile_prefix: str | None = None
) -> harness.Server:
    """A fresh server process; returns once it listens."""
    log_path = tmp / f"{tag}.{kind}.log"
    if kind in ("bare", "inline"):
        cmd = [sys.executable, "-m", "benchmarks.ingest", "ref-server", "--mode", kind]
        return harness.start(cmd, log_path, kind=kind, event="ref_serving")
    cmd = harness.riskd_command(tmp / f"data-{tag}-{kind}")
    if kind == "riskd-fe":
        cmd += ["--frontend-listen", "127.0.0.1:0"]
    if cprofile_prefix is not None:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.ingest",
            "cprofile-riskd",
            "--out",
            cprofile_prefix,
            "--",
            *cmd[3:],
        ]
    return harness.start(cmd, log_path, riskd_root=riskd_root)


def _pyspy_path() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _run_cell(
    kind: str,
    batch: int,
    rep: int,
    tmp: Path,
    workload: Path,
    cfg: dict[str, Any],
    riskd_root: Path | None = None,
    tag: str | None = None,
    cprofile_prefix: str | None = None,
    pyspy: str | None = None,
    measure_s: float | None = None,
) -> dict[str, Any]:
    """One server process, one client process: set-up stream, then the measured stream."""
    tag = tag or f"b{batch}-r{rep}"
    measure = cfg["measure_s"] if measure_s is None else measure_s
    server = _start(kind, tmp, tag, riskd_root, cprofile_prefix)
    gateway = f"g-{tag}-{kind}"[-28:]  # riskd takes ids of at most 32 characters
    port = server.frontend_port if kind == "riskd-fe" else server.port
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.ingest",
        "client",
        "--target",
        f"127.0.0.1:{port}",
        "--gateway",
        gateway,
        "--workload",
        str(workload),
        "--warmup",
        str(cfg["warmup_s"]),
        "--measure",
        str(measure),
        "--server-pid",
        str(server.pid),
        "--setup",
    ]
    if kind == "bare":
        cmd.append("--cycle")
    frontend_pid = server.frontend_pid() if kind == "riskd-fe" else None
    if frontend_pid is not None:
        cmd += ["--frontend-pid", str(frontend_pid)]
    spy: subprocess.Popen[bytes] | None = None
    spy_out = tmp / f"{tag}.pyspy.txt"
    result: dict[str, Any] | None = None
    try:
        client = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        for line in client.stdout:
            rec = json.loads(line)
            if rec.get("event") != "measuring":
                result = rec
            elif pyspy:  # sample the daemon over the measured stream only
                spy = subprocess.Popen(
                    [
                        pyspy,
                        "record",
                        "--pid",
                        str(server.pid),
                        "--duration",
                        str(max(round(cfg["warmup_s"] + measure), 1)),
                        "--rate",
                        "250",
                        "--threads",
                        # Only the thread holding the GIL: where the one core
                        # riskd's Python can use goes (without it, a thread
                        # waiting for the GIL after epoll counts as busy).
                        "--gil",
                        "--nonblocking",
                        "--format",
                        "raw",
                        "-o",
                        str(spy_out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
        if client.wait() != 0 or result is None:
            raise RuntimeError(
                f"client failed ({kind}, batch {batch}); server log tail:\n"
                f"{server.log_path.read_text()[-3000:]}"
            )
        if server.metrics_port is not None:
            samples = harness.scrape(server.metrics_port)
            result["riskd_counters"] = harness.counters(
                samples, "riskd_updates_total", "riskd_liquidations_total", "riskd_adl_events_total"
            )
            result["riskd_unexpected"] = harness.unexpected(samples)
            _, violations = harness.check_state(server.target)
            result["check_state_violations"] = violations
        if spy is not None:
            _, err = spy.communicate(timeout=60)
            if spy.returncode == 0 and spy_out.exists():
                result["pyspy"] = _pyspy_tables(spy_out)
            else:
                result["pyspy_error"] = err.decode(errors="replace")[-2000:]
    finally:
        code = server.stop()
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
    problems = list(result.get("riskd_unexpected", []))
    if result.get("check_state_violations"):
        problems.append(f"CheckState: {result['check_state_violations'][:3]}")
    if code != 0:
        problems.append(f"server exit code {code}")
    if result["mismatches"]:
        problems.append(f"{result['mismatches']} ack mismatches")
    if result["rejections"] or (result["setup"] and result["setup"]["rejections"]):
        problems.append("rejections")
    if result["code"] != "StatusCode.OK":
        problems.append(f"stream ended with {result['code']}")
    result.update(
        kind=kind,
        batch=batch,
        rep=rep,
        server_exit=code,
        problems=problems,
        server_command=harness.display(server.command),
        client_command=harness.display(cmd),
    )
    return result


# --- driver ----------------------------------------------------------------------


def _build_workloads(tmp: Path, cfg: dict[str, Any]) -> dict[int, Path]:
    t = time.perf_counter()
    setup = build_setup()
    paths = {}
    span = cfg["warmup_s"] + max(cfg["measure_s"], cfg["profile_s"] if cfg["profile"] else 0)
    for b in BATCHES:
        msgs = build_workload(b, int(MAX_UPDATES_PER_S[b] * span * 1.5))
        path = tmp / f"workload-b{b}.pickle"
        with path.open("wb") as f:
            pickle.dump({"batch": b, "setup": setup, "measured": msgs}, f, protocol=5)
        paths[b] = path
    log(f"workloads built in {time.perf_counter() - t:.1f}s")
    return paths


def _others_load(seconds: float = 0.25) -> float:
    """Cores used by other processes over a short sample."""
    me = {os.getpid()}
    a = _others_cpu_s(me)
    time.sleep(seconds)
    return _others_delta(a, _others_cpu_s(me)) / seconds


#: Seconds left for waiting out other processes and repeating cells (set per run).
_SPARE = [0.0]


def _quiet_cell(
    kind: str,
    batch: int,
    rep: int,
    tmp: Path,
    workload: Path,
    cfg: dict[str, Any],
    riskd_root: Path | None,
) -> dict[str, Any]:
    """A cell measured while no other process competes for the cores, as far as time allows.

    Waits (a little) for other processes' load to drop below QUIET_CORES, and
    repeats a cell that saw more than that (up to ATTEMPTS), both out of the
    run's spare-time budget; keeps the attempt with the least foreign load.
    """
    attempts: list[dict[str, Any]] = []
    while True:
        t = time.perf_counter()
        wait_until = t + min(cfg["quiet_wait_s"], max(_SPARE[0], 0.0))
        while _others_load() > QUIET_CORES and time.perf_counter() < wait_until:
            pass
        _SPARE[0] -= time.perf_counter() - t
        t = time.perf_counter()
        # A fresh data directory and gateway per attempt: a repeated riskd cell
        # reusing the first's found its sequences already acknowledged and failed.
        tag = f"b{batch}-r{rep}" + (f"-a{len(attempts)}" if attempts else "")
        attempts.append(_run_cell(kind, batch, rep, tmp, workload, cfg, riskd_root, tag=tag))
        if attempts[-1]["foreign_cpu"] <= QUIET_CORES or len(attempts) >= ATTEMPTS:
            break
        if _SPARE[0] < time.perf_counter() - t:  # no time left to repeat it
            break
        _SPARE[0] -= time.perf_counter() - t
        log(
            f"rep {rep} batch {batch} {kind}: other processes used "
            f"{attempts[-1]['foreign_cpu']:.2f} cores meanwhile; measuring again"
        )
    best = min(attempts, key=lambda r: r["foreign_cpu"])
    best["attempts"] = len(attempts)
    return best


def _orders(rep: int, i: int, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """Which server goes first rotates with the repetition and the batch size."""
    k = (rep + i) % len(kinds)
    return kinds[k:] + kinds[:k]


def run(
    quick: bool = False,
    riskd_root: Path | None = None,
    profile: bool | None = None,
    frontend: bool = True,
) -> dict[str, Any]:
    """The interleaved matrix (and, in full, the profiles); prints a table; returns figures."""
    kinds = KINDS if frontend else tuple(k for k in KINDS if k != "riskd-fe")
    cfg = dict(QUICK if quick else FULL)
    if profile is not None:
        cfg["profile"] = profile
    started = time.perf_counter()
    command = "python -m benchmarks.ingest" + (" --quick" if quick else "")
    if riskd_root is not None:
        command += f" --riskd-root {riskd_root}"
    tmp = Path(tempfile.mkdtemp(prefix="riskd-bench-ingest-"))
    try:
        workloads = _build_workloads(tmp, cfg)
        _SPARE[0] = cfg["spare_s"]
        cells: list[dict[str, Any]] = []
        for rep in range(cfg["reps"]):
            for i, b in enumerate(BATCHES):
                for kind in _orders(rep, i, kinds):
                    r = _quiet_cell(kind, b, rep, tmp, workloads[b], cfg, riskd_root)
                    cells.append(r)
                    log(
                        f"rep {rep} batch {b:<3} {kind:<6} {r['msgs_per_s']:7.0f} msgs/s "
                        f"{r['updates_per_s']:9.0f} updates/s  server {r['server_cpu']:.2f} "
                        f"client {r['client_cpu']:.2f} foreign {r['foreign_cpu']:.2f} cores"
                        + (f" ({r['attempts']} attempts)" if r["attempts"] > 1 else "")
                        + (f"  PROBLEMS {r['problems']}" if r["problems"] else "")
                        + ("  (ran out of messages)" if r["exhausted"] else "")
                    )
        profiles = _profile(tmp, workloads, cfg, riskd_root) if cfg["profile"] else {}
        runtime = time.perf_counter() - started
        figures = _report(cells, cfg, command, runtime, quick, kinds)
        if profiles:
            _print_profiles(profiles)
        errors = [
            f"{c['kind']} batch {c['batch']} rep {c['rep']}: {'; '.join(c['problems'])}"
            for c in cells
            if c["problems"]
        ]
        return {
            "figures": figures,
            "errors": errors,
            "details": {"cells": cells, "profiles": profiles, "config": cfg, "window": WINDOW},
            "runtime_s": runtime,
            "quick": quick,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ab(
    roots: Sequence[Path], kinds: Sequence[str], batches: Sequence[int], rounds: int
) -> dict[str, Any]:
    """riskd from each of ``roots`` (source trees: a change and the tree before it)
    on the same workload, cell by cell, interleaved (which tree goes first
    alternates); no bare server, so no ratio: msgs/s and riskd's CPU per
    message (its processes' cores ÷ msgs/s), medians over ``rounds``."""
    cfg = dict(FULL)
    tmp = Path(tempfile.mkdtemp(prefix="riskd-bench-ab-"))
    try:
        workloads = _build_workloads(tmp, cfg)
        _SPARE[0] = cfg["spare_s"]
        seen: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
        for rep in range(rounds):
            for b in batches:
                for kind in kinds:
                    order = list(enumerate(roots))
                    for j, root in order if rep % 2 == 0 else order[::-1]:
                        # Its own rep number: a cell's data directory and gateway are per rep.
                        r = _quiet_cell(kind, b, rep * len(roots) + j, tmp, workloads[b], cfg, root)
                        if r["problems"]:
                            raise RuntimeError(f"{kind} batch {b} from {root}: {r['problems']}")
                        us = 1e6 * r["server_cpu"] / r["msgs_per_s"]
                        seen.setdefault((b, kind, str(root)), []).append((r["msgs_per_s"], us))
                        log(
                            f"round {rep} batch {b:<3} {kind:<8} {root}: "
                            f"{r['msgs_per_s']:7.0f} msgs/s, {us:6.0f} µs/msg, "
                            f"foreign {r['foreign_cpu']:.2f} cores"
                        )
        out = {
            f"batch {b} {kind} {root}": {
                "msgs_per_s": statistics.median(m for m, _ in v),
                "us_per_msg": statistics.median(u for _, u in v),
                "rounds": v,
            }
            for (b, kind, root), v in seen.items()
        }
        for name, f in out.items():
            print(f"{name}: {f['msgs_per_s']:.0f} msgs/s, {f['us_per_msg']:.0f} µs/msg (medians)")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _profile(
    tmp: Path, workloads: dict[int, Path], cfg: dict[str, Any], riskd_root: Path | None
) -> dict[str, Any]:
    """riskd at batch 256 and 1 under cProfile (every thread), then under py-spy."""
    out: dict[str, Any] = {}
    for b in PROFILE_BATCHES:
        prefix = tmp / f"cprofile-b{b}"
        r = _run_cell(
            "riskd",
            b,
            0,
            tmp,
            workloads[b],
            cfg,
            riskd_root,
            tag=f"cprof-b{b}",
            cprofile_prefix=str(prefix),
            measure_s=cfg["profile_s"],
        )
        # Every update the daemon handled in the run: set-up + every acknowledged batch.
        handled = (r["setup"]["last"] if r["setup"] else 0) + r["acked"] * b
        files = sorted(tmp.glob(f"cprofile-b{b}.*.prof"))
        out[f"cprofile_b{b}"] = {
            "command": f"{r['server_command']}  # driven by: {r['client_command']}",
            "updates_handled": handled,
            "msgs_per_s_under_profiler": r["msgs_per_s"],
            "updates_per_s_under_profiler": r["updates_per_s"],
            "threads": _cprofile_tables(files, handled),
        }
    pyspy = _pyspy_path()
    if pyspy is None:
        out["pyspy"] = "not installed (`.venv/bin/pip install py-spy` for sampling profiles)"
        return out
    for b in PROFILE_BATCHES:
        r = _run_cell(
            "riskd",
            b,
            0,
            tmp,
            workloads[b],
            cfg,
            riskd_root,
            tag=f"pyspy-b{b}",
            pyspy=pyspy,
            measure_s=cfg["profile_s"],
        )
        p = r.get("pyspy") or {"error": r.get("pyspy_error")}
        p["msgs_per_s_while_sampled"] = r["msgs_per_s"]
        p["updates_per_s_while_sampled"] = r["updates_per_s"]
        out[f"pyspy_b{b}"] = p
    return out


def _paired(num: list[dict[str, Any]], den: list[dict[str, Any]], reps: int) -> list[float]:
    """updates/s ratios of two servers' cells of the same repetition."""
    out = []
    for rep in range(reps):
        a = [c for c in num if c["rep"] == rep]
        z = [c for c in den if c["rep"] == rep]
        if a and z:
            out.append(a[0]["updates_per_s"] / z[0]["updates_per_s"])
    return out


def paired_ratio(
    figures: dict[str, dict[str, Any]],
    name: str,
    num: list[dict[str, Any]],
    den: list[dict[str, Any]],
    reps: int,
    command: str,
    what: str,
    target: float | None = None,
    more: str = "",
) -> None:
    """Record ``name``: the median of :func:`_paired` ratios (``what``: "riskd/bare
    updates/s") and their range, against ``target`` when there is one."""
    ratios = harness.median_range(_paired(num, den, reps))
    _fig(
        figures,
        name,
        round(ratios[0], 3),
        "x",
        command,
        target=None if target is None else f">= {target}",
        ok=None if target is None else ratios[0] >= target,
        note=f"{what}, median of {reps} paired reps [{ratios[1]:.3f}-{ratios[2]:.3f}]{more}",
    )


def _report(
    cells: list[dict[str, Any]],
    cfg: dict[str, Any],
    command: str,
    runtime: float,
    quick: bool,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {}
    print(
        f"ingest: updates/s end-to-end, {len(kinds)} servers interleaved, {cfg['reps']} rep(s), "
        f"{cfg['measure_s']}s window after {cfg['warmup_s']}s warm-up, pipelined grpc.aio "
        f"client (window {WINDOW}); median [min-max]"
    )
    print(
        "  bare = grpc.aio, decode every field, ack;  inline = + riskd's decoder and "
        "Engine.apply in the handler;  riskd = the daemon;  riskd-fe = the daemon with its"
        " ingest front-end process (server cores, µs/msg: engine + front end)"
    )
    head = (
        "batch",
        "server",
        "msgs/s",
        "updates/s",
        "server cores",
        "server µs/msg",
        "client cores",
        "foreign cores",
    )
    rows = []
    for b in BATCHES:
        by = {k: [c for c in cells if c["batch"] == b and c["kind"] == k] for k in kinds}
        for k, cs in by.items():
            m = harness.median_range([c["msgs_per_s"] for c in cs])
            u = harness.median_range([c["updates_per_s"] for c in cs])
            cores = f"{statistics.median(c['server_cpu'] for c in cs):.2f}"
            us = f"{statistics.median(c['server_cpu_us_per_msg'] for c in cs):.0f}"
            if k == "riskd-fe":
                cores += f" + {statistics.median(c['frontend_cpu'] for c in cs):.2f}"
                us += f" + {statistics.median(c['frontend_cpu_us_per_msg'] for c in cs):.0f}"
            rows.append(
                (
                    str(b),
                    k,
                    f"{harness.si(m[0])} [{harness.si(m[1])}-{harness.si(m[2])}]",
                    f"{harness.si(u[0])} [{harness.si(u[1])}-{harness.si(u[2])}]",
                    cores,
                    us,
                    f"{statistics.median(c['client_cpu'] for c in cs):.2f}",
                    f"{statistics.median(c['foreign_cpu'] for c in cs):.2f}",
                )
            )
            _fig(
                figures,
                f"{k}_msgs_per_s[batch={b}]",
                round(m[0], 1),
                "msgs/s",
                command,
                note=f"median of {len(cs)} [{m[1]:.0f}-{m[2]:.0f}]",
            )
            _fig(
                figures,
                f"{k}_updates_per_s[batch={b}]",
                round(u[0], 1),
                "updates/s",
                command,
                note=f"median of {len(cs)} [{u[1]:.0f}-{u[2]:.0f}]",
            )

        for den, target in (("bare", TARGETS[b]), ("inline", None)):
            of_medians = statistics.median(c["updates_per_s"] for c in by["riskd"]) / (
                statistics.median(c["updates_per_s"] for c in by[den])
            )
            name = f"ratio[batch={b}]" if den == "bare" else f"ratio_vs_inline[batch={b}]"
            paired_ratio(
                figures, name, by["riskd"], by[den], cfg["reps"], command,
                f"riskd/{den} updates/s", target, f"; ratio of medians {of_medians:.3f}",
            )  # fmt: skip
        if "riskd-fe" in by:
            paired_ratio(
                figures, f"ratio_frontend[batch={b}]", by["riskd-fe"], by["bare"], cfg["reps"],
                command, "riskd-fe/bare updates/s", TARGETS[b],
            )  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    for b in BATCHES:
        f, g = figures[f"ratio[batch={b}]"], figures[f"ratio_vs_inline[batch={b}]"]
        print(
            f"ratio riskd/bare at batch {b:>3}: {f['value']:.3f}  (target {f['target']}: "
            f"{'ok' if f['meets_target'] else 'MISSED'}; {f['note']});  riskd/inline "
            f"{g['value']:.3f}"
            + (
                f";  riskd-fe/bare {figures[f'ratio_frontend[batch={b}]']['value']:.3f}"
                f" ({figures[f'ratio_frontend[batch={b}]']['note']})"
                if f"ratio_frontend[batch={b}]" in figures
                else ""
            )
        )
    riskd_threads = {
        b: statistics.median(
            c["server_thread_cpu_us_per_msg"].get("main", 0.0)
            for c in cells
            if c["kind"] == "riskd" and c["batch"] == b
        )
        for b in BATCHES
    }
    print(
        "riskd trio (main) thread CPU µs/msg: "
        + ", ".join(f"batch {b}: {v:.0f}" for b, v in riskd_threads.items())
        + "  (per-thread detail in details.cells[].server_thread_cpu_us_per_msg)"
    )
    noisy = [c for c in cells if c["foreign_cpu"] > QUIET_CORES]
    if noisy:
        print(
            f"WARNING: other processes used > {QUIET_CORES} cores during {len(noisy)} of "
            f"{len(cells)} cells even after repeats ("
            + ", ".join(f"{c['kind']} b{c['batch']} r{c['rep']}" for c in noisy)
            + "): this machine has 2 cores, so those figures (and their ratios) understate"
        )
    problems = [(c["kind"], c["batch"], c["rep"], c["problems"]) for c in cells if c["problems"]]
    exhausted = [(c["kind"], c["batch"], c["rep"]) for c in cells if c["exhausted"]]
    if problems:
        print(f"PROBLEMS: {problems}")
    if exhausted:
        print(
            f"note: ran out of pre-built messages before the window closed in {exhausted}"
            " (measured up to there): raise MAX_UPDATES_PER_S"
        )
    cell = next(c for c in cells if c["kind"] == "riskd")
    print(f"command: {command}")
    print(f"  one riskd cell: {cell['server_command']}")
    print(f"                  {cell['client_command']}")
    print(f"ingest: {runtime:.1f}s{' (quick)' if quick else ''}")
    return figures


def _print_profiles(profiles: dict[str, Any], top: int = 15) -> None:
    for name, p in profiles.items():
        if not isinstance(p, dict):
            print(f"{name}: {p}")
        elif name.startswith("cprofile"):
            print(
                f"\n-- {name}: riskd under cProfile (every thread), "
                f"{p['updates_handled']:,} updates handled, "
                f"{harness.si(p['msgs_per_s_under_profiler'])} msgs/s under the profiler --"
            )
            print(f"   $ {p['command']}")
            for thread, t in p["threads"].items():
                for order in ("by_self", "by_cumulative"):
                    print(
                        f"  [{thread}] top {top} {order.replace('_', ' ')}: "
                        f"{t['total_self_s']}s busy, {t['idle_s']}s waiting (not shown); "
                        "seconds, then µs per update handled"
                    )
                    print(
                        f"    {'self':>7} {'cum':>7} {'self/u':>7} {'cum/u':>7} "
                        f"{'calls':>8}  function"
                    )
                    for r in t[order][:top]:
                        print(
                            f"    {r['tottime_s']:7.3f} {r['cumtime_s']:7.3f} "
                            f"{r['self_us_per_update']:7.2f} {r['cum_us_per_update']:7.2f} "
                            f"{r['ncalls']:>8}  {r['function']}"
                        )
        elif "by_self" in p:
            print(
                f"\n-- {name}: riskd sampled by py-spy (samples of the thread holding the GIL), "
                f"{p['samples']} samples, {harness.si(p['msgs_per_s_while_sampled'])} msgs/s --"
            )
            print("   threads: " + ", ".join(f"{t} {v:.0%}" for t, v in p["threads"].items()))
            for order in ("by_self", "by_inclusive"):
                print(f"  top {top} {order.replace('_', ' ')}")
                for r in p[order][:top]:
                    print(f"    {r['share']:6.1%}  {r['function']}")
        else:
            print(f"{name}: {p}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="1 repetition, short windows, no profile")
    p.add_argument("--json", metavar="PATH", type=Path, help="also write the result as JSON")
    p.add_argument(
        "--riskd-root",
        type=Path,
        metavar="DIR",
        help="run riskd from this source tree (an A/B of a change); default: this one",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile riskd after the matrix (default: in full runs only)",
    )
    p.add_argument(
        "--frontend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure riskd-fe, riskd with its ingest front-end process (default: yes)",
    )
    sub = p.add_subparsers(dest="worker")
    r = sub.add_parser("ref-server", help="a reference grpc.aio IngestService (prints its port)")
    r.add_argument("--mode", choices=("bare", "inline"), default="bare")
    c = sub.add_parser("client", help="one pipelined client run (prints JSON)")
    c.add_argument("--target", required=True)
    c.add_argument("--gateway", required=True)
    c.add_argument("--workload", required=True, help="pickle written by the driver")
    c.add_argument("--warmup", type=float, default=FULL["warmup_s"])
    c.add_argument("--measure", type=float, default=FULL["measure_s"])
    c.add_argument("--server-pid", type=int, required=True)
    c.add_argument("--setup", action="store_true", help="send the set-up stream first")
    c.add_argument("--cycle", action="store_true", help="reuse the messages (bare server only)")
    c.add_argument("--frontend-pid", type=int, help="riskd's front-end process (its CPU too)")
    a = sub.add_parser("ab", help="riskd from two source trees, cell by cell, interleaved")
    a.add_argument("roots", nargs="+", type=Path, help="source trees (e.g. a worktree of main)")
    a.add_argument("--kinds", default="riskd", help="comma-separated, of riskd,riskd-fe")
    a.add_argument("--batches", default="1,16,256", help="updates per message, comma-separated")
    a.add_argument("--rounds", type=int, default=3)
    cp = sub.add_parser("cprofile-riskd", help="riskd.cli under cProfile in every thread")
    cp.add_argument("--out", required=True, help="prefix of the .prof files")
    cp.add_argument("riskd_args", nargs=argparse.REMAINDER)
    ns = p.parse_args(argv)
    if ns.worker == "ref-server":
        worker_ref_server(ns.mode)
    elif ns.worker == "client":
        print(json.dumps(worker_client(ns)), flush=True)
    elif ns.worker == "ab":
        ab(
            [r.resolve() for r in ns.roots],
            ns.kinds.split(","),
            [int(b) for b in ns.batches.split(",")],
            ns.rounds,
        )
    elif ns.worker == "cprofile-riskd":
        args = ns.riskd_args[1:] if ns.riskd_args[:1] == ["--"] else ns.riskd_args
        sys.exit(worker_cprofile_riskd(ns.out, args))
    else:
        root = ns.riskd_root.resolve() if ns.riskd_root else None
        out = run(quick=ns.quick, riskd_root=root, profile=ns.profile, frontend=ns.frontend)
        if ns.json:
            ns.json.write_text(json.dumps(out, indent=2) + "\n")
        harness.exit_on_problems("benchmarks.ingest", out["errors"])


if __name__ == "__main__":
    main()
