"""Write a golden data directory: a real ``riskd serve`` run, kept for upgrade tests.

Run from the source tree whose format is wanted (``PYTHONPATH`` picks it):

    PYTHONPATH=SRC:SRC/clients/python python tests/storage/golden/make_golden.py OUT

It starts riskd with ``riskd.toml`` (beside this script) on ``OUT/data``, streams a
liquidation and an ADL, changes a market, injects into a fund and withdraws, stops
cleanly (a snapshot covering all of it), starts again, sends a few more updates
and kills the daemon with SIGKILL (so the journal holds a tail after the snapshot),
then writes ``OUT/expected.json``: the digest ``CheckState`` reported last.
Every record kind the writing version has appears at least once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc

from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    types_pb2,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)
from riskd_client.gateway import Gateway

HERE = Path(__file__).parent
USDT = 1_000_000
M = "BTC-USDT"
# Fixed stamps: the journal records them, and the golden files never change.
T = 1_790_000_000_000


def start(out: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = out / "riskd.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "riskd.cli", "serve", "--config", str(HERE / "riskd.toml"),
         "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
         "--data-dir", str(out / "data")],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    for _ in range(600):
        for line in log.read_text().splitlines():
            if '"riskd_serving"' in line and line not in seen:
                seen.add(line)
                return proc, f"127.0.0.1:{json.loads(line)['grpc_port']}"
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.05)
    raise SystemExit("riskd did not start")


seen: set[str] = set()


async def stream(
    target: str, gateway: str, epoch: int | None, steps: list[tuple[str, tuple]]
) -> None:
    # None: riskd assigns a fresh epoch (journaled) where it can; the client's default.
    kwargs = {} if epoch is None else {"epoch": epoch}
    async with Gateway(target, gateway, batch_size=3, **kwargs) as gw:
        for name, args in steps:
            getattr(gw, name)(*args[:-1], ts=args[-1])
        await gw.flush()


def first(target: str) -> None:
    t = T
    steps: list[tuple[str, tuple]] = [
        *(("deposit", (a, "USDT", 10_000 * USDT, t)) for a in (1, 2, 3, 4)),
        *(("margin_transfer", (a, M, amt * USDT, t)) for a, amt in
          ((1, 500), (2, 5_000), (3, 600), (4, 5_000))),
        ("mark_price", (M, 5_000_000, t)),
    ]  # fmt: skip
    asyncio.run(stream(target, "gw-golden", 1, steps))
    ch = grpc.insecure_channel(target)
    admin = admin_pb2_grpc.AdminServiceStub(ch)
    admin.UpdateMarket(
        admin_pb2.UpdateMarketRequest(market=types_pb2.Market(symbol=M, fund_fee_share_ppm=250_000))
    )
    admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=20 * USDT, cause="seed"))
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(ch)
    w.Withdraw(
        withdrawal_pb2.WithdrawRequest(account=4, asset="USDT", amount=USDT, withdrawal_id=7)
    )
    # The lifecycle and the mark guard (journal format 3): an operator holds and
    # clears BTC-USDT's guard, adds SOL-USDT, trades it, halts and settles it.
    admin.OverrideMarkGuard(admin_pb2.OverrideMarkGuardRequest(market=M, hold=True))
    admin.OverrideMarkGuard(admin_pb2.OverrideMarkGuardRequest(market=M, hold=False))
    sol = "SOL-USDT"
    admin.AddMarket(
        admin_pb2.AddMarketRequest(
            market=types_pb2.Market(
                symbol=sol,
                contract_type=types_pb2.CONTRACT_TYPE_LINEAR,
                settle_asset="USDT",
                price_decimals=2,
                quantity_decimals=2,
                tiers=[types_pb2.RiskTier(max_leverage=20, maintenance_margin_rate_ppm=25_000)],
                mark_max_divergence_ppm=20_000,
            )
        )
    )
    sol_steps: list[tuple[str, tuple]] = [
        ("margin_transfer", (1, sol, 100 * USDT, t)),
        ("margin_transfer", (2, sol, 100 * USDT, t)),
        ("mark_price", (sol, 15_000, t)),
        ("fill", (sol, 1, 2, 15_000, 500, t)),
    ]
    asyncio.run(stream(target, "gw-golden-sol", 1, sol_steps))
    admin.SetMarketStatus(
        admin_pb2.SetMarketStatusRequest(market=sol, status=types_pb2.MARKET_STATUS_HALTED)
    )
    admin.SettleMarket(admin_pb2.SettleMarketRequest(market=sol, price=16_000))
    # Journal format 4: an asset added at runtime, its fund seeded, a deposit in it.
    admin.AddAsset(admin_pb2.AddAssetRequest(symbol="USDC", decimals=6, fund_window_seconds=3600))
    admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDC", amount=5 * USDT, cause="seed"))
    asyncio.run(stream(target, "gw-golden-usdc", 1, [("deposit", (6, "USDC", 7 * USDT, t))]))
    fills = [
        ("fill", (M, 1, 2, 5_000_000, 100, t)),
        ("fill", (M, 3, 4, 5_000_000, 100, t)),
        ("mark_price", (M, 4_515_000, t + 1000)),
        ("mark_price", (M, 3_500_000, t + 2000)),
        ("deposit", (9, "USDT", USDT, 4_000_000_000_000)),  # refused at the door: a "!" row
    ]
    asyncio.run(stream(target, "gw-golden-fills", 1, fills))


def second(target: str) -> str:
    t = T + 60_000
    steps = [
        ("deposit", (5, "USDT", 1_000 * USDT, t)),
        ("margin_transfer", (5, M, 100 * USDT, t)),
        ("mark_price", (M, 3_600_000, t)),
    ]
    asyncio.run(stream(target, "gw-golden-2", None, steps))
    admin = admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(target))
    return str(admin.CheckState(admin_pb2.CheckStateRequest()).digest)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    proc, target = start(out)
    try:
        first(target)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    proc, target = start(out)
    try:
        digest = second(target)
    finally:
        proc.kill()  # no final snapshot: the journal's tail is replayed
        proc.wait(30)
    # What a clean close does: the WAL folded into the file, -wal and -shm gone.
    for path in sorted((out / "data").glob("*.sqlite3")):
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
        db.close()
    (out / "riskd.log").unlink()
    (out / "expected.json").write_text(json.dumps({"digest": digest}, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
