"""Risk tiers: notional brackets mapped to max leverage and maintenance margin.

A tier table is given by each bracket's notional floor, max leverage and
maintenance margin rate (MMR, in ppm); the ``cum`` offsets are derived so the
maintenance margin is continuous across brackets::

    cum_n = floor_n * (MMR_n - MMR_{n-1}) + cum_{n-1}
    MM(N) = N * MMR_tier(N) - cum_tier(N)

Because MMR never decreases from one bracket to the next, MM(N) is convex and
piecewise linear, so it also equals ``max_n (N * MMR_n - cum_n)``.  The margin
and liquidation-price code leans on that: it never needs to guess the bracket a
price falls into.

``cum`` is kept scaled by one million (quantum-ppm) so it is exact.

Each bracket's initial margin rate (``1 / max_leverage``) must exceed its
MMR: a position opened at the bracket's maximum leverage must not start out
already at (or below) maintenance.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from riskd.core.pickling import FieldsPickled, SlotsPickled
from riskd.core.units import INT64_MAX, PPM, ceil_div
from riskd.errors import RiskdError

__all__ = ["SpecError", "Tier", "TierTable"]


# Two exception bases: mypyc compiles only single-base native classes.
@mypyc_attr(native_class=False)
class SpecError(RiskdError, ValueError):
    """A market setting out of range; ``field`` names it as the config and the
    API spell it (``tick_size``, ``tiers[2]``), ``reason`` says why."""

    STATUS = "INVALID_ARGUMENT"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Tier(FieldsPickled):
    """One bracket: ``floor`` in settlement quantums of notional, MMR in ppm."""

    floor: int
    max_leverage: int
    mmr_ppm: int
    cum_scaled: int = 0

    @property
    def cum(self) -> int:
        """``cum`` in quantums, rounded up (it is published, never used in math)."""
        return ceil_div(self.cum_scaled, PPM)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class TierTable(SlotsPickled):
    """An ordered, validated set of tiers with derived ``cum``."""

    __slots__ = ("tiers", "_floors")

    def __init__(self, brackets: Iterable[tuple[int, int, int]]) -> None:
        """Build from ``(floor, max_leverage, mmr_ppm)`` triples, first floor 0."""
        rows = list(brackets)
        if not rows:
            raise SpecError("tiers", "at least one tier is required (the first tier starts at 0)")
        if rows[0][0] != 0:
            raise SpecError("tiers[0]", "the first tier must start at notional 0")
        tiers: list[Tier] = []
        prev_mmr, prev_cum = 0, 0
        for i, (floor, lev, mmr) in enumerate(rows):
            where = f"tiers[{i}]"
            if not 0 <= floor <= INT64_MAX:
                raise SpecError(where, f"notional_floor {floor} (quantums) does not fit in int64")
            if tiers and floor <= tiers[-1].floor:
                raise SpecError(where, "notional_floor: floors must increase")
            if not 0 < mmr < PPM:
                raise SpecError(
                    where, f"maintenance_margin_rate_ppm must be in (0, 1e6), got {mmr}"
                )
            if not 1 <= lev <= PPM:
                raise SpecError(where, f"max_leverage must be in 1..1e6, got {lev}")
            if tiers and (mmr < prev_mmr or lev > tiers[-1].max_leverage):
                raise SpecError(where, "MMR must not fall nor leverage rise with notional")
            if mmr * lev >= PPM:
                raise SpecError(
                    where,
                    f"max leverage {lev}x (initial margin {PPM // lev} ppm) needs a maintenance"
                    f" margin rate below the initial margin, got {mmr} ppm",
                )
            cum = floor * (mmr - prev_mmr) + prev_cum
            tiers.append(Tier(floor, lev, mmr, cum))
            prev_mmr, prev_cum = mmr, cum
        self.tiers: tuple[Tier, ...] = tuple(tiers)
        self._floors = [t.floor for t in tiers]

    def __iter__(self) -> Iterator[Tier]:
        return iter(self.tiers)

    def __len__(self) -> int:
        return len(self.tiers)

    def tier_for(self, notional: int) -> Tier:
        """The bracket a notional (in quantums) falls in."""
        return self.tiers[bisect_right(self._floors, notional) - 1]

    def maintenance_scaled(self, notional: int) -> int:
        """Maintenance margin times 1e6, exact, for an integer notional."""
        t = self.tier_for(notional)
        return notional * t.mmr_ppm - t.cum_scaled

    def maintenance(self, notional: int) -> int:
        """Maintenance margin in quantums, rounded up (a requirement)."""
        return ceil_div(self.maintenance_scaled(notional), PPM)

    def initial(self, notional: int) -> int:
        """Initial margin at the bracket's max leverage, rounded up."""
        return ceil_div(notional, self.tier_for(notional).max_leverage)

    def as_rows(self) -> Sequence[tuple[int, int, int]]:
        return [(t.floor, t.max_leverage, t.mmr_ppm) for t in self.tiers]
