"""A seeded population of traders: sizes, sides, leverage and when they enter.

Everything is drawn from ``random.Random(seed)`` with integer draws only
(``randrange``), so the same seed gives the same population on any machine.
Sizes follow a retail-heavy mix (most positions are a few hundred to a few
thousand USDT, a few whales reach millions); leverage follows the
``--leverage-mix`` weights, capped by the market's tier for that notional.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "DEFAULT_LEVERAGE_MIX",
    "Tier",
    "Trader",
    "build",
    "parse_leverage_mix",
]

#: leverage:weight pairs; weights are relative integers.
DEFAULT_LEVERAGE_MIX = "2:15,5:25,10:25,20:20,50:10,100:5"

# (low, high, weight) of position notional in whole settlement units.
SIZE_BUCKETS = (
    (100, 1_000, 450),
    (1_000, 10_000, 350),
    (10_000, 100_000, 150),
    (100_000, 1_000_000, 45),
    (1_000_000, 5_000_000, 5),
)


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
    price: int,
    bars: int,
    unit_value: int,
    scale: int,
    step: int,
    tiers: Sequence[Tier],
    leverage_mix: Sequence[tuple[int, int]],
    first_account: int = 1001,
    long_weight: int = 55,
) -> list[Trader]:
    """``n`` traders on a linear market at first price ``price``.

    ``unit_value`` is quantums per (quantity unit × price unit), ``scale``
    quantums per whole settlement unit.  60 % enter at the first bar, the rest
    spread over the first two thirds of the path (dip buyers and late shorts).
    """
    rng = random.Random(seed)
    traders: list[Trader] = []
    late_span = max(1, bars * 2 // 3)
    for i in range(n):
        lo, hi = _pick(rng, [((lo, hi), w) for lo, hi, w in SIZE_BUCKETS])
        target = rng.randrange(lo, hi) * scale  # notional in quantums
        qty = max(step, target // (price * unit_value) // step * step)
        notional = qty * price * unit_value
        lev = _pick(rng, leverage_mix)
        # The tier a notional falls in is the highest floor below it; leverage
        # caps fall with the tiers, so that is the smallest cap among them.
        cap = min((t.max_leverage for t in tiers if t.floor <= notional), default=lev)
        lev = min(lev, cap)
        margin = -(-notional // lev)
        buffer = margin * rng.randrange(0, 51) // 100
        deposit = -(-(margin + buffer) // scale) * scale  # whole units
        side = 1 if rng.randrange(100) < long_weight else -1
        entry = 0 if rng.randrange(100) < 60 else rng.randrange(late_span)
        traders.append(Trader(first_account + i, side, qty, lev, margin, deposit, entry))
    return traders
