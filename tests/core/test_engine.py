"""The composed engine: wallets, transfers, published effects, configuration, rejections.

Every rejection is checked with :func:`_kit.assert_rejected`: the right code and
field, and ``digest(engine)`` unchanged.
"""

from __future__ import annotations

import pytest
from _kit import (
    BTC,
    BTC_ASSET,
    USDT_ASSET,
    Desk,
    U,
    assert_rejected,
    btc_usd_spec,
    btc_usdt_spec,
    usdt,
)

from riskd.core import (
    BACKSTOP_ACCOUNT,
    AdlEvent,
    AdlNotice,
    Asset,
    Code,
    ContractType,
    Deposit,
    Engine,
    Fill,
    FundFlow,
    FundingRate,
    FundInjection,
    LiquidationDone,
    LiquidationFill,
    LiquidationMode,
    LiquidationOrder,
    LiquidationSettled,
    MarginCall,
    MarginTransfer,
    MarketSpec,
    MarkPrice,
    Rejected,
    TierTable,
    Withdrawal,
    digest,
)
from riskd.core.insurance_fund import FundPolicy
from riskd.core.invariants import violations
from riskd.core.recent_ids import RecentIds
from riskd.core.units import SUPPLY_CAP

M = "BTC-USDT"
INV = "BTC-USD"
E = usdt("50000")
I64 = 2**63 - 1


@pytest.fixture
def desk() -> Desk:
    """Two USDT markets and one BTC market; 1 long / 2 short 0.02 @ 50,000 on BTC-USDT."""
    d = Desk(
        btc_usdt_spec(),
        btc_usdt_spec("ETH-USDT", step_size=10, liquidation_mode=LiquidationMode.BOOK),
        btc_usd_spec(),
    )
    d.open(M, 1, 2, E, 20, 500 * U, 500 * U)
    d.mark(M, E)
    d.apply(Deposit(1, "USDT", 100 * U))
    d.apply(Deposit(3, "BTC", BTC))
    d.inject("USDT", 1_000 * U)
    d.check()
    return d


# --- wallets and transfers ----------------------------------------------------------------


def test_deposit_withdraw_and_transfers(desk: Desk) -> None:
    d = desk
    assert d.apply(Deposit(5, "USDT", 7 * U)) == []
    assert d.wallet("USDT", 5) == 7 * U
    assert d.apply(Withdrawal(5, "USDT", 2 * U)) == []
    assert d.wallet("USDT", 5) == 5 * U
    d.apply(MarginTransfer(5, M, 5 * U))
    assert (d.wallet("USDT", 5), d.pos(M, 5).margin) == (0, 5 * U)
    d.apply(MarginTransfer(5, M, -3 * U))
    assert (d.wallet("USDT", 5), d.pos(M, 5).margin) == (3 * U, 2 * U)
    w = d.engine.wallets["USDT"]
    assert (w.deposits, w.withdrawals) == (1_107 * U, 2 * U)
    d.check()


def test_margin_transfer_out_keeps_initial_margin_and_losses(desk: Desk) -> None:
    d = desk
    # At 50,000: free = 500 - IM 8 = 492.
    assert_rejected(
        d.engine, MarginTransfer(1, M, -492 * U - 1), Code.FAILED_PRECONDITION, "amount"
    )
    d.mark(M, usdt("49000"))
    # At 49,000: free = 500 - 20 (loss) - IM 7.84 (980 / 125) = 472.16.
    assert_rejected(
        d.engine, MarginTransfer(1, M, -472_160_001), Code.FAILED_PRECONDITION, "amount"
    )
    d.apply(MarginTransfer(1, M, -472_160_000))
    assert d.pos(M, 1).margin == 27_840_000
    assert d.wallet("USDT", 1) == 100 * U + 472_160_000
    # Unrealised profit is not withdrawable: the short's free margin is 500 - IM 7.84.
    assert_rejected(
        d.engine, MarginTransfer(2, M, -492_160_001), Code.FAILED_PRECONDITION, "amount"
    )
    d.apply(MarginTransfer(2, M, -492_160_000))
    d.check()


