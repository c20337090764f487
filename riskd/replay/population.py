"""A seeded population of traders: sizes, sides, leverage, when they arrive and leave.

Everything is drawn from ``random.Random(seed)`` with integer draws only
(``randrange``), so the same seed gives the same population on any machine.

Sizes follow a retail-heavy mix (most positions are a few hundred to a few
thousand USD, a few whales reach millions), in the market's quote currency:
a linear market turns them into quantity at the first mark, an inverse one
into contracts of ``contract_value``.  Leverage comes from the venue mix
(``VENUE_LEVERAGE``: small accounts trade the high leverage Binance reported,
large ones the low leverage most open interest uses; docs/replay.md cites
both) or from an explicit ``--leverage-mix``, capped by the market's tier for
that notional.

The **living** population (the default) is a seeded arrival process: a share
of the traders is already in the market when the path starts, the rest
arrive at uniformly drawn bars (the arrival times of a Poisson process, given
their number), and each stays a uniformly drawn number of bars with mean
``hold_bars`` before closing.  The share present at the start is the
stationary one, ``hold / (bars + hold)``, so open interest does not drain or
pile up on its own over a long path.  The **static** population is the old
model: 60 % enter at the first bar, the rest over the first two thirds, and
nobody leaves.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "DEFAULT_LEVERAGE_MIX",
    "VENUE_LEVERAGE",
    "Tier",
    "Trader",
    "build",
    "leverage_bucket",
    "parse_leverage_mix",
]

#: ``--leverage-mix venue``: the default.
DEFAULT_LEVERAGE_MIX = "venue"

#: Leverage:weight pairs by position size (quote units below the bound).
#: Small accounts: Binance Futures (Dec 2019) said 60 % of its users' trades
#: used 20x or more and 21 % the maximum, 125x.  Large ones: of 7.63 bn USD of
#: Hyperliquid open interest (Dec 2025) 3.7 bn used 3-7x, 2.77 bn 0-3x, the
#: rest (16 %) more than 7x.
VENUE_LEVERAGE: tuple[tuple[int | None, str], ...] = (
    (10_000, "2:10,5:15,10:15,20:20,50:19,125:21"),
    (None, "2:36,5:48,10:10,20:6"),
)

# (low, high, weight) of position size in whole quote-currency units (USD).
SIZE_BUCKETS = (
    (100, 1_000, 450),
    (1_000, 10_000, 350),
    (10_000, 100_000, 150),
    (100_000, 1_000_000, 45),
    (1_000_000, 5_000_000, 5),
)

#: Leverage buckets of the per-minute table (upper bounds, inclusive).
LEVERAGE_BUCKETS = ((5, "<=5x"), (20, "6-20x"), (50, "21-50x"), (None, ">50x"))


@dataclass(frozen=True, slots=True)
class Tier:
    floor: int  # notional floor, quantums
    max_leverage: int


@dataclass(frozen=True, slots=True)
class Trader:
    account: int
    side: int  # +1 long, -1 short
    quantity: int  # quantity units, a multiple of the step
    leverage: int
    margin: int  # quantums moved into the isolated position
    deposit: int  # quantums deposited into the wallet (margin + a buffer)
    entry_bar: int
    exit_bar: int | None = None  # closes at this bar's open; None: stays to the end


def leverage_bucket(leverage: int) -> str:
    for bound, name in LEVERAGE_BUCKETS:
        if bound is None or leverage <= bound:
            return name
    raise AssertionError("unreachable")


def parse_leverage_mix(text: str) -> list[tuple[int, int]]:
    """``"2:15,5:25,..."`` → ``[(2, 15), (5, 25), ...]`` (leverage, weight)."""
    out: list[tuple[int, int]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        lev, _, weight = part.partition(":")
        try:
            pair = (int(lev), int(weight or 1))
        except ValueError:
            raise ValueError(f"bad leverage mix entry {part!r} (want LEVERAGE:WEIGHT)") from None
        if pair[0] < 1 or pair[1] < 0:
            raise ValueError(f"bad leverage mix entry {part!r}")
        out.append(pair)
    if not out or sum(w for _, w in out) <= 0:
        raise ValueError(f"empty leverage mix {text!r}")
    return out


def leverage_mixes(text: str) -> list[tuple[int | None, list[tuple[int, int]]]]:
    """``venue`` or one explicit mix, as (size bound, mix) pairs."""
    if text.strip() == "venue":
        return [(bound, parse_leverage_mix(mix)) for bound, mix in VENUE_LEVERAGE]
    return [(None, parse_leverage_mix(text))]


T = TypeVar("T")


def _pick(rng: random.Random, weighted: Sequence[tuple[T, int]]) -> T:
    r = rng.randrange(sum(w for _, w in weighted))
    for value, w in weighted:
        if r < w:
            return value
        r -= w
    raise AssertionError("unreachable")


def build(
    n: int,
    seed: int,
    *,
    bars: int,
    quantity_for: Callable[[int], int] | None = None,
    notional_of: Callable[[int], int] | None = None,
    scale: int,
    deposit_unit: int | None = None,
    step: int,
    tiers: Sequence[Tier],
    leverage_mix: str | Sequence[tuple[int, int]],
    first_account: int = 1001,
    long_weight: int = 55,
    living: bool = True,
    hold_bars: int = 240,
    price: int = 0,
    unit_value: int = 0,
) -> list[Trader]:
    """``n`` traders.

    ``quantity_for(usd)`` (a callable) turns a size in whole quote units into a
    quantity, ``notional_of(qty)`` a quantity into settlement quantums at the
    first mark; without them the market is linear with ``unit_value`` quantums
    per quantity × price unit at ``price`` (the old signature).  ``scale`` is
    quantums per whole settlement unit; deposits are rounded up to
    ``deposit_unit`` (default: whole units).
    """
    to_qty: Callable[[int], int]
    to_notional: Callable[[int], int]
    if quantity_for is None or notional_of is None:
        k, p = unit_value, price

        def qty_of(usd: int) -> int:
            return usd * scale // (p * k)

        def value_of(q: int) -> int:
            return q * p * k

        to_qty, to_notional = qty_of, value_of
    else:
        to_qty, to_notional = quantity_for, notional_of
    unit = deposit_unit or scale
    mixes = (
        leverage_mixes(leverage_mix)
        if isinstance(leverage_mix, str)
        else [(None, list(leverage_mix))]
    )
    rng = random.Random(seed)
    traders: list[Trader] = []
    late_span = max(1, bars * 2 // 3)
    hold = max(1, hold_bars)
    present = 100 * hold // (bars + hold)  # % already open when the path starts
    for i in range(n):
        lo, hi = _pick(rng, [((lo, hi), w) for lo, hi, w in SIZE_BUCKETS])
        usd = rng.randrange(lo, hi)
        qty = max(step, to_qty(usd) // step * step)
        notional = to_notional(qty)
        mix = next(m for bound, m in mixes if bound is None or usd < bound)
        lev = _pick(rng, mix)
        # The tier a notional falls in is the highest floor below it; leverage
        # caps fall with the tiers, so that is the smallest cap among them.
        cap = min((t.max_leverage for t in tiers if t.floor <= notional), default=lev)
        lev = min(lev, cap)
        margin = -(-notional // lev)
        buffer = margin * rng.randrange(0, 51) // 100
        deposit = -(-(margin + buffer) // unit) * unit
        side = 1 if rng.randrange(100) < long_weight else -1
        exit_bar: int | None = None
        if living:
            entry = 0 if rng.randrange(100) < present else rng.randrange(bars)
            stay = rng.randrange(1, 2 * hold)  # mean ``hold`` bars
            exit_bar = entry + stay if entry + stay < bars else None
        else:
            entry = 0 if rng.randrange(100) < 60 else rng.randrange(late_span)
        traders.append(Trader(first_account + i, side, qty, lev, margin, deposit, entry, exit_bar))
    return traders
