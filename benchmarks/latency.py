"""Latency from a mark update to its liquidation event, open loop, at half capacity.

A real daemon; one gateway streams single-update messages on a fixed schedule
(open loop: each message's latency is measured from the time it was *due*,
not when it was sent, so a stall counts against every message it delays — no
coordinated omission).  Most messages are background marks on BTC-USDT; every
``1/probe_share``-th is a probe: a mark on ETH-USDT that crosses exactly one
prepared long's liquidation price.  A subscriber on the event stream stamps
the probe's ``LiquidationSettled``.  The rate is half of the capacity measured
first, in the same run, with the same messages sent closed-loop.  Each cell
runs again with riskd's ingest front-end process (``--frontend``): the marks
go to the front end, the events still come from the engine's port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks import gate, harness, sched
from riskd.config import load
from riskd.core import Position
from riskd.core.margin import liquidation_threshold
from riskd.v1 import admin_pb2, admin_pb2_grpc, events_pb2, events_pb2_grpc
from riskd_client.gateway import Gateway

__all__ = ["run"]

U = 10**6
ETH, BTC = "ETH-USDT", "BTC-USDT"
ETH_MARK = 300_000  # 3,000.00


def _probes(k: int) -> list[tuple[int, int]]:
    """(account, crossing mark) for k longs of 1 ETH at 3,000 with rising margin."""
    spec = next(m for m in load().markets if m.symbol == ETH)
    out = []
    for i in range(k):
        margin = (20 + 5 * i) * U
        pos = Position(1000 + i)
        pos.size, pos.basis, pos.margin = 1000, spec.trade_value(1000, ETH_MARK), margin
        lp = liquidation_threshold(spec, pos)
        out.append((1000 + i, lp - lp % spec.tick_size))
    return out


async def _setup(target: str, ingest: str, probes: list[tuple[int, int]]) -> None:
    async with Gateway(ingest, "lat-setup", batch_size=256) as gw:
        gw.deposit(1, "USDT", 10**12)
        gw.margin_transfer(1, ETH, 10**11)  # the short on the other side of every probe
        gw.mark_price(ETH, ETH_MARK)
        gw.mark_price(BTC, 5_000_000)
        for account, _ in probes:
            margin = (20 + 5 * (account - 1000)) * U
            gw.deposit(account, "USDT", margin)
            gw.margin_transfer(account, ETH, margin)
            gw.fill(ETH, account, 1, ETH_MARK, 1000, trade_id=account)
        await gw.flush(timeout=120)
        assert not gw.rejections, gw.rejections[:3]
    channel = grpc.aio.insecure_channel(target)
    await admin_pb2_grpc.AdminServiceStub(channel).InjectFund(
        admin_pb2.InjectFundRequest(asset="USDT", amount=10**12, cause="bench")
    )
    await channel.close()


async def _capacity(target: str, seconds: float) -> float:
    """Closed loop, one update per message, window 32: acknowledged messages/s."""
    async with Gateway(target, "lat-capacity", batch_size=1, window=32) as gw:
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            gw.mark_price(BTC, 5_000_000 + 10 * (n % 2))
            n += 1
            await gw.wait_for_window()
        await gw.flush()
        return n / (time.perf_counter() - t0)


async def _sender(
    target: str, rate: float, seconds: float, probes: list[tuple[int, int]], probe_every: int
) -> dict[str, Any]:
    """The load generator, in a process of its own (``python -m benchmarks.latency
    sender``): single-update messages on a fixed schedule, message n due at
    t0 + n / rate whatever happened to the ones before (open loop: a late
    message is sent at once, still timed from when it was due).  Per probe
    (its account): when it was due and when its mark was acknowledged (its
    record durable), on ``time.perf_counter`` (CLOCK_MONOTONIC: the same clock
    in every process on the machine, so the subscriber's stamps compare)."""
    due: dict[int, float] = {}
    acked_at: dict[int, float] = {}
    probe_seqs: deque[tuple[int, int]] = deque()  # (sequence, account), in order
    gw = Gateway(target, "lat-open", batch_size=1, window=10**9)

    async def watch_acks() -> None:
        while True:
            await gw._wait_change()
            now, acked = time.perf_counter(), gw.acked_sequence
            while probe_seqs and probe_seqs[0][0] <= acked:
                _seq, account = probe_seqs.popleft()
                acked_at[account] = now

    await gw.start()
    await gw.wait_connected()
    watcher = asyncio.create_task(watch_acks())
    own = sched.threads(os.getpid())
    t0 = time.perf_counter()
    n, p = 0, 0
    late: list[float] = []  # how late each message left against its schedule
    while (now := time.perf_counter()) - t0 < seconds and p < len(probes):
        at = t0 + n / rate
        if at > now:
            await asyncio.sleep(at - now)
        else:  # behind schedule: still let the gateway's writer task send what is queued
            await asyncio.sleep(0)
        late.append(time.perf_counter() - at)
        if n % probe_every == probe_every - 1:
            account, mark = probes[p]
            due[account] = at  # from when it was due: no coordinated omission
            probe_seqs.append((gw.mark_price(ETH, mark), account))
            p += 1
        else:
            gw.mark_price(BTC, 5_000_000 + 10 * (n % 2))
        n += 1
    wall = time.perf_counter() - t0
    sent_rate = n / wall
    after = sched.threads(os.getpid())
    await gw.flush(timeout=120)
    await asyncio.sleep(0)
    watcher.cancel()
    await gw.close()
    return {
        "rate_sent": sent_rate,
        "due": due,
        "acked_at": acked_at,
        "send_late_p50_ms": _quantile_ms(late, 0.5),
        "send_late_p99_ms": _quantile_ms(late, 0.99),
        "sched": None if own is None or after is None else sched.rates(after - own, wall),
    }


async def _open_loop(
    target: str,
    ingest: str,
    rate: float,
    seconds: float,
    probes: list[tuple[int, int]],
    probe_every: int,
    pids: dict[str, int],
) -> dict[str, Any]:
    """The subscriber here (events from ``target``), the sender in its own process
    (:func:`_sender`, to ``ingest``), so neither one's work delays the other's
    timestamps; the machine's readings (:mod:`benchmarks.sched`) over the same window."""
    channel = grpc.aio.insecure_channel(target)
    events = events_pb2_grpc.EventServiceStub(channel)
    wanted = {account for account, _ in probes}
    arrived: dict[int, float] = {}
    done = asyncio.Event()

    async def listen() -> None:
        call = events.Subscribe(events_pb2.SubscribeRequest(markets=[ETH]))
        async for r in call:
            e = r.event
            if e.HasField("liquidation_settled") and e.liquidation_settled.account in wanted:
                arrived.setdefault(e.liquidation_settled.account, time.perf_counter())
                if len(arrived) >= len(sent_probes or wanted):
                    done.set()

    sent_probes: set[int] = set()
    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed before the first probe
    job = json.dumps({"target": ingest, "rate": rate, "seconds": seconds, "probes": probes,
                      "probe_every": probe_every})  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.latency", "sender",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    machine = sched.window({**pids, "subscriber": os.getpid()})
    machine.__enter__()
    out, _ = await proc.communicate(job.encode())
    machine.__exit__()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"the sender failed (exit {proc.returncode})")
    sent = json.loads(out.decode().strip().splitlines()[-1])
    if sent.get("sched"):  # it had exited when the window closed: its own reading
        machine.result["sender"] = sent["sched"]
    due = {int(k): v for k, v in sent["due"].items()}
    acked_at = {int(k): v for k, v in sent["acked_at"].items()}
    sent_probes.update(due)
    if len(arrived) >= len(due):
        done.set()
    await asyncio.wait_for(done.wait(), 60)
    listener.cancel()
    await channel.close()
    latencies = [arrived[a] - at for a, at in due.items() if a in arrived]
    to_ack = [acked_at[a] - at for a, at in due.items() if a in acked_at]
    ack_to_event = [arrived[a] - acked_at[a] for a in due if a in acked_at and a in arrived]
    return {
        "rate_target": rate,
        "rate_sent": sent["rate_sent"],
        "probes": len(latencies),
        "p50_ms": _quantile_ms(latencies, 0.5),
        "p99_ms": _quantile_ms(latencies, 0.99),
        "max_ms": 1000 * max(latencies),
        # Seen by the clients: due -> its mark acknowledged (sequenced, applied,
        # journaled: durable), then -> its event (published once durable, the
        # subscriber's stream); p50/p99 of each on its own, so they need not add up.
        "due_to_ack_p50_ms": _quantile_ms(to_ack, 0.5),
        "due_to_ack_p99_ms": _quantile_ms(to_ack, 0.99),
        "ack_to_event_p50_ms": _quantile_ms(ack_to_event, 0.5),
        "ack_to_event_p99_ms": _quantile_ms(ack_to_event, 0.99),
        "send_late_p50_ms": sent["send_late_p50_ms"],
        "send_late_p99_ms": sent["send_late_p99_ms"],
        "machine": machine.result,
    }


