"""riskd replay: the pro_rata_risk ADL policy side by side, and stress coverage per minute."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from riskd.core.stress import DEFAULT_MOVES_PPM, move_label
from riskd.replay import driver, prices, report
from riskd.v1 import query_pb2, query_pb2_grpc

# The generated crash with an empty fund: ADL runs (tests/replay/test_replay_e2e.py).
BARS, ACCOUNTS, SEED = 110, 80, 3
# The population docs/engine.md's numbers come from: all open early, stay to the end.
OLD_MIX = "2:15,5:25,10:25,20:20,50:10,100:5"


def test_compare_adl_policies_shows_accounts_hit_and_whole_closures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "replay", "--generated", "--bars", str(BARS),
         "--accounts", str(ACCOUNTS), "--seed", str(SEED), "--fund", "0", "--quiet",
         "--population", "static", "--leverage-mix", OLD_MIX,
         "--compare", "adl-policy=pnl_leverage,pro_rata_risk", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    table = (out / "compare.md").read_text()
    assert "adl=pnl_leverage" in table and "adl=pro_rata_risk" in table
    assert "ADL notional" in table and "accounts hit by ADL" in table
    runs = {x["report"]["settings"]["adl_policy"]: x["report"] for x in
            json.loads((out / "compare.json").read_text())}  # fmt: skip
    queue, pro = runs["pnl_leverage"], runs["pro_rata_risk"]
    for r in (queue, pro):
        assert r["conservation"]["ok"] and r["crosscheck"]["ok"], r["crosscheck"]
        assert r["adl"]["executions"] > 0
    # Same path, same population: the same bankrupt quantity is deleveraged, but
    # shared out instead of queued — more accounts give a little, fewer lose it all.
    assert pro["positions"]["deleveraged"] > queue["positions"]["deleveraged"]
    assert pro["positions"]["closed_by_adl"] < queue["positions"]["closed_by_adl"]
    assert pro["adl"]["notices"] > queue["adl"]["notices"]


def test_per_minute_stress_column_is_what_the_daemon_answers() -> None:
    s = driver.Settings(accounts=ACCOUNTS, fund=Decimal(1_000), seed=SEED)
    bars = prices.generated_crash()[:BARS]
    with driver.spawn(s) as daemon:
        raw = asyncio.run(driver.replay(s, bars, daemon, progress=False))
        ch = grpc.insecure_channel(daemon.target)
        now = query_pb2_grpc.QueryServiceStub(ch).GetStressCoverage(
            query_pb2.GetStressCoverageRequest(asset="USDT")
        )
        ch.close()
    raw.source = {"name": "test", "generated": True}
    r = report.build(raw)
    # One sample per bar after the first, and one at the end.
    assert r["stress"]["samples"] == len(raw.stress) == BARS
    labels = [move_label(m) for m in DEFAULT_MOVES_PPM]
    assert r["stress"]["moves"] == sorted(labels, key=lambda x: float(x[:-1]))
    # The last sample is the daemon's answer after the path.
    last = raw.stress[-1]["rows"]
    assert last == [
        [x.move_ppm, x.positions, x.shortfall, x.payable, x.coverage_ppm]
        for x in now.rows
        if x.market == "BTC-USDT"
    ]
    minutes = r["liquidations"]["per_minute"]
    sampled = [x for x in minutes if x["stress"] is not None]
    assert len(sampled) >= BARS - 1  # bars are one minute apart; the end shares a minute
    for x in sampled:
        assert set(x["stress"]) == set(labels)
        for v in x["stress"].values():
            assert 0 <= v["payable"] <= v["shortfall"] or v["shortfall"] == 0
            if v["shortfall"]:
                assert v["coverage_ppm"] == v["payable"] * 10**6 // v["shortfall"]
    assert any(v["shortfall"] > 0 for x in sampled for v in x["stress"].values())
    assert sum(x["count"] for x in minutes) == r["liquidations"]["count"]
    worst: dict[str, Any] = r["stress"]["max_shortfall"]
    assert worst["-30%"] == max(x["stress"]["-30%"]["shortfall"] for x in sampled)
    text = report.markdown(r)
    assert "## Per minute" in text and "covered -10%" in text
