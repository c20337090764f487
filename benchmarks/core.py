"""Benchmarks of the pure core (:mod:`riskd.core`): the figures the issue asks for.

* the cost of a mark tick that liquidates nobody, with 10**3 .. 10**6 open
  positions in one market, and the ratio t(10**6)/t(10**3) (target <= 2):
  once with every liquidation price 2 % or more from the mark, once with 1 %
  of the positions inside the margin-call band (``MarketSpec.margin_call_ppm``),
  because the core re-derives that band on every tick; fills are timed the
  same way (every fill rescans too);
* the fill as ``benchmarks.ingest``'s workload pays it (its set-up and
  updates, in the daemon's default market: both sides checked against the
  mark and re-indexed), against the same ``<= 2 x`` decode target;
* bytes per open position at 10**6 (tracemalloc, target <= 300; RSS reported
  alongside);
* liquidations per second when one mark tick crosses 10**5 long positions,
  once with a seeded insurance fund (every claim answered by the fund) and once
  with an empty fund (every liquidation auto-deleveraged).

Every measurement runs in a fresh interpreter (``python -m benchmarks.core
WORKER ...``) so sizes do not pollute each other; :func:`run` drives them and
returns the figures, each with the command that reproduces it.  Positions are
built through :meth:`Engine.apply` (deposit, margin transfer, fill): the same
path the daemon takes, so the populate rate is a figure too.

Run ``python -m benchmarks.core --help`` for the worker commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import riskd
from benchmarks import harness
from benchmarks.figures import add as _fig
from riskd import heap
from riskd.core import Asset, ContractType, Engine, MarketSpec, Rejected, TierTable
from riskd.core.events import (
    AdlEvent,
    Deposit,
    Fill,
    FundFlow,
    FundInjection,
    LiquidationSettled,
    MarginTransfer,
    MarkPrice,
)
from riskd.core.invariants import violations

__all__ = ["run", "make_engine", "populate_book", "populate_cascade", "main"]

ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTC-USDT"
ASSET = "USDT"
PPM = 1_000_000

# Prices in units of 0.01 USDT.
MARK_A = 5_000_000  # 50 000.00: the two marks the tick benchmark alternates between
MARK_B = 5_001_000  # 50 010.00
# The book's liquidation prices stay below 48 000 (longs) and above 52 000
# (shorts): outside the default 2 % margin-call band around the marks
# (49 020..51 020), so a tick crosses nobody and calls nobody.
SAFE_LONG = 4_800_000
SAFE_SHORT = 5_200_000
MMR_MAX_PPM = 10_000  # the highest tier's MMR bounds the maintenance margin from above
# The "band" variant then moves a fraction of positions' LPs (by margin
# withdrawals) to 49 100..49 700 (longs) or 50 300..50 900 (shorts): near the
# marks, inside the margin-call band, still not crossed.
BAND_LONG = (4_910_000, 4_970_000)
BAND_SHORT = (5_030_000, 5_090_000)
BAND_FRACTION = 0.01
CASCADE_MARK = 3_800_000  # 38 000.00: below every cascade long's bankruptcy price


@dataclass(frozen=True)
class Sizes:
    tick_sizes: list[int]
    tick_reps: int  # per timing loop, unless it runs past tick_budget_s first
    tick_budget_s: float
    memory_n: int
    cascade_n: int
    # Smaller cascades first, for the scaling.  Every cascade runs under a
    # deadline and reports the rate so far if its tick has not returned by then.
    cascade_ladder: dict[str, list[int]]
    cascade_deadline_s: dict[str, float]


FULL = Sizes(
    tick_sizes=[1_000, 10_000, 100_000, 1_000_000],
    tick_reps=50_000,
    tick_budget_s=1.0,
    memory_n=1_000_000,
    cascade_n=100_000,
    cascade_ladder={"seeded": [1_000, 10_000], "empty": [1_000, 10_000]},
    cascade_deadline_s={"seeded": 30.0, "empty": 30.0},
)
QUICK = Sizes(
    tick_sizes=[1_000, 10_000],
    tick_reps=5_000,
    tick_budget_s=0.5,
    memory_n=10_000,
    cascade_n=1_000,
    cascade_ladder={"seeded": [300], "empty": [100, 300]},
    cascade_deadline_s={"seeded": 10.0, "empty": 10.0},
)
LONGS_PER_SHORT = 10


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[core +{time.perf_counter() - _T0:.0f}s] {msg}", file=sys.stderr, flush=True)


# --- the market and its positions -------------------------------------------


def make_spec() -> MarketSpec:
    """BTC-USDT linear perpetual: USDT 6 decimals, price 0.01 (tick 0.10), qty 0.001."""
    return MarketSpec(
        SYMBOL,
        ContractType.LINEAR,
        Asset(ASSET, 6),
        price_decimals=2,
        tick_size=10,
        quantity_decimals=3,
        step_size=1,
        tiers=TierTable(
            [(0, 125, 4000), (50_000 * 10**6, 100, 5000), (250_000 * 10**6, 50, 10_000)]
        ),
    )


def make_engine() -> Engine:
    return Engine([make_spec()])


_K = 10  # quantums per (quantity unit x price unit): 10**(6 - 2 - 3)


def _fund(engine: Engine, account: int, margin: int) -> None:
    engine.apply(Deposit(account, ASSET, margin))
    engine.apply(MarginTransfer(account, SYMBOL, margin))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _long_margin(rng: random.Random, q: int, price: int) -> int:
    """Margin at a random leverage (1..100x), raised so the LP stays below SAFE_LONG.

    At ``SAFE_LONG`` the balance is ``M + qk(S - E)`` and the maintenance margin
    is at most ``qkS x MMR_max``; the margin below keeps the first above the second.
    """
    notional = q * price * _K
    lev = rng.choice((1, 2, 3, 5, 10, 20, 25, 50, 75, 100))
    need = q * _K * (price - SAFE_LONG) + _ceil_div(q * _K * SAFE_LONG * MMR_MAX_PPM, PPM) + 1
    return max(_ceil_div(notional, lev), need, 1)


def _short_margin(rng: random.Random, q: int, price: int) -> int:
    notional = q * price * _K
    lev = rng.choice((1, 2, 3, 5, 10, 20, 25, 50, 75, 100))
    need = q * _K * (SAFE_SHORT - price) + _ceil_div(q * _K * SAFE_SHORT * MMR_MAX_PPM, PPM) + 1
    return max(_ceil_div(notional, lev), need, 1)


def populate_book(
    engine: Engine, n: int, seed: int = 1, progress: Callable[[int], None] | None = None
) -> None:
    """``n`` open positions (n/2 longs, n/2 shorts) through ``Engine.apply``.

    Each fill opens a long and a short for two fresh accounts, so open interest
    nets to zero.  Sizes are log-uniform over 0.001..10 BTC (all three tiers),
    entries uniform over 40 000..60 000, leverage 1..100x, capped so no
    liquidation price falls within 48 000..52 000: the tick benchmark's marks
    (50 000 and 50 010) cross nobody and are 2 % or more from every LP.
    """
    rng = random.Random(seed)
    apply = engine.apply
    step = max(n // 20, 1)
    for i in range(n // 2):
        buyer, seller = 2 * i + 1, 2 * i + 2
        if i == 0:  # accounts 1 and 2: 1 BTC at 1x, traded back and forth by the fill timing
            q, price = 1000, MARK_A
            long_margin = short_margin = 2 * q * price * _K
        else:
            q = int(10 ** rng.uniform(0, 4))
            price = rng.randrange(4_000_000, 6_000_001, 10)
            long_margin, short_margin = _long_margin(rng, q, price), _short_margin(rng, q, price)
        _fund(engine, buyer, long_margin)
        _fund(engine, seller, short_margin)
        apply(Fill(SYMBOL, i + 1, buyer, seller, price, q))
        if progress and (2 * i + 2) % step == 0:
            progress(2 * i + 2)


def populate_cascade(
    engine: Engine, n_longs: int, longs_per_short: int = LONGS_PER_SHORT, seed: int = 2
) -> int:
    """``n_longs`` leveraged longs against ``n_longs/longs_per_short`` low-leverage shorts.

    Longs: 0.001..2 BTC, entries 49 000..51 000, leverage 5..25x: liquidation
    prices at most ~49 200 (so a mark at 50 000 crosses nobody) and bankruptcy
    prices at least 39 200 (so a mark at 38 000 leaves every one of them short of
    margin).  Shorts: 1..3x, on the profitable side of the drop.  Returns the
    longs' total notional at entry.
    """
    rng = random.Random(seed)
    apply = engine.apply
    n_shorts = max(n_longs // longs_per_short, 1)
    total = 0
    trade = 0
    for j in range(n_shorts):
        short = 1_000_000_000 + j
        count = n_longs // n_shorts + (1 if j < n_longs % n_shorts else 0)
        fills = [
            (rng.randint(1, 2000), rng.randrange(4_900_000, 5_100_001, 10)) for _ in range(count)
        ]
        short_notional = sum(q * p * _K for q, p in fills)
        _fund(engine, short, _ceil_div(short_notional, rng.randint(1, 3)))
        for q, price in fills:
            trade += 1
            notional = q * price * _K
            total += notional
            _fund(engine, trade, _ceil_div(notional, rng.randint(5, 25)))
            apply(Fill(SYMBOL, trade, trade, short, price, q))
    return total


def _margin_for_lp(spec: MarketSpec, size: int, basis: int, lp: int) -> int:
    """The least margin that keeps a position solvent at ``lp`` (so its LP is just past it).

    Not liquidatable at P iff ``1e6 x (M + v(q, P) - c) > max_t (N x MMR_t - cum_t)``.
    """
    n = abs(size) * lp * _K
    mm_scaled = max(n * t.mmr_ppm - t.cum_scaled for t in spec.tiers.tiers)
    return mm_scaled // PPM - (size * lp * _K - basis) + 1


def move_into_band(engine: Engine, fraction: float, seed: int = 3) -> int:
    """Withdraw margin from ``fraction`` of the positions so their LPs sit near the marks.

    Uses ``MarginTransfer`` with a negative amount (the core checks what may be
    withdrawn); positions whose initial margin forbids it are skipped.  Returns
    how many moved.
    """
    rng = random.Random(seed)
    market = engine.markets[SYMBOL]
    accounts = sorted(a for a in market.positions if a > 2)
    want = int(len(market.positions) * fraction)
    moved = 0
    for account in rng.sample(accounts, min(len(accounts), 4 * want)):
        if moved == want:
            break
        pos = market.positions[account]
        lo, hi = BAND_LONG if pos.size > 0 else BAND_SHORT
        target = _margin_for_lp(market.spec, pos.size, pos.basis, rng.randrange(lo, hi, 10))
        if target >= pos.margin:
            continue
        try:
            engine.apply(MarginTransfer(account, SYMBOL, target - pos.margin))
        except Rejected:
            continue
        moved += 1
    return moved


def open_positions(engine: Engine) -> int:
    return sum(1 for p in engine.markets[SYMBOL].positions.values() if p.size)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _progress(label: str, n: int, t0: float) -> Callable[[int], None]:
    def report(done: int) -> None:
        dt = time.perf_counter() - t0
        log(f"{label}: {done:,}/{n:,} positions, {done / dt:,.0f}/s")

    return report


# --- workers (each in a fresh interpreter) -----------------------------------


def _percentile(sorted_xs: Sequence[int], p: float) -> int:
    return sorted_xs[min(int(p * len(sorted_xs)), len(sorted_xs) - 1)]


def _time_calls(
    fn: Callable[[Any], object], events: Sequence[Any], reps: int, budget_s: float
) -> list[int]:
    """Per-call ns of ``fn`` over ``events`` round robin, sorted; stops early after ``budget_s``.

    The timed calls carry on where the warm-up stopped, so ``events`` longer
    than the warm-up plus ``reps`` are each used once (fills need unique trade ids).
    """
    clock = time.perf_counter_ns
    k = len(events)
    stop = clock() + int(budget_s * 1e9 / 10)
    warm = 0
    for i in range(min(reps // 10, 1000)):  # warm up: 10 % of the budget at most
        fn(events[i % k])
        warm = i + 1
        if clock() > stop:
            break
    out: list[int] = []
    stop = clock() + int(budget_s * 1e9)
    for i in range(reps):
        ev = events[(warm + i) % k]
        s = clock()
        fn(ev)
        e = clock()
        out.append(e - s)
        if e > stop and i >= 200:
            break
    out.sort()
    return out


def _tick_figures(
    engine: Engine, reps: int, budget_s: float, first_trade_id: int
) -> dict[str, Any]:
    """Time mark ticks (alternating 50 000 / 50 010) and fills that move nobody's LP.

    Fills use trade ids from ``first_trade_id`` on, one each (riskd refuses a
    reused trade id), so a second round on the same engine needs fresh ones.
    """
    market = engine.markets[SYMBOL]
    marks = (MarkPrice(SYMBOL, MARK_A, 10), MarkPrice(SYMBOL, MARK_B, 11))
    first = engine.apply(marks[0]) + engine.apply(marks[1])
    calls = sum(1 for e in first if type(e).__name__ == "MarginCall")
    if len(first) != calls or market.liquidations:
        raise AssertionError(f"the benchmark's marks must cross nobody: {first[:3]}")
    for ev in marks:  # the steady state: calls are published once
        if engine.apply(ev):
            raise AssertionError("a repeated mark published effects")
    # Accounts 1 (long 1 BTC) and 2 (short 1 BTC), at 1x: +0.001 BTC, then back.
    fills = [
        Fill(SYMBOL, first_trade_id + i, 1 + i % 2, 2 - i % 2, MARK_A, 1, ts=12 + i % 2)
        for i in range(reps + min(reps // 10, 1000))  # warm-up and timed calls
    ]
    apply_ns = _time_calls(engine.apply, marks, reps, budget_s)
    market_ns = _time_calls(market.mark_price, marks, reps, budget_s)
    fill_ns = _time_calls(engine.apply, fills, reps, budget_s)
    if market.liquidations or market.take_effects():
        raise AssertionError("timed ticks or fills had effects")
    return {
        "margin_calls_published": calls,
        "tick_reps": len(apply_ns),
        "apply_median_ns": _percentile(apply_ns, 0.5),
        "apply_p99_ns": _percentile(apply_ns, 0.99),
        "market_median_ns": _percentile(market_ns, 0.5),
        "fill_reps": len(fill_ns),
        "fill_median_ns": _percentile(fill_ns, 0.5),
    }


def decode_ns_per_update(batch: int = 256, reps: int = 200) -> int:
    """What the bare server of ``benchmarks.ingest`` spends decoding one fill update.

    The message as gRPC hands it over (bytes), parsed by the generated
    protobuf class, then every field of every update read
    (``benchmarks.ingest._touch``); the median over ``reps`` messages of
    ``batch`` fills, per update.  The same process times the engine's fill, so
    the ratio between the two is taken in one run.
    """
    from benchmarks.ingest import _touch
    from riskd.v1 import ingest_pb2 as pb

    updates = [
        pb.Update(
            sequence=i + 1,
            timestamp_ms=1_700_000_000_000 + i,
            fill=pb.Fill(
                market=SYMBOL,
                trade_id=10**9 + i,
                buyer_account=1 + i % 1000,
                seller_account=1001 + i % 1000,
                price=MARK_A + i % 100,
                quantity=1 + i % 50,
                buyer_fee=i % 7,
                seller_fee=i % 5,
            ),
        )
        for i in range(batch)
    ]
    raw = pb.IngestRequest(epoch=1, updates=updates).SerializeToString()
    parse = pb.IngestRequest.FromString
    clock = time.perf_counter_ns
    out = []
    for _ in range(reps):
        s = clock()
        _touch(parse(raw))
        out.append(clock() - s)
    out.sort()
    return _percentile(out, 0.5) // batch


def ingest_events(batch: int = 256, n_updates: int = 256 * 100) -> tuple[list[Any], list[Any]]:
    """``benchmarks.ingest``'s set-up and workload as core inputs: the same bytes
    its clients send (``build_setup``, ``build_workload``), parsed and turned
    into the inputs the daemon's decoder makes of them (ids and timestamps kept)."""
    from benchmarks import ingest
    from riskd.v1 import ingest_pb2 as pb

    def inputs(raws: list[bytes]) -> list[Any]:
        out: list[Any] = []
        for raw in raws:
            for u in pb.IngestRequest.FromString(raw).updates:
                kind, ts = u.WhichOneof("kind"), u.timestamp_ms
                if kind == "fill":
                    f = u.fill
                    out.append(
                        Fill(
                            f.market,
                            f.trade_id,
                            f.buyer_account,
                            f.seller_account,
                            f.price,
                            f.quantity,
                            f.buyer_fee,
                            f.seller_fee,
                            ts=ts,
                        )
                    )
                elif kind == "mark_price":
                    out.append(MarkPrice(u.mark_price.market, u.mark_price.price, ts))
                elif kind == "deposit":
                    d = u.deposit
                    out.append(Deposit(d.account, d.asset, d.amount, ts, d.deposit_id))
                elif kind == "margin_transfer":
                    t = u.margin_transfer
                    out.append(MarginTransfer(t.account, t.market, t.amount, ts))
                else:
                    raise AssertionError(f"benchmarks.ingest sent a {kind} update")
        return out

    return inputs(ingest.build_setup(batch)), inputs(ingest.build_workload(batch, n_updates))


