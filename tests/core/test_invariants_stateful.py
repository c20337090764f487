"""Random input sequences against the invariants, and replay determinism.

The machine drives one :class:`Engine` with two linear USDT markets (BTC-USDT in
takeover mode with partial liquidation, ETH-USDT in book mode) and one inverse
BTC-settled market with a fund loss cap, eight accounts, and every input kind,
including ±50 % one-tick crashes, and fills and deposits resent under an id already
used (the same payload, or another one).  After every step ``violations(engine)`` must
be empty and ``engine.apply`` must return within seconds; a rejected input must
leave ``digest(engine)`` unchanged; replaying the recorded inputs into a fresh
engine must give the same digest.

The machine's runs are short (40 steps); ``test_recorded_sequences_keep_invariants``
adds a fixed corpus of 40 longer sequences (400 inputs each, from a seeded
generator) that reach the deep states (backstop inventory, chained ADL) where the
current core's remaining bugs live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from _kit import BTC, BTC_ASSET, BTCUSD_BRACKETS, USDT_ASSET, U
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from riskd.core import (
    BACKSTOP_ACCOUNT,
    AdlPolicy,
    AmendOrder,
    CancelOrder,
    CheckOrder,
    Code,
    ContractType,
    Deposit,
    Engine,
    Fill,
    FundFlow,
    FundingRate,
    FundInjection,
    FundKind,
    LiquidationDone,
    LiquidationFill,
    LiquidationMode,
    MarginTransfer,
    MarketEngine,
    MarketSpec,
    MarkPrice,
    Rejected,
    SetMarginMode,
    Stage,
    TierTable,
    Withdrawal,
    cross_margin,
    digest,
    violations,
)
from riskd.core.events import MarketStatusChange, MarkGuardOverride, SettleMarket
from riskd.core.risk_gate import available

ACCOUNTS = list(range(1, 9))

SPECS = [
    MarketSpec(
        "BTC-USDT",
        ContractType.LINEAR,
        USDT_ASSET,
        price_decimals=2,
        tick_size=10,
        quantity_decimals=3,
        step_size=1,
        tiers=TierTable([(0, 125, 4_000), (2_000 * U, 50, 10_000), (10_000 * U, 20, 25_000)]),
        liquidation_fee_cap_ppm=10_000,
        fund_fee_share_ppm=200_000,
        partial_liquidation=True,
    ),
    MarketSpec(
        "ETH-USDT",
        ContractType.LINEAR,
        USDT_ASSET,
        price_decimals=2,
        tick_size=1,
        quantity_decimals=3,
        step_size=1,
        tiers=TierTable([(0, 50, 10_000), (5_000 * U, 20, 25_000)]),
        liquidation_mode=LiquidationMode.BOOK,
        adl_policy=AdlPolicy.LEVERAGE_PNL,
        fund_fee_share_ppm=500_000,
    ),
    MarketSpec(
        "BTC-USD",
        ContractType.INVERSE,
        BTC_ASSET,
        price_decimals=1,
        tick_size=5,
        quantity_decimals=0,
        step_size=1,
        tiers=TierTable(BTCUSD_BRACKETS),
        contract_value=100,
        fund_loss_cap=BTC // 20,
        # The mark guard: a crash (±50 %) is guarded until a sane mark follows.
        mark_max_jump_ppm=300_000,
        mark_max_divergence_ppm=30_000,
    ),
]
SYMBOLS = [s.symbol for s in SPECS]
#: Mixed modes: these accounts start in cross margin in these markets (the rest
#: isolated); ``margin_mode`` switches any account while it is flat.
CROSS_START = [(a, s) for a in (5, 6, 7, 8) for s in SYMBOLS if a > 6 or s != "BTC-USD"]
START = {"BTC-USDT": 5_000_000, "ETH-USDT": 300_000, "BTC-USD": 500_000}
MAX_QTY = {"BTC-USDT": 60, "ETH-USDT": 2_000, "BTC-USD": 300}
ASSET_UNIT = {"USDT": U, "BTC": BTC // 50_000}  # about one dollar of each


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging: the core must answer every input promptly."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"engine.apply took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def new_engine() -> Engine:
    return Engine(SPECS)


def on_tick(price: int, tick: int) -> int:
    return max(price // tick * tick, tick)


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = new_engine()
        self.inputs: list[Any] = []
        self.published = 0
        self.out: list[object] = []  # what the last applied input published
        self.trade_id = 0
        self.deposit_id = 0
        self.rejected = 0
        # Applied inputs that carry an id, for the rules that send them again.
        self.fills: list[Fill] = []
        self.deposits: list[Deposit] = []
        self.order_id = 0

    # --- plumbing -----------------------------------------------------------------

    def apply(self, event: Any) -> bool:
        self.inputs.append(event)
        before = digest(self.engine)
        started = {s: m.next_liquidation for s, m in self.engine.markets.items()}
        try:
            with deadline(5):
                out = self.engine.apply(event)
        except Rejected:
            assert digest(self.engine) == before, f"rejected {event} changed the state"
            self.rejected += 1
            return False
        self.published += len(out)
        self.out = list(out)
        for s, m in self.engine.markets.items():
            # No liquidation is ever decided on a guarded mark.
            assert not (m.guarded and m.next_liquidation != started[s]), (event, m.guard.reason)
        return True

    def refused(self, event: Any, field: str) -> None:
        """``event`` must be refused on ``field`` and change nothing."""
        self.inputs.append(event)
        before = digest(self.engine)
        with pytest.raises(Rejected) as info:
            self.engine.apply(event)
        assert (info.value.code, info.value.field) == (Code.FAILED_PRECONDITION, field), info.value
        assert digest(self.engine) == before, f"refused {event} changed the state"
        self.rejected += 1

    def mark_of(self, symbol: str) -> int:
        mark = self.engine.markets[symbol].mark
        assert mark is not None
        return int(mark)

    def spec(self, symbol: str) -> MarketSpec:
        return self.engine.markets[symbol].spec

    # --- rules --------------------------------------------------------------------

    @initialize(usdt_seed=st.integers(0, 3_000), btc_seed=st.integers(0, 3_000))
    def setup(self, usdt_seed: int, btc_seed: int) -> None:
        if usdt_seed:
            self.apply(FundInjection("USDT", usdt_seed * U))
        if btc_seed:
            self.apply(FundInjection("BTC", btc_seed * ASSET_UNIT["BTC"]))
        for a in ACCOUNTS:
            self.apply(Deposit(a, "USDT", 3_000 * U))
            self.apply(Deposit(a, "BTC", BTC // 10))
        for account, symbol in CROSS_START:
            self.apply(SetMarginMode(symbol, account, True))
        for s in SYMBOLS:
            self.apply(MarkPrice(s, START[s]))

    @rule(account=st.sampled_from(ACCOUNTS), symbol=st.sampled_from(SYMBOLS), cross=st.booleans())
    def margin_mode(self, account: int, symbol: str, cross: bool) -> None:
        """Switch a margin mode (refused, changing nothing, unless flat there)."""
        self.apply(SetMarginMode(symbol, account, cross))

    @rule(
        account=st.sampled_from([*ACCOUNTS, 0]),
        asset=st.sampled_from(["USDT", "BTC"]),
        dollars=st.integers(-5, 5_000),
        with_id=st.booleans(),
    )
    def deposit(self, account: int, asset: str, dollars: int, with_id: bool) -> None:
        deposit_id = 0
        if with_id:
            self.deposit_id += 1
            deposit_id = self.deposit_id
        d = Deposit(account, asset, dollars * ASSET_UNIT[asset], deposit_id=deposit_id)
        if self.apply(d) and deposit_id:
            self.deposits.append(d)

    @rule(
        account=st.sampled_from(ACCOUNTS),
        asset=st.sampled_from(["USDT", "BTC"]),
        pct=st.integers(1, 110),
    )
    def withdraw(self, account: int, asset: str, pct: int) -> None:
        have = self.engine.wallets[asset].balance(account)
        self.apply(Withdrawal(account, asset, max(have * pct // 100, 1)))

    @rule(
        account=st.sampled_from(ACCOUNTS),
        symbol=st.sampled_from(SYMBOLS),
        dollars=st.integers(1, 1_500),
    )
    def margin_in(self, account: int, symbol: str, dollars: int) -> None:
        asset = self.spec(symbol).asset.symbol
        self.apply(MarginTransfer(account, symbol, dollars * ASSET_UNIT[asset]))

    @rule(
        account=st.sampled_from(ACCOUNTS), symbol=st.sampled_from(SYMBOLS), pct=st.integers(1, 100)
    )
    def margin_out(self, account: int, symbol: str, pct: int) -> None:
        pos = self.engine.markets[symbol].positions.get(account)
        margin = pos.margin if pos else 1
        self.apply(MarginTransfer(account, symbol, -max(margin * pct // 100, 1)))

    @rule(
        symbol=st.sampled_from(SYMBOLS),
        buyer=st.sampled_from([*ACCOUNTS, BACKSTOP_ACCOUNT]),
        seller=st.sampled_from([*ACCOUNTS, BACKSTOP_ACCOUNT]),
        bp=st.integers(-300, 300),
        size=st.integers(1, 100),
        fee_bp=st.integers(0, 10),
        top_up=st.integers(0, 300),
    )
    def fill(
        self, symbol: str, buyer: int, seller: int, bp: int, size: int, fee_bp: int, top_up: int
    ) -> None:
        spec = self.spec(symbol)
        asset = spec.asset.symbol
        if top_up:
            for a in (buyer, seller):
                if a != BACKSTOP_ACCOUNT:
                    self.apply(MarginTransfer(a, symbol, top_up * ASSET_UNIT[asset]))
        price = on_tick(self.mark_of(symbol) * (10_000 + bp) // 10_000, spec.tick_size)
        qty = max(MAX_QTY[symbol] * size // 100, 1)
        value = abs(spec.trade_value(qty, price))
        fee = value * fee_bp // 10_000
        self.trade_id += 1
        f = Fill(symbol, self.trade_id, buyer, seller, price, qty, fee, fee // 2)
        if self.apply(f):
            self.fills.append(f)

    @rule(
        symbol=st.sampled_from(SYMBOLS),
        pair=st.permutations(ACCOUNTS),
        bp=st.integers(-100, 100),
        size=st.integers(1, 100),
        margin=st.integers(0, 100),
    )
    def levered_fill(self, symbol: str, pair: list[int], bp: int, size: int, margin: int) -> None:
        """Two accounts open or add at up to ~100x: the usual source of liquidations."""
        self.fill(symbol, pair[0], pair[1], bp, size, 0, margin)

    @rule(symbol=st.sampled_from(SYMBOLS), data=st.data())
    def close_out(self, symbol: str, data: st.DataObject) -> None:
        """An open position is reduced, closed or flipped against another account."""
        m = self.engine.markets[symbol]
        open_ = sorted(a for a, p in m.positions.items() if p.size and not p.liquidation)
        if not open_:
            return
        account = data.draw(st.sampled_from(open_))
        other = data.draw(st.sampled_from([a for a in ACCOUNTS if a != account]))
        pos = m.positions[account]
        qty = abs(pos.size) * data.draw(st.sampled_from([25, 50, 100, 100, 150])) // 100
        spec = m.spec
        price = on_tick(
            self.mark_of(symbol) * (10_000 + data.draw(st.integers(-50, 50))) // 10_000,
            spec.tick_size,
        )
        buyer, seller = (other, account) if pos.size > 0 else (account, other)
        self.trade_id += 1
        f = Fill(symbol, self.trade_id, buyer, seller, price, max(qty, 1), 0, 0)
        if self.apply(f):
            self.fills.append(f)

    @precondition(lambda self: self.fills)
    @rule(data=st.data(), change=st.sampled_from(["none", "ts", "quantity", "sides", "fee"]))
    def fill_again(self, data: st.DataObject, change: str) -> None:
        """An applied trade id comes back: the same trade, or another one under its id."""
        f = data.draw(st.sampled_from(self.fills))
        step = self.spec(f.market).step_size
        again = {
            "none": f,
            "ts": dataclasses.replace(f, ts=f.ts + 1),
            "quantity": dataclasses.replace(f, quantity=f.quantity + step),
            "sides": dataclasses.replace(f, buyer=f.seller, seller=f.buyer),
            "fee": dataclasses.replace(f, buyer_fee=f.buyer_fee + 1),
        }[change]
        # A settled market refuses every input first, naming the market.
        settled = self.engine.markets[f.market].status.value == "settled"
        self.refused(again, "market" if settled else "trade_id")

    @precondition(lambda self: self.deposits)
    @rule(data=st.data(), change=st.sampled_from(["none", "amount", "account"]))
    def deposit_again(self, data: st.DataObject, change: str) -> None:
        d = data.draw(st.sampled_from(self.deposits))
        again = {
            "none": d,
            "amount": dataclasses.replace(d, amount=d.amount + 1),
            "account": dataclasses.replace(d, account=d.account % len(ACCOUNTS) + 1),
        }[change]
        self.refused(again, "deposit_id")

    @rule(symbol=st.sampled_from(SYMBOLS), pct=st.integers(-10, 10))
    def mark_move(self, symbol: str, pct: int) -> None:
        self.move(symbol, 100 + pct)

    @rule(symbol=st.sampled_from(SYMBOLS), up=st.booleans())
    def crash(self, symbol: str, up: bool) -> None:
        self.move(symbol, 150 if up else 50)

    def move(self, symbol: str, pct: int) -> None:
        start = START[symbol]
        price = min(max(self.mark_of(symbol) * pct // 100, start // 20), start * 20)
        self.apply(MarkPrice(symbol, on_tick(price, self.spec(symbol).tick_size)))

    @rule(symbol=st.sampled_from(SYMBOLS), rate=st.integers(-1_000_000, 1_000_000))
    def funding(self, symbol: str, rate: int) -> None:
        self.apply(FundingRate(symbol, rate))

    @rule(asset=st.sampled_from(["USDT", "BTC"]), dollars=st.integers(1, 2_000))
    def inject(self, asset: str, dollars: int) -> None:
        self.apply(FundInjection(asset, dollars * ASSET_UNIT[asset]))

    def working(self) -> list[int]:
        liqs = self.engine.markets["ETH-USDT"].liquidations
        return sorted(i for i, x in liqs.items() if x.stage is Stage.WORKING)

    @precondition(lambda self: self.working())
    @rule(data=st.data())
    def liquidation_fill(self, data: st.DataObject) -> None:
        m = self.engine.markets["ETH-USDT"]
        lid = data.draw(st.sampled_from(self.working()))
        liq = m.liquidations[lid]
        left = abs(m.positions[liq.account].size)
        qty = data.draw(st.integers(1, left))
        lo, hi = sorted((liq.worst_price, self.mark_of("ETH-USDT")))
        price = data.draw(st.integers(max(lo - 50, 1), hi + 50))  # a few ticks outside too
        cp = data.draw(st.sampled_from(ACCOUNTS))
        top_up = data.draw(st.integers(0, 300))
        if top_up:
            self.apply(MarginTransfer(cp, "ETH-USDT", top_up * U))
        self.apply(
            LiquidationFill("ETH-USDT", lid, cp, price, qty, data.draw(st.integers(0, 1_000)))
        )

    # --- orders and reservations ---------------------------------------------------

    def open_orders(self) -> list[tuple[str, int]]:
        return [(s, o.order_id) for s in SYMBOLS for o in self.engine.markets[s].orders]

    @rule(
        account=st.sampled_from(ACCOUNTS),
        symbol=st.sampled_from(SYMBOLS),
        side=st.sampled_from([1, -1]),
        bp=st.integers(-300, 300),
        size=st.integers(1, 100),
        leverage=st.sampled_from([0, 0, 1, 10, 50, 125]),
        reduce_only=st.booleans(),
    )
    def check_order(
        self,
        account: int,
        symbol: str,
        side: int,
        bp: int,
        size: int,
        leverage: int,
        reduce_only: bool,
    ) -> None:
        """An accepted order never leaves its account's reservations beyond its margin."""
        m = self.engine.markets[symbol]
        price = on_tick(self.mark_of(symbol) * (10_000 + bp) // 10_000, m.spec.tick_size)
        qty = max(MAX_QTY[symbol] * size // 100, 1)
        self.order_id += 1
        c = CheckOrder(
            symbol, self.order_id, account, side, price, qty, reduce_only, False, leverage
        )
        if self.apply(c):
            self.fits(m, self.order_id)

    def fits(self, m: MarketEngine, order_id: int) -> None:
        """An order just accepted that reserves margin leaves its account's available >= 0
        (one that reserves nothing, a reduce-only one, may reduce an under-margined position):
        its isolated margin's, or its whole cross wallet's across the asset's markets."""
        o = m.orders.orders[order_id]
        mark = m.guard_mark
        assert mark is not None
        if not o.margin:
            return
        if o.account in m.cross:
            legs = [leg for _, leg in self.engine.cross_legs(m.asset, o.account)]
            free = self.engine.wallets[m.asset].balance(o.account)
            held = sum(
                x.cross_reserved(o.account)
                for x in self.engine.markets.values()
                if x.asset == m.asset
            )
            assert cross_margin.order_allowance(legs, free, 0) - held >= 0
            return
        assert available(m.spec, m.positions[o.account], mark, m.orders.reserved(o.account)) >= 0

    @precondition(lambda self: self.open_orders())
    @rule(data=st.data(), bp=st.integers(-300, 300), size=st.integers(1, 100))
    def amend_order(self, data: st.DataObject, bp: int, size: int) -> None:
        symbol, order_id = data.draw(st.sampled_from(self.open_orders()))
        m = self.engine.markets[symbol]
        price = on_tick(self.mark_of(symbol) * (10_000 + bp) // 10_000, m.spec.tick_size)
        if self.apply(AmendOrder(symbol, order_id, price, max(MAX_QTY[symbol] * size // 100, 1))):
            self.fits(m, order_id)

    @precondition(lambda self: self.open_orders())
    @rule(data=st.data())
    def cancel_order(self, data: st.DataObject) -> None:
        symbol, order_id = data.draw(st.sampled_from(self.open_orders()))
        assert self.apply(CancelOrder(symbol, order_id))

    @precondition(lambda self: self.open_orders())
    @rule(data=st.data(), part=st.integers(1, 100), counterparty=st.sampled_from(ACCOUNTS))
    def order_fill(self, data: st.DataObject, part: int, counterparty: int) -> None:
        """A fill naming the order (and the counterparty's, when it has one on the other side)."""
        symbol, order_id = data.draw(st.sampled_from(self.open_orders()))
        m = self.engine.markets[symbol]
        o = m.orders.orders[order_id]
        if counterparty == o.account:
            return
        theirs = [x.order_id for x in m.orders.of(counterparty) if x.side == -o.side]
        qty = max(o.quantity * part // 100, 1)
        buyer, seller = (o.account, counterparty) if o.side > 0 else (counterparty, o.account)
        ids = (order_id, theirs[0] if theirs else 0)
        buy_id, sell_id = ids if o.side > 0 else ids[::-1]
        self.trade_id += 1
        f = Fill(symbol, self.trade_id, buyer, seller, o.price, qty, 0, 0, 0, buy_id, sell_id)
        if self.apply(f):
            self.fills.append(f)

    @invariant()
    def reservations_add_up(self) -> None:
        for m in self.engine.markets.values():
            held: dict[int, int] = {}
            opening: dict[tuple[int, int], int] = {}
            for o in m.orders:
                held[o.account] = held.get(o.account, 0) + o.margin
                if not o.reduce_only:
                    key = (o.account, o.side)
                    opening[key] = opening.get(key, 0) + o.quantity
            assert {a: v for a, v in held.items() if v} == m.orders.reserved_by
            assert opening == m.orders.opening
            for o in m.orders:  # margin is held by a position that is not being liquidated
                pos = m.positions.get(o.account)
                if o.margin and o.account not in m.cross:  # a cross one: by the wallet
                    assert pos is not None and pos.margin >= o.margin, (o, pos)
                assert pos is None or not pos.liquidation, (o, pos)

    @precondition(lambda self: self.working())
    @rule(data=st.data())
    def liquidation_done(self, data: st.DataObject) -> None:
        self.apply(LiquidationDone("ETH-USDT", data.draw(st.sampled_from(self.working()))))

    # --- the mark guard and the lifecycle -------------------------------------------

    @rule(symbol=st.sampled_from(SYMBOLS), pct=st.integers(-10, 10), off=st.integers(-60, 60))
    def mark_with_index(self, symbol: str, pct: int, off: int) -> None:
        """A mark with an index price up to 6 % away: BTC-USD guards beyond 3 %."""
        tick = self.spec(symbol).tick_size
        price = on_tick(self.mark_of(symbol) * (100 + pct) // 100, tick)
        start = START[symbol]
        price = min(max(price, on_tick(start // 20, tick)), start * 20)
        self.apply(MarkPrice(symbol, price, 0, max(price * (1_000 + off) // 1_000, 1)))

    @rule(symbol=st.sampled_from(SYMBOLS), hold=st.booleans())
    def guard_override(self, symbol: str, hold: bool) -> None:
        self.apply(MarkGuardOverride(symbol, hold))

    @rule(
        symbol=st.sampled_from(SYMBOLS),
        status=st.sampled_from(["open", "open", "halted", "close_only"]),
    )
    def set_status(self, symbol: str, status: str) -> None:
        self.apply(MarketStatusChange(symbol, status))

    @rule(symbol=st.sampled_from(SYMBOLS), bp=st.integers(-500, 500), go=st.integers(0, 7))
    def settle(self, symbol: str, bp: int, go: int) -> None:
        """Rarely, a market is settled anywhere near its mark: the fund pays nothing."""
        m = self.engine.markets[symbol]
        if go or m.mark is None or m.status.value == "settled":
            return
        price = on_tick(self.mark_of(symbol) * (10_000 + bp) // 10_000, m.spec.tick_size)
        if self.apply(SettleMarket(symbol, price)):
            assert not m.positions and m.status.value == "settled"
            # Only its backstop's margin comes back; the fund may pay only for the
            # ordinary liquidations of cross accounts in other markets it left short.
            for f in self.out:
                if isinstance(f, FundFlow) and f.market == symbol:
                    assert f.kind is FundKind.BACKSTOP_RETURN, f

    @rule(kind=st.integers(0, 5), symbol=st.sampled_from(SYMBOLS))
    def bad_input(self, kind: int, symbol: str) -> None:
        mark = self.mark_of(symbol)
        event = [
            Fill(symbol, 0, 1, 1, mark, 1),  # buyer == seller
            Fill(symbol, 0, 0, 2, mark, 1),  # account 0
            Fill(symbol, 0, 1, 2, mark + 1, 1) if symbol != "ETH-USDT" else MarkPrice(symbol, 0),
            Withdrawal(1, "USDT", 2**63),
            Deposit(BACKSTOP_ACCOUNT, "BTC", 1),
            LiquidationDone(symbol, 10**9),
        ][kind]
        assert not self.apply(event)

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def no_violations(self) -> None:
        assert violations(self.engine) == []

    @invariant()
    def fund_ledgers_chain(self) -> None:
        for fund in self.engine.funds.values():
            assert fund.balance >= 0
            if fund.ledger:
                assert fund.ledger[-1].balance_after == fund.balance

    def teardown(self) -> None:
        replay = new_engine()
        for event in self.inputs:
            with contextlib.suppress(Rejected):
                replay.apply(event)
        assert digest(replay) == digest(self.engine)


#: Deterministic by default (same examples every run, no example database); set
#: RISKD_STATEFUL_EXAMPLES (e.g. 2000) to explore further with fresh random examples.
_EXPLORE = int(os.environ.get("RISKD_STATEFUL_EXAMPLES", "0"))
EngineMachine.TestCase.settings = settings(
    max_examples=_EXPLORE or 100,
    stateful_step_count=40,
    derandomize=not _EXPLORE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineInvariants = EngineMachine.TestCase


def random_inputs(seed: int, n: int = 400) -> list[Any]:
    """A reproducible input sequence of every kind, bad inputs included."""
    rng = random.Random(seed)
    out: list[Any] = [FundInjection("USDT", 1_000 * U), FundInjection("BTC", BTC // 100)]
    out += [
        Deposit(a, asset, 2_000 * ASSET_UNIT[asset]) for a in ACCOUNTS for asset in ("USDT", "BTC")
    ]
    out += [SetMarginMode(s, a, True) for a, s in CROSS_START]
    marks = dict(START)
    out += [MarkPrice(s, p) for s, p in marks.items()]
    for i in range(n):
        s = rng.choice(SYMBOLS)
        spec = next(x for x in SPECS if x.symbol == s)
        tick = spec.tick_size
        r = rng.random()
        if r < 0.45:
            b, a = rng.sample(ACCOUNTS, 2)
            price = on_tick(marks[s] * rng.randint(9_800, 10_200) // 10_000, tick)
            out.append(MarginTransfer(b, s, rng.randint(1, 200) * ASSET_UNIT[spec.asset.symbol]))
            out.append(Fill(s, i, b, a, price, rng.randint(1, MAX_QTY[s]), rng.randint(0, 9), 0))
        elif r < 0.75:
            pct = rng.choice([50, 150]) if rng.random() < 0.1 else rng.randint(95, 105)
            marks[s] = on_tick(min(max(marks[s] * pct // 100, START[s] // 20), START[s] * 20), tick)
            out.append(MarkPrice(s, marks[s]))
        elif r < 0.85:
            out.append(FundingRate(s, rng.randint(-100_000, 100_000)))
        elif r < 0.9:
            out.append(LiquidationDone("ETH-USDT", rng.randint(1, 20)))
        elif r < 0.95:
            out.append(
                MarginTransfer(
                    rng.choice(ACCOUNTS), s, -rng.randint(1, 100) * ASSET_UNIT[spec.asset.symbol]
                )
            )
        else:
            out.append(
                Withdrawal(rng.choice(ACCOUNTS), spec.asset.symbol, rng.randint(1, 3_000) * U)
            )
    return out


def run(events: list[Any]) -> tuple[Engine, list[bool], list[Any]]:
    engine = new_engine()
    accepted, published = [], []
    for e in events:
        try:
            published.extend(engine.apply(e))
            accepted.append(True)
        except Rejected:
            accepted.append(False)
    return engine, accepted, published


def test_replay_gives_the_same_digest() -> None:
    events = random_inputs(seed=20_251_010)
    first, accepted, published = run(events)
    second, accepted2, published2 = run(events)
    assert digest(first) == digest(second)
    assert accepted == accepted2
    assert published == published2
    # The sequence is not trivial: it trades, rejects and liquidates.
    assert 0 < accepted.count(False) < len(events)
    assert any(type(e).__name__ == "LiquidationSettled" for e in published)
    # And a different sequence gives a different state.
    other, _, _ = run(random_inputs(seed=1))
    assert digest(other) != digest(first)


#: Recorded sequences the current core fails on (found by this corpus; see the report).
KNOWN_BAD_SEEDS: dict[int, str] = {}


@pytest.mark.parametrize(
    "seed",
    [
        pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=KNOWN_BAD_SEEDS[s]))
        if s in KNOWN_BAD_SEEDS
        else s
        for s in range(40)
    ],
)
def test_recorded_sequences_keep_invariants(seed: int) -> None:
    """400 inputs per seed; the invariants hold after every one, rejections change nothing."""
    engine = new_engine()
    for event in random_inputs(seed):
        before = digest(engine)
        try:
            with deadline(1):
                engine.apply(event)
        except Rejected:
            assert digest(engine) == before, f"rejected {event} changed the state"
        assert violations(engine) == [], event