def _quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    seconds: float,
    probes_n: int,
    where: Path | None = None,
    frontend: bool = False,
    pin: bool = False,
) -> dict[str, Any]:
    """``where``: the directory for riskd's data (its journal), e.g. a RAM file system.
    ``frontend``: riskd with its ingest front-end process, the marks sent to that."""
    probes = _probes(probes_n)
    with tempfile.TemporaryDirectory(prefix="riskd-latency-", dir=where) as tmp:
        extra = ("--frontend-listen", "127.0.0.1:0") if frontend else ()
        daemon = harness.start(
            harness.riskd_command(Path(tmp) / "data", *extra), Path(tmp) / "riskd.log"
        )
        try:
            ingest = f"127.0.0.1:{daemon.frontend_port}" if frontend else daemon.target
            pids = {"riskd": daemon.pid}
            if frontend:
                pids["frontend"] = daemon.frontend_pid() or daemon.pid
            apart = harness.pin_apart(*pids.values()) if pin else contextlib.nullcontext("")

            async def go() -> dict[str, Any]:
                await _setup(daemon.target, ingest, probes)
                with sched.window(pids, jitter=False) as at_capacity:
                    capacity = await _capacity(ingest, 3.0)
                probe_every = max(int(capacity / 2 / 20), 2)  # about 20 probes a second
                assert daemon.metrics_port is not None
                before = harness.scrape(daemon.metrics_port)
                r = await _open_loop(
                    daemon.target, ingest, capacity / 2, seconds, probes, probe_every, pids
                )
                during = harness.since(before, harness.scrape(daemon.metrics_port))
                return {
                    "capacity_msgs_per_s": capacity,
                    "probe_every": probe_every,
                    **r,
                    "split": _split(during),
                    "riskd": gate.riskd_split(during),
                    "machine_at_capacity": at_capacity.result,
                }

            with apart as pinned:
                r = asyncio.run(go())
            r["pinned"] = pinned
            r["problems"] = _problems(daemon, r["probes"])
            return r
        finally:
            daemon.stop(60)


