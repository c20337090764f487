"""A bounded memory of recently used ids (trade ids, deposit ids) and their payloads.

Gateways name every fill with the exchange's trade id and every deposit with
its deposit id.  The sequencer already drops what a gateway resends under
sequence numbers riskd has applied; this memory catches the rest: the same
trade or deposit arriving again under a new sequence number (a gateway that
lost its own state and replays, two gateways reporting one trade) and an id
reused for a different payload (an upstream bug).  Either way the update is
refused with FAILED_PRECONDITION on the id's field, before anything moves,
and the message says which of the two it was.

Bounded on purpose: memory must not grow with the exchange's history.  It
keeps the last ``capacity`` ids remembered (first in, first out, counted per
memory: one market's trades, one asset's deposits) and forgets older ones.
**An id older than that window is not checked**: it would be applied again.
Only applied inputs are remembered; a refused one does not use up its id.

Id 0 means "not given" (protobuf's value for an unset field): it is never
remembered and never checked, so gateways that send no ids keep working.

A payload is remembered as a fingerprint, :func:`fingerprint` of its fields:
``hash`` of a tuple of ints, which has no per-process seed (unlike ``str``),
so the same inputs give the same memory in the daemon, the pure engine and a
restart.  Two different payloads with the same fingerprint would only change
the refusal's message ("already applied" instead of "different"), never
whether it is refused.

Layout, for memory (about 90 bytes per remembered id at 100,000): a set of
the ids for O(1) membership, and two ring buffers in :mod:`array` (the ids in
arrival order and their fingerprints, 8 bytes each, no object per
fingerprint).  Looking up the fingerprint of a reused id scans the ring,
newest first: cheap for a recent id, up to a few milliseconds for one near
the end of a full window, and only ever on the refusal path.
"""

from __future__ import annotations

import sys
from array import array

from riskd.core.errors import Rejected

__all__ = ["DEFAULT_CAPACITY", "MAX_ID", "RecentIds", "check_id", "fingerprint"]

#: Ids remembered per market (trade ids) and per settlement asset (deposit ids).
DEFAULT_CAPACITY = 100_000
#: Ids are uint64 on the wire.
MAX_ID = 2**64 - 1
#: How many of the newest ids are searched first for a reused id's fingerprint.
_RECENT = 4_096


def check_id(value: int, field: str) -> int:
    """An id fits the wire's uint64 (0 = not given)."""
    if not 0 <= value <= MAX_ID:
        raise Rejected.invalid(field, f"must be in 0..2**64-1, got {value}")
    return value


def fingerprint(*fields: int) -> int:
    """A deterministic fingerprint of a payload's integer fields (a signed 64-bit int)."""
    return hash(fields)


class RecentIds:
    """The last ``capacity`` non-zero ids applied, each with its payload's fingerprint."""

    __slots__ = ("capacity", "_ids", "_ring", "_fingerprints", "_next")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._ids: set[int] = set()
        # Slot i holds an id and its fingerprint; the arrays grow to ``capacity``
        # and then wrap, overwriting the oldest slot.
        self._ring = array("Q")
        self._fingerprints = array("q")
        self._next = 0  # the slot the next id takes: the oldest one once full

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._ids

    def fingerprint_of(self, id_: int) -> int | None:
        """The fingerprint remembered with ``id_``, or None if it is not remembered."""
        if id_ not in self._ids:
            return None
        ring, end = self._ring, self._next or len(self._ring)
        try:  # newest first: a replayed id is most likely a recent one
            slot = ring.index(id_, max(end - _RECENT, 0), end)
        except ValueError:
            slot = ring.index(id_)
        return self._fingerprints[slot]

    def check(self, id_: int, payload: int, field: str, noun: str) -> None:
        """Refuse ``id_`` if it is remembered, saying whether ``payload`` is the same.

        ``noun`` names the input in the message (``fill``, ``deposit``).
        """
        if not id_ or id_ not in self._ids:
            return
        if self.fingerprint_of(id_) == payload:
            why = f"{id_} was already applied (the same {noun} again)"
        else:
            why = f"{id_} was already used by a different {noun}"
        raise Rejected.precondition(field, why)

    def remember(self, id_: int, payload: int) -> None:
        """Remember an applied id (0: nothing to remember), forgetting the oldest past capacity."""
        if not id_:
            return
        ids, ring, slot = self._ids, self._ring, self._next
        size = len(ids)
        ids.add(id_)
        if len(ids) == size:
            raise ValueError(f"id {id_} is already remembered: check() before applying")
        if slot == len(ring):  # still filling up
            ring.append(id_)
            self._fingerprints.append(payload)
        else:  # full: the oldest goes
            ids.remove(ring[slot])
            ring[slot] = id_
            self._fingerprints[slot] = payload
        slot += 1
        self._next = 0 if slot == self.capacity else slot

    def items(self) -> list[tuple[int, int]]:
        """``(id, fingerprint)`` pairs, oldest first."""
        start = self._next if len(self._ring) == self.capacity else 0
        order = [*range(start, len(self._ring)), *range(start)]
        return [(self._ring[i], self._fingerprints[i]) for i in order]

    def canonical(self) -> bytes:
        """The remembered ids then their fingerprints, oldest first, little-endian (digests)."""
        start = self._next if len(self._ring) == self.capacity else 0
        ring = self._ring[start:] + self._ring[:start]
        fps = self._fingerprints[start:] + self._fingerprints[:start]
        if sys.byteorder != "little":
            ring.byteswap()
            fps.byteswap()
        return ring.tobytes() + fps.tobytes()
