"""The mark-price guard: a mark that looks wrong decides nothing.

Drift's oracle guard rails, in integers.  Each market judges every mark it
receives against three of its settings (0 turns a check off):

* ``mark_max_jump_ppm``: the mark moved more than this from the previous one;
* ``mark_max_divergence_ppm``: the mark is further than this from the index
  price the gateway sent with it (no index, no check);
* ``mark_stale_after_ms``: no mark for this long, judged from the inputs'
  own timestamps when the market next does anything (the core reads no
  clock; an unstamped input, ts 0, cannot tell and judges nothing).

A market whose mark fails is **guarded**: its liquidations pause (no new
one starts, none in progress takes a step that depends on the mark),
positions stay valued at the newest mark, and pre-trade checks use
:attr:`MarkGuard.good_mark`, the last mark that passed.  The guard clears
by itself with the first mark that passes every check (for a jump: against
the mark before it, so one outlier tick costs two ticks of guard, and a real
gap move one), or when an operator clears it (``MarkGuardOverride``), which
accepts the newest mark as good.  An operator may also hold the guard on
(reason ``admin``) until they clear it.

Everything here is plain state of the market (in snapshots, journaled by
the inputs that change it); :class:`riskd.core.market_engine.MarketEngine`
calls :func:`judge` and publishes :class:`~riskd.core.events.MarkGuardChanged`
on every change of :attr:`MarkGuard.reason`.
"""

from __future__ import annotations

import enum

from mypy_extensions import mypyc_attr

from riskd.core.pickling import DictPickled
from riskd.core.units import PPM

__all__ = ["GuardReason", "MarkGuard", "judge", "stale"]


class GuardReason(enum.Enum):
    STALE = "stale"
    JUMP = "jump"
    DIVERGENCE = "divergence"
    ADMIN = "admin"  # held on by an operator


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class MarkGuard(DictPickled):
    """One market's guard state."""

    # Pickled in one shape, compiled or not (riskd.core.pickling).
    def __init__(self) -> None:
        #: Why the market is guarded; None: it is not.
        self.reason: GuardReason | None = None
        #: The newest mark that passed every check (pre-trade checks use it).
        self.good_mark: int | None = None
        #: The newest mark's timestamp (0: unstamped, never stale).
        self.mark_ts = 0

    @property
    def guarded(self) -> bool:
        return self.reason is not None


def judge(
    previous: int | None,
    price: int,
    index: int,
    jump_ppm: int,
    divergence_ppm: int,
) -> GuardReason | None:
    """What is wrong with a new mark ``price`` (None: nothing).

    ``previous``: the mark before it (None: the first); ``index``: the
    gateway's index price (0: not given).  Exact: ``|a - b| × 10^6 > limit ×
    b`` with no division, so a move of exactly the limit passes.
    """
    if jump_ppm and previous is not None and abs(price - previous) * PPM > jump_ppm * previous:
        return GuardReason.JUMP
    if divergence_ppm and index and abs(price - index) * PPM > divergence_ppm * index:
        return GuardReason.DIVERGENCE
    return None


def stale(mark_ts: int, now: int, stale_after_ms: int) -> bool:
    """Whether a mark stamped ``mark_ts`` is too old at input time ``now``."""
    return bool(stale_after_ms and mark_ts and now and now - mark_ts > stale_after_ms)
