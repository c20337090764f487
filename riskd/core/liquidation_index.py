"""Positions ordered by liquidation price, so a mark tick finds the crossed ones.

Two sorted lists per market hold one integer per position:
``threshold << 64 | account``.  Longs are crossed when the mark is at or below
their threshold, shorts when it is at or above, so the crossed longs are a
suffix of one list and the crossed shorts a prefix of the other.  A tick that
crosses nobody costs two comparisons; one that crosses ``k`` costs
O(log n + k).  Packing the account into the key keeps one small int per
position instead of a tuple (memory is the constraint at 10**6 positions).
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr
from sortedcontainers import SortedList

from riskd.core.pickling import SlotsPickled

__all__ = ["LiquidationIndex"]

_SHIFT = 64
_MASK = (1 << _SHIFT) - 1


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class LiquidationIndex(SlotsPickled):
    __slots__ = ("_longs", "_shorts")

    def __init__(self) -> None:
        self._longs: SortedList[int] = SortedList()
        self._shorts: SortedList[int] = SortedList()

    def __len__(self) -> int:
        return len(self._longs) + len(self._shorts)

    @staticmethod
    def key(threshold: int, account: int) -> int:
        return (threshold << _SHIFT) | account

    def add(self, long: bool, key: int) -> None:
        (self._longs if long else self._shorts).add(key)

    def remove(self, long: bool, key: int) -> None:
        (self._longs if long else self._shorts).remove(key)

    def crossed(self, price: int) -> list[int]:
        """Accounts whose threshold the price has reached, longs then shorts.

        Longs come highest threshold first and shorts lowest first: the most
        endangered positions are handled first.
        """
        return self.longs_from(price) + self.shorts_to(price)

    def longs_from(self, price: int) -> list[int]:
        """Longs with threshold >= ``price``, highest first."""
        longs = self._longs
        if not longs or longs[-1] >> _SHIFT < price:
            return []
        i = longs.bisect_left(price << _SHIFT)
        return [k & _MASK for k in reversed(longs[i:])]

    def shorts_to(self, price: int) -> list[int]:
        """Shorts with threshold <= ``price``, lowest first."""
        shorts = self._shorts
        if not shorts or shorts[0] >> _SHIFT > price:
            return []
        j = shorts.bisect_left((price + 1) << _SHIFT)
        return [k & _MASK for k in shorts[:j]]

    def longs_between(self, low: int, high: int) -> list[int]:
        """Longs with ``low <= threshold < high``."""
        if low >= high:
            return []
        longs = self._longs
        i, j = longs.bisect_left(low << _SHIFT), longs.bisect_left(high << _SHIFT)
        return [k & _MASK for k in longs[i:j]]

    def shorts_between(self, low: int, high: int) -> list[int]:
        """Shorts with ``low < threshold <= high``."""
        if low >= high:
            return []
        shorts = self._shorts
        i, j = shorts.bisect_left((low + 1) << _SHIFT), shorts.bisect_left((high + 1) << _SHIFT)
        return [k & _MASK for k in shorts[i:j]]

    def nearest(self) -> tuple[int | None, int | None]:
        """The highest long threshold and the lowest short threshold."""
        lo = self._longs[-1] >> _SHIFT if self._longs else None
        hi = self._shorts[0] >> _SHIFT if self._shorts else None
        return lo, hi
