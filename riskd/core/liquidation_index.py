"""Positions ordered by liquidation price, so a mark tick finds the crossed ones.

Two sorted sequences per market hold one integer per position:
``threshold << 64 | account``.  Longs are crossed when the mark is at or below
their threshold, shorts when it is at or above, so the crossed longs are a
suffix of one sequence and the crossed shorts a prefix of the other.  A tick
that crosses nobody costs two comparisons; one that crosses ``k`` costs
O(log n + k).  Packing the account into the key keeps one small int per
position instead of a tuple (memory is the constraint at 10**6 positions).

Each sequence is a :class:`SortedKeys`: sorted chunks of at most
``2 * _LOAD`` keys and the largest key of each, searched with :mod:`bisect`
(the same layout as ``sortedcontainers.SortedList``, without the positional
index this module never needs).  It is compiled with the rest of the core,
where SortedList stays interpreted Python: every fill moves two positions in
the index, so this was a third of a compiled fill (issue 17).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Final, final

from mypy_extensions import mypyc_attr

from riskd.core.pickling import SlotsPickled

__all__ = ["LiquidationIndex", "SortedKeys"]

_SHIFT: Final = 64
_MASK: Final = (1 << 64) - 1
#: Chunk size: a chunk splits past 2 * _LOAD keys and merges below _LOAD // 4.
#: Insertion moves half a chunk of pointers; the chunk list stays short.
_LOAD: Final = 512
# Module-level finals are C statics in the compiled core (a plain import is a
# dict lookup per call).
bisect_left: Final = bisect.bisect_left
bisect_right: Final = bisect.bisect_right
insort: Final = bisect.insort


@final
class SortedKeys:
    """A sorted multiset of ints in chunks (see the module doc)."""

    def __init__(self, keys: Iterable[int] = ()) -> None:
        self.chunks: list[list[int]] = []
        self.maxes: list[int] = []
        self.size = 0
        ordered = sorted(keys)
        for i in range(0, len(ordered), _LOAD):
            chunk = ordered[i : i + _LOAD]
            self.chunks.append(chunk)
            self.maxes.append(chunk[-1])
        self.size = len(ordered)

    def __len__(self) -> int:
        return self.size

    def keys(self) -> list[int]:
        """Every key, ascending."""
        out: list[int] = []
        for chunk in self.chunks:
            out.extend(chunk)
        return out

    def first(self) -> int:
        return self.chunks[0][0]

    def last(self) -> int:
        return self.maxes[-1]

    def add(self, key: int) -> None:
        maxes, chunks = self.maxes, self.chunks
        self.size += 1
        if not maxes:
            chunks.append([key])
            maxes.append(key)
            return
        i = bisect_right(maxes, key)
        if i == len(maxes):  # beyond every key: appended to the last chunk
            i -= 1
            chunk = chunks[i]
            chunk.append(key)
            maxes[i] = key
        else:
            chunk = chunks[i]
            insort(chunk, key)
        if len(chunk) > 2 * _LOAD:
            chunks.insert(i + 1, chunk[_LOAD:])
            del chunk[_LOAD:]
            maxes.insert(i, chunk[-1])

    def remove(self, key: int) -> None:
        """Remove one ``key``; ValueError if it is not there (a bug in the caller)."""
        maxes, chunks = self.maxes, self.chunks
        i = bisect_left(maxes, key)
        if i == len(maxes):
            raise ValueError(f"{key} is not in the index")
        chunk = chunks[i]
        j = bisect_left(chunk, key)
        if chunk[j] != key:
            raise ValueError(f"{key} is not in the index")
        del chunk[j]
        self.size -= 1
        n = len(chunk)
        if n == 0:
            del chunks[i]
            del maxes[i]
            return
        if j == n:
            maxes[i] = chunk[-1]
        if n < _LOAD // 4 and len(chunks) > 1:
            # Merged into a neighbour, so removals cannot leave a long list of tiny chunks.
            k = i - 1 if i > 0 else i
            merged = chunks[k] + chunks[k + 1]
            del chunks[k + 1]
            del maxes[k + 1]
            chunks[k] = merged
            maxes[k] = merged[-1]
            if len(merged) > 2 * _LOAD:
                half = len(merged) // 2
                chunks.insert(k + 1, merged[half:])
                del merged[half:]
                maxes.insert(k, merged[-1])

    def at_least(self, low: int) -> list[int]:
        """Keys >= ``low``, ascending."""
        maxes, chunks = self.maxes, self.chunks
        i = bisect_left(maxes, low)
        if i == len(maxes):
            return []
        chunk = chunks[i]
        out = chunk[bisect_left(chunk, low) :]
        for k in range(i + 1, len(chunks)):
            out.extend(chunks[k])
        return out

    def below(self, high: int) -> list[int]:
        """Keys < ``high``, ascending."""
        maxes, chunks = self.maxes, self.chunks
        i = bisect_left(maxes, high)
        out: list[int] = []
        for k in range(i):
            out.extend(chunks[k])
        if i < len(chunks):
            chunk = chunks[i]
            out.extend(chunk[: bisect_left(chunk, high)])
        return out

    def between(self, low: int, high: int) -> list[int]:
        """Keys with ``low <= key < high``, ascending."""
        if low >= high:
            return []
        maxes, chunks = self.maxes, self.chunks
        i = bisect_left(maxes, low)
        out: list[int] = []
        while i < len(chunks):
            chunk = chunks[i]
            lo = bisect_left(chunk, low) if chunk[0] < low else 0
            if chunk[-1] < high:
                out.extend(chunk[lo:])
            else:
                out.extend(chunk[lo : bisect_left(chunk, high)])
                break
            i += 1
        return out


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class LiquidationIndex(SlotsPickled):
    __slots__ = ("_longs", "_shorts")

    # Pickled as two ascending lists of keys, the shape both cores read; a
    # snapshot from before SortedKeys holds two sortedcontainers.SortedList
    # (iterated in order just the same).
    def __getstate__(self) -> tuple[None, dict[str, object]]:
        return None, {"_longs": self._longs.keys(), "_shorts": self._shorts.keys()}

    def __setstate__(self, state: object) -> None:
        assert isinstance(state, tuple), type(state)
        slots: dict[str, Iterable[int]] = state[1]
        self._longs = SortedKeys(slots["_longs"])
        self._shorts = SortedKeys(slots["_shorts"])

    def __init__(self) -> None:
        self._longs = SortedKeys()
        self._shorts = SortedKeys()

    def __len__(self) -> int:
        return self._longs.size + self._shorts.size

    @staticmethod
    def key(threshold: int, account: int) -> int:
        return (threshold << _SHIFT) | account

    def add(self, long: bool, key: int) -> None:
        (self._longs if long else self._shorts).add(key)

    def remove(self, long: bool, key: int) -> None:
        (self._longs if long else self._shorts).remove(key)

    def move(self, long_before: bool, before: int, long_after: bool, after: int) -> None:
        """:meth:`remove` then :meth:`add`; nothing when the key stays the same."""
        if before == after and long_before == long_after:
            return
        (self._longs if long_before else self._shorts).remove(before)
        (self._longs if long_after else self._shorts).add(after)

    def any_crossed(self, price: int) -> bool:
        """Whether :meth:`crossed` would find anyone (two comparisons)."""
        longs, shorts = self._longs, self._shorts
        return bool(
            (longs.size and longs.last() >> _SHIFT >= price)
            or (shorts.size and shorts.first() >> _SHIFT <= price)
        )

    def crossed(self, price: int) -> list[int]:
        """Accounts whose threshold the price has reached, longs then shorts.

        Longs come highest threshold first and shorts lowest first: the most
        endangered positions are handled first.
        """
        return self.longs_from(price) + self.shorts_to(price)

    def longs_from(self, price: int) -> list[int]:
        """Longs with threshold >= ``price``, highest first."""
        longs = self._longs
        if not longs.size or longs.last() >> _SHIFT < price:
            return []
        keys = longs.at_least(price << _SHIFT)
        keys.reverse()
        return [k & _MASK for k in keys]

    def shorts_to(self, price: int) -> list[int]:
        """Shorts with threshold <= ``price``, lowest first."""
        shorts = self._shorts
        if not shorts.size or shorts.first() >> _SHIFT > price:
            return []
        return [k & _MASK for k in shorts.below((price + 1) << _SHIFT)]

    def longs_between(self, low: int, high: int) -> list[int]:
        """Longs with ``low <= threshold < high``."""
        if low >= high:
            return []
        keys = self._longs.between(low << _SHIFT, high << _SHIFT)
        return [k & _MASK for k in keys]

    def shorts_between(self, low: int, high: int) -> list[int]:
        """Shorts with ``low < threshold <= high``."""
        if low >= high:
            return []
        keys = self._shorts.between((low + 1) << _SHIFT, (high + 1) << _SHIFT)
        return [k & _MASK for k in keys]

    def nearest(self) -> tuple[int | None, int | None]:
        """The highest long threshold and the lowest short threshold."""
        lo = self._longs.last() >> _SHIFT if self._longs.size else None
        hi = self._shorts.first() >> _SHIFT if self._shorts.size else None
        return lo, hi