def _split(during: list[harness.Sample]) -> dict[str, float | None]:
    """Where a probe's time goes, from riskd's histograms over the open loop (bucket
    bounds, ms): waiting to be sequenced (the urgent lane), the journal's group
    commit, which its event waits for once or, arriving during another, twice,
    and the whole stay in riskd from being read to being durable (urgent lane)."""
    out: dict[str, float | None] = {}
    for key, name, labels in (
        ("queue", "riskd_ingest_queue_seconds", {"kind": "liquidation_path"}),
        ("commit", "riskd_journal_commit_seconds", {}),
        ("durable", "riskd_ingest_durable_seconds", {"kind": "liquidation_path"}),
    ):
        for q in (0.5, 0.99):
            v = harness.bucket_quantile(during, name, q, **labels)
            out[f"{key}_p{int(q * 100)}_ms_le"] = None if v is None else 1000 * v
    return out


def _problems(daemon: harness.Server, probes: int) -> list[str]:
    """Every probe liquidates (a partial liquidation settles in steps: at least one
    each), the background marks liquidate nothing, nothing is refused."""
    assert daemon.metrics_port is not None
    samples = harness.scrape(daemon.metrics_port)
    bad = harness.unexpected(samples, liquidations=True)
    settled = {
        m: sum(s.value for s in samples if s.name == "riskd_liquidations_total" and
               s.labels.get("market") == m)
        for m in (ETH, BTC)
    }  # fmt: skip
    if settled[ETH] < probes or settled[BTC]:
        bad.append(f"liquidations settled {settled} for {probes} probes on {ETH}")
    _, violations = harness.check_state(daemon.target)
    if violations:
        bad.append(f"CheckState: {violations[:3]}")
    return bad


