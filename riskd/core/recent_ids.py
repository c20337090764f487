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
A forgotten id must still never apply again, so the memory keeps a low-water
mark, :attr:`RecentIds.floor`: the highest id it has forgotten.  An id at or
below the floor that is not remembered is refused as too old to check.  The
rule a gateway lives with: ids keep increasing, give or take less than the
window (exchange trade, deposit and withdrawal ids are sequences or
time-ordered); an id that comes back after more than ``capacity`` newer ones
is refused, never applied twice.  Only applied inputs are remembered; a
refused one does not use up its id.

:class:`WithdrawalDecisions` builds the same memory for withdrawal ids, with
the balance each approval left, so that a retry returns the original
decision; refusals are kept apart in a smaller memory that cannot push an
approval out.

Id 0 means "not given" (protobuf's value for an unset field): it is never
remembered and never checked, so gateways that send no ids keep working.

A payload is remembered as a fingerprint, :func:`fingerprint` of its fields:
``hash`` of a tuple of ints, which has no per-process seed (unlike ``str``),
so the same inputs give the same memory in the daemon, the pure engine and a
restart.  Two different payloads with the same fingerprint would only change
the refusal's message ("already applied" instead of "different"), never
whether it is refused.

Layout: a set of the ids for O(1) membership, and two ring buffers as
lists (the ids in arrival order and their fingerprints): at 100,000 ids,
about 157 bytes per remembered id compiled (the set and the ring each box
the id), 125 pure; 90 with arrays.  Lists,
not :mod:`array`: every fill remembers its trade id, and the compiled core
reads and writes a list natively where each array access is a generic call
that parses its argument (issue 17).  Snapshots still hold the two rings as
arrays (the shape riskd always wrote), so either shape loads.  Looking up
the fingerprint of a reused id scans the ring, newest first: cheap for a
recent id, up to a few milliseconds for one near the end of a full window,
and only ever on the refusal path.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from mypy_extensions import mypyc_attr

from riskd.core.errors import Rejected
from riskd.core.pickling import FieldsPickled, SlotsPickled
from riskd.core.units import SHORT_MAX

__all__ = [
    "DEFAULT_CAPACITY",
    "MAX_ID",
    "RecentIds",
    "WithdrawalDecision",
    "WithdrawalDecisions",
    "check_id",
    "fingerprint",
]

#: Ids remembered per market (trade ids) and per settlement asset (deposit ids).
DEFAULT_CAPACITY: Final = 100_000
#: Ids are uint64 on the wire.
MAX_ID: Final = 2**64 - 1
#: How many of the newest ids are searched first for a reused id's fingerprint.
_RECENT: Final = 4_096


def check_id(value: int, field: str) -> int:
    """An id fits the wire's uint64 (0 = not given)."""
    if not (0 <= value <= SHORT_MAX or 0 <= value <= MAX_ID):  # short first: no boxing
        raise Rejected.invalid(field, f"must be in 0..2**64-1, got {value}")
    return value


def fingerprint(*fields: int) -> int:
    """A deterministic fingerprint of a payload's integer fields (a signed 64-bit int)."""
    return hash(fields)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class RecentIds(SlotsPickled):
    """The last ``capacity`` non-zero ids applied, each with its payload's fingerprint
    (and, with ``values``, one more integer per id), and the highest id forgotten."""

    __slots__ = ("capacity", "_ids", "_ring", "_fingerprints", "_next", "floor", "_values")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, values: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._ids: set[int] = set()
        # Slot i holds an id and its fingerprint; the rings grow to ``capacity``
        # and then wrap, overwriting the oldest slot.
        self._ring: list[int] = []
        self._fingerprints: list[int] = []
        self._next = 0  # the slot the next id takes: the oldest one once full
        #: The highest id forgotten so far: ids up to it are refused unless remembered.
        self.floor = 0
        self._values: list[int] | None = [] if values else None

    # Pickled as before the rings were lists: the slots, with the rings as
    # arrays (8 bytes an entry), the shape snapshots have always held.
    def __getstate__(self) -> tuple[None, dict[str, object]]:
        values = None if self._values is None else array("q", self._values)
        return None, {
            "capacity": self.capacity,
            "_ids": self._ids,
            "_ring": array("Q", self._ring),
            "_fingerprints": array("q", self._fingerprints),
            "_next": self._next,
            "floor": self.floor,
            "_values": values,
        }

    def __setstate__(self, state: Any) -> None:
        # Snapshots written before the floor existed restore with floor 0.
        slots: dict[str, Any] = (state[1] if isinstance(state, tuple) else state) or {}
        self.capacity = slots["capacity"]
        self._ids = slots["_ids"]
        self._ring = list(slots["_ring"])
        self._fingerprints = list(slots["_fingerprints"])
        self._next = slots["_next"]
        self.floor = slots.get("floor", 0)
        values = slots.get("_values")
        self._values = None if values is None else list(values)

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._ids

    def _slot(self, id_: int) -> int | None:
        if id_ not in self._ids:
            return None
        ring, end = self._ring, self._next or len(self._ring)
        try:  # newest first: a replayed id is most likely a recent one
            return ring.index(id_, max(end - _RECENT, 0), end)
        except ValueError:
            return ring.index(id_)

    def fingerprint_of(self, id_: int) -> int | None:
        """The fingerprint remembered with ``id_``, or None if it is not remembered."""
        slot = self._slot(id_)
        return None if slot is None else self._fingerprints[slot]

    def lookup(self, id_: int) -> tuple[int, int] | None:
        """``(fingerprint, value)`` remembered with ``id_`` (value 0 without ``values``)."""
        slot = self._slot(id_)
        if slot is None:
            return None
        return self._fingerprints[slot], (0 if self._values is None else self._values[slot])

    def too_old(self, id_: int) -> bool:
        """Not remembered, and at or below the floor: it may have been applied and forgotten."""
        return 0 < id_ <= self.floor and id_ not in self._ids

    def too_old_message(self, id_: int, noun: str) -> str:
        return (
            f"{id_} is not among the last {self.capacity} {noun} ids remembered and is not"
            f" above {self.floor}, the highest one forgotten: too old to tell whether it was"
            f" applied, so it is refused (ids must keep increasing)"
        )

    def check(self, id_: int, payload: int, field: str, noun: str) -> None:
        """Refuse ``id_`` if it is remembered, saying whether ``payload`` is the same.

        ``noun`` names the input in the message (``fill``, ``deposit``).
        """
        if not id_:
            return
        if id_ not in self._ids:
            if id_ <= self.floor:
                raise Rejected.precondition(field, self.too_old_message(id_, noun))
            return
        if self.fingerprint_of(id_) == payload:
            why = f"{id_} was already applied (the same {noun} again)"
        else:
            why = f"{id_} was already used by a different {noun}"
        raise Rejected.precondition(field, why)

    def remember(self, id_: int, payload: int, value: int = 0) -> None:
        """Remember an applied id (0: nothing to remember), forgetting the oldest past capacity.

        The forgotten id raises the floor, so that it can never apply again.
        """
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
            if self._values is not None:
                self._values.append(value)
        else:  # full: the oldest goes
            gone = ring[slot]
            ids.remove(gone)
            if gone > self.floor:
                self.floor = gone
            ring[slot] = id_
            self._fingerprints[slot] = payload
            if self._values is not None:
                self._values[slot] = value
        slot += 1
        self._next = 0 if slot == self.capacity else slot

    def items(self) -> list[tuple[int, int]]:
        """``(id, fingerprint)`` pairs, oldest first."""
        start = self._next if len(self._ring) == self.capacity else 0
        order = [*range(start, len(self._ring)), *range(start)]
        return [(self._ring[i], self._fingerprints[i]) for i in order]

    def canonical(self) -> bytes:
        """The remembered ids then their fingerprints, oldest first, little-endian (digests);
        then the floor, once there is one (it decides what a later id does)."""
        start = self._next if len(self._ring) == self.capacity else 0
        ring = array("Q", self._ring[start:] + self._ring[:start])
        fps = array("q", self._fingerprints[start:] + self._fingerprints[:start])
        if sys.byteorder != "little":
            ring.byteswap()
            fps.byteswap()
        floor = b"" if not self.floor else b"F" + self.floor.to_bytes(8, "little")
        return ring.tobytes() + fps.tobytes() + floor


@dataclass(frozen=True, slots=True)
class WithdrawalDecision(FieldsPickled):
    """What riskd answered to a withdrawal: approved or not, and the wallet balance then."""

    approved: bool
    balance: int
    reason: str = ""


#: Refusals remembered per asset, apart from approvals: a burst of refused
#: requests must never push an approval out of memory.
REFUSALS_REMEMBERED: Final = 10_000


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class WithdrawalDecisions(SlotsPickled):
    """The decisions on one asset's withdrawal ids, for retries.

    Approvals live in a :class:`RecentIds` of ``capacity`` (with the balance
    each left): a retry gets the same answer and moves nothing, and an id at
    or below its floor that it no longer holds is refused as too old, never
    paid again.  Refusals (not enough balance) are kept apart, the newest
    ``refusals`` of them: one forgotten is decided afresh on a retry, which
    can pay at most once since nothing was paid for it.
    """

    __slots__ = ("approved", "refused", "refusals")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, refusals: int = REFUSALS_REMEMBERED):
        self.approved = RecentIds(capacity, values=True)
        self.refusals = max(1, min(refusals, capacity))
        self.refused: OrderedDict[int, tuple[int, WithdrawalDecision]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.approved) + len(self.refused)

    def recall(self, id_: int, account: int, amount: int) -> WithdrawalDecision | None:
        """The decision already taken for this id (None: decide it now).

        Refused with FAILED_PRECONDITION on ``withdrawal_id`` when the id was used
        for a different withdrawal, or is too old to tell.
        """
        payload = fingerprint(account, amount)
        seen = self.approved.lookup(id_)
        if seen is not None:
            if seen[0] != payload:
                raise _reused(id_)
            return WithdrawalDecision(True, seen[1])
        refused = self.refused.get(id_)
        if refused is not None:
            if refused[0] != payload:
                raise _reused(id_)
            return refused[1]
        if self.approved.too_old(id_):
            raise Rejected.precondition(
                "withdrawal_id", self.approved.too_old_message(id_, "approved withdrawal")
            )
        return None

    def record(self, id_: int, account: int, amount: int, decision: WithdrawalDecision) -> None:
        payload = fingerprint(account, amount)
        if decision.approved:
            self.approved.remember(id_, payload, decision.balance)
            return
        self.refused[id_] = (payload, decision)
        if len(self.refused) > self.refusals:
            self.refused.popitem(last=False)


def _reused(id_: int) -> Rejected:
    return Rejected.precondition(
        "withdrawal_id", f"{id_} was already used for a different withdrawal"
    )
