"""Positions ordered by liquidation price, so a mark tick finds the crossed ones.

Two sorted sequences per market hold the live positions themselves, ordered
by the threshold each is indexed at (:attr:`Position.threshold`), then
account.  Longs are crossed when the mark is at or below their threshold,
shorts when it is at or above, so the crossed longs are a suffix of one
sequence and the crossed shorts a prefix of the other.  A tick that crosses
nobody costs two comparisons; one that crosses ``k`` costs O(log n + k).

Each sequence is a :class:`SortedPositions`: sorted chunks of at most
``2 * _LOAD`` positions and the last position of each chunk, searched by
the binary search below (the layout of ``sortedcontainers.SortedList``,
without the positional index this module never needs).  A position's
threshold must not change while it is indexed: the machine takes it out,
changes it, and puts it back (:meth:`LiquidationMachine.retrack`).

Why the positions and not a key: the index used to hold one int per
position, ``threshold << 64 | account``.  That is a 128-bit int, so
building it, shifting the threshold back out and every comparison of a
search ran CPython's long arithmetic through generic calls, and each key
was a 48-byte object.  A position is already in memory: an entry is now one
list slot, and the compiled core reads a position's threshold and account
as machine ints and compares them inline (issue 17).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, final

from mypy_extensions import mypyc_attr

from riskd.core.pickling import SlotsPickled
from riskd.core.position import Position

__all__ = ["LiquidationIndex", "SortedPositions"]

#: Chunk size: a chunk splits in two past 2 * _LOAD positions and merges with a
#: neighbour below _LOAD // 4.  Insertion moves half a chunk of pointers; the
#: chunk list stays short.
_LOAD: Final = 512
#: Below every account (accounts are uint64): ``(t, _BEFORE_ANY)`` sorts first among threshold t.
_BEFORE_ANY: Final = -1
# The shape of a snapshot from before SortedPositions: ``threshold << _SHIFT | account``.
_SHIFT: Final = 64
_MASK: Final = (1 << 64) - 1


def _first_at_least(positions: list[Position], threshold: int, account: int) -> int:
    """The first index whose position sorts at or after ``(threshold, account)``
    (``len`` if none): bisect_left written out, so that compiled it compares
    native ints read straight from the positions."""
    lo, hi = 0, len(positions)
    while lo < hi:
        mid = (lo + hi) >> 1
        at = positions[mid]
        t = at.threshold
        if t < threshold or (t == threshold and at.account < account):
            lo = mid + 1
        else:
            hi = mid
    return lo


@final
class SortedPositions:
    """Positions sorted by ``(threshold, account)`` in chunks (see the module doc)."""

    def __init__(self, positions: Iterable[Position] = ()) -> None:
        """From positions already in order (a snapshot's)."""
        self.chunks: list[list[Position]] = []
        #: Each chunk's last position.
        self.lasts: list[Position] = []
        ordered = list(positions)
        for i in range(0, len(ordered), _LOAD):
            self.chunks.append(ordered[i : i + _LOAD])
            self.lasts.append(self.chunks[-1][-1])
        self.size = len(ordered)

    def __len__(self) -> int:
        return self.size

    def positions(self) -> list[Position]:
        """Every position, in order."""
        out: list[Position] = []
        for chunk in self.chunks:
            out.extend(chunk)
        return out

    def first_threshold(self) -> int:
        return self.chunks[0][0].threshold

    def last_threshold(self) -> int:
        return self.lasts[-1].threshold

    def add(self, pos: Position) -> None:
        lasts = self.lasts
        self.size += 1
        if not lasts:
            self.chunks.append([pos])
            lasts.append(pos)
            return
        i = _first_at_least(lasts, pos.threshold, pos.account)
        if i == len(lasts):  # after every position: the last chunk's new last one
            i -= 1
            chunk = self.chunks[i]
            chunk.append(pos)
            lasts[i] = pos
        else:
            chunk = self.chunks[i]
            chunk.insert(_first_at_least(chunk, pos.threshold, pos.account), pos)
        if len(chunk) > 2 * _LOAD:
            self._split(i)

    def remove(self, pos: Position) -> None:
        """Take ``pos`` out, found at its threshold; ValueError if it is not there
        (a bug in the caller: its threshold changed while indexed, or it never was)."""
        lasts = self.lasts
        i = _first_at_least(lasts, pos.threshold, pos.account)
        chunk = self.chunks[i] if i < len(lasts) else []
        j = _first_at_least(chunk, pos.threshold, pos.account)
        if j == len(chunk) or chunk[j] is not pos:
            raise ValueError(f"{pos} is not in the index at {pos.threshold}")
        chunk.pop(j)  # compiled, pop is native where del is a generic call
        self.size -= 1
        n = len(chunk)
        if n == 0:
            del self.chunks[i]
            del lasts[i]
            return
        if j == n:
            lasts[i] = chunk[-1]
        if n < _LOAD // 4 and len(lasts) > 1:
            # Merged into a neighbour, so removals cannot leave a long list of tiny chunks.
            k = i - 1 if i > 0 else i
            self.chunks[k] = self.chunks[k] + self.chunks[k + 1]
            del self.chunks[k + 1]
            del lasts[k]  # chunk k + 1's last position is now chunk k's
            if len(self.chunks[k]) > 2 * _LOAD:
                self._split(k)

    def _split(self, i: int) -> None:
        """Chunk ``i`` in two halves."""
        chunk = self.chunks[i]
        half = len(chunk) // 2
        self.chunks.insert(i + 1, chunk[half:])
        del chunk[half:]
        self.lasts.insert(i, chunk[-1])

    def _chunk_from(self, threshold: int) -> tuple[int, int]:
        """``(chunk, index)`` of the first position whose threshold is at least
        ``threshold`` (chunk = the number of chunks if none)."""
        i = _first_at_least(self.lasts, threshold, _BEFORE_ANY)
        if i == len(self.chunks):
            return i, 0
        return i, _first_at_least(self.chunks[i], threshold, _BEFORE_ANY)

    def from_threshold(self, low: int) -> list[int]:
        """Accounts of the positions with threshold >= ``low``, in order."""
        i, j = self._chunk_from(low)
        chunks = self.chunks
        if i == len(chunks):
            return []
        out = [p.account for p in chunks[i][j:]]
        for k in range(i + 1, len(chunks)):
            out.extend([p.account for p in chunks[k]])
        return out

    def below_threshold(self, high: int) -> list[int]:
        """Accounts of the positions with threshold < ``high``, in order."""
        i, j = self._chunk_from(high)
        chunks = self.chunks
        out: list[int] = []
        for k in range(i):
            out.extend([p.account for p in chunks[k]])
        if i < len(chunks):
            out.extend([p.account for p in chunks[i][:j]])
        return out

    def between_thresholds(self, low: int, high: int) -> list[int]:
        """Accounts of the positions with ``low <= threshold < high``, in order."""
        if low >= high:
            return []
        i, j = self._chunk_from(low)
        chunks = self.chunks
        out: list[int] = []
        while i < len(chunks):
            chunk = chunks[i]
            if chunk[-1].threshold < high:
                out.extend([p.account for p in chunk[j:]])
            else:
                end = _first_at_least(chunk, high, _BEFORE_ANY)
                out.extend([p.account for p in chunk[j:end]])
                break
            i, j = i + 1, 0
        return out


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class LiquidationIndex(SlotsPickled):
    __slots__ = ("_longs", "_shorts", "_stand_ins")

    # Pickled as the positions of each side in order (references: the market's
    # positions dict holds the same objects), the shape both cores read.
    # Snapshots from before hold one ascending list of ``threshold << 64 |
    # account`` keys per side, or older still a sortedcontainers.SortedList of
    # them: those restore as stand-in positions that the market swaps for its
    # own (:meth:`adopt`), as it has them only once it is restored itself.
    def __getstate__(self) -> tuple[None, dict[str, object]]:
        return None, {"_longs": self._longs.positions(), "_shorts": self._shorts.positions()}

    def __setstate__(self, state: object) -> None:
        assert isinstance(state, tuple), type(state)
        slots: dict[str, Iterable[object]] = state[1]
        self._stand_ins = False
        self._longs = self._restored(slots["_longs"])
        self._shorts = self._restored(slots["_shorts"])

    def _restored(self, side: Iterable[object]) -> SortedPositions:
        positions: list[Position] = []
        for entry in side:
            if isinstance(entry, Position):
                positions.append(entry)
            else:
                positions.append(_stand_in(entry))
                self._stand_ins = True
        return SortedPositions(positions)

    def __init__(self) -> None:
        self._longs = SortedPositions()
        self._shorts = SortedPositions()
        self._stand_ins = False

    def __len__(self) -> int:
        return self._longs.size + self._shorts.size

    def adopt(self, positions: Mapping[int, Position]) -> None:
        """Swap the stand-ins an older snapshot restored as for the market's own
        positions, which take the threshold the snapshot indexed them at."""
        if not self._stand_ins:
            return
        for side in (self._longs, self._shorts):
            entries = side.positions()
            for k, stand_in in enumerate(entries):
                pos = positions.get(stand_in.account)
                if pos is None:
                    raise ValueError(f"the index holds account {stand_in.account}, not a position")
                pos.threshold = stand_in.threshold
                entries[k] = pos
            restored = SortedPositions(entries)
            side.chunks, side.lasts = restored.chunks, restored.lasts
        self._stand_ins = False

    def add(self, long: bool, pos: Position) -> None:
        """Index ``pos`` at ``pos.threshold``."""
        (self._longs if long else self._shorts).add(pos)

    def remove(self, long: bool, pos: Position) -> None:
        """Take ``pos`` out (found at ``pos.threshold``, which it must still have)."""
        (self._longs if long else self._shorts).remove(pos)

    def any_crossed(self, price: int) -> bool:
        """Whether :meth:`crossed` would find anyone (two comparisons)."""
        longs, shorts = self._longs, self._shorts
        return bool(
            (longs.size and longs.last_threshold() >= price)
            or (shorts.size and shorts.first_threshold() <= price)
        )

    def crossed(self, price: int) -> list[int]:
        """Accounts whose threshold the price has reached, longs then shorts.

        Longs come highest threshold first and shorts lowest first: the most
        endangered positions are handled first (ties: longs by account
        descending, shorts ascending).
        """
        return self.longs_from(price) + self.shorts_to(price)

    def longs_from(self, price: int) -> list[int]:
        """Longs with threshold >= ``price``, highest first."""
        longs = self._longs
        if not longs.size or longs.last_threshold() < price:
            return []
        accounts = longs.from_threshold(price)
        accounts.reverse()
        return accounts

    def shorts_to(self, price: int) -> list[int]:
        """Shorts with threshold <= ``price``, lowest first."""
        shorts = self._shorts
        if not shorts.size or shorts.first_threshold() > price:
            return []
        return shorts.below_threshold(price + 1)

    def longs_between(self, low: int, high: int) -> list[int]:
        """Longs with ``low <= threshold < high``."""
        return self._longs.between_thresholds(low, high)

    def shorts_between(self, low: int, high: int) -> list[int]:
        """Shorts with ``low < threshold <= high``."""
        return self._shorts.between_thresholds(low + 1, high + 1)

    def nearest(self) -> tuple[int | None, int | None]:
        """The highest long threshold and the lowest short threshold."""
        lo = self._longs.last_threshold() if self._longs.size else None
        hi = self._shorts.first_threshold() if self._shorts.size else None
        return lo, hi


def _stand_in(key: object) -> Position:
    """A position standing for an older snapshot's index key until :meth:`adopt`."""
    assert isinstance(key, int), type(key)
    pos = Position(key & _MASK)
    pos.threshold = key >> _SHIFT
    return pos
