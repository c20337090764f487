"""A fund's ledger: the count and chain head of every entry, and the entries in memory.

The pure engine (tests, ``riskd audit``, the replay tools) keeps every entry
(``keep=None``): the ledger then behaves as the list it used to be.  The
daemon keeps only the newest ``keep`` (``server.fund_ledger_memory``): every
entry also goes to :meth:`take_unsaved` once, for the shell to write to disk
(:mod:`riskd.storage.ledger`), so memory and snapshots stay bounded however
many settlements the fund books.  Either way ``len()`` is the number of
entries ever booked and ``[-1]`` the newest: the entry numbering, the hash
chain and the state digest do not depend on ``keep``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from mypy_extensions import mypyc_attr

from riskd.errors import RiskdError

if TYPE_CHECKING:
    from riskd.core.insurance_fund import LedgerEntry

__all__ = ["Ledger", "NotInMemory"]


# Two exception bases: mypyc compiles only single-base native classes.
@mypyc_attr(native_class=False)
class NotInMemory(RiskdError, IndexError):
    """The entry exists but only on disk (a bounded ledger keeps the newest)."""

    STATUS = "OUT_OF_RANGE"


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class Ledger(Sequence["LedgerEntry"]):
    __slots__ = ("keep", "total", "_entries", "_unsaved")

    def __init__(self, keep: int | None = None, entries: Iterable[LedgerEntry] = ()) -> None:
        if keep is not None and keep < 1:
            raise ValueError("keep must be at least 1 (the chain head)")
        self.keep = keep
        self.total = 0
        self._entries: list[LedgerEntry] | deque[LedgerEntry] = (
            [] if keep is None else deque(maxlen=keep)
        )
        self._unsaved: list[LedgerEntry] = []
        for e in entries:
            self.append(e)

    @property
    def head(self) -> str:
        """The newest entry's hash ("" while empty)."""
        return self._entries[-1].hash if self._entries else ""

    @property
    def first_in_memory(self) -> int:
        """The sequence number of the oldest entry held in memory (count + 1 if none)."""
        return self.total - len(self._entries) + 1

    def append(self, entry: LedgerEntry) -> None:
        self.total += 1
        self._entries.append(entry)
        if self.keep is not None:
            self._unsaved.append(entry)

    def take_unsaved(self) -> list[LedgerEntry]:
        """Entries booked since the last call, oldest first (always empty when unbounded)."""
        out, self._unsaved = self._unsaved, []
        return out

    def recent(self) -> list[LedgerEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[LedgerEntry]:
        """The entries in memory: all of them unless bounded."""
        return iter(self._entries)

    def __reversed__(self) -> Iterator[LedgerEntry]:
        return reversed(self._entries)

    @overload
    def __getitem__(self, i: int) -> LedgerEntry: ...
    @overload
    def __getitem__(self, i: slice) -> list[LedgerEntry]: ...

    def __getitem__(self, i: int | slice) -> LedgerEntry | list[LedgerEntry]:
        base = self.total - len(self._entries)  # entries before the memory
        if isinstance(i, slice):
            start, stop, step = i.indices(self.total)
            if start < base and start < stop and step > 0:
                raise NotInMemory(f"entries from {start + 1} are on disk only")
            if isinstance(self._entries, list):
                return self._entries[i]
            return [self._entries[k - base] for k in range(start, stop, step)]
        k = i + self.total if i < 0 else i
        if not 0 <= k < self.total:
            raise IndexError("ledger index out of range")
        if k < base:
            raise NotInMemory(f"entry {k + 1} is on disk only")
        return self._entries[k - base]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ledger):
            return self.total == other.total and list(self._entries) == list(other._entries)
        if isinstance(other, list):
            return self.total == len(other) and list(self._entries) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Ledger(total={self.total}, in_memory={len(self._entries)}, keep={self.keep})"

    def __getstate__(self) -> dict[str, Any]:
        # A snapshot is taken once what it covers is on disk: unsaved entries
        # are not part of the state.
        return {"keep": self.keep, "total": self.total, "entries": list(self._entries)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        keep = state["keep"]
        self.keep = keep
        self._entries = list(state["entries"]) if keep is None else deque(state["entries"], keep)
        self.total = state["total"]
        self._unsaved = []

    def rebound(self, keep: int) -> Ledger:
        """The same ledger keeping at most the newest ``keep`` entries in memory
        (those it holds now are taken as written: nothing unsaved)."""
        out = Ledger(keep)
        out.total = self.total
        out._entries.extend(self._entries)  # the deque keeps the newest
        return out