def test_published_effects_only(desk: Desk) -> None:
    d = desk
    published = (LiquidationOrder, LiquidationSettled, AdlNotice, AdlEvent, FundFlow, MarginCall)
    out = d.mark(M, usdt("20000"))  # liquidation, fund, backstop, ADL
    d.open("ETH-USDT", 3, 4, E, 20, 100 * U, 100 * U)
    out += d.mark("ETH-USDT", usdt("45000"))
    assert out
    assert all(isinstance(e, published) for e in out), out
    d.check()


# --- configuration -----------------------------------------------------------------------


def test_engine_configuration_errors() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Engine([btc_usdt_spec(), btc_usdt_spec()])
    with pytest.raises(ValueError, match="two decimals"):
        Engine([btc_usdt_spec(), btc_usdt_spec("X", asset=Asset("USDT", 8))])


@pytest.mark.parametrize(
    "kw",
    [
        {"symbol": ""},
        {"symbol": "x" * 33},
        {"symbol": "BTC\u2013USDT"},
        {"tick_size": 0},
        {"step_size": -1},
        {"liquidation_fee_cap_ppm": 1_000_001},
        {"fund_fee_share_ppm": -1},
        {"fund_loss_cap": -1},
        {"price_decimals": 4},  # USDT has 6 decimals < 4 + 3
    ],
)
def test_market_spec_validation(kw: dict[str, object]) -> None:
    base: dict[str, object] = {
        "symbol": "BTC-USDT",
        "contract_type": ContractType.LINEAR,
        "asset": USDT_ASSET,
        "price_decimals": 2,
        "tick_size": 10,
        "quantity_decimals": 3,
        "step_size": 1,
        "tiers": TierTable([(0, 10, 5_000)]),
    }
    base.update(kw)
    with pytest.raises(ValueError):
        MarketSpec(**base)  # type: ignore[arg-type]


def test_inverse_needs_contract_value_and_assets_validate() -> None:
    with pytest.raises(ValueError):
        MarketSpec(
            "BTC-USD", ContractType.INVERSE, BTC_ASSET, 1, 5, 0, 1, TierTable([(0, 10, 5_000)])
        )
    for bad in (("", 6), ("US\u00d0", 6), ("USDT", 19), ("USDT", -1)):
        with pytest.raises(ValueError):
            Asset(*bad)
    assert Asset("USDT", 6).scale == 1_000_000


# --- rejections ---------------------------------------------------------------------------

T = Code.INVALID_ARGUMENT
P = Code.FAILED_PRECONDITION
N = Code.NOT_FOUND

