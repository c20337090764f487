"""Restart time to SERVING with many open positions (snapshot + empty journal tail).

Builds ``n`` open positions with the pure engine (the same population as the
core benchmark), writes them as riskd's snapshot into a fresh data directory,
then times ``riskd serve`` from process start to its ``riskd_serving`` line
(actors up, snapshot loaded, journal verified and replayed, gRPC listening,
health SERVING).  Also reports the snapshot's size, how long writing it
took, and how long taking one pauses the engine (a fork) against pickling in
place.  Target (issue): <= 10 s with 10**6 positions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import core
from riskd.storage import snapshot

__all__ = ["run"]


def measure(n: int) -> dict[str, Any]:
    engine = core.make_engine()
    t0 = time.perf_counter()
    core.populate_book(engine, n)
    built = time.perf_counter() - t0
    state = {
        "markets": dict(engine.markets),
        "wallets": dict(engine.wallets),
        "funds": dict(engine.funds),
        "gateways": {},
        "withdrawals": OrderedDict(),
    }
    with tempfile.TemporaryDirectory(prefix="riskd-restart-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        payload = snapshot.dumps(state)
        pickled = time.perf_counter() - t0
        snapshot.write(data, 0, payload)
        written = time.perf_counter() - t0
        # How riskd takes it: fork, and the child pickles and writes.  The
        # engine pauses for the fork only (it used to pause for the pickling).
        t0 = time.perf_counter()
        pid = snapshot.write_in_child(data, 0, state)
        forked = time.perf_counter() - t0
        if not snapshot.wait_child(pid):
            raise RuntimeError("the snapshot child failed")
        in_child = time.perf_counter() - t0
        log = Path(tmp) / "riskd.log"
        with log.open("wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "riskd.cli", "serve", "--grpc-listen", "127.0.0.1:0",
                 "--metrics-listen", "127.0.0.1:0", "--data-dir", str(data)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                while b'"riskd_serving"' not in log.read_bytes():
                    if proc.poll() is not None or time.perf_counter() - t0 > 300:
                        raise RuntimeError(log.read_text())
                    time.sleep(0.02)
                serving = time.perf_counter() - t0
            finally:
                proc.terminate()
                proc.wait(60)
    return {
        "positions": n,
        "populate_s": round(built, 2),
        "snapshot_bytes": len(payload),
        "snapshot_write_s": round(written, 2),
        "snapshot_pickle_s": round(pickled, 3),
        "snapshot_pause_s": round(forked, 4),
        "snapshot_child_s": round(in_child, 2),
        "restart_to_serving_s": round(serving, 2),
    }


def run(quick: bool = False) -> dict[str, Any]:
    n = 10_000 if quick else 1_000_000
    command = f"{sys.executable} -m benchmarks.restart --n {n}"
    print(f"[restart] {n:,} positions ...", file=sys.stderr, flush=True)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.restart", "--n", str(n)],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"restart to SERVING with {n:,} positions: {r['restart_to_serving_s']} s"
        f" (snapshot {r['snapshot_bytes'] / 1e6:.1f} MB, written in {r['snapshot_write_s']} s)"
    )
    print(
        f"snapshot with {n:,} positions: the engine pauses {r['snapshot_pause_s'] * 1000:.1f} ms"
        f" (fork; the child pickles and writes in {r['snapshot_child_s']} s), against"
        f" {r['snapshot_pickle_s'] * 1000:.0f} ms to pickle in place:"
        f" {r['snapshot_pickle_s'] / max(r['snapshot_pause_s'], 1e-9):.0f}x shorter"
    )
    target = 10.0
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
                "note": f"fork only; pickling in place took {r['snapshot_pickle_s']} s",
            },
        },
        "details": r,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.restart")
    p.add_argument("--n", type=int, default=1_000_000)
    print(json.dumps(measure(p.parse_args(argv).n)))


if __name__ == "__main__":
    main()
