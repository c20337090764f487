"""Stress coverage: what the fund would owe if the mark moved by X % now, and could pay.

For each market and each stress move (default ±5, 10, 20, 30 %) the mark is
moved to ``P' = mark × (1 + move)``, rounded to the tick *away* from the mark
(the harsher price), and every open position whose bankruptcy price lies
within the move is taken over at ``P'``: its loss beyond bankruptcy is what
the fund would be asked for, exactly the ``shortfall`` of the
:class:`~riskd.core.events.TakeoverClaim` the engine would send
(:func:`riskd.core.liquidation.takeover_result`'s integer rounding).

Finding them costs O(log n + k): a position bankrupt at ``P'`` has margin
balance below zero there, so below its maintenance margin, so the liquidation
index has it among the positions ``P'`` crosses (longs with threshold ≥ ``P'``
on a fall, shorts with threshold ≤ ``P'`` on a rise).  Only those ``k``
crossed positions are valued; the others cannot be bankrupt at ``P'``.

Left out, on purpose: positions already being liquidated (their claim is with
the fund or reserved already, and counts in its budget), the backstop (its
margin is fund money already paid out; beyond its bankruptcy it goes straight
to ADL), and the fees solvent liquidations would bring in (a crash gives no
time to collect them first).

``payable`` is what the fund could pay of that shortfall for that market under
its rules right now: ``min(shortfall, budget)`` with the budget of
:meth:`riskd.core.insurance_fund.InsuranceFund.budget` (free balance, the
market's loss cap over the window, the drawdown guard), computed here without
touching the fund (a query must not move its rolling window).  Each market is
stressed alone against the whole fund; a move that hits every market of an
asset at once is bounded by the sum.

Everything is an integer; ``coverage_ppm = payable × 10^6 // shortfall``
(rounded down: coverage is never overstated), 10^6 when there is no shortfall.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from riskd.core.engine import Engine
from riskd.core.insurance_fund import InsuranceFund
from riskd.core.market_engine import MarketEngine
from riskd.core.pickling import FieldsPickled
from riskd.core.units import INT64_MAX, PPM, ceil_div

__all__ = [
    "DEFAULT_MOVES_PPM",
    "MAX_MOVES",
    "StressRow",
    "check_moves",
    "move_label",
    "moved_price",
    "shortfall_at",
    "fund_budget",
    "coverage",
    "market_budget",
    "every_market",
]

#: ±5, 10, 20, 30 %: the steps the metrics and the query use unless told otherwise.
DEFAULT_MOVES_PPM: tuple[int, ...] = (
    -300_000,
    -200_000,
    -100_000,
    -50_000,
    50_000,
    100_000,
    200_000,
    300_000,
)
#: Each move walks the positions it crosses: bound how many one query may ask for.
MAX_MOVES = 32


@dataclass(frozen=True, slots=True)
class StressRow(FieldsPickled):
    """One market under one move; money in quantums of ``asset``."""

    market: str
    asset: str
    move_ppm: int
    price: int  # the moved mark, on the tick
    positions: int  # positions bankrupt at ``price``
    shortfall: int  # their losses beyond bankruptcy at ``price``
    payable: int  # what the fund could pay of it now
    coverage_ppm: int  # payable / shortfall, ppm, rounded down
    budget: int  # the most the fund may pay for this market now


def check_moves(moves: Sequence[int]) -> str | None:
    """Why a list of moves (ppm) is unacceptable, or None."""
    if len(moves) > MAX_MOVES:
        return f"at most {MAX_MOVES} moves, got {len(moves)}"
    for m in moves:
        if m == 0 or not -PPM < m <= 10 * PPM:
            return f"each move must be in (-1000000, 10000000] ppm and not 0, got {m}"
    if len(set(moves)) != len(moves):
        return "moves must not repeat"
    return None


def move_label(move_ppm: int) -> str:
    """``-50000`` → ``"-5%"``, ``125000`` → ``"+12.5%"``: the metric's ``move`` label."""
    whole, frac = divmod(abs(move_ppm), 10_000)
    text = f"{whole}" if not frac else f"{whole}.{frac:04d}".rstrip("0")
    return f"{'-' if move_ppm < 0 else '+'}{text}%"


