"""Latency from a mark update to its liquidation event, open loop, at half capacity.

A real daemon; one gateway streams single-update messages on a fixed schedule
(open loop: each message's latency is measured from the time it was *due*,
not when it was sent, so a stall counts against every message it delays — no
coordinated omission).  Most messages are background marks on BTC-USDT; every
``1/probe_share``-th is a probe: a mark on ETH-USDT that crosses exactly one
prepared long's liquidation price.  A subscriber on the event stream stamps
the probe's ``LiquidationSettled``.  The rate is half of the capacity measured
first, in the same run, with the same messages sent closed-loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks import harness
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


async def _setup(target: str, probes: list[tuple[int, int]]) -> None:
    async with Gateway(target, "lat-setup", batch_size=256) as gw:
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


async def _open_loop(
    target: str, rate: float, seconds: float, probes: list[tuple[int, int]], probe_every: int
) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(target)
    events = events_pb2_grpc.EventServiceStub(channel)
    due: dict[int, float] = {}
    latencies: list[float] = []
    # Per probe (its account): when its mark was acknowledged (durable), and
    # then when its event arrived, from when it was due: the split below.
    acked_at: dict[int, float] = {}
    to_ack: list[float] = []
    ack_to_event: list[float] = []
    probe_seqs: deque[tuple[int, int]] = deque()  # (sequence, account), in order
    done = asyncio.Event()
    wanted = 0

    async def listen() -> None:
        call = events.Subscribe(events_pb2.SubscribeRequest(markets=[ETH]))
        async for r in call:
            e = r.event
            if e.HasField("liquidation_settled") and e.liquidation_settled.account in due:
                account = e.liquidation_settled.account
                now = time.perf_counter()
                at = due.pop(account)
                latencies.append(now - at)
                acked = acked_at.pop(account, None)
                if acked is not None:  # else the event came first (not expected)
                    to_ack.append(acked - at)
                    ack_to_event.append(now - acked)
                if wanted and len(latencies) >= wanted:
                    done.set()

    async def watch_acks() -> None:
        while True:
            await gw._wait_change()
            now, acked = time.perf_counter(), gw.acked_sequence
            while probe_seqs and probe_seqs[0][0] <= acked:
                _seq, account = probe_seqs.popleft()
                if account in due:
                    acked_at[account] = now

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.2)  # subscribed before the first probe
    gw = Gateway(target, "lat-open", batch_size=1, window=10**9)
    await gw.start()
    await gw.wait_connected()
    watcher = asyncio.create_task(watch_acks())
    t0 = time.perf_counter()
    n, p = 0, 0
    while (now := time.perf_counter()) - t0 < seconds and p < len(probes):
        at = t0 + n / rate
        if at > now:
            await asyncio.sleep(at - now)
        if n % probe_every == probe_every - 1:
            account, mark = probes[p]
            due[account] = at  # from when it was due: no coordinated omission
            probe_seqs.append((gw.mark_price(ETH, mark), account))
            p += 1
        else:
            gw.mark_price(BTC, 5_000_000 + 10 * (n % 2))
        n += 1
    sent_rate = n / (time.perf_counter() - t0)
    wanted = p
    if len(latencies) >= wanted:
        done.set()
    await gw.flush(timeout=120)
    await asyncio.wait_for(done.wait(), 60)
    listener.cancel()
    watcher.cancel()
    await gw.close()
    await channel.close()
    return {
        "rate_target": rate,
        "rate_sent": sent_rate,
        "probes": len(latencies),
        "p50_ms": _quantile_ms(latencies, 0.5),
        "p99_ms": _quantile_ms(latencies, 0.99),
        "max_ms": 1000 * max(latencies),
        # Seen by the client: due -> its mark acknowledged (sequenced, applied,
        # journaled: durable), then -> its event (published once durable, the
        # subscriber's stream); p50/p99 of each on its own, so they need not add up.
        "due_to_ack_p50_ms": _quantile_ms(to_ack, 0.5),
        "due_to_ack_p99_ms": _quantile_ms(to_ack, 0.99),
        "ack_to_event_p50_ms": _quantile_ms(ack_to_event, 0.5),
        "ack_to_event_p99_ms": _quantile_ms(ack_to_event, 0.99),
    }


def _quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(seconds: float, probes_n: int) -> dict[str, Any]:
    probes = _probes(probes_n)
    with tempfile.TemporaryDirectory(prefix="riskd-latency-") as tmp:
        daemon = harness.start(harness.riskd_command(Path(tmp) / "data"), Path(tmp) / "riskd.log")
        try:

            async def go() -> dict[str, Any]:
                await _setup(daemon.target, probes)
                capacity = await _capacity(daemon.target, 3.0)
                probe_every = max(int(capacity / 2 / 20), 2)  # about 20 probes a second
                assert daemon.metrics_port is not None
                before = harness.scrape(daemon.metrics_port)
                r = await _open_loop(daemon.target, capacity / 2, seconds, probes, probe_every)
                during = harness.since(before, harness.scrape(daemon.metrics_port))
                return {
                    "capacity_msgs_per_s": capacity,
                    "probe_every": probe_every,
                    **r,
                    "split": _split(during),
                }

            r = asyncio.run(go())
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


def run(quick: bool = False) -> dict[str, Any]:
    seconds, probes = (3.0, 80) if quick else (10.0, 260)
    command = f"{sys.executable} -m benchmarks.latency --seconds {seconds:g} --probes {probes}"
    print("[latency] open loop at half capacity ...", file=sys.stderr, flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency", "--seconds", str(seconds),
         "--probes", str(probes)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if not out.stdout.strip():  # it died before a result: say why
        raise RuntimeError(f"benchmarks.latency failed:\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    errors = [f"latency: {p}" for p in r.get("problems", [])]
    print(
        f"mark -> liquidation event at {r['rate_sent']:,.0f} msgs/s (half of"
        f" {r['capacity_msgs_per_s']:,.0f}): p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms,"
        f" max {r['max_ms']:.2f} ms over {r['probes']} probes"
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
        "  seen by the client, per probe: due -> its mark acknowledged (durable)"
        f" p50 {_ms(r.get('due_to_ack_p50_ms'))}, p99 {_ms(r.get('due_to_ack_p99_ms'))};"
        f" acknowledged -> its event p50 {_ms(r.get('ack_to_event_p50_ms'))},"
        f" p99 {_ms(r.get('ack_to_event_p99_ms'))}"
    )
    figures = {
        "mark_to_liquidation_p50_ms": r["p50_ms"],
        "mark_to_liquidation_p99_ms": r["p99_ms"],
        "mark_to_liquidation_max_ms": r["max_ms"],
        "open_loop_rate_msgs_per_s": r["rate_sent"],
        "capacity_msgs_per_s": r["capacity_msgs_per_s"],
    }
    return {
        "figures": {
            k: {
                "value": round(v, 3),
                "unit": "ms" if k.endswith("_ms") else "msgs/s",
                "command": command,
            }
            for k, v in figures.items()
        },
        "details": r,
        "errors": errors,
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--probes", type=int, default=260)
    a = p.parse_args(argv)
    r = measure(a.seconds, a.probes)
    print(json.dumps(r))
    harness.exit_on_problems("benchmarks.latency", r["problems"])


if __name__ == "__main__":
    main()