def _ingest_figures(n_updates: int) -> dict[str, Any]:
    """The fill as ``benchmarks.ingest``'s workload pays it (issue 17).

    The tick figures' fill trades two accounts at 1x in a market without the
    fill sanity checks, and moves one liquidation threshold at most.  The
    ingest workload's runs in the daemon's default market (``riskd.config``:
    five tiers, ``fill_price_band_ppm`` on) between random accounts of 1,000
    holding 0.2..3 BTC, so both sides' thresholds are computed, checked
    against the mark and moved in the index: this times each of its inputs
    through ``Engine.apply``, as riskd's engine applies them, and refuses a
    run where any is rejected or liquidates.
    """
    from riskd.config import default_toml, parse

    cfg = parse(default_toml())
    engine = Engine(cfg.markets, cfg.funds)
    setup, workload = ingest_events(256, n_updates)
    for ev in setup:
        engine.apply(ev)
    clock = time.perf_counter_ns
    fills: list[int] = []
    marks: list[int] = []
    gc.collect()
    for ev in workload:
        s = clock()
        engine.apply(ev)  # a Rejected here fails the worker: the workload must apply whole
        e = clock()
        (fills if type(ev) is Fill else marks).append(e - s)
    if any(m.liquidations for m in engine.markets.values()) or violations(engine):
        raise AssertionError("the ingest workload liquidated or broke an invariant")
    fills.sort()
    marks.sort()
    return {
        "fills": len(fills),
        "marks": len(marks),
        "fill_median_ns": _percentile(fills, 0.5),
        "fill_p99_ns": _percentile(fills, 0.99),
        "mark_median_ns": _percentile(marks, 0.5),
    }