def moved_price(mark: int, move_ppm: int, tick: int) -> int:
    """``mark × (1 + move)`` on the tick, rounded away from the mark, within 1 tick .. int64."""
    exact_num = mark * (PPM + move_ppm)
    if move_ppm < 0:
        price = exact_num // (PPM * tick) * tick
    else:
        price = ceil_div(exact_num, PPM * tick) * tick
    return min(max(price, tick), INT64_MAX // tick * tick)


def shortfall_at(engine: MarketEngine, price: int) -> tuple[int, int]:
    """``(positions, shortfall)``: positions bankrupt at ``price`` and their loss beyond it.

    Walks only the positions the liquidation index says ``price`` crosses.
    """
    return _walk(engine, [price])[0]


def _walk(engine: MarketEngine, prices: Sequence[int]) -> list[tuple[int, int]]:
    """:func:`shortfall_at` for several prices on one side of the mark, in one walk.

    Deeper moves cross supersets, so the positions the deepest price crosses
    are read once and each is valued at every price, deepest first: a
    position solvent at one price is solvent at every shallower one.  The
    takeover's ``R`` for a whole position is ``margin + trade_value(size, P)
    - basis`` (:func:`riskd.core.liquidation.takeover_result`, which a test
    checks this against), so no trial position is built.
    """
    mark = engine.mark
    out = [(0, 0)] * len(prices)
    if mark is None or not prices:
        return out
    fall = prices[0] <= mark
    order = sorted(range(len(prices)), key=lambda j: prices[j], reverse=not fall)
    deepest = prices[order[0]]
    index = engine.index
    crossed = index.longs_from(deepest) if fall else index.shorts_to(deepest)
    counts = [0] * len(prices)
    totals = [0] * len(prices)
    spec = engine.spec
    value = spec.value
    # Linear values are exact products: skip the (num, den) tuple in the hot loop.
    k = spec._linear_k
    positions = engine.positions
    for account in crossed:
        pos = positions[account]
        if pos.is_backstop:
            continue
        size, base = pos.size, pos.margin - pos.basis
        for j in order:
            if k:
                r = base + size * prices[j] * k
            else:
                num, den = value(size, prices[j])
                r = base + num // den
            if r >= 0:
                break
            counts[j] += 1
            totals[j] -= r
    return list(zip(counts, totals, strict=True))


def fund_budget(fund: InsuranceFund, market: str, ts: int, loss_cap: int | None) -> int:
    """:meth:`InsuranceFund.budget` at ``ts``, read without moving the fund's window."""
    return fund.limit_at(market, ts, loss_cap)[0]


def coverage(
    engine: MarketEngine,
    budget: int,
    moves: Iterable[int] = DEFAULT_MOVES_PPM,
) -> list[StressRow]:
    """One row per move for one market, given the fund's ``budget`` for it.

    Empty while the market has no mark (there is nothing to move).
    """
    mark = engine.mark
    if mark is None:
        return []
    spec = engine.spec
    moves = list(moves)
    prices = [moved_price(mark, m, spec.tick_size) for m in moves]
    found: dict[int, tuple[int, int]] = {}
    for fall in (True, False):
        js = [j for j, p in enumerate(prices) if (p <= mark) == fall]
        for j, got in zip(js, _walk(engine, [prices[j] for j in js]), strict=True):
            found[j] = got
    rows = []
    for j, move in enumerate(moves):
        count, shortfall = found[j]
        payable = min(shortfall, budget)
        ratio = payable * PPM // shortfall if shortfall else PPM
        rows.append(
            StressRow(
                spec.symbol, engine.asset, move, prices[j], count, shortfall, payable, ratio, budget
            )
        )
    return rows


def market_budget(engine: MarketEngine, fund: InsuranceFund) -> int:
    """The fund's budget for this market at the market's latest input time.

    The fund's rolling window runs on input timestamps, not on a clock: the
    latest one this market applied is "now" for it.
    """
    return fund_budget(fund, engine.symbol, engine._now, engine.spec.fund_loss_cap)


def every_market(engine: Engine, moves: Sequence[int] = DEFAULT_MOVES_PPM) -> list[StressRow]:
    """:func:`coverage` of every market (by symbol) against its asset's fund."""
    rows: list[StressRow] = []
    for symbol in sorted(engine.markets):
        market = engine.markets[symbol]
        rows += coverage(market, market_budget(market, engine.funds[market.asset]), moves)
    return rows
