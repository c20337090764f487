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

from riskd.core.errors import Rejected
from riskd.core.pickling import FieldsPickled

__all__ = [
    "sign",
    "INT64_MAX",
    "PPM",
    "FUNDING_SCALE",
    "Asset",
    "ceil_div",
    "floor_div",
    "check_int64",
    "check_positive",
]

INT64_MAX = 2**63 - 1
PPM = 1_000_000
FUNDING_SCALE = 100_000_000


def sign(x: int) -> int:
    """+1 for a positive quantity (a long, a buy), -1 otherwise."""
    return 1 if x > 0 else -1


def floor_div(a: int, b: int) -> int:
    """``a / b`` rounded toward minus infinity (for credits)."""
    return a // b


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded toward plus infinity (for requirements and debits)."""
    return -((-a) // b)


def check_int64(value: int, field: str) -> int:
    """Refuse a value that would not survive the int64 wire format."""
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
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