#: The mark guard's limits for the guarded tick (riskd.core.mark_guard): all three on.
GUARD = {
    "mark_max_jump_ppm": 50_000,
    "mark_max_divergence_ppm": 20_000,
    "mark_stale_after_ms": 60_000,
}


def _guard_figures(engine: Engine, reps: int, budget_s: float) -> dict[str, Any]:
    """Quiet mark ticks with the guard off and on (an index price with each), interleaved.

    Three rounds of each, the best median of each kept, so a slow patch of the
    machine does not land on one side only: the ratio is what the guard costs.
    """
    market = engine.markets[SYMBOL]
    off = market.spec
    on = dataclasses.replace(off, **GUARD)
    plain = (MarkPrice(SYMBOL, MARK_A, 10), MarkPrice(SYMBOL, MARK_B, 11))
    indexed = (MarkPrice(SYMBOL, MARK_A, 10, MARK_A), MarkPrice(SYMBOL, MARK_B, 11, MARK_A))
    medians: dict[str, list[int]] = {"off": [], "on": []}
    for _ in range(3):
        for name, spec, marks in (("off", off, plain), ("on", on, indexed)):
            market.spec = spec  # only the guard's limits differ: the index is unchanged
            ns = _time_calls(engine.apply, marks, reps, budget_s / 3)
            medians[name].append(_percentile(ns, 0.5))
            if market.guarded or market.liquidations or market.take_effects():
                raise AssertionError("the guarded ticks must pass the guard and move nobody")
    market.spec = off
    best_off, best_on = min(medians["off"]), min(medians["on"])
    return {
        "off_median_ns": best_off,
        "on_median_ns": best_on,
        "ratio": round(best_on / best_off, 3),
        "rounds": medians,
    }