def run(quick: bool = False, tmpfs: Path | None = None) -> dict[str, Any]:
    """``tmpfs``: a second run with riskd's journal there (a RAM file system such
    as /dev/shm): the software's latency apart from the disk's fsync."""
    seconds, probes = (3.0, 80) if quick else (10.0, 260)
    figures: dict[str, dict[str, Any]] = {}
    details: dict[str, Any] = {}
    errors: list[str] = []
    places = ("disk", "tmpfs") if tmpfs else ("disk",)
    for place in places + tuple(f"{p},{how}" for how in ("frontend", "pinned") for p in places):
        extra = ["--tmpfs", str(tmpfs)] if place.startswith("tmpfs") else []
        if place.endswith(",frontend"):
            extra.append("--frontend")
        if place.endswith(",pinned"):
            extra.append("--pin")
        args = ["--seconds", f"{seconds:g}", "--probes", str(probes), *extra]
        command = harness.display([sys.executable, "-m", "benchmarks.latency", *args])
        print(f"[latency] open loop at half capacity, {_where(place)} ...", file=sys.stderr,
              flush=True)  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.latency", *args],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if not out.stdout.strip():  # it died before a result: say why
            raise RuntimeError(f"benchmarks.latency failed:\n{out.stderr[-4000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        details[place] = r
        errors += [f"latency ({place}): {p}" for p in r.get("problems", [])]
        _print(place, r)
        suffix = "" if place == "disk" else f"[{place}]"
        for k, v in (
            ("mark_to_liquidation_p50_ms", r["p50_ms"]),
            ("mark_to_liquidation_p99_ms", r["p99_ms"]),
            ("mark_to_liquidation_max_ms", r["max_ms"]),
            ("open_loop_rate_msgs_per_s", r["rate_sent"]),
            ("capacity_msgs_per_s", r["capacity_msgs_per_s"]),
        ):
            figures[k + suffix] = {
                "value": round(v, 3),
                "unit": "ms" if k.endswith("_ms") else "msgs/s",
                "command": command,
            }
        figures["mark_to_liquidation_p99_ms" + suffix].update(
            target="<= 5", meets_target=r["p99_ms"] <= 5.0
        )
    return {"figures": figures, "details": details, "errors": errors}


def _where(place: str) -> str:
    """ "tmpfs,frontend" -> "journal on tmpfs, through the front end"."""
    journal, _, how = place.partition(",")
    return (
        f"journal on {journal}"
        + {
            "": "",
            "frontend": ", through the front end",
            "pinned": ", riskd on one CPU and the clients on the other",
        }[how]
    )


def _print(place: str, r: dict[str, Any]) -> None:
    print(
        f"mark -> liquidation event, {_where(place)}, at {r['rate_sent']:,.0f} msgs/s (half"
        f" of {r['capacity_msgs_per_s']:,.0f}): p50 {r['p50_ms']:.2f} ms, p99"
        f" {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms over {r['probes']} probes"
    )
    sp = r.get("split", {})
    print(
        "  of which, from riskd's histograms (bucket bounds): wait to be sequenced"
        f" p50 <= {sp.get('queue_p50_ms_le')} ms, p99 <= {sp.get('queue_p99_ms_le')} ms;"
        f" journal group commit (write + fsync) p50 <= {sp.get('commit_p50_ms_le')} ms,"
        f" p99 <= {sp.get('commit_p99_ms_le')} ms; read -> durable"
        f" p50 <= {sp.get('durable_p50_ms_le')} ms, p99 <= {sp.get('durable_p99_ms_le')} ms"
    )
    print(
        "  seen by the clients, per probe: due -> its mark acknowledged (durable)"
        f" p50 {_ms(r.get('due_to_ack_p50_ms'))}, p99 {_ms(r.get('due_to_ack_p99_ms'))};"
        f" acknowledged -> its event p50 {_ms(r.get('ack_to_event_p50_ms'))},"
        f" p99 {_ms(r.get('ack_to_event_p99_ms'))}"
    )
    print(
        "  the sender (its own process) left p50 {} / p99 {} behind its schedule".format(
            _ms(r.get("send_late_p50_ms")), _ms(r.get("send_late_p99_ms"))
        )
    )
    if r.get("riskd"):
        print(f"  riskd: {gate.describe_split(r['riskd'])}")
    if r.get("machine"):
        print(f"  meanwhile: {sched.describe(r['machine'])}")
    for who in ("riskd", "frontend"):
        cap = r.get("machine_at_capacity", {}).get(who)
        half = r.get("machine", {}).get(who)
        if cap and half:
            print(
                f"  {who}'s CPU per message:"
                f" {cap['cpu_ms_per_s'] / r['capacity_msgs_per_s'] * 1000:.0f} µs at capacity"
                f" ({cap['cpu_ms_per_s']:.0f} ms/s),"
                f" {half['cpu_ms_per_s'] / r['rate_sent'] * 1000:.0f}"
                f" µs at half of it ({half['cpu_ms_per_s']:.0f} ms/s)"
            )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--probes", type=int, default=260)
    p.add_argument(
        "--tmpfs",
        metavar="DIR",
        type=Path,
        nargs="?",
        const=Path("/dev/shm"),
        help="riskd's data directory (journal) in DIR, a RAM file system (default /dev/shm)",
    )
    p.add_argument(
        "--frontend",
        action="store_true",
        help="riskd with its ingest front-end process (--frontend-listen), the marks sent there",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="riskd (every thread, its front end too) on the first CPU, the clients on the others",
    )
    p.add_argument("worker", nargs="?", choices=["sender"], help="(internal) the load generator")
    a = p.parse_args(argv)
    if a.worker == "sender":  # its job on stdin, its result on stdout
        job = json.loads(sys.stdin.read())
        probes = [(int(x), int(y)) for x, y in job["probes"]]
        r = asyncio.run(
            _sender(job["target"], job["rate"], job["seconds"], probes, job["probe_every"])
        )
        print(json.dumps(r), flush=True)
        return
    r = measure(a.seconds, a.probes, a.tmpfs, a.frontend, a.pin)
    with contextlib.redirect_stdout(sys.stderr):  # the summary for a person; JSON last
        how = ",frontend" if a.frontend else ",pinned" if a.pin else ""
        _print(("tmpfs" if a.tmpfs else "disk") + how, r)
    print(json.dumps(r))
    harness.exit_on_problems("benchmarks.latency", r["problems"])


if __name__ == "__main__":
    main()
