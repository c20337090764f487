"""Price paths: Binance kline CSVs (with or without header) and a built-in crash.

Prices are read as decimal strings and converted to integer price units
exactly (``decimal.Decimal``, rounded half-even to the market's tick); no
float touches a price.  Each bar becomes up to four successive marks — open,
then the extreme the bar most likely visited first, the other extreme, close —
so a wick's full depth reaches the engine.
"""

from __future__ import annotations

import csv
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

__all__ = [
    "Bar",
    "Mark",
    "describe",
    "generated_crash",
    "interval_ms",
    "iso",
    "marks",
    "read_klines",
    "to_units",
]


@dataclass(frozen=True, slots=True)
class Bar:
    ts_ms: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


@dataclass(frozen=True, slots=True)
class Mark:
    ts_ms: int
    price: int  # price units, a multiple of the tick
    bar: int  # index of the bar it comes from


def _ts_ms(field: str) -> int:
    ts = int(Decimal(field))
    if ts >= 10**17:  # nanoseconds
        return ts // 1_000_000
    if ts >= 10**14:  # microseconds (Binance spot dumps since 2025)
        return ts // 1000
    if ts < 10**11:  # seconds
        return ts * 1000
    return ts


def read_klines(path: str | Path) -> list[Bar]:
    """Bars from a kline CSV: ``ts, open, high, low, close, ...``.

    A header row (any first row whose first field is not a number) is skipped,
    as are blank lines; Binance's 12-column dumps and the files in
    ``shared/data`` both work.  Rows must be in increasing time order.
    """
    bars: list[Bar] = []
    try:
        with open(path, newline="") as f:
            for n, row in enumerate(csv.reader(f), 1):
                bar = _row(path, n, row, first=not bars)
                if bar is None:
                    continue
                if bars and bar.ts_ms <= bars[-1].ts_ms:
                    raise ValueError(f"{path}:{n}: timestamps must increase ({bar.ts_ms})")
                bars.append(bar)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a CSV file ({e})") from None
    if not bars:
        raise ValueError(f"{path}: no price rows")
    return bars


def iso(ts_ms: int) -> str:
    """``2020-03-12 22:39`` (UTC)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _row(path: str | Path, n: int, row: list[str], *, first: bool) -> Bar | None:
    """One CSV row as a bar; None for a blank line or the header."""
    if not row or not "".join(row).strip():
        return None
    try:
        ts = _ts_ms(row[0].strip())
    except (ArithmeticError, ValueError):
        if first and n == 1:
            return None  # header
        raise ValueError(f"{path}:{n}: bad timestamp {row[0]!r}") from None
    if len(row) < 5:
        raise ValueError(f"{path}:{n}: want ts, open, high, low, close; got {len(row)} columns")
    try:
        o, h, lo, c = (Decimal(x.strip()) for x in row[1:5])
    except (ArithmeticError, ValueError):
        raise ValueError(f"{path}:{n}: bad price in {row[1:5]!r}") from None
    if not all(v.is_finite() for v in (o, h, lo, c)) or ts <= 0 or ts >= 2**62:
        raise ValueError(f"{path}:{n}: not an OHLC row: {row[:5]!r}")
    if min(o, h, lo, c) <= 0 or not lo <= min(o, c) <= max(o, c) <= h:
        raise ValueError(f"{path}:{n}: not an OHLC row: {row[:5]!r}")
    return Bar(ts, o, h, lo, c)


def to_units(price: Decimal, price_decimals: int, tick: int) -> int:
    """``price`` in price units, rounded half-even to a multiple of ``tick`` (≥ one tick)."""
    ticks = (price.scaleb(price_decimals) / tick).to_integral_value(ROUND_HALF_EVEN)
    return max(int(ticks), 1) * tick


def interval_ms(bars: list[Bar]) -> int:
    if len(bars) < 2:
        return 60_000
    gaps = sorted(b.ts_ms - a.ts_ms for a, b in itertools.pairwise(bars))
    return gaps[len(gaps) // 2]


def marks(bars: list[Bar], price_decimals: int, tick: int) -> list[Mark]:
    """Four marks per bar at ``ts``, ``ts + i/4``, ``ts + 2i/4``, ``ts + 3i/4``.

    A falling bar (close < open) is taken to go open → high → low → close,
    a rising one open → low → high → close.
    """
    step = interval_ms(bars)
    out: list[Mark] = []
    for i, b in enumerate(bars):
        mid = (b.high, b.low) if b.close < b.open else (b.low, b.high)
        for j, p in enumerate((b.open, *mid, b.close)):
            out.append(Mark(b.ts_ms + step * j // 4, to_units(p, price_decimals, tick), i))
    return out


def generated_crash(minutes: int = 240, start: int = 60_000, seed: int = 20200312) -> list[Bar]:
    """A built-in synthetic crash (not market data): calm, a ~35 % cascade, a rebound.

    One-minute bars from 2026-01-01 00:00 UTC: an hour of drift around
    ``start``, a slide that accelerates to about 35 % down near minute 100,
    with flash wicks of 4-9 % at minutes 88, 97 and 99, then a partial
    recovery.  Deterministic (fixed seed).
    """
    rng = random.Random(seed)
    t0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    cents = start * 100
    bars: list[Bar] = []
    for i in range(minutes):
        if i < 60:
            drift_bp = 0
        elif i < 85:
            drift_bp = -40
        elif i < 100:
            drift_bp = -180
        elif i < 105:
            drift_bp = 250
        elif i < 160:
            drift_bp = 30
        else:
            drift_bp = -5
        o = cents
        c = o + o * (drift_bp + rng.randrange(-25, 26)) // 10_000
        hi = max(o, c) + max(o, c) * rng.randrange(0, 20) // 10_000
        lo = min(o, c) - min(o, c) * rng.randrange(0, 60) // 10_000
        if i in (88, 97, 99):  # flash wicks: 4-9 % below the bar within a minute
            lo = min(o, c) - min(o, c) * rng.randrange(400, 900) // 10_000
        bars.append(Bar(t0 + i * 60_000, *(Decimal(v).scaleb(-2) for v in (o, hi, lo, c))))
        cents = c
    return bars


def describe(bars: Iterable[Bar]) -> dict[str, str | int]:
    bs = list(bars)
    return {
        "bars": len(bs),
        "first_ts_ms": bs[0].ts_ms,
        "last_ts_ms": bs[-1].ts_ms,
        "interval_ms": interval_ms(bs),
        "open": str(bs[0].open),
        "low": str(min(b.low for b in bs)),
        "high": str(max(b.high for b in bs)),
        "close": str(bs[-1].close),
    }
