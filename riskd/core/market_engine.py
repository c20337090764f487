"""One market's state machine: positions, marks, fills, funding, liquidations, ADL.

Sans-IO in the h11 sense: methods take inputs, mutate this market's state and
append :mod:`effects <riskd.core.events>` to :attr:`MarketEngine.effects`;
whoever owns the engine drains them and routes them (to the asset's fund, to
wallets, to subscribers).  Fund answers come back through
:meth:`MarketEngine.fund_decision`.  Nothing here does I/O, reads a clock or
touches another market.

Every input method validates completely before it mutates, so a
:class:`~riskd.core.errors.Rejected` leaves the state exactly as it was.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from mypy_extensions import mypyc_attr

from riskd.core import adl, fill_sanity
from riskd.core.cross_margin import Leg
from riskd.core.errors import Rejected
from riskd.core.events import (
    AccountLiquidation,
    AdlReason,
    AmendOrder,
    CancelOrder,
    CheckOrder,
    Effect,
    Fill,
    FundCredit,
    FundDecision,
    FundingRate,
    FundKind,
    LiquidationDone,
    LiquidationFill,
    MarginCall,
    MarketStatusChange,
    MarketStatusChanged,
    MarkGuardChanged,
    MarkGuardOverride,
    MarkPrice,
    SetMarginMode,
    WalletCredit,
)
from riskd.core.funding import funding_transfers
from riskd.core.liquidation import (
    Liquidation,
    bankruptcy_price,
)
from riskd.core.liquidation_index import LiquidationIndex
from riskd.core.liquidation_machine import Event, LiquidationMachine
from riskd.core.liquidator import Liquidator
from riskd.core.margin import (
    bankruptcy_threshold,
    initial_margin,
    liquidation_threshold,
    maintenance_margin,
    unrealised,
)
from riskd.core.mark_guard import GuardReason, MarkGuard, judge, stale
from riskd.core.market import MarketSpec
from riskd.core.market_status import TRANSITIONS, MarketStatus
from riskd.core.orders import BUY, SELL, Order, OrderBook
from riskd.core.pickling import DictPickled, FieldsPickled, restore
from riskd.core.position import BACKSTOP_ACCOUNT, NOT_INDEXED, Position, traded
from riskd.core.recent_ids import RecentIds, check_id, fingerprint
from riskd.core.risk_gate import decide, hold
from riskd.core.settlement import settle
from riskd.core.units import (
    INT64_MAX,
    PPM,
    ceil_div,
    check_int64,
    fits_int64,
    magnitude,
    short,
    sign,
)
from riskd.core.wallet import check_account

__all__ = ["MarketEngine", "PositionView"]

# MarketStatus is a Python enum: its members kept here are C statics in the
# compiled core, where ``status.trades`` is a generic attribute lookup.
_OPEN: Final = MarketStatus.OPEN
_CLOSE_ONLY: Final = MarketStatus.CLOSE_ONLY
_SETTLED: Final = MarketStatus.SETTLED


@dataclass(frozen=True, slots=True)
class PositionView(FieldsPickled):
    """A position as the query API shows it; prices 0 where undefined."""

    account: int
    market: str
    size: int
    entry_price: int
    margin: int
    unrealised: int
    margin_balance: int
    maintenance_margin: int
    initial_margin: int
    liquidation_price: int
    bankruptcy_price: int
    adl_quintile: int
    in_liquidation: bool
    cross: bool = False  # cross margin: ``margin`` is the position's band of the wallet


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class MarketEngine(DictPickled):
    """The state of one market, owned by exactly one actor."""

    def __init__(self, spec: MarketSpec) -> None:
        self.spec = spec
        self.mark: int | None = None
        self.positions: dict[int, Position] = {}
        # Liquidations, their stages and the index of live positions by trigger.
        self.machine = LiquidationMachine()
        self.liquidator = Liquidator(self)
        self.fee_pool = 0
        self.effects: list[Effect] = []
        # Trade ids of the fills applied lately: a reused one is refused.
        self.trade_ids = RecentIds()
        # ADL ranking per side, built at most once per input and reused by every
        # ADL that input causes; only ADL writes it (queries rank afresh).
        self._input = 0
        self._now = 0  # the current input's timestamp
        self._ranking: dict[bool, tuple[int, deque[Position]]] = {}
        # Lifecycle (an operator's decision) and the mark-price guard (automatic).
        self.status = MarketStatus.OPEN
        self.guard = MarkGuard()
        # Open orders and their reservations (riskd.core.orders); the long
        # side's total size (open interest), kept by _set and change.
        self.orders = OrderBook()
        self.open_interest = 0
        # Fills naming no open order (riskd_fills_unreserved_total).
        self.unreserved_fills = 0
        # Cross margin (riskd.core.cross_margin): the accounts in cross mode here,
        # and those whose account must be re-checked after this input.
        self.cross: set[int] = set()
        self.cross_due: set[int] = set()
        # Cross accounts in their margin-call band at their last re-check: called
        # once, again only after leaving it (every market of the account keeps it).
        self.cross_called: set[int] = set()
        # What a cross account's wallet can commit to its next order check here,
        # set by whoever routes it (Engine, the sequencer) just before; never
        # kept between inputs.
        self.cross_free: int | None = None

    def __setstate__(self, state: dict[str, object]) -> None:
        """Snapshots from before the liquidation machine kept its parts here."""
        if "machine" not in state:
            machine = LiquidationMachine()
            machine.index = state.pop("index")  # type: ignore[assignment]
            machine.active = state.pop("liquidations")  # type: ignore[assignment]
            machine.awaiting_adl = state.pop("_awaiting_adl")  # type: ignore[assignment]
            machine.next_id = state.pop("next_liquidation")  # type: ignore[assignment]
            machine.recount_cooling()
            state.pop("_ranked_stale", None)
            state["machine"] = machine
        state.setdefault("status", MarketStatus.OPEN)  # snapshots from before the lifecycle
        if "guard" not in state:
            guard = state["guard"] = MarkGuard()
            guard.good_mark = state.get("mark")  # type: ignore[assignment]
        if "orders" not in state:  # snapshots from before the risk gate
            state["orders"] = OrderBook()
            state["unreserved_fills"] = 0
            positions: dict[int, Position] = state["positions"]  # type: ignore[assignment]
            state["open_interest"] = sum(p.size for p in positions.values() if p.size > 0)
        state.setdefault("cross_free", None)
        state.setdefault("cross_called", set())  # snapshots from before cross margin calls
        state.pop("cross_leverage", None)  # kept by cross margin before its compiled form
        restore(self, state)
        if "cross" not in state:  # snapshots from before cross margin
            self.cross, self.cross_due = set(), set()
        if "liquidator" not in state:
            self.liquidator = Liquidator(self)
        self.machine.index.adopt(self.positions)  # an older snapshot's index keys

    @property
    def index(self) -> LiquidationIndex:
        """Live positions by the mark that liquidates them (read-only here)."""
        return self.machine.index

    @property
    def liquidations(self) -> dict[int, Liquidation]:
        """Liquidations in progress by id (read-only here: the machine changes them)."""
        return self.machine.active

    @property
    def next_liquidation(self) -> int:
        return self.machine.next_id

    @property
    def asset(self) -> str:
        return self.spec.asset.symbol

    @property
    def symbol(self) -> str:
        return self.spec.symbol

    @property
    def guard_mark(self) -> int | None:
        """The mark pre-trade checks use: the newest while the guard is off, else
        the last good one (None before the first good mark)."""
        return self.guard.good_mark if self.guard.reason is not None else self.mark

    @property
    def guarded(self) -> bool:
        """Whether the mark-price guard is on (liquidations paused)."""
        return self.guard.reason is not None

    def _begin(self, ts: int) -> None:
        """A new input: cached ADL rankings describe an older state."""
        if self.status is _SETTLED:
            raise Rejected.precondition("market", f"{self.symbol} is settled (delisted)")
        self._input += 1
        self._now = ts

    def take_effects(self) -> list[Effect]:
        effects, self.effects = self.effects, []
        return effects

    # --- inputs -----------------------------------------------------------------

    def mark_price(self, m: MarkPrice) -> None:
        """A new mark, judged by the mark-price guard (:mod:`riskd.core.mark_guard`)."""
        self._begin(m.ts)
        self._check_price(m.price, "price")
        if m.index_price < 0 or m.index_price > INT64_MAX:
            raise Rejected.invalid(
                "index_price", f"must be 0 (none) or a price > 0, got {m.index_price}"
            )
        spec, guard = self.spec, self.guard
        previous, self.mark = self.mark, m.price
        if m.ts:
            guard.mark_ts = m.ts
        wrong = None
        if spec.mark_max_jump_ppm or spec.mark_max_divergence_ppm:
            wrong = judge(
                previous,
                m.price,
                m.index_price,
                spec.mark_max_jump_ppm,
                spec.mark_max_divergence_ppm,
            )
        good, reason = guard.good_mark, guard.reason
        if wrong is None and reason is None:
            guard.good_mark = m.price  # the every-tick path: nothing else to do
        elif reason is GuardReason.ADMIN:
            pass  # held on by an operator until cleared
        elif wrong is None:
            guard.good_mark = m.price
            self._guard_reason(None, m.ts, m.index_price)
        else:
            self._guard_reason(wrong, m.ts, m.index_price)
        self.scan(m.ts)
        # Margin calls follow good marks only, from the last good one.
        if good is not None and spec.margin_call_ppm and guard.reason is None:
            self._margin_calls(good, m.ts)

    def _guard_reason(self, reason: GuardReason | None, ts: int, index: int = 0) -> None:
        """Set the guard's reason, publishing a change."""
        guard = self.guard
        if reason is guard.reason:
            return
        guard.reason = reason
        self.effects.append(
            MarkGuardChanged(
                market=self.symbol,
                reason="" if reason is None else reason.value,
                mark=self.mark or 0,
                good_mark=guard.good_mark or 0,
                index_price=index,
                ts=ts,
            )
        )

    def _check_stale(self, ts: int) -> bool:
        """Guard a mark that has not moved for ``mark_stale_after_ms``; whether guarded."""
        guard = self.guard
        if guard.reason is None and stale(guard.mark_ts, ts, self.spec.mark_stale_after_ms):
            self._guard_reason(GuardReason.STALE, ts)
        return guard.reason is not None

    def override_guard(self, o: MarkGuardOverride) -> None:
        """An operator clears the guard (the newest mark is good) or holds it on."""
        self._begin(o.ts)
        if o.hold:
            self._guard_reason(GuardReason.ADMIN, o.ts)
            return
        if self.mark is None:
            raise Rejected.precondition("market", f"{self.symbol} has no mark price yet")
        if self.guard.reason is None:
            raise Rejected.precondition("market", f"{self.symbol}'s mark is not guarded")
        self.guard.good_mark = self.mark
        if o.ts:
            self.guard.mark_ts = o.ts  # the operator vouches for it now: not stale
        self._guard_reason(None, o.ts)
        self.scan(o.ts)

    def set_status(self, c: MarketStatusChange) -> None:
        """An operator opens, halts or sets the market close-only."""
        self._begin(c.ts)
        try:
            status = MarketStatus(c.status)
        except ValueError:
            raise Rejected.invalid("status", f"unknown status {c.status!r}") from None
        if status is MarketStatus.SETTLED:
            raise Rejected.invalid("status", "a market is settled by SettleMarket, with a price")
        if status is self.status:
            raise Rejected.precondition("status", f"{self.symbol} is already {status.value}")
        if status not in TRANSITIONS[self.status]:
            raise Rejected.precondition(
                "status", f"{self.symbol} cannot go from {self.status.value} to {status.value}"
            )
        previous, self.status = self.status, status
        self.effects.append(
            MarketStatusChanged(
                market=self.symbol, status=status.value, previous=previous.value, ts=c.ts
            )
        )

    def settle(
        self, price: int, ts: int, deficits: Mapping[int, int] | None = None
    ) -> dict[int, int]:
        """Final settlement at ``price`` (:mod:`riskd.core.settlement`); what is left
        of each cross account's band (its cross wallet takes it)."""
        self._begin(ts)
        left = settle(self, price, ts, deficits)
        self.orders = OrderBook()  # a delisted market's orders are gone with it
        return left

    def cross_open(self) -> list[int]:
        """The cross accounts with a position here, in order."""
        return sorted(a for a in self.cross if a in self.positions)

    def fill(self, f: Fill) -> None:
        """Apply both sides of a trade (open, increase, reduce, close or flip).

        A fill is the whole trade, so its ``trade_id`` names one fill: an id
        this market applied lately (see :mod:`riskd.core.recent_ids`) is
        refused, FAILED_PRECONDITION on ``trade_id``, once the fill is
        otherwise well-formed and before anything about the accounts is
        checked.  Id 0 is "not given" and never checked.
        """
        self._begin(f.ts)
        self._check_price(f.price, "price")
        self._check_quantity(f.quantity, "quantity")
        check_id(f.trade_id, "trade_id")
        check_id(f.buyer_order_id, "buyer_order_id")
        check_id(f.seller_order_id, "seller_order_id")
        self._check_account(f.buyer, "buyer_account")
        self._check_account(f.seller, "seller_account")
        if f.buyer == f.seller:
            raise Rejected.invalid("seller_account", "buyer and seller are the same account")
        self._check_fee(f.buyer_fee, "buyer")
        self._check_fee(f.seller_fee, "seller")
        payload = 0
        if f.trade_id:  # the trade without its id and timestamp
            payload = fingerprint(f.buyer, f.seller, f.price, f.quantity, f.buyer_fee, f.seller_fee)
            self.trade_ids.check(f.trade_id, payload, "trade_id", "fill")
        status = self.status  # MarketStatus.trades, without the enum's attribute lookup
        if not (status is _OPEN or status is _CLOSE_ONLY):  # after the id: a resend first
            raise Rejected.precondition("market", f"{self.symbol} is {self.status.value}")
        # Each side's value rounds against it; the residue goes to the fee pool.
        bought = self.spec.side_value(f.quantity, f.price)
        sold = self.spec.side_value(-f.quantity, f.price)
        buyer, buyer_after = self._plan(f.buyer, f.quantity, bought, f.buyer_fee, "buyer_account")
        seller, seller_after = self._plan(
            f.seller, -f.quantity, sold, f.seller_fee, "seller_account"
        )
        if self.spec.fill_price_band_ppm:
            fill_sanity.check_price(self.spec, self.mark, f.price, f.buyer, f.seller)
            # A cross side's margin is only its band (the account is re-checked after).
            # (An empty set first: most markets have no cross account, and a
            # membership test boxes and hashes the account.)
            spec, mark, cross = self.spec, self.mark, self.cross
            if not (cross and f.buyer in cross):
                size, threshold = buyer_after[0], buyer_after[3]
                fill_sanity.check_side(spec, mark, f.buyer, size, threshold, "buyer_account")
            if not (cross and f.seller in cross):
                size, threshold = seller_after[0], seller_after[3]
                fill_sanity.check_side(spec, mark, f.seller, size, threshold, "seller_account")
        self.trade_ids.remember(f.trade_id, payload)  # nothing below refuses
        self.fee_pool += bought + sold
        self._commit(buyer, buyer_after)
        self._commit(seller, seller_after)
        if f.buyer_fee or f.seller_fee:
            cause = f"trade:{f.trade_id}"
            self._take_fee(f.buyer_fee, cause, f.ts)
            self._take_fee(f.seller_fee, cause, f.ts)
        bought_from_order = self._fill_order(f.buyer_order_id, f.buyer, BUY, f.quantity)
        sold_from_order = self._fill_order(f.seller_order_id, f.seller, SELL, f.quantity)
        if not (bought_from_order and sold_from_order):
            self.unreserved_fills += 1
        self._after_trade(buyer, f.ts)
        self._after_trade(seller, f.ts)
        self.scan(f.ts)

    def _fill_order(self, order_id: int, account: int, side: int, quantity: int) -> bool:
        """Release what a fill used of the side's open order; False: it named none.

        The backstop trades without orders (its fills count as reserved).
        A fill that names no open order of its account and side still
        happened: it is applied, and counted as unreserved.
        """
        if account == BACKSTOP_ACCOUNT:
            return True
        order = self.orders.get(order_id) if order_id else None
        if order is None or order.account != account or order.side != side:
            return False
        self.orders.fill(order_id, quantity)
        return True

    def check_order(self, c: CheckOrder) -> None:
        """The pre-trade check (:mod:`riskd.core.risk_gate`): the order is open and
        its margin reserved, or it is refused and nothing changes.

        An ``order_id`` already open with the same terms is that order again
        (a retried check): accepted, nothing more reserved.
        """
        cross_free, self.cross_free = self.cross_free, None
        self._begin(c.ts)
        self._check_order_id(c.order_id)
        check_account(c.account, "account")
        if c.side != BUY and c.side != SELL:
            raise Rejected.invalid("side", f"must be buy (1) or sell (-1), got {c.side}")
        self._check_price(c.price, "price")
        self._check_quantity(c.quantity, "quantity")
        if not 0 <= c.leverage <= PPM:
            raise Rejected.invalid(
                "leverage", f"must be 0 (the tier's maximum) or 1..1000000, got {c.leverage}"
            )
        held = self.orders.get(c.order_id)
        if held is not None:
            if (
                held.account,
                held.side,
                held.price,
                held.quantity,
                held.post_only,
                held.leverage,
            ) == (
                c.account,
                c.side,
                c.price,
                c.quantity,
                c.post_only,
                c.leverage,
            ):
                return
            raise Rejected.precondition(
                "order_id", f"order {c.order_id} is already open in {self.symbol} with other terms"
            )
        order = Order(
            c.order_id,
            c.account,
            c.side,
            c.price,
            c.quantity,
            c.reduce_only,
            c.post_only,
            c.leverage,
            0,
        )
        self._decide(order, None, cross_free)
        self.orders.add(order)

    def amend_order(self, a: AmendOrder) -> None:
        """An open order's new price and remaining quantity, checked as a new one would be;
        refused, the order stays as it was."""
        cross_free, self.cross_free = self.cross_free, None
        self._begin(a.ts)
        self._check_order_id(a.order_id)
        self._check_price(a.price, "price")
        self._check_quantity(a.quantity, "quantity")
        old = self._open_order(a.order_id)
        new = Order(
            old.order_id,
            old.account,
            old.side,
            a.price,
            a.quantity,
            old.reduce_only,
            old.post_only,
            old.leverage,
            0,
        )
        self._decide(new, old, cross_free)
        self.orders.remove(old.order_id)
        self.orders.add(new)

    def _decide(self, order: Order, replacing: Order | None, given: int | None) -> None:
        """The risk gate's answer for ``order`` (replacing ``replacing``, an amend)
        set on it, or :class:`OrderRefused`.  ``given``: what the router worked
        out a cross account may commit (None: no figure; a market driven alone
        commits nothing for a cross account)."""
        cross_free = None if order.account not in self.cross else (0 if given is None else given)
        order.margin, order.reduce_only = decide(
            self.spec,
            self.status,
            self.guard_mark,
            self.positions.get(order.account),
            self.orders,
            self.open_interest,
            order,
            replacing,
            cross_free,
        )

    def cross_order_account(self, x: object) -> int | None:
        """The cross account an order check or amend here is for (None: not one):
        its router works out :attr:`cross_free` first."""
        if type(x) is CheckOrder:
            account = x.account
        elif type(x) is AmendOrder:
            order = self.orders.get(x.order_id)
            if order is None:
                return None
            account = order.account
        else:
            return None
        return account if account in self.cross else None

    def cross_reserved(self, account: int) -> int:
        """What the account's open orders here hold of its cross wallet (0: isolated here)."""
        return self.held(account) if account in self.cross else 0

    def held(self, account: int) -> int:
        """What the account's open orders here hold now: re-priced at the gate's mark
        (:func:`riskd.core.risk_gate.hold`), never less than their reservations."""
        mark = self.guard_mark
        if mark is None or not self.orders.count(account):
            return self.orders.reserved(account)
        pos = self.positions.get(account)
        return hold(self.spec, pos.size if pos else 0, self.orders.of(account), mark)

    def cancel_order(self, c: CancelOrder) -> None:
        """An open order left the book: its reservation is released."""
        self._begin(c.ts)
        self._check_order_id(c.order_id)
        self.orders.remove(self._open_order(c.order_id).order_id)

    def _open_order(self, order_id: int) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise Rejected.not_found("order_id", f"no open order {order_id} in {self.symbol}")
        return order

    @staticmethod
    def _check_order_id(order_id: int) -> None:
        if order_id == 0:
            raise Rejected.invalid("order_id", "is required (> 0)")
        check_id(order_id, "order_id")

    def check_margin_credit(self, account: int, amount: int) -> None:
        """Validate a wallet → margin transfer before the wallet is debited."""
        if self.status is _SETTLED:
            raise Rejected.precondition("market", f"{self.symbol} is settled (delisted)")
        self._check_account(account, "account")
        if amount <= 0:
            raise Rejected.invalid("amount", f"must be > 0, got {amount}")
        self._check_isolated(account)
        pos = self.positions.get(account)
        if (pos.margin if pos else 0) + amount > INT64_MAX:
            raise Rejected.invalid("amount", "isolated margin would overflow int64")

    def credit_margin(self, account: int, amount: int, ts: int) -> None:
        """Wallet → isolated margin; the wallet has already been debited."""
        self._begin(ts)
        self.check_margin_credit(account, amount)
        pos = self.positions.get(account)
        if pos is None:
            pos = self.positions[account] = Position(account)
        self._set(pos, pos.size, pos.basis, pos.margin + amount)

    def withdraw_margin(self, account: int, amount: int, ts: int) -> None:
        """Isolated margin → wallet, refused if it would take needed margin or profit."""
        self._begin(ts)
        self._check_account(account, "account")
        if amount <= 0:
            raise Rejected.invalid("amount", f"must be > 0, got {amount}")
        self._check_isolated(account)
        pos = self.positions.get(account)
        if pos is None:
            raise Rejected.not_found("account", f"no margin for account {account} in {self.symbol}")
        if pos.liquidation:
            raise Rejected.precondition("account", "position is being liquidated")
        if pos.size and self.guard.reason is not None:
            raise Rejected.precondition(
                "market",
                f"{self.symbol}'s mark is guarded ({self.guard.reason.value}): margin stays",
            )
        # Open orders keep what they hold at the mark (riskd.core.risk_gate.hold).
        free = pos.margin - self.held(account)
        if pos.size:
            if self.mark is None:
                raise Rejected.precondition("market", f"{self.symbol} has no mark price yet")
            u = unrealised(self.spec, pos, self.mark)
            free += min(u, 0) - initial_margin(self.spec, pos, self.mark)
        if amount > free:
            raise Rejected.precondition(
                "amount",
                f"{amount} exceeds the {max(free, 0)} free in the isolated margin"
                " (initial margin and open orders' reservations stay)",
            )
        self._set(pos, pos.size, pos.basis, pos.margin - amount)
        self.effects.append(
            WalletCredit(account=account, asset=self.asset, amount=amount, cause="margin_transfer")
        )
        if pos.size == 0 and pos.margin == 0:
            del self.positions[account]
            self.cross_called.discard(account)

    def set_margin_mode(self, x: SetMarginMode) -> None:
        """Switch an account's margin mode here; only while it holds nothing here
        (Binance's rule): no position, no isolated margin, no liquidation."""
        self._begin(x.ts)
        self._check_account(x.account, "account")
        if x.account == BACKSTOP_ACCOUNT:
            raise Rejected.invalid("account", "the backstop's positions are isolated")
        if (x.account in self.cross) == x.cross:
            return
        if self.orders.reserved(x.account) or self.orders.of(x.account):
            raise Rejected.precondition(
                "cross",
                f"account {x.account} has open orders in {self.symbol}: their margin is held"
                " in the mode they were checked in (cancel them first)",
            )
        pos = self.positions.get(x.account)
        if pos is not None:
            what = f"a position of {pos.size}" if pos.size else f"{pos.margin} isolated margin"
            raise Rejected.precondition(
                "cross",
                f"account {x.account} holds {what} in {self.symbol}: the margin mode"
                " changes only while flat (close it, or move the margin out, first)",
            )
        if x.cross:
            self.cross.add(x.account)
        else:
            self.cross.discard(x.account)

    def _check_isolated(self, account: int) -> None:
        if account in self.cross:
            raise Rejected.precondition(
                "market",
                f"account {account} trades {self.symbol} in cross margin: its wallet is the"
                " collateral (no margin transfer; deposit or withdraw instead)",
            )

    # --- cross margin: what the account's re-check reads and does ------------------

    def take_cross_due(self) -> list[int]:
        """The cross accounts to re-check after this input (sorted), and forget them."""
        due, self.cross_due = self.cross_due, set()
        return sorted(due)

    def cross_leg(self, account: int) -> Leg | None:
        """The account's cross position here, or None (not cross, or no position)."""
        if account not in self.cross:
            return None
        pos = self.positions.get(account)
        if pos is None:
            return None
        return Leg(
            self.symbol,
            self.spec,
            self.mark,
            pos.size,
            pos.basis,
            pos.margin,
            bool(pos.liquidation),
            self.guard.reason is not None,
            account in self.cross_called,
        )

    def allocate_cross(self, account: int, margin: int, called: bool | None = None) -> int:
        """Set the account's cross band here (and whether the account is in its
        margin-call band, unless None); returns what it took (+) or gave back (-)."""
        if called:
            self.cross_called.add(account)
        elif called is not None:
            self.cross_called.discard(account)
        pos = self.positions[account]
        delta = margin - pos.margin
        if delta:
            self._set(pos, pos.size, pos.basis, margin)
        return delta

    def cross_margin_call(self, call: MarginCall) -> None:
        """Publish a cross account's margin call (its re-check found it entering the band)."""
        self.effects.append(call)

    def liquidate_cross(
        self, account: int, ts: int, notice: AccountLiquidation | None = None
    ) -> None:
        """Liquidate the account's cross position here whole, with the margin it was
        given (:meth:`allocate_cross`), as an isolated one; ``notice``: the
        account's liquidation, published first (by the first market it closes in)."""
        self._begin(ts)
        if notice is not None:
            self.effects.append(notice)
        pos = self.positions[account]
        if not pos.liquidation and pos.size:
            self.liquidator.start(pos, ts, whole=True)
            self.orders.drop_account(account)  # as for an isolated one (scan)

    def update_spec(self, spec: MarketSpec, ts: int) -> None:
        """Change a live market's risk settings (tiers, fees, modes, caps, reduce-only).

        What positions are measured in (contract type, asset, decimals,
        contract value) cannot change under open positions.
        """
        self._begin(ts)
        old = self.spec
        for name in (
            "symbol",
            "contract_type",
            "asset",
            "price_decimals",
            "quantity_decimals",
            "contract_value",
        ):
            if getattr(spec, name) != getattr(old, name):
                raise Rejected.invalid(f"market.{name}", "cannot change on a live market")
        self.spec = spec
        for pos in list(self.positions.values()):
            self.machine.untrack(pos)
            self.machine.track(spec, pos)
        self.scan(ts)

    def funding(self, f: FundingRate) -> None:
        self._begin(f.ts)
        mark = self.guard_mark  # a guarded mark sets no payment: the last good one does
        if mark is None:
            raise Rejected.precondition("market", f"{self.symbol} has no good mark price yet")
        if not -(10**8) < f.rate_e8 < 10**8:
            raise Rejected.invalid("rate_e8", "funding rate must be within (-100 %, 100 %)")
        live = [p for p in self.positions.values() if p.size and not p.liquidation]
        deltas, residue = funding_transfers(self.spec, live, mark, f.rate_e8, self.cross)
        for account, delta in deltas.items():
            pos = self.positions[account]
            self._set(pos, pos.size, pos.basis, pos.margin + delta)
        self.fee_pool += residue
        self.scan(f.ts)

    def liquidation_fill(self, lf: LiquidationFill) -> None:
        """A book fill of a liquidation order (book mode)."""
        self._begin(lf.ts)
        liq = self._working(lf.liquidation_id)
        self._check_price(lf.price, "price")
        self._check_quantity(lf.quantity, "quantity")
        self._check_account(lf.counterparty, "counterparty_account")
        trader = self.positions[liq.account]
        if lf.counterparty == liq.account:
            raise Rejected.invalid("counterparty_account", "is the liquidated account")
        left = liq.quantity - liq.filled
        if lf.quantity > left:
            raise Rejected.invalid(
                "quantity", f"{lf.quantity} exceeds the {left} left to liquidate"
            )
        side = -sign(trader.size)  # the liquidation order's side
        if (lf.price - liq.worst_price) * side > 0:
            raise Rejected.invalid(
                "price", f"{lf.price} is worse than the order's worst price {liq.worst_price}"
            )
        qty = side * lf.quantity
        # As in a fill, each side's value rounds against it; the residue is the fee pool's.
        value = self.spec.side_value(qty, lf.price)
        cp_value = self.spec.side_value(-qty, lf.price)
        self._check_fee(lf.counterparty_fee, "counterparty")
        cp, cp_state = self._plan(
            lf.counterparty, -qty, cp_value, lf.counterparty_fee, "counterparty_account"
        )
        self._commit(cp, cp_state)
        self.fee_pool += value + cp_value
        self._take_fee(lf.counterparty_fee, f"liq:{self.symbol}:{liq.id}", lf.ts)
        self.change(trader, qty=qty, value=value)
        liq.filled += lf.quantity
        liq.filled_notional += abs(value)
        self._after_trade(cp, lf.ts)
        if trader.size == 0:
            self.liquidator.settle(liq, trader, liq.filled_notional, liq.price, 0, lf.ts)
        elif liq.filled == liq.quantity:
            self.liquidator.settle_step(liq, trader, lf.ts)
        self.scan(lf.ts)

    def liquidation_done(self, ld: LiquidationDone) -> None:
        """The book gave up on a liquidation order: the rest is auto-deleveraged."""
        self._begin(ld.ts)
        liq = self._working(ld.liquidation_id)
        pos = self.positions[liq.account]
        if liq.filled + abs(pos.size) > liq.quantity:
            # A partial step's order: what filled is settled and the rest of the
            # position, if still crossed, is liquidated whole at once.
            self.liquidator.settle_step(liq, pos, ld.ts, gave_up=True)
        else:
            liq.adl_reason = AdlReason.NO_BOOK
            self.machine.move(liq, Event.DELEVERAGE)
        self.scan(ld.ts)

    def _working(self, liquidation_id: int) -> Liquidation:
        """A book-mode liquidation whose order is in the book."""
        liq = self.machine.working(liquidation_id)
        if liq is None:
            raise Rejected.not_found(
                "liquidation_id", f"no working liquidation {liquidation_id} in {self.symbol}"
            )
        return liq

    # --- liquidation ------------------------------------------------------------

    def fund_decision(self, d: FundDecision, ts: int) -> None:
        """The fund's answer to a claim this market made."""
        self.liquidator.fund_decision(d, ts)

    def scan(self, ts: int) -> None:
        """Start liquidating every position the mark has crossed (none while guarded)."""
        if self.mark is None:
            return
        if self.guard.reason is not None or (
            self.spec.mark_stale_after_ms and self._check_stale(ts)
        ):
            return
        if self.machine.awaiting_adl:  # counterparties may have appeared since
            self.liquidator.retry_adl(ts)
        if self.machine.cooling_ids:
            self.liquidator.cool(ts)
        index = self.machine.index
        if not index.any_crossed(self.mark):  # the every-input path: nobody crossed
            return
        for account in index.crossed(self.mark):
            if account in self.cross:  # its band: the account is re-checked as a whole
                self.cross_due.add(account)
            else:
                self.liquidator.start(self.positions[account], ts)
                # The venue cancels a liquidated account's orders: nothing stays reserved.
                self.orders.drop_account(account)

    def _margin_calls(self, previous: int, ts: int) -> None:
        """Call the positions the mark's move brought within the band of their LP.

        A long is in the band when ``mark <= LP × (1 + d)``: the band's edge
        moves with the mark, so only positions between the old and the new
        edge are new to it: O(log n + k) like the liquidation scan.
        """
        assert self.mark is not None
        mark, d = self.mark, self.spec.margin_call_ppm
        entered = self.index.longs_between(mark * PPM // (PPM + d), previous * PPM // (PPM + d))
        entered += self.index.shorts_between(previous * PPM // (PPM - d), mark * PPM // (PPM - d))
        for account in entered:
            pos = self.positions[account]
            if account in self.cross:
                # Its band came within the distance: the account decides, at a re-check.
                self.cross_due.add(account)
            elif not pos.is_backstop:
                self._margin_call(pos, ts)

    def _margin_call(self, pos: Position, ts: int) -> None:
        spec, mark = self.spec, self.mark
        assert mark is not None
        self.effects.append(
            MarginCall(
                market=self.symbol,
                account=pos.account,
                margin_balance=pos.margin + unrealised(spec, pos, mark),
                maintenance_margin=maintenance_margin(spec, pos, mark),
                liquidation_price=self._liquidation_price(pos),
                ts=ts,
            )
        )

    # --- position bookkeeping ---------------------------------------------------

    def _plan(
        self, account: int, qty: int, value: int, fee: int, field: str
    ) -> tuple[Position, tuple[int, int, int, int]]:
        """Check one side of a trade; return its position and (size, basis, margin,
        threshold) after: the threshold it will be indexed at, computed once for the
        fill's sanity check and the index.

        ``field`` names the side's account in a refusal.  The fee has been
        checked (:meth:`_check_fee`).
        """
        pos = self.positions.get(account)
        if pos is None:
            pos = Position(account)
        if pos.liquidation:
            raise Rejected.precondition(field, f"account {account} is being liquidated")
        was = pos.size
        size, basis, realised = traded(was, pos.basis, qty, value)
        margin = pos.margin + realised - fee
        # Grows: larger, or flipped to the other side.
        flipped = was != 0 and size != 0 and (size > 0) != (was > 0)
        grows = magnitude(size) > magnitude(was) or flipped
        backstop = account == BACKSTOP_ACCOUNT
        if grows and (self.spec.reduce_only or backstop or self.status is not _OPEN):  # .grows
            why = (
                "the backstop only reduces"
                if backstop
                else "market is reduce-only"
                if self.spec.reduce_only
                else f"market is {self.status.value}"
            )
            raise Rejected.precondition(field, f"{self.symbol}: {why}")
        cross = bool(self.cross) and account in self.cross
        if margin < 0 and (size == 0 or not cross):
            what = "cross allocation here" if cross else "isolated margin"
            raise Rejected.precondition(
                field,
                f"account {account}'s {what} would go negative ({margin}):"
                " the price is beyond its bankruptcy price or the fee exceeds its margin",
            )
        if cross and size and self.mark is not None:
            adds = magnitude(size) > magnitude(was) and (was == 0 or (was > 0) == (size > 0))
            if not adds:
                self._check_cross_band(pos, size, basis, margin, fee, field)
        if not (short(size) and short(basis) and short(margin)):
            for name, v in (("quantity", size), ("price", basis), (field, margin)):
                if abs(v) > INT64_MAX:
                    raise Rejected.invalid(
                        name, f"position of account {account} would overflow int64"
                    )
        threshold = LiquidationMachine.threshold_for(self.spec, account, size, basis, margin)
        return pos, (size, basis, margin, threshold)

    def _check_cross_band(
        self, pos: Position, size: int, basis: int, margin: int, fee: int, field: str
    ) -> None:
        """A cross band may be negative, but a reduction or flip (its fee aside) must
        not take the band's margin balance at the mark below zero: the price is
        then beyond what the account put behind this position.  (What a new or
        larger position needs comes from the wallet at the account's re-check.)"""
        mark = self.mark
        assert mark is not None
        before = pos.margin + unrealised(self.spec, pos, mark) if pos.size else 0
        trial = Position(pos.account)
        trial.size, trial.basis, trial.margin = size, basis, margin
        after = trial.margin + unrealised(self.spec, trial, mark)
        if after < 0 and after < min(before, 0) - fee:
            raise Rejected.precondition(
                field,
                f"account {pos.account}'s cross band in {self.symbol} would be {after} at the"
                f" mark {mark} after this fill: the price is beyond its collateral here",
            )

    def _commit(self, pos: Position, after: tuple[int, int, int, int]) -> None:
        """Apply a planned trade side (:meth:`_plan`); a new position is only stored now."""
        new = pos.size == 0
        if new:
            self.positions.setdefault(pos.account, pos)
        size, basis, margin, threshold = after
        self._set_at(pos, size, basis, margin, threshold)
        cross = self.cross
        if not (cross and pos.account in cross):
            return
        if new or (
            pos.threshold != NOT_INDEXED and self._in_call_band(pos.size > 0, pos.threshold)
        ):
            # A new cross position holds no band yet; a fill that took one within
            # the margin-call distance of its band's edge may call the account.
            # Either way the account is re-checked now (a band crossed outright is
            # the scan's, after the fill); a fill leaving the band clear costs nothing.
            self.cross_due.add(pos.account)

    def _set(self, pos: Position, size: int, basis: int, margin: int) -> None:
        """Change a position's numbers; a margin call if that moved it into the band."""
        threshold = (
            NOT_INDEXED
            if pos.liquidation
            else LiquidationMachine.threshold_for(self.spec, pos.account, size, basis, margin)
        )
        self._set_at(pos, size, basis, margin, threshold)

    def _set_at(self, pos: Position, size: int, basis: int, margin: int, new: int) -> None:
        """:meth:`_set` with the threshold of the new numbers known (``new``)."""
        threshold, long = pos.threshold, pos.size > 0
        was_called = threshold != NOT_INDEXED and self._in_call_band(long, threshold)
        self.open_interest += max(size, 0) - max(pos.size, 0)
        pos.size, pos.basis, pos.margin = size, basis, margin
        self.machine.reindex(pos, long, new)
        threshold = new
        if (
            threshold != NOT_INDEXED
            and not was_called
            and pos.account != BACKSTOP_ACCOUNT
            and not (self.cross and pos.account in self.cross)
            and self._in_call_band(size > 0, threshold)
        ):
            self._margin_call(pos, self._now)

    def _in_call_band(self, long: bool, threshold: int) -> bool:
        """Whether the position indexed at ``threshold`` is within the margin-call band."""
        d, mark = self.spec.margin_call_ppm, self.mark
        if not d or mark is None:
            return False
        if long:
            return threshold >= mark * PPM // (PPM + d)
        return threshold <= mark * PPM // (PPM - d)

    def _take_fee(self, fee: int, cause: str, ts: int) -> None:
        if not fee:
            return
        share = fee * self.spec.fund_fee_share_ppm // 1_000_000
        self.fee_pool += fee - share
        if share:
            self.effects.append(
                FundCredit(
                    asset=self.asset,
                    market=self.symbol,
                    kind=FundKind.TRADING_FEE,
                    amount=share,
                    cause=cause,
                    ts=ts,
                )
            )

    def _after_trade(self, pos: Position, ts: int) -> None:
        if pos.size == 0 and not pos.liquidation:
            self.sweep(pos, ts)

    def sweep(self, pos: Position, ts: int) -> None:
        """A flat position's margin returns to its owner; the record goes.

        What its open orders reserve stays, in the flat position, until they
        are filled or cancelled and the owner moves it out.
        """
        if pos.margin < 0:
            raise AssertionError(f"{self.symbol}: {pos} would leave with negative margin")
        self.machine.untrack(pos)
        # A cross position's margin is its band of the wallet: it all goes back.
        keep = (
            0 if pos.account in self.cross else min(pos.margin, self.orders.reserved(pos.account))
        )
        if keep:
            if pos.margin > keep:
                self.effects.append(
                    WalletCredit(
                        account=pos.account,
                        asset=self.asset,
                        amount=pos.margin - keep,
                        cause="close",
                    )
                )
            pos.margin = keep
            return
        if pos.margin:
            if pos.is_backstop:
                self.sweep_backstop_margin(pos.margin, ts)
            else:
                self.effects.append(
                    WalletCredit(
                        account=pos.account, asset=self.asset, amount=pos.margin, cause="close"
                    )
                )
        pos.margin = 0
        self.positions.pop(pos.account, None)
        self.cross_called.discard(pos.account)
        if pos.account in self.cross:
            self.cross_due.add(pos.account)

    def sweep_backstop_margin(self, amount: int, ts: int) -> None:
        if amount:
            self.effects.append(
                FundCredit(
                    asset=self.asset,
                    market=self.symbol,
                    kind=FundKind.BACKSTOP_RETURN,
                    amount=amount,
                    cause="backstop",
                    ts=ts,
                )
            )

    def change(self, pos: Position, *, qty: int = 0, value: int = 0, margin: int = 0) -> int:
        """Trade ``qty`` for ``value`` and move ``margin`` into ``pos``; returns the realised PnL.

        With :meth:`_set` (:meth:`_set_at`), the only way a position's numbers change: out of
        the index first, back in after (a frozen one stays out), so the index
        can never describe a position that moved.
        """
        was = pos.size
        realised = pos.trade(qty, value) if qty else 0
        self.open_interest += max(pos.size, 0) - max(was, 0)
        pos.margin += realised + margin
        self.machine.retrack(self.spec, pos, was > 0)
        return realised

    def ranked_for_adl(self, long: bool) -> deque[Position]:
        """ADL order of one side at the mark, for ADL.

        Built once per input and reused by all the ADL it causes (a cascade
        would otherwise re-rank the market for each bankrupt position).
        """
        cached = self._ranking.get(long)
        if cached is not None and cached[0] == self._input:
            # Positions closed since are dropped from the front as they are met.
            ranked = cached[1]
            while ranked and (ranked[0].size == 0 or ranked[0].liquidation):
                ranked.popleft()
            return ranked
        ranked = self._rank(long)
        self._ranking[long] = (self._input, ranked)
        return ranked

    def _rank(self, long: bool) -> deque[Position]:
        """One side in ADL order at the mark, built now (writes nothing: queries use it)."""
        mark = self.mark or 1
        side = [
            p
            for p in self.positions.values()
            if p.size and (p.size > 0) == long and not p.liquidation and not p.is_backstop
        ]
        # A cross position's band holds its notional's share of its account's
        # equity, so it ranks with the account's leverage (BitMEX, Bybit).
        ranked = deque(adl.rank(self.spec, side, mark))
        backstop = self.positions.get(BACKSTOP_ACCOUNT)
        if backstop and backstop.size and (backstop.size > 0) == long:
            ranked.append(backstop)  # the fund's inventory is the last resort
        return ranked

    # --- validation -------------------------------------------------------------

    def _check_price(self, price: int, field: str) -> None:
        why = self.spec.check_price(price)
        if why:
            raise Rejected.invalid(field, why)

    @staticmethod
    def _check_fee(fee: int, who: str) -> None:
        if fee >= 0 and fits_int64(fee):
            return
        if fee < 0:
            raise Rejected.invalid(f"{who}_fee", "fees must be >= 0")
        check_int64(fee, f"{who}_fee")

    def _check_quantity(self, qty: int, field: str) -> None:
        why = self.spec.check_quantity(qty)
        if why:
            raise Rejected.invalid(field, why)

    @staticmethod
    def _check_account(account: int, field: str) -> None:
        if account != BACKSTOP_ACCOUNT:
            check_account(account, field)

    # --- queries ----------------------------------------------------------------

    def _liquidation_price(self, pos: Position) -> int:
        """The first tick at which the mark liquidates ``pos`` (marks are ticks); 0: never.

        A long is crossed at marks at or below its threshold, so the tick at or
        below it; a short the tick at or above.
        """
        spec, tick = self.spec, self.spec.tick_size
        # The backstop is liquidated at bankruptcy (see _index).
        threshold = bankruptcy_threshold if pos.is_backstop else liquidation_threshold
        t = threshold(spec, pos)
        return _wire_price((t // tick) * tick if pos.size > 0 else ceil_div(t, tick) * tick)

    def view(self, account: int) -> PositionView | None:
        pos = self.positions.get(account)
        if pos is None:
            return None
        spec, mark = self.spec, self.mark
        entry = lp = bp = u = mm = im = 0
        quintile = 0
        if pos.size:
            num, den = spec.value(pos.size, 1)
            # value(q, E) = basis: E = basis/(q k) (linear) or -q*inv/(basis*qd) (inverse)
            if spec.is_linear:
                entry = pos.basis * den // num
            elif pos.basis:
                entry = num // (pos.basis * den)
            lp = self._liquidation_price(pos)
            bp = bankruptcy_price(spec, pos)
            if mark is not None:
                u = unrealised(spec, pos, mark)
                mm = maintenance_margin(spec, pos, mark)
                im = initial_margin(spec, pos, mark)
                ranked = self._rank(pos.size > 0)
                quintile = adl.quintiles(ranked).get(account, 0)
        return PositionView(
            account,
            self.symbol,
            pos.size,
            entry,
            pos.margin,
            u,
            pos.margin + u,
            mm,
            im,
            _wire_price(lp),
            _wire_price(bp),
            quintile,
            bool(pos.liquidation),
            account in self.cross,
        )


def _wire_price(p: int) -> int:
    """Thresholds that never cross are shown as 0."""
    return p if 0 < p <= INT64_MAX else 0
