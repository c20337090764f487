"""Fixed-point units: assets, integer bounds and the two explicit roundings.

Every amount in riskd is an ``int`` in the smallest unit of its asset (a
"quantum", as dYdX calls it); prices are integers in units of
``10**-price_decimals`` of the quote currency and quantities integers in units of
``10**-quantity_decimals``.  Nothing here, or anywhere in the core, uses floating point.

Rates (maintenance margin rates, fee caps, fee shares) are integers in parts per
million; funding rates in parts per 10**8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from riskd.core.errors import Rejected
from riskd.core.pickling import FieldsPickled

__all__ = [
    "sign",
    "INT64_MAX",
    "SUPPLY_CAP",
    "PPM",
    "FUNDING_SCALE",
    "Asset",
    "ceil_div",
    "floor_div",
    "check_int64",
    "check_positive",
    "fits_int64",
    "magnitude",
    "mul",
    "short",
    "SHORT_MIN",
    "SHORT_MAX",
]

INT64_MAX: Final = 2**63 - 1

#: The most an asset's net deposits (deposits - withdrawals), and separately its
#: fund's injections, may reach, in quantums.  Everything conservation adds up
#: (balances, margins, fund, fee pool) is paid out of those two, so with both
#: capped at 2**61 every such amount keeps at least 2**62 of int64 headroom for
#: what unrealised PnL can move between them: a fee credit or a shortfall can
#: never take a fund, a wallet or the fee pool past the int64 wire format.
SUPPLY_CAP: Final = 2**61
PPM: Final = 1_000_000
FUNDING_SCALE: Final = 100_000_000
#: The compiled core keeps ints in -2**62..2**62-1 unboxed; ordering one against
#: a constant outside that range (INT64_MAX, 2**64-1) boxes it, an allocation.
#: Range checks on hot paths test this range first (``short``).
SHORT_MIN: Final = -(2**62)
SHORT_MAX: Final = 2**62 - 1


def sign(x: int) -> int:
    """+1 for a positive quantity (a long, a buy), -1 otherwise."""
    return 1 if x > 0 else -1


def floor_div(a: int, b: int) -> int:
    """``a / b`` rounded toward minus infinity (for credits)."""
    return a // b


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded toward plus infinity (for requirements and debits)."""
    return -((-a) // b)


def magnitude(x: int) -> int:
    """``abs(x)``.  Compiled, the builtin boxes its argument and calls into
    CPython (an allocation for most values); this stays on native ints."""
    return -x if x < 0 else x


#: mypyc multiplies two ints natively only when both factors are in
#: 0..2**30-1: its overflow test looks at the factors, not the product.
_FACTOR_MAX: Final = 2**30 - 1
_SPLIT_MAX: Final = 2**60 - 1


def mul(a: int, b: int) -> int:
    """``a * b``, exact, kept on native ints in the compiled core where it can be.

    Compiled, ``a * b`` with a negative factor, or one of 2**30 or more (a
    margin in quantums passes it at ~1,074 USDT), boxes both and multiplies
    them in CPython: two allocations and a generic call, ~0.2 µs.  Here the
    signs come off and the larger factor, below 2**60, is split into two
    30-bit halves, so both partial products are native; the shift and the
    sum check for overflow like any native operation.  Used on the fill
    path only: interpreted, this is slower than ``*``.
    """
    negative = (a < 0) != (b < 0)
    a, b = magnitude(a), magnitude(b)
    if a > b:
        a, b = b, a
    if a <= _FACTOR_MAX and b <= _SPLIT_MAX:
        product = ((a * (b >> 30)) << 30) + a * (b & _FACTOR_MAX)
    else:
        product = a * b
    return -product if negative else product


def short(value: int) -> bool:
    """Whether ``value`` is in the compiled core's unboxed range (so in int64)."""
    return SHORT_MIN <= value <= SHORT_MAX


def fits_int64(value: int) -> bool:
    return SHORT_MIN <= value <= SHORT_MAX or -INT64_MAX - 1 <= value <= INT64_MAX


def check_int64(value: int, field: str) -> int:
    """Refuse a value that would not survive the int64 wire format."""
    if not fits_int64(value):
        raise Rejected.invalid(field, f"{value} does not fit in int64")
    return value


def check_positive(value: int, field: str) -> int:
    if value <= 0:
        raise Rejected.invalid(field, f"must be > 0, got {value}")
    return check_int64(value, field)


@dataclass(frozen=True, slots=True)
class Asset(FieldsPickled):
    """A settlement asset; each has exactly one insurance fund."""

    symbol: str
    decimals: int

    def __post_init__(self) -> None:
        if not self.symbol or not self.symbol.isascii():
            raise ValueError(f"asset symbol must be non-empty ASCII: {self.symbol!r}")
        if not 0 <= self.decimals <= 18:
            raise ValueError(f"asset {self.symbol}: decimals must be in 0..18")

    @property
    def scale(self) -> int:
        """Quantums per whole unit of the asset."""
        scale: int = 10**self.decimals
        return scale
