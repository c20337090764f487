"""Cross margin's cost in the pure core (issue 15), as ratios measured in one run.

Five linear USDT markets.  The *isolated* book: ``n`` open positions, every
fill between two fresh isolated accounts.  The *cross* book: ``n`` open
positions, half of them cross: each fill pairs a cross account (holding 1..5
markets, wallet 20 % of its notional) with a fresh isolated one.  Entries
45 000..55 000, isolated leverage capped so no liquidation price (nor band
edge) lies within 48 000..52 000: the timed marks (50 000 / 50 010 on the
first market) cross nobody.  Figures (``make bench``):

* quiet mark tick, cross book / isolated book, same ``n`` (target <= 2);
* quiet tick t(n_max) / t(n_min) on the cross book (target <= 2);
* a fill of a cross account that moves no band / the same fill of an
  isolated account (target <= 1.5);
* traced bytes per open position of the cross book (target <= 300 at 10**6).

Each size runs in a fresh interpreter
(``python -m benchmarks.cross worker --n N --book cross|isolated``).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.core import _long_margin, _percentile, _short_margin, _time_calls, make_spec
from benchmarks.figures import add as _fig
from riskd.core import Engine
from riskd.core.events import Deposit, Fill, MarginTransfer, MarkPrice, SetMarginMode
from riskd.core.invariants import violations

__all__ = ["run", "main"]

ROOT = Path(__file__).resolve().parent.parent
ASSET = "USDT"
MARKETS = [f"M{i}-USDT" for i in range(5)]
MARK_A, MARK_B = 5_000_000, 5_001_000
_K = 10  # quantums per (quantity unit x price unit)
FULL_SIZES = [1_000, 1_000_000]
QUICK_SIZES = [1_000, 20_000]


def make_engine() -> Engine:
    base = make_spec()
    from dataclasses import replace

    return Engine([replace(base, symbol=s) for s in MARKETS])


def _isolated(engine: Engine, account: int, market: str, margin: int) -> None:
    engine.apply(Deposit(account, ASSET, margin))
    engine.apply(MarginTransfer(account, market, margin))


def populate(engine: Engine, n: int, cross: bool, seed: int = 1) -> int:
    """``n`` open positions; with ``cross``, half of them of cross accounts. Returns
    the number of cross accounts."""
    rng = random.Random(seed)
    for m in MARKETS:
        engine.apply(MarkPrice(m, MARK_A, 1))
    apply = engine.apply
    trade = 0
    account = 0
    # Accounts 1, 2 (isolated) and 3, 4 (cross): 1 BTC at 1x in the first market,
    # traded back and forth by the fill timing.
    for a, b, c in ((1, 2, False), (3, 4, True)):
        if c and not cross:
            continue
        for x in (a, b):
            if c:
                apply(SetMarginMode(MARKETS[0], x, True))
                apply(Deposit(x, ASSET, 2 * 1000 * MARK_A * _K))
            else:
                _isolated(engine, x, MARKETS[0], 2 * 1000 * MARK_A * _K)
        trade += 1
        apply(Fill(MARKETS[0], trade, a, b, MARK_A, 1000))
    account = 10
    crossers = 0
    opened = 2 * trade
    while opened < n:
        if not cross:
            q, price = int(10 ** rng.uniform(0, 3)), rng.randrange(4_500_000, 5_500_001, 10)
            m = MARKETS[trade % len(MARKETS)]
            long, short = account + 1, account + 2
            account += 2
            _isolated(engine, long, m, _long_margin(rng, q, price))
            _isolated(engine, short, m, _short_margin(rng, q, price))
            trade += 1
            apply(Fill(m, trade, long, short, price, q))
            opened += 2
            continue
        crossers += 1
        trader = account + 1
        account += 1
        k = min(rng.randint(1, 5), (n - opened) // 2 or 1)
        legs = [
            (m, int(10 ** rng.uniform(0, 3)), rng.randrange(4_500_000, 5_500_001, 10))
            for m in rng.sample(MARKETS, k)
        ]
        apply(Deposit(trader, ASSET, sum(q * p * _K for _, q, p in legs) // 5 + 1))
        for m, q, price in legs:
            apply(SetMarginMode(m, trader, True))
            other = account + 1
            account += 1
            is_long = rng.random() < 0.5
            margin = (_short_margin if is_long else _long_margin)(rng, q, price)
            _isolated(engine, other, m, margin)
            trade += 1
            buyer, seller = (trader, other) if is_long else (other, trader)
            apply(Fill(m, trade, buyer, seller, price, q))
            opened += 2
    return crossers


def _open(engine: Engine) -> int:
    return sum(1 for m in engine.markets.values() for p in m.positions.values() if p.size)


def worker(n: int, book: str, reps: int, budget_s: float, memory: bool) -> dict[str, Any]:
    cross = book == "cross"
    if memory:
        tracemalloc.start()
    engine = make_engine()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0] if memory else 0
    t0 = time.perf_counter()
    crossers = populate(engine, n, cross)
    populate_s = time.perf_counter() - t0
    gc.collect()
    out: dict[str, Any] = {"n": n, "book": book, "populate_s": populate_s, "crossers": crossers}
    opened = _open(engine)
    out["open_positions"] = opened
    if memory:
        out["traced_bytes_per_position"] = (tracemalloc.get_traced_memory()[0] - before) / opened
        tracemalloc.stop()
        return out
    broken = violations(engine) if n <= 20_000 else []
    if broken:
        raise AssertionError(broken[:3])
    first = MARKETS[0]
    marks = (MarkPrice(first, MARK_A, 10), MarkPrice(first, MARK_B, 11))
    for ev in marks:
        engine.apply(ev)
    for ev in marks:
        if engine.apply(ev):
            raise AssertionError("a repeated quiet mark published effects")
    a, b = (3, 4) if cross else (1, 2)
    fills = [
        Fill(first, 10**9 + i, a + i % 2, b - i % 2, MARK_A, 1, ts=12 + i % 2)
        for i in range(reps + min(reps // 10, 1000))
    ]
    tick = _time_calls(engine.apply, marks, reps, budget_s)
    fill = _time_calls(engine.apply, fills, reps, budget_s)
    if engine.markets[first].liquidations:
        raise AssertionError("timed ticks or fills liquidated")
    out["tick_median_ns"] = _percentile(tick, 0.5)
    out["fill_median_ns"] = _percentile(fill, 0.5)
    return out


def _command(args: Sequence[str]) -> str:
    return "python -m benchmarks.cross " + " ".join(args)


def _spawn(args: list[str], errors: list[str]) -> dict[str, Any] | None:
    cmd = [sys.executable, "-m", "benchmarks.cross", *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if p.returncode:
        errors.append(f"{_command(args)}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
        return None
    r: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    r["command"] = _command(args)
    return r


def run(quick: bool = False) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    reps, budget = ("5000", "0.5") if quick else ("50000", "1.0")
    started = time.perf_counter()
    figures: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    got: dict[tuple[str, int], dict[str, Any]] = {}
    for n in sizes:
        for book in ("isolated", "cross"):
            args = ["worker", "--n", str(n), "--book", book, "--reps", reps, "--budget", budget]
            r = _spawn(args, errors)
            if r is not None:
                got[(book, n)] = r
    top, low = sizes[-1], sizes[0]
    iso, cro = got.get(("isolated", top)), got.get(("cross", top))
    if iso and cro:
        ratio = cro["tick_median_ns"] / iso["tick_median_ns"]
        _fig(
            figures,
            f"cross_quiet_tick_ratio[n={top}]",
            round(ratio, 2),
            "x",
            f"{iso['command']} ; {cro['command']}",
            target="<= 2",
            ok=ratio <= 2,
            note=f"quiet mark tick, half cross / all isolated ({cro['tick_median_ns']} ns"
            f" / {iso['tick_median_ns']} ns)",
        )
        ratio = cro["fill_median_ns"] / iso["fill_median_ns"]
        _fig(
            figures,
            f"cross_fill_ratio[n={top}]",
            round(ratio, 2),
            "x",
            f"{iso['command']} ; {cro['command']}",
            target="<= 1.5",
            ok=ratio <= 1.5,
            note=f"a fill moving no band, cross / isolated ({cro['fill_median_ns']} ns"
            f" / {iso['fill_median_ns']} ns)",
        )
    small = got.get(("cross", low))
    if small and cro:
        ratio = cro["tick_median_ns"] / small["tick_median_ns"]
        _fig(
            figures,
            f"cross_quiet_tick_scaling[{top}/{low}]",
            round(ratio, 2),
            "x",
            f"{small['command']} ; {cro['command']}",
            target="<= 2",
            ok=ratio <= 2,
            note="quiet mark tick on the half-cross book, t(n_max) / t(n_min)",
        )
    args = ["worker", "--n", str(top), "--book", "cross", "--memory"]
    mem = _spawn(args, errors)
    if mem is not None:
        per = mem["traced_bytes_per_position"]
        at_scale = top >= 10**6
        _fig(
            figures,
            f"cross_bytes_per_position[n={top}]",
            round(per, 1),
            "B",
            mem["command"],
            target="<= 300" if at_scale else None,
            ok=per <= 300 if at_scale else None,
            note="tracemalloc delta over populate / open positions, half of them cross",
        )
    runtime = time.perf_counter() - started
    for name, f in figures.items():
        print(f"{name}: {f['value']} {f['unit']}  ({f.get('note', '')})")
    for e in errors:
        print(f"ERROR: {e}")
    return {"figures": figures, "errors": errors, "runtime_s": round(runtime, 1), "quick": quick}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cross")
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--n", type=int, required=True)
    w.add_argument("--book", choices=("cross", "isolated"), required=True)
    w.add_argument("--reps", type=int, default=5000)
    w.add_argument("--budget", type=float, default=0.5)
    w.add_argument("--memory", action="store_true")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "worker":
        print(json.dumps(worker(a.n, a.book, a.reps, a.budget, a.memory)))
    else:
        run(quick=a.quick)


if __name__ == "__main__":
    main()
