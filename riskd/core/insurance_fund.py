"""The insurance fund of one settlement asset: a serial decision maker with a ledger.

It takes in liquidation fees (clawback of the surplus over bankruptcy),
trading-fee shares and seed capital; it absorbs the shortfall of bankrupt
liquidations, earmarks slippage budgets for book-mode liquidation orders and
funds the backstop account.  It pays as much of a shortfall as it may
and hands only the rest to ADL (BitMEX, dYdX: the fund pays up to its limit);
what it may pay is bounded by:

* the balance never goes below zero (reservations count as spent);
* a per-market loss cap over the rolling window (dYdX YFI, 2023-11);
* a drawdown limit: the balance may not fall more than ``drawdown_limit_ppm``
  below its peak over the rolling window (e.g. 30 % in 8 h).

Every unit in or out is a :class:`LedgerEntry`.  Users cannot withdraw from
it: there is simply no operation for that.

The rolling window is bucketed by minute so its memory is bounded by the
window length, not by the number of liquidations in a crash.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from mypy_extensions import mypyc_attr

from riskd.core.errors import Rejected
from riskd.core.events import (
    AdlReason,
    FundCredit,
    FundDecision,
    FundFlow,
    FundKind,
    ReserveClaim,
    ReserveSettle,
    TakeoverClaim,
)
from riskd.core.hash_chain import GENESIS, line_hash, link
from riskd.core.ledger import Ledger
from riskd.core.liquidation import waterfall
from riskd.core.pickling import DictPickled, FieldsPickled, SlotsPickled, restore
from riskd.core.units import PPM, SUPPLY_CAP, ceil_div, check_positive

FundEffect = FundCredit | TakeoverClaim | ReserveClaim | ReserveSettle

__all__ = ["GENESIS", "FundEffect", "FundPolicy", "LedgerEntry", "DailyReport", "InsuranceFund"]

_MINUTE_MS: Final = 60_000
_DAY_MS: Final = 86_400_000
_OUTFLOWS: Final = (FundKind.SHORTFALL, FundKind.BACKSTOP_MARGIN)


@dataclass(frozen=True, slots=True)
class FundPolicy(FieldsPickled):
    """Limits on what one fund may pay out (per-market caps come with each claim)."""

    drawdown_limit_ppm: int = 300_000
    window_ms: int = 8 * 3_600_000

    def __post_init__(self) -> None:
        if not 0 < self.drawdown_limit_ppm <= PPM:
            raise ValueError("drawdown_limit_ppm must be in (0, 1e6]")
        if self.window_ms < _MINUTE_MS:
            raise ValueError("window_ms must be at least one minute")


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class LedgerEntry(FieldsPickled):
    """One movement; ``hash`` chains it to the entry before (``prev``)."""

    sequence: int
    ts: int
    kind: FundKind
    market: str
    cause: str
    amount: int
    balance_after: int
    prev: str = GENESIS
    hash: str = ""

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        sequence: int,
        ts: int,
        kind: FundKind,
        market: str,
        cause: str,
        amount: int,
        balance_after: int,
        prev: str = GENESIS,
        hash: str = "",
    ) -> None:
        object.__setattr__(self, "sequence", sequence)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "cause", cause)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "balance_after", balance_after)
        object.__setattr__(self, "prev", prev)
        object.__setattr__(self, "hash", hash)

    def digest(self) -> str:
        """What ``hash`` must be: SHA-256 over the previous hash and every field."""
        return link(
            self.prev,
            self.sequence,
            self.ts,
            self.kind.value,
            self.market,
            self.cause,
            self.amount,
            self.balance_after,
        )


@dataclass(slots=True)
class DailyReport(SlotsPickled):
    day: int  # days since the Unix epoch, UTC
    opening_balance: int
    closing_balance: int
    liquidation_volume: int = 0
    inflow_by_kind: dict[FundKind, int] = field(default_factory=dict)
    outflow_by_kind: dict[FundKind, int] = field(default_factory=dict)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class InsuranceFund(DictPickled):
    """One asset's fund; feed it effects, read back decisions and ledger entries."""

    def __setstate__(self, state: dict[str, object]) -> None:
        ledger = state.get("ledger")
        if isinstance(ledger, list):
            # Format v3 snapshots carry every entry as a list: an unbounded
            # Ledger is the same (riskd.storage.ledger.agree writes it out).
            state = {**state, "ledger": Ledger(None, ledger)}
        restore(self, state)

    def __init__(self, asset: str, policy: FundPolicy | None = None) -> None:
        self.asset = asset
        self.policy = policy or FundPolicy()
        self.balance = 0
        self.reserved: dict[tuple[str, int], int] = {}
        self.reserved_total = 0
        self._reserved_by_market: dict[str, int] = {}
        self.total_inflow = 0
        self.total_outflow = 0
        self.injected = 0
        self.ledger = Ledger()  # the daemon bounds it: riskd.storage.ledger
        self.reports: dict[int, DailyReport] = {}
        self._peaks: deque[tuple[int, int]] = deque()  # (minute, max balance)
        self._losses: dict[str, deque[tuple[int, int]]] = {}  # market -> (minute, outflow)
        self._flows: list[FundFlow] = []

    # --- what the fund may pay ---------------------------------------------

    def budget(self, market: str, ts: int, loss_cap: int | None = None) -> int:
        """The most the fund may pay out for ``market`` now."""
        return self.limit(market, ts, loss_cap)[0]

    def limit(self, market: str, ts: int, loss_cap: int | None = None) -> tuple[int, AdlReason]:
        """``(budget, the limit that sets it)``: what an ADL beyond it is blamed on.

        The free balance is named when it binds (or is gone), before the
        market's cap, before the drawdown guard, so operators see which guard
        deleveraged their users.
        """
        self._expire(ts)
        return self.limit_at(market, ts, loss_cap)

    def limit_at(self, market: str, ts: int, loss_cap: int | None = None) -> tuple[int, AdlReason]:
        """:meth:`limit` read without moving the rolling window (queries, stress tests):
        buckets older than the window are skipped instead of expired, and the
        current balance counts as a peak."""
        oldest = (ts - self.policy.window_ms) // _MINUTE_MS
        free = self.balance - self.reserved_total
        peak = self.balance  # the highest balance in the window (a loop: no lists built)
        for m, b in self._peaks:
            if m >= oldest and b > peak:
                peak = b
        floor = ceil_div(peak * (PPM - self.policy.drawdown_limit_ppm), PPM)
        drawdown = self.balance - floor - self.reserved_total
        cap = drawdown
        if loss_cap is not None:
            used = self._reserved_by_market.get(market, 0)
            losses = self._losses.get(market)
            if losses is not None:
                for m, x in losses:
                    if m >= oldest:
                        used += x
            cap = loss_cap - used
        room = min(free, drawdown, cap)
        if free <= 0 or free == room:
            reason = AdlReason.FUND_EMPTY
        elif loss_cap is not None and cap <= drawdown:
            reason = AdlReason.MARKET_CAP
        else:
            reason = AdlReason.DRAWDOWN_LIMIT
        return max(room, 0), reason

    # --- inputs ---------------------------------------------------------------

    def inject(self, amount: int, cause: str, ts: int) -> LedgerEntry:
        """Seed capital: the only way units enter a fund from outside a market."""
        check_positive(amount, "amount")
        if self.injected + amount > SUPPLY_CAP:
            raise Rejected.invalid(
                "amount", f"{self.asset} fund injections would pass the supply cap of {SUPPLY_CAP}"
            )
        if not cause.isascii() or len(cause) > 128:
            raise Rejected.invalid("cause", "must be ASCII, at most 128 characters")
        self.injected += amount
        return self._book(FundKind.INJECTION, "", cause, amount, ts)

    def credit(self, c: FundCredit) -> None:
        if c.amount < 0:  # a market bug: never let units vanish quietly
            raise AssertionError(f"negative fund credit {c}")
        if c.amount:
            self._book(c.kind, c.market, c.cause, c.amount, c.ts)

    def takeover(self, claim: TakeoverClaim) -> FundDecision:
        cause = f"liq:{claim.market}:{claim.liquidation_id}"
        self._report(claim.ts).liquidation_volume += claim.notional
        if claim.fee:
            self._book(FundKind.LIQUIDATION_FEE, claim.market, cause, claim.fee, claim.ts)
        budget, reason = self.limit(claim.market, claim.ts, claim.loss_cap)
        share = waterfall(-claim.shortfall, claim.notional, 0, budget)
        if share.uncovered:
            # It pays what it may; held like a book-mode reservation until the
            # ADL of the rest settles the exact amount (ReserveSettle).
            self._hold(claim.market, claim.liquidation_id, share.paid)
            return FundDecision(
                market=claim.market,
                liquidation_id=claim.liquidation_id,
                absorbed=False,
                granted=share.paid,
                reason=reason,
            )
        if claim.shortfall:
            self._book(FundKind.SHORTFALL, claim.market, cause, -claim.shortfall, claim.ts)
        granted = min(claim.margin_wanted, budget - claim.shortfall)
        if granted:
            self._book(FundKind.BACKSTOP_MARGIN, claim.market, cause, -granted, claim.ts)
        return FundDecision(
            market=claim.market, liquidation_id=claim.liquidation_id, absorbed=True, granted=granted
        )

    def reserve(self, claim: ReserveClaim) -> FundDecision:
        self._report(claim.ts).liquidation_volume += claim.notional
        budget, reason = self.limit(claim.market, claim.ts, claim.loss_cap)
        granted = min(claim.wanted, budget)
        self._hold(claim.market, claim.liquidation_id, granted)
        return FundDecision(
            market=claim.market,
            liquidation_id=claim.liquidation_id,
            absorbed=True,
            granted=granted,
            reason=reason if granted < claim.wanted else None,
        )

    def _hold(self, market: str, liquidation_id: int, amount: int) -> None:
        """Earmark ``amount`` for one liquidation: counted as spent until settled."""
        if amount:
            self.reserved[(market, liquidation_id)] = amount
            self.reserved_total += amount
            by_market = self._reserved_by_market
            by_market[market] = by_market.get(market, 0) + amount

    def settle(self, s: ReserveSettle) -> None:
        held = self.reserved.pop((s.market, s.liquidation_id), 0)
        if held != s.reserved or s.shortfall > held:
            raise AssertionError(f"settlement {s} does not match reservation {held}")
        self.reserved_total -= held
        if held:
            self._reserved_by_market[s.market] -= held
        cause = f"liq:{s.market}:{s.liquidation_id}"
        if s.fee:
            self._book(FundKind.LIQUIDATION_FEE, s.market, cause, s.fee, s.ts)
        if s.shortfall:
            self._book(FundKind.SHORTFALL, s.market, cause, -s.shortfall, s.ts)

    def process(self, effects: Sequence[FundEffect]) -> list[FundDecision]:
        """Apply a market's fund effects in order; return the decisions on its claims.

        One call per batch of effects keeps their order exactly as the market
        produced them, in-process and across actors alike.
        """
        decisions: list[FundDecision] = []
        for e in effects:
            match e:
                case FundCredit():
                    self.credit(e)
                case TakeoverClaim():
                    decisions.append(self.takeover(e))
                case ReserveClaim():
                    decisions.append(self.reserve(e))
                case ReserveSettle():
                    self.settle(e)
        return decisions

    def take_flows(self) -> list[FundFlow]:
        """Ledger entries booked since the last call, as events to publish."""
        flows, self._flows = self._flows, []
        return flows

    # --- ledger ---------------------------------------------------------------

    def _book(self, kind: FundKind, market: str, cause: str, amount: int, ts: int) -> LedgerEntry:
        report = self._report(ts)
        self.balance += amount
        if self.balance < 0:  # guarded by budget(); reaching this is a bug, not input
            raise AssertionError(f"fund {self.asset} would go negative")
        prev = self.ledger[-1].hash if self.ledger else GENESIS
        sequence = len(self.ledger) + 1
        # LedgerEntry.digest() of the entry, built once (no dataclasses.replace: a
        # cascade books two entries per liquidation).
        # link(prev, sequence, ts, kind.value, market, cause, amount, balance), the same
        # text built as one f-string (compiled: no tuple, map or join); ``_value_`` is
        # what the enum's ``value`` property returns, without running its Python code.
        text = f"{prev}|{sequence}|{ts}|{kind._value_}|{market}|{cause}|{amount}|{self.balance}"
        hash_ = line_hash(text.encode())
        entry = LedgerEntry(sequence, ts, kind, market, cause, amount, self.balance, prev, hash_)
        self.ledger.append(entry)
        self._flows.append(
            FundFlow(
                asset=self.asset,
                market=market,
                kind=kind,
                amount=amount,
                balance_after=self.balance,
                cause=cause,
                ts=ts,
            )
        )
        if amount > 0:
            self.total_inflow += amount
            report.inflow_by_kind[kind] = report.inflow_by_kind.get(kind, 0) + amount
        else:
            self.total_outflow -= amount
            report.outflow_by_kind[kind] = report.outflow_by_kind.get(kind, 0) - amount
            if kind in _OUTFLOWS:
                losses = self._losses.get(market)
                if losses is None:  # not setdefault: that builds a deque every time
                    losses = self._losses[market] = deque()
                self._bucket(losses, ts, -amount, add=True)
        report.closing_balance = self.balance
        self._bucket(self._peaks, ts, self.balance, add=False)
        return entry

    def _report(self, ts: int) -> DailyReport:
        day = ts // _DAY_MS
        report = self.reports.get(day)
        if report is None:
            report = DailyReport(day, self.balance, self.balance)
            self.reports[day] = report
        return report

    @staticmethod
    def _bucket(buckets: deque[tuple[int, int]], ts: int, value: int, *, add: bool) -> None:
        minute = ts // _MINUTE_MS
        if buckets and buckets[-1][0] >= minute:
            m, v = buckets[-1]
            buckets[-1] = (m, v + value if add else max(v, value))
        else:
            buckets.append((minute, value))

    def _expire(self, ts: int) -> None:
        oldest = (ts - self.policy.window_ms) // _MINUTE_MS
        self._bucket(self._peaks, ts, self.balance, add=False)
        while self._peaks and self._peaks[0][0] < oldest:
            self._peaks.popleft()
        for losses in self._losses.values():
            while losses and losses[0][0] < oldest:
                losses.popleft()
