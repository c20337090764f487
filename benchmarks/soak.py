"""Soak: riskd's memory while its insurance fund books 10**6 ledger entries.

```sh
.venv/bin/python -m benchmarks.soak --settlements 1000000 [--ledger-memory N] [--quick] [--json OUT]
```

Starts ``riskd serve`` (default config, except BTC-USDT pays the fund half of
every trading fee, fills need no mark band, and a snapshot every 20 s), then
one gateway streams fills between two accounts whose positions move between
one and two lots (never flat): each fill books two fund ledger entries (the
fee share of each side), each one a settlement into the fund with its own
hash-chained entry.  Every tenth of the run it prints the daemon's RSS
(``/proc/PID/status`` VmRSS), the entries booked so far, and how many the
ledger file holds.  At the end it checks the ledger file holds every entry,
``CheckState`` is clean, and the daemon stops with status 0.

``--ledger-memory`` sets ``server.fund_ledger_memory`` (default 10,000): run
it once with 10**7 to see what keeping every entry in memory (as riskd did
before ledger.sqlite3) costs.  ``--quick``: 100,000 settlements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from riskd.config import default_toml
from riskd.storage import ledger
from riskd.v1 import admin_pb2, admin_pb2_grpc
from riskd_client.gateway import Gateway

__all__ = ["run", "soak"]

MARKET = "BTC-USDT"
PRICE = 5_000_000  # 50,000.00
USDT = 1_000_000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _config(tmp: Path, ledger_memory: int) -> Path:
    toml = default_toml()
    toml = toml.replace("snapshot_seconds = 300", "snapshot_seconds = 20")
    toml = toml.replace("fund_ledger_memory = 10000", f"fund_ledger_memory = {ledger_memory}")
    market = toml.index(f"[markets.{MARKET}]")
    head, tail = toml[:market], toml[market:]
    tail = tail.replace("fund_fee_share_ppm = 0", "fund_fee_share_ppm = 500000", 1)
    tail = tail.replace("fill_price_band_ppm = 50000", "fill_price_band_ppm = 0", 1)
    path = tmp / "riskd.toml"
    path.write_text(head + tail)
    return path


async def _stream(target: str, settlements: int, report: Any) -> None:
    fills = settlements // 2
    step = max(fills // 10, 1)
    async with Gateway(target, "soak", batch_size=256, window=32) as gw:
        for account in (1, 2):
            gw.deposit(account, "USDT", 1_000_000 * USDT)
            gw.margin_transfer(account, MARKET, 1_000_000 * USDT)
        gw.mark_price(MARKET, PRICE)
        gw.fill(MARKET, 1, 2, PRICE, 1, trade_id=1)  # one lot each: never flat after this
        for i in range(fills):
            # 1 buys a second lot from 2, then sells it back: sizes 1, 2, 1, 2, ...
            buyer, seller = (1, 2) if i % 2 == 0 else (2, 1)
            gw.fill(MARKET, buyer, seller, PRICE, 1, trade_id=i + 2, buyer_fee=2, seller_fee=2)
            if (i + 1) % 4096 == 0:
                await gw.flush(timeout=600)
            if (i + 1) % step == 0 or i + 1 == fills:
                await gw.flush(timeout=600)
                report(2 * (i + 1))
        await gw.flush(timeout=600)
        if gw.rejections:
            raise RuntimeError(f"riskd refused {len(gw.rejections)} updates: {gw.rejections[:3]}")


def soak(settlements: int, ledger_memory: int = ledger.DEFAULT_MEMORY) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="riskd-soak-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        config = _config(tmp, ledger_memory)
        log = tmp / "riskd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "riskd.cli", "serve", "--config", str(config),
                 "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--data-dir", str(data)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            port = 0
            deadline = time.monotonic() + 60
            while not port:
                for line in log.read_text().splitlines():
                    if '"riskd_serving"' in line:
                        port = json.loads(line)["grpc_port"]
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log.read_text())
                time.sleep(0.05)
            samples: list[dict[str, Any]] = []
            started = time.perf_counter()
            first = {"settlements": 0, "rss_mb": round(_rss_mb(proc.pid), 1), "seconds": 0.0}
            samples.append(first)
            print(f"[soak] {0:>9,} settlements  RSS {first['rss_mb']:7.1f} MB", flush=True)

            def report(done: int) -> None:
                s = {
                    "settlements": done,
                    "rss_mb": round(_rss_mb(proc.pid), 1),
                    "seconds": round(time.perf_counter() - started, 1),
                    "on_disk": ledger.count(data / ledger.FILE, "USDT"),
                }
                samples.append(s)
                print(
                    f"[soak] {done:>9,} settlements  RSS {s['rss_mb']:7.1f} MB"
                    f"  ({s['seconds']} s, {s['on_disk']:,} entries in {ledger.FILE})",
                    flush=True,
                )

            asyncio.run(_stream(f"127.0.0.1:{port}", settlements, report))
            elapsed = time.perf_counter() - started
            import grpc

            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                check = admin_pb2_grpc.AdminServiceStub(channel).CheckState(
                    admin_pb2.CheckStateRequest()
                )
        finally:
            if proc.poll() is None:
                proc.terminate()
            code = proc.wait(600)
        booked = ledger.count(data / ledger.FILE, "USDT")
        snapshots = sorted(data.glob("snapshot-*.bin"))
        snapshot_bytes = snapshots[-1].stat().st_size if snapshots else 0
        writes = log.read_text().count('"snapshot_written"')
    tenth = samples[max(1, len(samples) // 10)]["rss_mb"]
    last = samples[-1]["rss_mb"]
    return {
        "settlements": settlements,
        "ledger_memory": ledger_memory,
        "seconds": round(elapsed, 1),
        "settlements_per_s": round(settlements / elapsed),
        "rss_start_mb": samples[0]["rss_mb"],
        "rss_after_first_tenth_mb": tenth,
        "rss_end_mb": last,
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "growth_after_first_tenth_mb": round(last - tenth, 1),
        "entries_on_disk": booked,
        "snapshots_written": writes,
        "last_snapshot_bytes": snapshot_bytes,
        "violations": list(check.violations),
        "exit_code": code,
        "samples": samples,
    }


def run(quick: bool = False) -> dict[str, Any]:
    n = 100_000 if quick else 1_000_000
    r = soak(n)
    return {
        "figures": {f"soak_rss_growth_mb[n={n}]": r["growth_after_first_tenth_mb"]},
        "details": r,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    p.add_argument("--settlements", type=int, default=1_000_000)
    p.add_argument("--ledger-memory", type=int, default=ledger.DEFAULT_MEMORY)
    p.add_argument("--quick", action="store_true", help="100,000 settlements")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    n = 100_000 if args.quick else args.settlements
    r = soak(n, args.ledger_memory)
    print(
        f"soak: {n:,} settlements in {r['seconds']} s ({r['settlements_per_s']:,}/s),"
        f" fund_ledger_memory {r['ledger_memory']:,}: RSS {r['rss_start_mb']} MB at start,"
        f" {r['rss_after_first_tenth_mb']} MB after the first tenth, {r['rss_end_mb']} MB at"
        f" the end (max {r['rss_max_mb']}; growth after the first tenth"
        f" {r['growth_after_first_tenth_mb']} MB); {r['entries_on_disk']:,} entries in"
        f" {ledger.FILE}; {r['snapshots_written']} snapshots, the last"
        f" {r['last_snapshot_bytes'] / 1e6:.2f} MB; violations {len(r['violations'])};"
        f" exit {r['exit_code']}"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    ok = r["entries_on_disk"] == 2 * (n // 2) and not r["violations"] and r["exit_code"] == 0
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
