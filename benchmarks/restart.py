"""Restart time to SERVING with many open positions, and the snapshot pause.

Builds ``n`` open positions with the pure engine (the same population as the
core benchmark), writes them as riskd's snapshot into a fresh data directory
(with the fund ledgers in ``ledger.sqlite3``, as the daemon keeps them), then
times ``riskd serve`` from process start to its ``riskd_serving`` line
(actors up, snapshot loaded, ledger file checked, journal verified and
replayed, gRPC listening, health SERVING).  Target (issue): <= 10 s with
10**6 positions (<= 5 s since issue 12).

Then the snapshot pause: one fund injection moves the journal, the daemon's
next periodic snapshot settles the actors (the pause, from its
``snapshot_written`` line) and a writer process rebuilds and writes the state
(no fork of the daemon).  Meanwhile a client sends fund injections (each one
sequenced and journaled: an fsync) every 20 ms and times them: if the engine
stalled while the writer ran, their round trips would show it.  Compared with
pickling the same state in place (what the engine would pause for without
the writer process).  Target (issue 12): pause <= 50 ms at 10**6 positions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from benchmarks import core, gate, harness
from riskd.config import default_toml
from riskd.storage import ledger, snapshot
from riskd.v1 import admin_pb2, admin_pb2_grpc

__all__ = ["run"]


def measure(n: int) -> dict[str, Any]:
    engine = core.make_engine()
    t0 = time.perf_counter()
    core.populate_book(engine, n)
    built = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="riskd-restart-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        ledger.export(data, engine.funds)
        state = {
            "markets": dict(engine.markets),
            "wallets": dict(engine.wallets),
            "funds": dict(engine.funds),
            "gateways": {},
            "withdrawals": OrderedDict(),
        }
        t0 = time.perf_counter()
        payload = snapshot.dumps(state)
        pickled = time.perf_counter() - t0
        snapshot.write(data, 0, payload)
        written = time.perf_counter() - t0
        del state, engine
        config = Path(tmp) / "riskd.toml"
        config.write_text(default_toml().replace("snapshot_seconds = 300", "snapshot_seconds = 1"))
        log = Path(tmp) / "riskd.log"
        t0 = time.perf_counter()
        daemon = harness.start(
            harness.riskd_command(data, "--config", str(config)), log, timeout=300
        )
        try:
            serving = time.perf_counter() - t0
            channel = grpc.insecure_channel(daemon.target)
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            inject = admin_pb2.InjectFundRequest(asset="USDT", amount=1, cause="bench")
            admin.InjectFund(inject)  # the journal moves: the next snapshot is written
            rtts: list[float] = []
            snap: dict[str, Any] | None = None
            while snap is None:
                if daemon.proc.poll() is not None or time.perf_counter() - t0 > 900:
                    raise RuntimeError(log.read_text())
                s0 = time.perf_counter()
                admin.InjectFund(inject)
                rtts.append(time.perf_counter() - s0)
                time.sleep(0.02)
                records = harness.log_records(log.read_text())
                done = [x for x in records if x.get("event") == "snapshot_written"]
                snap = done[0] if done else None
            channel.close()
            # The daemon's collections over its life so far (riskd_gc_pause_seconds):
            # with the restored state frozen, none walks the 10^6 positions.
            assert daemon.metrics_port is not None
            collections = gate.riskd_split(harness.scrape(daemon.metrics_port))
            fork_lines = log.read_text().count("fork()")
            problems = _problems(daemon)
        finally:
            daemon.stop(120)
    rtts.sort()
    return {
        "positions": n,
        "populate_s": round(built, 2),
        "snapshot_bytes": len(payload),
        "snapshot_write_s": round(written, 2),
        "snapshot_pickle_s": round(pickled, 3),
        "snapshot_pause_s": round(snap["paused_ms"] / 1000, 4),
        "snapshot_writer_s": snap["seconds"],
        "inject_rtt_p50_ms": round(statistics.median(rtts) * 1000, 2),
        "inject_rtt_max_ms": round(rtts[-1] * 1000, 2),
        "inject_probes": len(rtts),
        "fork_warnings": fork_lines,
        "restart_to_serving_s": round(serving, 2),
        "collections": collections,
        "problems": problems,
    }


def collector(n: int) -> dict[str, Any]:
    """What the cyclic collector costs around a snapshot of ``n`` positions, in this
    process (``python -m benchmarks.restart --collector``): unpickling it with the
    collector on and off (its collections meanwhile), then one full collection
    with the state alive, before and after ``gc.freeze()`` (riskd/heap.py)."""
    import gc
    import pickle

    engine = core.make_engine()
    core.populate_book(engine, n)
    state = {"markets": dict(engine.markets), "wallets": dict(engine.wallets),
             "funds": dict(engine.funds), "gateways": {}, "withdrawals": OrderedDict()}  # fmt: skip
    payload = snapshot.dumps(state)
    del state, engine
    gc.collect()
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    out: dict[str, Any] = {"positions": n}
    gc.callbacks.append(timed)
    try:
        for mode in ("on", "off"):
            pauses.clear()
            if mode == "off":
                gc.disable()
            t0 = time.perf_counter()
            loaded = pickle.loads(payload)
            took = time.perf_counter() - t0
            gc.enable()
            full = [p for g, p in pauses if g == 2]
            out[f"load_collector_{mode}_s"] = round(took, 3)
            out[f"load_collector_{mode}_collections"] = len(pauses)
            out[f"load_collector_{mode}_collecting_s"] = round(sum(p for _, p in pauses), 3)
            out[f"load_collector_{mode}_worst_full_ms"] = round(1000 * max(full, default=0), 1)
            t0 = time.perf_counter()
            gc.collect()
            out[f"full_collection_ms[{mode}]"] = round(1000 * (time.perf_counter() - t0), 1)
            gc.freeze()
            t0 = time.perf_counter()
            gc.collect()
            out[f"full_collection_frozen_ms[{mode}]"] = round(1000 * (time.perf_counter() - t0), 2)
            gc.unfreeze()
            del loaded
            gc.collect()
    finally:
        gc.callbacks.remove(timed)
    return out


def _problems(daemon: harness.Server) -> list[str]:
    """The restored positions are all healthy and the state checks out."""
    assert daemon.metrics_port is not None
    bad = harness.unexpected(harness.scrape(daemon.metrics_port))
    _, violations = harness.check_state(daemon.target, timeout=300)
    if violations:
        bad.append(f"CheckState: {violations[:3]}")
    bad += [f"riskd logged an error: {line[:200]}" for line in daemon.error_lines()[:2]]
    return bad


def run(quick: bool = False) -> dict[str, Any]:
    n = 10_000 if quick else 1_000_000
    command = f"{sys.executable} -m benchmarks.restart --n {n}"
    print(f"[restart] {n:,} positions ...", file=sys.stderr, flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.restart", "--n", str(n)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if not out.stdout.strip():  # it died before a result: say why
        raise RuntimeError(f"benchmarks.restart failed:\n{out.stderr[-4000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"restart to SERVING with {n:,} positions: {r['restart_to_serving_s']} s"
        f" (snapshot {r['snapshot_bytes'] / 1e6:.1f} MB, written in {r['snapshot_write_s']} s)"
    )
    print(
        f"snapshot with {n:,} positions: the engine pauses {r['snapshot_pause_s'] * 1000:.1f} ms"
        f" (target <= 50 ms; the writer process rebuilt and wrote it in"
        f" {r['snapshot_writer_s']} s), against {r['snapshot_pickle_s'] * 1000:.0f} ms to pickle"
        f" in place: {r['snapshot_pickle_s'] / max(r['snapshot_pause_s'], 1e-9):.0f}x shorter;"
        f" fund injections meanwhile: p50 {r['inject_rtt_p50_ms']} ms,"
        f" max {r['inject_rtt_max_ms']} ms ({r['inject_probes']});"
        f" fork() warnings in the log: {r['fork_warnings']}"
    )
    print(f"the daemon's collections meanwhile: {gate.describe_split(r['collections'])}")
    target = 5.0
    return {
        "figures": {
            f"restart_to_serving_s[n={n}]": {
                "value": r["restart_to_serving_s"],
                "unit": "s",
                "command": command,
                "target": f"<= {target:g}",
                "meets_target": r["restart_to_serving_s"] <= target,
            },
            f"snapshot_bytes[n={n}]": {
                "value": r["snapshot_bytes"],
                "unit": "B",
                "command": command,
            },
            f"snapshot_write_s[n={n}]": {
                "value": r["snapshot_write_s"],
                "unit": "s",
                "command": command,
            },
            f"snapshot_pause_s[n={n}]": {
                "value": r["snapshot_pause_s"],
                "unit": "s",
                "command": command,
                "target": "<= 0.05",
                "meets_target": r["snapshot_pause_s"] <= 0.05,
                "note": f"actors settling; pickling in place took {r['snapshot_pickle_s']} s",
            },
            f"snapshot_inject_rtt_max_ms[n={n}]": {
                "value": r["inject_rtt_max_ms"],
                "unit": "ms",
                "command": command,
                "note": "fund injections (journaled) while the writer process ran",
            },
        },
        "details": r,
        "errors": [f"restart: {p}" for p in r.get("problems", [])],
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.restart")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument(
        "--collector",
        action="store_true",
        help="only the collector's cost around a snapshot of n positions, in process",
    )
    a = p.parse_args(argv)
    if a.collector:
        print(json.dumps(collector(a.n)))
        return
    r = measure(a.n)
    print(json.dumps(r))
    harness.exit_on_problems("benchmarks.restart", r["problems"])


if __name__ == "__main__":
    main()
