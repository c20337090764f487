"""``riskd replay`` speed: a one-day 1-minute path with 5,000 traders (issue 19).

Target: <= 60 s on 2 cores, the replay (building inputs, reading back, the
report) lighter than the daemon.  The path is the built-in generated one,
stretched to 1,440 one-minute bars (a crash, a rebound, then a slow drift), so
the run needs no data files; the population is the default living one (traders
arrive and leave all day, funding every 8 h).

Measured separately: ``replay_s`` (the replay's own Python: building and
sending updates), ``daemon_s`` (time waiting for riskd: flushes, the per-bar
queries), ``readback_s`` (CheckState, events, accounts, metrics), ``report_s``
(building report.json and minutes.csv) and ``plot_s``; ``total_s`` is the run
from spawning the daemon to the written files.  ``updates_per_s`` is the inputs
the daemon applied per second of the run.

    python -m benchmarks.replay [--bars 1440] [--accounts 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks import harness
from riskd.replay import driver, prices, report


def measure(bars: int, accounts: int) -> dict[str, Any]:
    path = prices.generated_crash(minutes=bars)
    settings = driver.Settings(accounts=accounts, fund=Decimal(100_000), seed=1)
    t0 = time.perf_counter()
    with driver.spawn(settings) as daemon:
        spawned = time.perf_counter()
        raw = asyncio.run(driver.replay(settings, path, daemon, progress=False))
    ran = time.perf_counter()
    raw.source = {"name": "generated (benchmark)", "generated": True}
    r = report.build(raw)
    built = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        report.write(r, raw.marks, Path(out))
    written = time.perf_counter()
    sent = sum(raw.sent.values())
    wall = raw.wall
    return {
        "bars": bars,
        "accounts": accounts,
        "updates": sent,
        "rejected": len(raw.rejections),
        "liquidations": r["liquidations"]["count"],
        "conservation_ok": r["conservation"]["ok"] and r["crosscheck"]["ok"],
        "spawn_s": round(spawned - t0, 2),
        "replay_s": wall.replay_seconds,
        "daemon_s": wall.daemon_seconds,
        "readback_s": round(wall.seconds - wall.replay_seconds - wall.daemon_seconds, 2),
        "report_s": round(built - ran, 2),
        "plot_s": round(written - built, 2),
        "total_s": round(written - t0, 2),
        "updates_per_s": round(sent / max(wall.seconds, 1e-9)),
        "problems": _problems(raw, r),
    }


def _problems(raw: driver.ReplayRun, r: dict[str, Any]) -> list[str]:
    """Liquidations are this workload's point; refused updates, money that does not
    add up or a failed CheckState are not."""
    bad = (
        [f"{len(raw.rejections)} updates rejected: {raw.rejections[:2]}"] if raw.rejections else []
    )
    if not r["conservation"]["ok"]:
        bad.append(f"conservation: {r['conservation']}")
    if not r["crosscheck"]["ok"]:
        bad.append("the report disagrees with the daemon's queries or metrics")
    if raw.state.violations:
        bad.append(f"CheckState: {list(raw.state.violations)[:3]}")
    return bad


def run(quick: bool = False) -> dict[str, Any]:
    bars, accounts = (120, 500) if quick else (1440, 5000)
    command = f"{sys.executable} -m benchmarks.replay --bars {bars} --accounts {accounts}"
    print(f"[replay] {bars} bars, {accounts:,} traders ...", file=sys.stderr, flush=True)
    m = measure(bars, accounts)
    print(
        f"replay of {bars} one-minute bars with {accounts:,} traders: {m['total_s']} s "
        f"(replay {m['replay_s']} s, daemon {m['daemon_s']} s, read-back {m['readback_s']} s, "
        f"report {m['report_s']} s, plots {m['plot_s']} s; {m['updates']:,} updates)"
    )
    return {
        "figures": {
            f"replay_total_s[bars={bars},accounts={accounts}]": {
                "value": m["total_s"], "unit": "s", "target": 60.0, "command": command,
            },
        },
        "details": m,
        "errors": [f"replay: {p}" for p in m["problems"]],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replay")
    p.add_argument("--bars", type=int, default=1440)
    p.add_argument("--accounts", type=int, default=5000)
    a = p.parse_args(argv)
    m = measure(a.bars, a.accounts)
    print(json.dumps(m))
    harness.exit_on_problems("benchmarks.replay", m["problems"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