REJECTIONS = [
    # off-tick / off-step
    ("off-tick fill", Fill(M, 9, 3, 4, E + 5, 1), T, "price"),
    ("off-tick mark", MarkPrice(M, E + 1), T, "price"),
    ("off-tick inverse", Fill(INV, 9, 3, 4, 500_001, 1), T, "price"),
    ("off-step", Fill("ETH-USDT", 9, 3, 4, E, 15), T, "quantity"),
    # zero / negative
    ("zero qty", Fill(M, 9, 3, 4, E, 0), T, "quantity"),
    ("negative qty", Fill(M, 9, 3, 4, E, -1), T, "quantity"),
    ("zero price", Fill(M, 9, 3, 4, 0, 1), T, "price"),
    ("negative price", Fill(M, 9, 3, 4, -10, 1), T, "price"),
    ("zero mark", MarkPrice(M, 0), T, "price"),
    ("negative fee", Fill(M, 9, 3, 4, E, 1, buyer_fee=-1), T, "buyer_fee"),
    ("negative seller fee", Fill(M, 9, 3, 4, E, 1, seller_fee=-1), T, "seller_fee"),
    ("negative trade id", Fill(M, -1, 3, 4, E, 1), T, "trade_id"),
    ("zero deposit", Deposit(3, "USDT", 0), T, "amount"),
    ("negative deposit", Deposit(3, "USDT", -5), T, "amount"),
    ("zero withdrawal", Withdrawal(1, "USDT", 0), T, "amount"),
    ("negative withdrawal", Withdrawal(1, "USDT", -1), T, "amount"),
    ("zero transfer", MarginTransfer(1, M, 0), T, "amount"),
    ("zero injection", FundInjection("USDT", 0), T, "amount"),
    # unknown market / asset / liquidation
    ("unknown market fill", Fill("DOGE-USDT", 9, 3, 4, E, 1), N, "market"),
    ("unknown market mark", MarkPrice("DOGE-USDT", E), N, "market"),
    ("unknown market transfer", MarginTransfer(1, "DOGE-USDT", U), N, "market"),
    ("unknown market funding", FundingRate("DOGE-USDT", 1), N, "market"),
    ("unknown market liq fill", LiquidationFill("DOGE-USDT", 1, 3, E, 1), N, "market"),
    ("unknown market liq done", LiquidationDone("DOGE-USDT", 1), N, "market"),
    ("unknown asset deposit", Deposit(3, "DOGE", 1), N, "asset"),
    ("unknown asset withdrawal", Withdrawal(1, "DOGE", 1), N, "asset"),
    ("unknown asset injection", FundInjection("DOGE", 1), N, "asset"),
    ("unknown liquidation", LiquidationFill(M, 42, 3, E, 1), N, "liquidation_id"),
    ("no margin to take out", MarginTransfer(7, M, -1), N, "account"),
    # accounts
    ("account 0 deposit", Deposit(0, "USDT", 1), T, "account"),
    ("account 0 withdrawal", Withdrawal(0, "USDT", 1), T, "account"),
    ("account 0 transfer", MarginTransfer(0, M, 1), T, "account"),
    ("account 0 transfer out", MarginTransfer(0, M, -1), T, "account"),
    ("account 0 buyer", Fill(M, 9, 0, 4, E, 1), T, "buyer_account"),
    ("account 0 seller", Fill(M, 9, 3, 0, E, 1), T, "seller_account"),
    ("account too large", Deposit(2**64, "USDT", 1), T, "account"),
    ("negative account", Deposit(-3, "USDT", 1), T, "account"),
    ("deposit to backstop", Deposit(BACKSTOP_ACCOUNT, "USDT", 1), T, "account"),
    ("buyer is seller", Fill(M, 9, 3, 3, E, 1), T, "seller_account"),
    # int64
    ("huge deposit", Deposit(3, "USDT", 2**63), T, "amount"),
    ("huge price", Fill(M, 9, 3, 4, (2**63 // 10 + 1) * 10, 1), T, "price"),
    ("huge mark", MarkPrice(M, (2**63 // 10 + 1) * 10), T, "price"),
    ("huge quantity", Fill(M, 9, 3, 4, E, 2**63), T, "quantity"),
    ("huge fee", Fill(M, 9, 3, 4, E, 1, buyer_fee=2**63), T, "buyer_fee"),
    ("basis overflow", Fill(M, 9, 3, 4, 10**12, 10**9), T, "price"),
    ("huge injection", FundInjection("USDT", 2**63), T, "amount"),
    # each within int64, past the asset's supply cap (units.SUPPLY_CAP)
    ("deposit past supply cap", Deposit(3, "USDT", 2**61), T, "amount"),
    ("injection past supply cap", FundInjection("USDT", 2**61 + 1), T, "amount"),
    # preconditions
    ("withdraw above wallet", Withdrawal(1, "USDT", 100 * U + 1), P, "amount"),
    ("withdraw from empty wallet", Withdrawal(3, "USDT", 1), P, "amount"),
    ("transfer above wallet", MarginTransfer(1, M, 100 * U + 1), P, "amount"),
    ("transfer out needed margin", MarginTransfer(1, M, -493 * U), P, "amount"),
    ("fill beyond bankruptcy", Fill(M, 9, 2, 1, usdt("24999.90"), 20), P, "seller_account"),
    ("short beyond bankruptcy", Fill(M, 9, 2, 1, usdt("75000.10"), 20), P, "buyer_account"),
    ("fee beyond margin", Fill(M, 9, 3, 4, E, 1, buyer_fee=1), P, "buyer_account"),
    (
        "close fee beyond margin",
        Fill(M, 9, 2, 1, usdt("25000"), 20, seller_fee=1),
        P,
        "seller_account",
    ),
    ("funding rate 100 %", FundingRate(M, 10**8), T, "rate_e8"),
    ("funding without mark", FundingRate(INV, 1), P, "market"),
    ("transfer out without mark", MarginTransfer(8, INV, -1), P, "market"),
    ("unknown input", object(), T, "kind"),
]


@pytest.mark.parametrize(
    ("event", "code", "field"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_rejections_leave_state_unchanged(
    desk: Desk, event: object, code: Code, field: str
) -> None:
    if field == "market" and isinstance(event, MarginTransfer):  # an open BTC-USD position, no mark
        desk.margin(8, INV, BTC // 10)
        desk.margin(9, INV, BTC // 10)
        desk.fill(INV, 8, 9, 500_000, 10)
    assert_rejected(desk.engine, event, code, field)
    desk.check()


def test_fill_exactly_at_bankruptcy_is_accepted(desk: Desk) -> None:
    desk.fill(M, 2, 1, usdt("25000"), 20)  # 1 closes with exactly 0 margin left
    assert desk.pos(M, 1) is None and desk.wallet("USDT", 1) == 100 * U
    desk.check()


def test_supply_cap_bounds_deposits_and_injections() -> None:
    d = Desk(btc_usdt_spec(), btc_usd_spec())
    d.apply(Deposit(1, "USDT", SUPPLY_CAP - 5))
    assert_rejected(d.engine, Deposit(2, "USDT", 6), T, "amount")
    d.apply(Deposit(2, "USDT", 5))  # exactly at the cap
    d.apply(Withdrawal(1, "USDT", 7))
    assert_rejected(d.engine, Deposit(2, "USDT", 8), T, "amount")
    d.apply(Deposit(2, "USDT", 7))  # a withdrawal makes room again
    d.inject("USDT", SUPPLY_CAP)
    assert_rejected(d.engine, FundInjection("USDT", 1), T, "amount")
    d.apply(Deposit(3, "BTC", 1))  # the cap is per asset
    d.check()


def test_int64_guards_behind_the_supply_cap() -> None:
    """Balances past the supply cap take realised profit no test can afford to
    make; the int64 guards are still there, set up directly."""
    d = Desk(btc_usdt_spec())
    wallets = d.engine.wallets["USDT"]
    wallets.balances[1] = I64
    d.apply(MarginTransfer(1, M, I64 - 1))
    wallets.balances[1] = 5
    margin = assert_rejected(d.engine, MarginTransfer(1, M, 2), T, "amount")
    assert "margin would overflow" in str(margin)
    wallet = assert_rejected(d.engine, Deposit(1, "USDT", I64 - 4), T, "amount")
    assert "balance would overflow" in str(wallet)


def test_reduce_only_market_and_backstop_only_reduce() -> None:
    d = Desk(btc_usdt_spec())
    d.inject("USDT", 10_000 * U)
    d.open(M, 1, 2, E, 20, 500 * U, 5_000 * U)
    d.mark(M, E)
    d.mark(M, usdt("24000"))  # the backstop takes over 1's long
    assert d.pos(M, BACKSTOP_ACCOUNT).size == 20
    d.margin(3, M, 1_000 * U)
    assert_rejected(d.engine, Fill(M, 9, BACKSTOP_ACCOUNT, 3, usdt("24000"), 1), P, "buyer_account")
    d.fill(M, 3, BACKSTOP_ACCOUNT, usdt("24000"), 5)  # selling its inventory is fine
    assert d.pos(M, BACKSTOP_ACCOUNT).size == 15

    r = Desk(btc_usdt_spec(reduce_only=True))
    r.margin(1, M, 100 * U)
    r.margin(2, M, 100 * U)
    assert_rejected(r.engine, Fill(M, 1, 1, 2, E, 1), P, "buyer_account")


def test_digest_is_deterministic_and_sensitive() -> None:
    def run(amount: int) -> str:
        d = Desk(btc_usdt_spec())
        d.open(M, 1, 2, E, 20, amount, 500 * U)
        d.mark(M, usdt("30000"))
        return digest(d.engine)

    assert run(500 * U) == run(500 * U)
    assert run(500 * U) != run(500 * U + 1)


def test_rejected_is_an_exception_with_fields() -> None:
    r = Rejected.invalid("price", "off tick")
    assert (r.code, r.field, r.message) == (Code.INVALID_ARGUMENT, "price", "off tick")
    assert str(r) == "INVALID_ARGUMENT: price: off tick"
    assert Rejected.precondition("a", "b").code is Code.FAILED_PRECONDITION
    assert Rejected.not_found("a", "b").code is Code.NOT_FOUND


# --- reused trade ids and deposit ids -----------------------------------------------------

#: (market, buyer, seller, margin each, price, quantity): one linear, one inverse market.
TRADES = [
    pytest.param(M, 3, 4, 1_000 * U, E, 1, id="linear"),
    pytest.param(INV, 8, 9, BTC // 10, 500_000, 10, id="inverse"),
]


@pytest.mark.parametrize(("market", "buyer", "seller", "margin", "price", "qty"), TRADES)
def test_reused_trade_id_is_refused_whatever_the_payload(
    desk: Desk, market: str, buyer: int, seller: int, margin: int, price: int, qty: int
) -> None:
    d = desk
    d.margin(buyer, market, margin)
    d.margin(seller, market, margin)
    d.apply(Fill(market, 500, buyer, seller, price, qty, ts=1))
    assert d.pos(market, buyer).size == qty
    again = assert_rejected(
        d.engine, Fill(market, 500, buyer, seller, price, qty, ts=1), P, "trade_id"
    )
    assert "already applied" in again.message
    # The timestamp is not part of the payload: the same trade stamped later is a resend.
    late = assert_rejected(
        d.engine, Fill(market, 500, buyer, seller, price, qty, ts=9), P, "trade_id"
    )
    assert "already applied" in late.message
    for other in (
        Fill(market, 500, seller, buyer, price, qty),
        Fill(market, 500, buyer, seller, price, 2 * qty),
        Fill(market, 500, buyer, seller, price, qty, buyer_fee=1),
    ):
        different = assert_rejected(d.engine, other, P, "trade_id")
        assert "different fill" in different.message
    # A malformed fill names its own field first, even under a reused id.
    assert_rejected(d.engine, Fill(market, 500, buyer, seller, price + 1, qty), T, "price")
    assert_rejected(d.engine, Fill(market, 500, buyer, buyer, price, qty), T, "seller_account")
    assert_rejected(
        d.engine, Fill(market, 500, buyer, seller, price, qty, seller_fee=-1), T, "seller_fee"
    )
    d.apply(Fill(market, 501, seller, buyer, price, qty))  # a new id is a new trade
    assert d.pos(market, buyer) is None
    d.check()


def test_trade_ids_are_remembered_per_market(desk: Desk) -> None:
    d = desk  # trade 1 is the fixture's BTC-USDT fill
    d.margin(3, "ETH-USDT", 1_000 * U)
    d.margin(4, "ETH-USDT", 1_000 * U)
    d.apply(Fill("ETH-USDT", 1, 3, 4, usdt("3000"), 10))
    assert d.pos("ETH-USDT", 3).size == 10
    assert_rejected(d.engine, Fill("ETH-USDT", 1, 3, 4, usdt("3000"), 10), P, "trade_id")
    assert_rejected(d.engine, Fill(M, 1, 1, 2, E, 20), P, "trade_id")


def test_trade_id_zero_is_not_given_and_never_checked(desk: Desk) -> None:
    d = desk
    d.margin(3, M, 1_000 * U)
    d.margin(4, M, 1_000 * U)
    for _ in range(3):
        d.apply(Fill(M, 0, 3, 4, E, 1))
    assert d.pos(M, 3).size == 3
    assert len(d.engine.markets[M].trade_ids) == 1  # the fixture's trade 1 only
    d.check()


def test_a_refused_fill_does_not_use_up_its_trade_id(desk: Desk) -> None:
    d = desk
    d.margin(3, M, 1_000 * U)
    d.margin(4, M, 1_000 * U)
    assert_rejected(d.engine, Fill(M, 600, 3, 4, E, 1, buyer_fee=2_000 * U), P, "buyer_account")
    assert_rejected(d.engine, Fill(M, 600, 3, 4, E + 5, 1), T, "price")
    # 7 has no margin for the fee
    assert_rejected(d.engine, Fill(M, 600, 3, 7, E, 1, seller_fee=1), P, "seller_account")
    assert 600 not in d.engine.markets[M].trade_ids
    d.apply(Fill(M, 600, 3, 4, E, 1))
    assert d.pos(M, 3).size == 1
    assert_rejected(d.engine, Fill(M, 600, 3, 4, E, 1), P, "trade_id")


def test_trade_ids_older_than_the_window_are_refused_as_too_old(desk: Desk) -> None:
    d = desk
    d.engine.markets[M].trade_ids = RecentIds(capacity=2)
    d.margin(3, M, 1_000 * U)
    d.margin(4, M, 1_000 * U)
    for trade in (700, 701, 702):
        d.apply(Fill(M, trade, 3, 4, E, 1))
    old = assert_rejected(d.engine, Fill(M, 700, 3, 4, E, 1), P, "trade_id")  # left the window
    assert "too old" in old.message
    assert d.pos(M, 3).size == 3
    assert_rejected(d.engine, Fill(M, 702, 3, 4, E, 1), P, "trade_id")
    assert_rejected(d.engine, Fill(M, 699, 3, 4, E, 1), P, "trade_id")  # below the mark
    d.apply(Fill(M, 703, 3, 4, E, 1))  # increasing ids go on
    assert d.pos(M, 3).size == 4


def test_trade_id_must_fit_uint64(desk: Desk) -> None:
    assert_rejected(desk.engine, Fill(M, 2**64, 1, 2, E, 1), T, "trade_id")
    desk.margin(3, M, 1_000 * U)
    desk.margin(4, M, 1_000 * U)
    desk.apply(Fill(M, 2**64 - 1, 3, 4, E, 1))
    assert_rejected(desk.engine, Fill(M, 2**64 - 1, 3, 4, E, 1), P, "trade_id")


def test_reused_deposit_id_is_refused_per_asset(desk: Desk) -> None:
    d = desk
    d.apply(Deposit(5, "USDT", 7 * U, deposit_id=900))
    assert d.wallet("USDT", 5) == 7 * U
    same = assert_rejected(d.engine, Deposit(5, "USDT", 7 * U, 3, 900), P, "deposit_id")
    assert "already applied" in same.message
    for other in (Deposit(5, "USDT", 8 * U, deposit_id=900), Deposit(6, "USDT", 7 * U, 0, 900)):
        different = assert_rejected(d.engine, other, P, "deposit_id")
        assert "different deposit" in different.message
    d.apply(Deposit(5, "BTC", BTC, deposit_id=900))  # another asset's deposit ids
    assert_rejected(d.engine, Deposit(5, "BTC", BTC, deposit_id=900), P, "deposit_id")
    # Malformed deposits name their own field first.
    assert_rejected(d.engine, Deposit(5, "USDT", 0, deposit_id=900), T, "amount")
    assert_rejected(d.engine, Deposit(0, "USDT", 1, deposit_id=900), T, "account")
    assert_rejected(d.engine, Deposit(5, "USDT", 1, deposit_id=-1), T, "deposit_id")
    assert_rejected(d.engine, Deposit(5, "USDT", 1, deposit_id=2**64), T, "deposit_id")
    assert d.wallet("USDT", 5) == 7 * U
    d.check()


def test_deposit_id_zero_is_never_checked_and_refusals_do_not_use_ids(desk: Desk) -> None:
    d = desk
    d.apply(Deposit(5, "USDT", U))
    d.apply(Deposit(5, "USDT", U, deposit_id=0))
    assert d.wallet("USDT", 5) == 2 * U
    assert len(d.engine.wallets["USDT"].deposit_ids) == 0
    assert_rejected(d.engine, Deposit(5, "USDT", I64, deposit_id=901), T, "amount")  # overflow
    d.apply(Deposit(5, "USDT", U, deposit_id=901))
    assert d.wallet("USDT", 5) == 3 * U
    d.engine.wallets["USDT"].deposit_ids = RecentIds(capacity=1)
    d.apply(Deposit(5, "USDT", U, deposit_id=902))
    d.apply(Deposit(5, "USDT", U, deposit_id=903))
    assert_rejected(d.engine, Deposit(5, "USDT", U, deposit_id=902), P, "deposit_id")  # too old
    assert d.wallet("USDT", 5) == 5 * U
    d.check()


def test_remembered_ids_are_state_a_pickled_engine_keeps(desk: Desk) -> None:
    import pickle

    d = desk
    d.apply(Deposit(5, "USDT", U, deposit_id=77))
    before = digest(d.engine)
    copy = pickle.loads(pickle.dumps(d.engine, protocol=pickle.HIGHEST_PROTOCOL))
    assert digest(copy) == before
    assert_rejected(copy, Fill(M, 1, 1, 2, E, 20), P, "trade_id")
    assert_rejected(copy, Deposit(5, "USDT", U, deposit_id=77), P, "deposit_id")
    # The ids are in the digest: the same balances with other ids remembered differ.
    other = Desk(*(m.spec for m in d.engine.markets.values()))
    plain = Desk(*(m.spec for m in d.engine.markets.values()))
    other.apply(Deposit(5, "USDT", U, deposit_id=78))
    plain.apply(Deposit(5, "USDT", U, deposit_id=79))
    assert digest(other.engine) != digest(plain.engine)
    for desk_, trade in ((other, 80), (plain, 81)):
        desk_.margin(3, M, 1_000 * U)
        desk_.margin(4, M, 1_000 * U)
        desk_.apply(Fill(M, trade, 3, 4, E, 1))
    assert digest(other.engine) != digest(plain.engine)
    plain.engine.wallets["USDT"].deposit_ids = other.engine.wallets["USDT"].deposit_ids
    assert digest(other.engine) != digest(plain.engine)  # the trade ids still differ
    plain.engine.markets[M].trade_ids = other.engine.markets[M].trade_ids
    assert digest(other.engine) == digest(plain.engine)


def test_an_asset_added_at_runtime_holds_money_like_a_declared_one() -> None:
    """AddAsset's core: empty wallets and fund, a market in it, conservation to
    the unit; a symbol in use is refused on ``symbol`` and changes nothing."""
    engine = Engine([btc_usdt_spec()])
    usdc = Asset("USDC", 6)
    engine.add_asset(usdc, FundPolicy(500_000, 3_600_000))
    assert engine.funds["USDC"].policy == FundPolicy(500_000, 3_600_000)
    engine.add_market(btc_usdt_spec("BTC-USDC", asset=usdc))
    for x in (
        Deposit(1, "USDC", 1_000 * U),
        Deposit(2, "USDC", 1_000 * U),
        FundInjection("USDC", 50 * U),
        MarginTransfer(1, "BTC-USDC", 500 * U),
        MarginTransfer(2, "BTC-USDC", 500 * U),
        MarkPrice("BTC-USDC", E),
        Fill("BTC-USDC", 1, 1, 2, E, 100, 3 * U // 10, 3 * U // 10),
        MarkPrice("BTC-USDC", usdt("51000")),
        Withdrawal(1, "USDC", 100 * U),
    ):
        engine.apply(x)
    assert violations(engine) == []
    before = digest(engine)
    for asset in (Asset("USDC", 6), Asset("USDT", 6), Asset("USDC", 8)):
        with pytest.raises(Rejected) as info:
            engine.add_asset(asset, FundPolicy())
        assert (info.value.code, info.value.field) == (Code.FAILED_PRECONDITION, "symbol")
    assert digest(engine) == before
