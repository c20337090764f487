"""Positions ordered by liquidation price, so a mark tick finds the crossed ones.

Two sorted sequences per market hold one entry per position: its threshold
and its account, ordered by threshold, then account.  Longs are crossed
when the mark is at or below their threshold, shorts when it is at or
above, so the crossed longs are a suffix of one sequence and the crossed
shorts a prefix of the other.  A tick that crosses nobody costs two
comparisons; one that crosses ``k`` costs O(log n + k).

Each sequence is a :class:`SortedPairs`: sorted chunks of at most
``2 * _LOAD`` entries, a chunk being two parallel lists (thresholds and
accounts), and the last entry of each chunk, searched by the binary search
below (the layout of ``sortedcontainers.SortedList``, without the
positional index this module never needs).  Every fill moves its two
positions here, so this is on the hot path of the compiled core.

Why two ints and not one: the entry used to be a single key,
``threshold << 64 | account``.  That is a 128-bit int, so building it,
shifting the threshold back out (every margin-call band check) and every
comparison of a search ran CPython's long arithmetic through generic calls.
A threshold and an account are each below 2**62 but for the never-crossing
clamps and the backstop's account, so the compiled core keeps them unboxed
and compares them inline.  The price: two list slots and two small ints per
position instead of one slot and one 128-bit int (about 24 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, final

from mypy_extensions import mypyc_attr

from riskd.core.pickling import SlotsPickled

__all__ = ["LiquidationIndex", "SortedPairs"]

#: Chunk size: a chunk splits in two past 2 * _LOAD entries and merges with a
#: neighbour below _LOAD // 4.  Insertion moves half a chunk of pointers; the
#: chunk list stays short.
_LOAD: Final = 512
#: Below every account (accounts are uint64): ``(t, _BEFORE_ANY)`` sorts first among threshold t.
_BEFORE_ANY: Final = -1
# The shape of a snapshot from before SortedPairs: ``threshold << _SHIFT | account``.
_SHIFT: Final = 64
_MASK: Final = (1 << 64) - 1


def _first_at_least(thresholds: list[int], accounts: list[int], t: int, a: int) -> int:
    """The first index whose entry is at or after ``(t, a)`` (``len`` if none):
    bisect_left on pairs, written out so that compiled it compares native ints."""
    lo, hi = 0, len(thresholds)
    while lo < hi:
        mid = (lo + hi) >> 1
        at = thresholds[mid]
        if at < t or (at == t and accounts[mid] < a):
            lo = mid + 1
        else:
            hi = mid
    return lo


@final
class SortedPairs:
    """A sorted set of ``(threshold, account)`` entries in chunks (see the module doc)."""

    def __init__(self, thresholds: Iterable[int] = (), accounts: Iterable[int] = ()) -> None:
        """From two parallel sequences already in order (a snapshot's)."""
        #: Per chunk, the entries' thresholds and accounts.
        self.thresholds: list[list[int]] = []
        self.accounts: list[list[int]] = []
        #: Each chunk's last entry.
        self.last_thresholds: list[int] = []
        self.last_accounts: list[int] = []
        ts, accts = list(thresholds), list(accounts)
        if len(ts) != len(accts):
            raise ValueError(f"{len(ts)} thresholds for {len(accts)} accounts")
        for i in range(0, len(ts), _LOAD):
            self.thresholds.append(ts[i : i + _LOAD])
            self.accounts.append(accts[i : i + _LOAD])
            self.last_thresholds.append(self.thresholds[-1][-1])
            self.last_accounts.append(self.accounts[-1][-1])
        self.size = len(ts)

    def __len__(self) -> int:
        return self.size

    def pairs(self) -> tuple[list[int], list[int]]:
        """Every entry in order, as a list of thresholds and a list of accounts."""
        ts: list[int] = []
        accts: list[int] = []
        for chunk in self.thresholds:
            ts.extend(chunk)
        for chunk in self.accounts:
            accts.extend(chunk)
        return ts, accts

    def first_threshold(self) -> int:
        return self.thresholds[0][0]

    def last_threshold(self) -> int:
        return self.last_thresholds[-1]

    def add(self, threshold: int, account: int) -> None:
        lasts, last_accounts = self.last_thresholds, self.last_accounts
        self.size += 1
        if not lasts:
            self.thresholds.append([threshold])
            self.accounts.append([account])
            lasts.append(threshold)
            last_accounts.append(account)
            return
        i = _first_at_least(lasts, last_accounts, threshold, account)
        if i == len(lasts):  # after every entry: the last chunk's new last one
            i -= 1
            ts, accts = self.thresholds[i], self.accounts[i]
            ts.append(threshold)
            accts.append(account)
            lasts[i], last_accounts[i] = threshold, account
        else:
            ts, accts = self.thresholds[i], self.accounts[i]
            j = _first_at_least(ts, accts, threshold, account)
            ts.insert(j, threshold)
            accts.insert(j, account)
        if len(ts) > 2 * _LOAD:
            self._split(i)

    def remove(self, threshold: int, account: int) -> None:
        """Remove the entry; ValueError if it is not there (a bug in the caller)."""
        lasts, last_accounts = self.last_thresholds, self.last_accounts
        i = _first_at_least(lasts, last_accounts, threshold, account)
        if i == len(lasts):
            raise ValueError(f"({threshold}, {account}) is not in the index")
        ts, accts = self.thresholds[i], self.accounts[i]
        j = _first_at_least(ts, accts, threshold, account)
        if j == len(ts) or ts[j] != threshold or accts[j] != account:
            raise ValueError(f"({threshold}, {account}) is not in the index")
        del ts[j]
        del accts[j]
        self.size -= 1
        n = len(ts)
        if n == 0:
            del self.thresholds[i]
            del self.accounts[i]
            del lasts[i]
            del last_accounts[i]
            return
        if j == n:
            lasts[i], last_accounts[i] = ts[-1], accts[-1]
        if n < _LOAD // 4 and len(lasts) > 1:
            # Merged into a neighbour, so removals cannot leave a long list of tiny chunks.
            k = i - 1 if i > 0 else i
            self.thresholds[k] = self.thresholds[k] + self.thresholds[k + 1]
            self.accounts[k] = self.accounts[k] + self.accounts[k + 1]
            del self.thresholds[k + 1]
            del self.accounts[k + 1]
            del lasts[k]
            del last_accounts[k]  # chunk k + 1's last entry is now chunk k's
            if len(self.thresholds[k]) > 2 * _LOAD:
                self._split(k)

    def _split(self, i: int) -> None:
        """Chunk ``i`` in two halves."""
        ts, accts = self.thresholds[i], self.accounts[i]
        half = len(ts) // 2
        self.thresholds.insert(i + 1, ts[half:])
        self.accounts.insert(i + 1, accts[half:])
        del ts[half:]
        del accts[half:]
        self.last_thresholds.insert(i, ts[-1])
        self.last_accounts.insert(i, accts[-1])

    def _chunk_from(self, threshold: int) -> tuple[int, int]:
        """``(chunk, index)`` of the first entry whose threshold is at least ``threshold``
        (chunk = the number of chunks if none)."""
        i = _first_at_least(self.last_thresholds, self.last_accounts, threshold, _BEFORE_ANY)
        if i == len(self.thresholds):
            return i, 0
        return i, _first_at_least(self.thresholds[i], self.accounts[i], threshold, _BEFORE_ANY)

    def from_threshold(self, low: int) -> list[int]:
        """Accounts of the entries with threshold >= ``low``, in order."""
        i, j = self._chunk_from(low)
        if i == len(self.accounts):
            return []
        out = self.accounts[i][j:]
        for k in range(i + 1, len(self.accounts)):
            out.extend(self.accounts[k])
        return out

    def below_threshold(self, high: int) -> list[int]:
        """Accounts of the entries with threshold < ``high``, in order."""
        i, j = self._chunk_from(high)
        out: list[int] = []
        for k in range(i):
            out.extend(self.accounts[k])
        if i < len(self.accounts):
            out.extend(self.accounts[i][:j])
        return out

    def between_thresholds(self, low: int, high: int) -> list[int]:
        """Accounts of the entries with ``low <= threshold < high``, in order."""
        if low >= high:
            return []
        i, j = self._chunk_from(low)
        out: list[int] = []
        while i < len(self.accounts):
            ts, accts = self.thresholds[i], self.accounts[i]
            if ts[-1] < high:
                out.extend(accts[j:])
            else:
                out.extend(accts[j : _first_at_least(ts, accts, high, _BEFORE_ANY)])
                break
            i, j = i + 1, 0
        return out


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class LiquidationIndex(SlotsPickled):
    __slots__ = ("_longs", "_shorts")

    # Pickled as two parallel ascending lists per side, (thresholds, accounts),
    # the shape both cores read.  Snapshots from before hold one ascending list of
    # ``threshold << 64 | account`` keys per side, or older still a
    # sortedcontainers.SortedList of them (iterated in order just the same).
    def __getstate__(self) -> tuple[None, dict[str, object]]:
        return None, {"_longs": self._longs.pairs(), "_shorts": self._shorts.pairs()}

    def __setstate__(self, state: object) -> None:
        assert isinstance(state, tuple), type(state)
        slots: dict[str, object] = state[1]
        self._longs = _restored(slots["_longs"])
        self._shorts = _restored(slots["_shorts"])

    def __init__(self) -> None:
        self._longs = SortedPairs()
        self._shorts = SortedPairs()

    def __len__(self) -> int:
        return self._longs.size + self._shorts.size

    def add(self, long: bool, threshold: int, account: int) -> None:
        (self._longs if long else self._shorts).add(threshold, account)

    def remove(self, long: bool, threshold: int, account: int) -> None:
        (self._longs if long else self._shorts).remove(threshold, account)

    def move(
        self, long_before: bool, before: int, long_after: bool, after: int, account: int
    ) -> None:
        """:meth:`remove` then :meth:`add`; nothing when the entry stays the same."""
        if before == after and long_before == long_after:
            return
        (self._longs if long_before else self._shorts).remove(before, account)
        (self._longs if long_after else self._shorts).add(after, account)

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


def _restored(side: object) -> SortedPairs:
    """One side of a pickled index, in any shape it was ever written in."""
    if isinstance(side, tuple):
        thresholds, accounts = side
        return SortedPairs(thresholds, accounts)
    assert isinstance(side, Iterable), type(side)
    keys: list[int] = list(side)
    return SortedPairs([k >> _SHIFT for k in keys], [k & _MASK for k in keys])