def worker_tick(
    n: int, reps: int, band: float, budget_s: float, ingest_updates: int = 256 * 100
) -> dict[str, Any]:
    """Populate ``n`` positions; time ticks and fills; then again with ``band`` of them near LP.

    And, in a market of its own, ``ingest_updates`` of ``benchmarks.ingest``'s
    workload (:func:`_ingest_figures`)."""
    engine = make_engine()
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    populate_book(engine, n, progress=_progress(f"tick n={n:,}", n, t0) if n >= 100_000 else None)
    populate_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_bytes()
    opened = open_positions(engine)
    if opened != n:
        raise AssertionError(f"{opened} open positions, expected {n}")

    clock = time.perf_counter_ns
    timer = [0] * 10_000
    for i in range(len(timer)):  # what the timer itself costs, for reference
        s = clock()
        timer[i] = clock() - s
    timer.sort()

    quiet = _tick_figures(engine, reps, budget_s, 10**9)
    decode_ns = decode_ns_per_update()
    ingest = _ingest_figures(ingest_updates)
    guard = _guard_figures(engine, reps, budget_s)
    moved = move_into_band(engine, band)
    near = _tick_figures(engine, reps, budget_s, 2 * 10**9)
    if open_positions(engine) != n:
        raise AssertionError("the timed ticks changed the book")
    return {
        "n": n,
        "core": riskd.core_build(),
        "decode_ns_per_update": decode_ns,
        "populate_s": populate_s,
        "populate_positions_per_s": n / populate_s,
        "populate_inputs_per_s": (n // 2 * 5) / populate_s,
        "rss_delta_bytes": rss1 - rss0,
        "rss_bytes_per_position": (rss1 - rss0) / n,
        "timer_overhead_median_ns": _percentile(timer, 0.5),
        "quiet": quiet,
        "ingest": ingest,
        "guard": guard,
        "band_fraction": band,
        "band_positions": moved,
        "band": near,
    }


def worker_memory(n: int) -> dict[str, Any]:
    """Traced bytes of ``n`` open positions (engine state only, after gc)."""
    tracemalloc.start()
    engine = make_engine()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    populate_book(engine, n, progress=_progress(f"memory n={n:,}", n, t0) if n >= 100_000 else None)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    opened = open_positions(engine)
    if opened != n:
        raise AssertionError(f"{opened} open positions, expected {n}")
    return {
        "n": n,
        "traced_delta_bytes": after - before,
        "traced_bytes_per_position": (after - before) / n,
    }


def worker_cascade(
    n: int,
    fund: str,
    longs_per_short: int,
    deadline_s: float,
    profile: bool,
    settle: bool = False,
    gen0: int = 0,
) -> dict[str, Any]:
    """One mark tick crosses ``n`` longs; time the whole ``Engine.apply`` call.

    ``fund="seeded"``: the fund gets the longs' total notional, well past what
    their shortfalls and the backstop's margin take out, even under the default
    30 % drawdown limit, so it absorbs every claim.  ``fund="empty"``: it
    refuses every shortfall and all ``n`` positions are auto-deleveraged.

    If the tick is still running after ``deadline_s`` (0: no deadline), a
    watchdog reports the liquidations settled so far and ends the process.

    ``settle``: the populated book is moved out of the cyclic collector's walks
    before the tick (:func:`riskd.heap.settle`, what the daemon does once it
    has restored its state), as for a daemon restarted with these positions.
    ``gen0`` (0: CPython's default, 700): the collector's first threshold, the
    allocations between two young collections.  The collections the tick
    triggers are counted and timed either way.
    """
    engine = make_engine()
    t0 = time.perf_counter()
    total_notional = populate_cascade(engine, n, longs_per_short)
    populate_s = time.perf_counter() - t0
    market = engine.markets[SYMBOL]
    n_positions = open_positions(engine)
    engine.apply(MarkPrice(SYMBOL, MARK_A, 1))  # may publish margin calls, liquidates nobody
    if market.liquidations:
        raise AssertionError("the cascade's first mark must liquidate nobody")
    if fund == "seeded":
        engine.apply(FundInjection(ASSET, total_notional, "benchmark seed", 1))
    log(f"cascade {fund} n={n:,}: {n_positions:,} positions in {populate_s:.1f}s; ticking")
    if settle:
        gc.collect()
        heap.settle()
    if gen0:
        gc.set_threshold(gen0, *gc.get_threshold()[1:])

    base = {
        "n": n,
        "core": riskd.core_build(),
        "fund": fund,
        "positions": n_positions,
        "longs_per_short": longs_per_short,
        "populate_s": populate_s,
        "settled_heap": settle,
        "gc_threshold": gc.get_threshold(),
    }
    collections = _CollectionLog()
    start = time.perf_counter()
    finished = threading.Event()
    owner = threading.Lock()  # whoever takes it reports; the other stays quiet
    if deadline_s > 0:

        def watchdog() -> None:
            if finished.wait(deadline_s) or not owner.acquire(blocking=False):
                return
            elapsed = time.perf_counter() - start
            try:  # liquidations the tick has opened (all n, first) and closed so far
                opened = market.next_liquidation - 1
                settled = opened - len(market.liquidations)
            except Exception:  # the core's internals moved: report what is known
                opened = settled = -1
            out = {
                **base,
                "complete": False,
                "elapsed_s": elapsed,
                "liquidations_started": opened,
                "liquidations_settled": settled,
                "liquidations_per_s": max(settled, 0) / elapsed,
            }
            log(f"cascade {fund} n={n:,}: deadline, {settled:,} settled in {elapsed:.1f}s")
            print(json.dumps(out), flush=True)
            os._exit(0)

        threading.Thread(target=watchdog, daemon=True).start()

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t1 = time.perf_counter_ns()
    c1 = time.process_time_ns()  # CPU too: on a shared machine wall time includes waiting
    gc.callbacks.append(collections.callback)
    effects = engine.apply(MarkPrice(SYMBOL, CASCADE_MARK, 2))
    gc.callbacks.remove(collections.callback)
    elapsed = (time.perf_counter_ns() - t1) / 1e9
    cpu = (time.process_time_ns() - c1) / 1e9
    finished.set()
    if not owner.acquire(blocking=False):  # the watchdog is reporting and will exit
        threading.Event().wait()
    if prof is not None:
        import pstats

        prof.disable()
        order = os.environ.get("RISKD_PROFILE_SORT", "cumulative")
        pstats.Stats(prof, stream=sys.stderr).sort_stats(order).print_stats(40)

    settled = sum(1 for e in effects if isinstance(e, LiquidationSettled))
    adl = sum(1 for e in effects if isinstance(e, AdlEvent))
    flows = sum(1 for e in effects if isinstance(e, FundFlow))
    broken = violations(engine)
    return {
        **base,
        "complete": True,
        "elapsed_s": elapsed,
        "liquidations_settled": settled,
        "liquidations_per_s": settled / elapsed,
        "cpu_s": cpu,
        "liquidations_per_cpu_s": settled / cpu if cpu else 0.0,
        "adl_events": adl,
        "fund_flows": flows,
        "still_liquidating": len(market.liquidations),
        "violations": len(broken),
        "violations_sample": broken[:5],
        "gc_collections": collections.counts,
        "gc_s": [round(s, 4) for s in collections.seconds],
    }


class _CollectionLog:
    """Cyclic collections by generation, and the seconds they took (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.counts[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._started


# --- driver -------------------------------------------------------------------


def _command(args: Sequence[str], pure: bool = False) -> str:
    shown = harness.display([sys.executable, "-m", "benchmarks.core", *args])
    return f"RISKD_PURE=1 {shown}" if pure else shown


def _spawn(
    args: Sequence[str], timeout: float, errors: list[str], pure: bool = False
) -> dict[str, Any] | None:
    """Run one worker; its JSON result, or None (and a line in ``errors``) if it failed.

    ``pure``: on the core's Python sources (``RISKD_PURE=1``), else on
    whichever core this process runs (the compiled one after ``make setup``).
    """
    cmd = [sys.executable, "-m", "benchmarks.core", *args]
    env = dict(os.environ)
    if pure:
        env["RISKD_PURE"] = "1"
    log(f"$ {_command(args, pure)}")
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        errors.append(f"timed out after {timeout:.0f}s: {_command(args)}")
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        errors.append(f"exit {proc.returncode} (see stderr above): {_command(args)}")
        return None
    result: dict[str, Any] = json.loads(lines[-1])
    result["command"] = _command(args, pure)
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """Run every core benchmark in fresh interpreters; print tables; return the figures.

    A worker that fails (the core moved under the benchmark, say) is recorded
    in ``errors`` and its figures are left out; the others still run.
    """
    cfg = QUICK if quick else FULL
    started = time.perf_counter()
    figures: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    details: dict[str, Any] = {"tick": [], "memory": None, "cascade": []}

    # Mark ticks and fills, one interpreter per size.
    sizes = cfg.tick_sizes
    ticks: dict[int, dict[str, Any]] = {}
    for n in sizes:
        args = ["tick", "--n", str(n), "--reps", str(cfg.tick_reps)]
        r = _spawn([*args, "--budget", str(cfg.tick_budget_s)], 600, errors)
        if r is not None:
            ticks[n] = r
            details["tick"].append(r)
    band = f"{100 * BAND_FRACTION:g}%"
    rows = [
        ("mark_tick_ns", "quiet", "apply_median_ns", "Engine.apply(MarkPrice), no LP within 2 %"),
        (f"mark_tick_ns[band={band}]", "band", "apply_median_ns", f"{band} in margin-call band"),
        ("fill_ns", "quiet", "fill_median_ns", "Engine.apply(Fill) moving no LP, none near"),
        (f"fill_ns[band={band}]", "band", "fill_median_ns", f"{band} in margin-call band"),
    ]
    for name, phase, key, note in rows:
        for n, r in ticks.items():
            _fig(
                figures, f"{name}[n={n}]", r[phase][key], "ns", r["command"], note=f"{note}; median"
            )
        lo, hi = sizes[0], sizes[-1]
        if name.startswith("mark_tick") and lo in ticks and hi in ticks:
            ratio = ticks[hi][phase][key] / ticks[lo][phase][key]
            _fig(
                figures,
                f"{name}_ratio[{hi}/{lo}]",
                round(ratio, 2),
                "x",
                f"{ticks[lo]['command']} ; {ticks[hi]['command']}",
                target="<= 2",
                ok=ratio <= 2,
                note=f"t(n={hi}) / t(n={lo})",
            )
    for n, r in ticks.items():
        ratio = r["quiet"]["fill_median_ns"] / r["decode_ns_per_update"]
        _fig(
            figures,
            f"fill_vs_decode[n={n}]",
            round(ratio, 2),
            "x",
            r["command"],
            target="<= 2",
            ok=ratio <= 2,
            note=f"one fill / the bare server's decode of one fill update "
            f"({r['decode_ns_per_update']} ns), same process; {r['core']} core",
        )
    if ticks:  # the same in benchmarks.ingest's workload (one figure: it does not vary with n)
        r = ticks[sizes[0]]
        w = r["ingest"]
        ratio = w["fill_median_ns"] / r["decode_ns_per_update"]
        _fig(
            figures,
            "fill_ns[workload=ingest]",
            w["fill_median_ns"],
            "ns",
            r["command"],
            note=f"Engine.apply(Fill) over benchmarks.ingest's workload ({w['fills']:,} fills"
            f" between 1,000 accounts, both sides' thresholds moved, sanity checks on); median"
            f" (MarkPrice {w['mark_median_ns']} ns)",
        )
        _fig(
            figures,
            "fill_vs_decode[workload=ingest]",
            round(ratio, 2),
            "x",
            r["command"],
            target="<= 2",
            ok=ratio <= 2,
            note=f"the ingest workload's fill / the bare server's decode of one fill update "
            f"({r['decode_ns_per_update']} ns), same process; {r['core']} core",
        )
        g = r["guard"]
        _fig(
            figures,
            f"mark_tick_guard_ratio[n={n}]",
            g["ratio"],
            "x",
            r["command"],
            target="<= 1.2",
            ok=g["ratio"] <= 1.2,
            note=(
                f"quiet Engine.apply(MarkPrice) with the mark guard on (jump, divergence from"
                f" an index, staleness) / off: {g['on_median_ns']} / {g['off_median_ns']} ns,"
                " best median of 3 interleaved rounds each"
            ),
        )
    if ticks:
        big = ticks[max(ticks)]
        _fig(
            figures,
            f"populate_positions_per_s[n={big['n']}]",
            round(big["populate_positions_per_s"]),
            "positions/s",
            big["command"],
            note="Engine.apply: deposit + margin transfer per account, a fill per pair",
        )
        _fig(
            figures,
            f"rss_bytes_per_position[n={big['n']}]",
            round(big["rss_bytes_per_position"], 1),
            "B",
            big["command"],
            note="RSS delta (/proc/self/statm) over populate; informational",
        )

    # Bytes per open position, traced, in its own interpreter.
    mem = _spawn(["memory", "--n", str(cfg.memory_n)], 900, errors)
    details["memory"] = mem
    if mem is not None:
        per = mem["traced_bytes_per_position"]
        # The target is for 10**6 positions: at --quick sizes, fixed costs (the
        # 100k-id trade-id window, say) are spread over too few positions.
        at_scale = mem["n"] >= 10**6
        _fig(
            figures,
            f"bytes_per_position[n={mem['n']}]",
            round(per, 1),
            "B",
            mem["command"],
            target="<= 300" if at_scale else None,
            ok=per <= 300 if at_scale else None,
            note="tracemalloc delta over populate / open positions (the compared figure)",
        )

    # Cascades: a ladder of smaller sizes, then the headline size; all under a
    # deadline.  The seeded headline once more with the book frozen out of the
    # collector's walks, as a daemon's is after it restores (riskd.heap.settle):
    # the collector was a quarter of the cascade (docs/performance.md).
    cn = cfg.cascade_n
    for fund in ("seeded", "empty"):
        deadline = cfg.cascade_deadline_s[fund]
        runs = [(n, False) for n in [*cfg.cascade_ladder[fund], cn]]
        if fund == "seeded":
            runs.append((cn, True))
        for n, settle in runs:
            args = ["cascade", "--n", str(n), "--fund", fund, "--deadline", f"{deadline:g}"]
            if settle:
                args.append("--settle")
            r = _spawn(args, deadline + 300, errors)
            if r is None:
                continue
            details["cascade"].append(r)
            if r["complete"]:
                note = (
                    f"{r['liquidations_settled']} LiquidationSettled in {r['elapsed_s']:.2f}s, "
                    f"{r['adl_events']} ADL, {r['fund_flows']} fund entries, "
                    f"{r['violations']} violations; "
                    f"{r['liquidations_per_cpu_s']:,.0f} per CPU second"
                )
                if r["violations"] or r["liquidations_settled"] != n:
                    errors.append(f"cascade {fund} n={n}: {note}: {r['violations_sample']}")
            else:
                note = (
                    f"DEADLINE: {r['liquidations_settled']} of {n} settled in "
                    f"{r['elapsed_s']:.1f}s; rate so far"
                )
            headline = n == cn and not quick and not settle
            _fig(
                figures,
                f"cascade_liq_per_s[fund={fund},n={n}{',settled' if settle else ''}]",
                round(r["liquidations_per_s"], 1),
                "liquidations/s",
                r["command"],
                target=">= 50000" if headline else None,
                ok=r["liquidations_per_s"] >= 50_000 if headline else None,
                note=note,
            )

    # The same figures on the pure core (RISKD_PURE=1), for the before/after table.
    compare: dict[str, tuple[float, float, str, str]] = {}
    n0 = sizes[0]
    pure_tick = _spawn(
        ["tick", "--n", str(n0), "--reps", str(cfg.tick_reps), "--budget", str(cfg.tick_budget_s)],
        600,
        errors,
        pure=True,
    )
    if pure_tick is not None and n0 in ticks:
        c = ticks[n0]
        for label, phase, key in (
            ("mark tick, nobody near LP", "quiet", "apply_median_ns"),
            ("fill, nobody near LP", "quiet", "fill_median_ns"),
        ):
            compare[f"{label}, n={n0:,} (median ns)"] = (
                pure_tick[phase][key],
                c[phase][key],
                pure_tick["command"],
                c["command"],
            )
        compare[f"populate through Engine.apply, n={n0:,} (positions/s)"] = (
            pure_tick["populate_positions_per_s"],
            c["populate_positions_per_s"],
            pure_tick["command"],
            c["command"],
        )
    seeded = [
        r
        for r in details["cascade"]
        if r["fund"] == "seeded" and r["complete"] and not r["settled_heap"]
    ]
    if seeded:
        c = max(seeded, key=lambda r: r["n"])
        deadline = cfg.cascade_deadline_s["seeded"]
        args = ["cascade", "--n", str(c["n"]), "--fund", "seeded", "--deadline", f"{deadline:g}"]
        p = _spawn(args, deadline + 300, errors, pure=True)
        if p is not None:
            compare[f"cascade, fund seeded, n={c['n']:,} (liquidations/s)"] = (
                p["liquidations_per_s"],
                c["liquidations_per_s"],
                p["command"],
                c["command"],
            )
    for label, (pure_v, compiled_v, _, compiled_cmd) in compare.items():
        faster = pure_v / compiled_v if "ns" in label else compiled_v / pure_v
        _fig(
            figures,
            f"compiled_speedup[{label}]",
            round(faster, 2),
            "x",
            compiled_cmd,
            note=f"pure {_num(round(pure_v, 1))}, compiled {_num(round(compiled_v, 1))}",
        )
    details["compare"] = {k: list(v) for k, v in compare.items()}

    runtime = time.perf_counter() - started
    _print_tables(ticks, mem, details["cascade"], figures)
    if compare:
        print(f"\nthis process's core: {riskd.core_build()}")
        rows = [[k, _num(round(p, 1)), _num(round(c, 1))] for k, (p, c, _, _) in compare.items()]
        _table(["pure vs compiled (same run)", "pure", "compiled"], rows)
    for e in errors:
        print(f"ERROR: {e}")
    print(f"core: {runtime:.1f}s{' (quick)' if quick else ''}")
    return {
        "figures": figures,
        "errors": errors,
        "details": details,
        "runtime_s": round(runtime, 1),
        "quick": quick,
    }


def _num(v: float) -> str:
    return f"{v:,.1f}" if isinstance(v, float) and not v.is_integer() else f"{v:,.0f}"


def _print_tables(
    ticks: dict[int, dict[str, Any]],
    mem: dict[str, Any] | None,
    cascades: list[dict[str, Any]],
    figures: dict[str, dict[str, Any]],
) -> None:
    sizes = sorted(ticks)
    if sizes:
        band = f"{100 * BAND_FRACTION:g}%"
        head = ["median ns, n open positions ->", *(f"{n:,}" for n in sizes), "ratio"]
        rows = []
        for label, phase, key in (
            ("mark tick, nobody near LP", "quiet", "apply_median_ns"),
            (f"mark tick, {band} in call band", "band", "apply_median_ns"),
            ("  MarketEngine.mark_price only", "quiet", "market_median_ns"),
            ("fill, nobody near LP", "quiet", "fill_median_ns"),
            (f"fill, {band} in call band", "band", "fill_median_ns"),
            ("fill, benchmarks.ingest's workload", "ingest", "fill_median_ns"),
            ("  its MarkPrice", "ingest", "mark_median_ns"),
        ):
            vals = [ticks[n][phase][key] for n in sizes]
            rows.append([label, *(_num(v) for v in vals), f"{vals[-1] / vals[0]:.2f}x"])
        for label, key, digits in (
            ("populate, positions/s", "populate_positions_per_s", 0),
            ("RSS bytes/position", "rss_bytes_per_position", 1),
        ):
            rows.append([label, *(f"{ticks[n][key]:,.{digits}f}" for n in sizes), ""])
        _table(head, rows)
    if mem is not None:
        ok = "ok" if mem["traced_bytes_per_position"] <= 300 else "MISSED"
        verdict = f"target <= 300 at 10**6: {ok}" if mem["n"] >= 10**6 else "no target at this n"
        rss = ticks.get(mem["n"])
        print(
            f"\nbytes per open position at n={mem['n']:,}: "
            f"{mem['traced_bytes_per_position']:.1f} (tracemalloc; {verdict})"
            + (f", RSS {rss['rss_bytes_per_position']:.1f}" if rss else "")
        )
    if cascades:
        print()
        head = ["cascade", "n crossed", "positions", "settled", "seconds", "liq/s", "ADL"]
        head += ["fund entries", "violations"]
        rows = []
        for r in cascades:
            done = r["complete"]
            rows.append(
                [
                    r["fund"]
                    + (", heap settled" if r.get("settled_heap") else "")
                    + ("" if done else " (deadline)"),
                    _num(r["n"]),
                    _num(r["positions"]),
                    _num(r["liquidations_settled"]),
                    f"{r['elapsed_s']:.2f}",
                    _num(round(r["liquidations_per_s"], 1)),
                    _num(r["adl_events"]) if done else "-",
                    _num(r["fund_flows"]) if done else "-",
                    str(r["violations"]) if done else "-",
                ]
            )
        _table(head, rows)
    print()
    for name, f in figures.items():
        if "target" in f:
            verdict = "ok" if f["meets_target"] else "MISSED"
            print(f"{name} = {_num(f['value'])} {f['unit']}  (target {f['target']}: {verdict})")


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  ".join(cells))


def main(argv: Sequence[str] | None = None) -> None:
    doc = (__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.core", description=doc)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    sub = p.add_subparsers(dest="worker")
    t = sub.add_parser("tick", help="mark tick cost with n open positions (prints JSON)")
    t.add_argument("--n", type=int, required=True)
    t.add_argument("--reps", type=int, default=FULL.tick_reps)
    t.add_argument(
        "--band",
        type=float,
        default=BAND_FRACTION,
        help="fraction of positions moved near their LP for the second round",
    )
    t.add_argument(
        "--budget",
        type=float,
        default=3.0,
        help="seconds at most per timing loop (at least 200 calls)",
    )
    t.add_argument(
        "--ingest-updates",
        type=int,
        default=256 * 100,
        help="updates of benchmarks.ingest's workload timed in a market of their own",
    )
    m = sub.add_parser("memory", help="traced bytes per open position (prints JSON)")
    m.add_argument("--n", type=int, required=True)
    c = sub.add_parser("cascade", help="one tick liquidating n longs (prints JSON)")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--fund", choices=("seeded", "empty"), default="seeded")
    c.add_argument("--longs-per-short", type=int, default=LONGS_PER_SHORT)
    c.add_argument("--deadline", type=float, default=0.0, help="seconds; 0 = none")
    c.add_argument("--profile", action="store_true", help="cProfile the tick to stderr")
    c.add_argument(
        "--settle",
        action="store_true",
        help="freeze the populated book out of the collector's walks first (riskd.heap.settle,"
        " as the daemon does after a restore)",
    )
    c.add_argument(
        "--gen0", type=int, default=0, help="the collector's first threshold (0: default)"
    )
    ns = p.parse_args(argv)
    if ns.worker == "tick":
        out = worker_tick(ns.n, ns.reps, ns.band, ns.budget, ns.ingest_updates)
    elif ns.worker == "memory":
        out = worker_memory(ns.n)
    elif ns.worker == "cascade":
        out = worker_cascade(
            ns.n, ns.fund, ns.longs_per_short, ns.deadline, ns.profile, ns.settle, ns.gen0
        )
    else:
        result = run(quick=ns.quick)
        harness.exit_on_problems("benchmarks.core", result["errors"])
        return
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
