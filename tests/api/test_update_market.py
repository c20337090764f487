"""AdminService.UpdateMarket with proto3 field presence, through a real daemon.

Issue 13 item 7: a field that is not set keeps its value (``reduce_only``
omitted used to switch reduce-only off), a field set to 0 or false changes it,
a cap can be cleared, and an out-of-range value is INVALID_ARGUMENT naming the
field and changes nothing.  One case per changeable field; each reads the
market back with ``ListMarkets`` and checks that every other field kept its
value, then puts the field back so the cases do not depend on their order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)

from .conftest import Daemon, start_daemon
from .test_bad_input import RawStream

USDT = 10**6
M = "BTC-USDT"
U = ingest_pb2.Update
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("update-market"))
    try:
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def admin(d: Daemon) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(d.channel())


def market(d: Daemon, symbol: str = M) -> types_pb2.Market:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    markets = q.ListMarkets(query_pb2.ListMarketsRequest()).markets
    return next(m for m in markets if m.symbol == symbol)


def update(d: Daemon, clear_fund_loss_cap: bool = False, **fields: Any) -> types_pb2.Market:
    request = admin_pb2.UpdateMarketRequest(
        market=types_pb2.Market(symbol=fields.pop("symbol", M), **fields),
        clear_fund_loss_cap=clear_fund_loss_cap,
    )
    return admin(d).UpdateMarket(request).market


def refused(d: Daemon, **fields: Any) -> grpc.RpcError:
    """An UpdateMarket that must fail, changing neither the market nor the state."""
    before, digest = market(d), check(d)
    with pytest.raises(grpc.RpcError) as e:
        update(d, **fields)
    assert (market(d), check(d)) == (before, digest)
    return e.value


def check(d: Daemon) -> str:
    return admin(d).CheckState(admin_pb2.CheckStateRequest()).digest


def others(m: types_pb2.Market, *changed: str) -> dict[str, Any]:
    """Every field of ``m`` but ``changed`` (and the mark, which gateways move)."""
    out: dict[str, Any] = {}
    for f in m.DESCRIPTOR.fields:
        if f.name in (*changed, "mark_price"):
            continue
        if f.has_presence and not m.HasField(f.name):  # type: ignore[arg-type]
            out[f.name] = None
        else:
            out[f.name] = str(getattr(m, f.name))
    return out


def tiers(*rows: tuple[int, int, int]) -> list[types_pb2.RiskTier]:
    return [
        types_pb2.RiskTier(notional_floor=f, max_leverage=lev, maintenance_margin_rate_ppm=mmr)
        for f, lev, mmr in rows
    ]


#: Each changeable field: a new value, then values that must be refused (each with the
#: field the error must name).  Zero and false are new values where they mean something.
CASES: dict[str, tuple[list[Any], list[tuple[Any, str]]]] = {
    "tick_size": ([20, 1], [(0, "market.tick_size"), (-10, "market.tick_size")]),
    "step_size": ([5, 1], [(0, "market.step_size")]),
    "liquidation_fee_cap_ppm": (
        [5_000, 0],  # 0: the fund takes no liquidation fee at all
        [(1_000_001, "market.liquidation_fee_cap_ppm"), (-1, "market.liquidation_fee_cap_ppm")],
    ),
    "fund_fee_share_ppm": ([250_000, 0], [(1_000_001, "market.fund_fee_share_ppm")]),
    "margin_call_ppm": (
        [50_000, 0],  # 0: no margin calls
        [(1_000_000, "market.margin_call_ppm"), (-5, "market.margin_call_ppm")],
    ),
    "liquidation_mode": (
        [types_pb2.LIQUIDATION_MODE_BOOK],
        [(types_pb2.LIQUIDATION_MODE_UNSPECIFIED, "market.liquidation_mode"), (99, "market.")],
    ),
    "adl_policy": (
        [types_pb2.ADL_POLICY_LEVERAGE_PNL, types_pb2.ADL_POLICY_PRO_RATA_RISK],
        [(types_pb2.ADL_POLICY_UNSPECIFIED, "market.adl_policy"), (42, "market.adl_policy")],
    ),
    "fund_loss_cap": (
        [5_000 * USDT, 0],  # 0 is a cap: the fund pays nothing for this market
        [(-1, "market.fund_loss_cap")],
    ),
    "reduce_only": ([True, False], []),
    "tiers": (
        [tiers((0, 50, 10_000), (1_000_000 * USDT, 20, 25_000))],
        [
            # 1000x with 50 % maintenance: opened at max leverage, already liquidatable.
            (tiers((0, 1_000, 500_000)), "market.tiers[0]"),
            (tiers((0, 20, 50_000)), "market.tiers[0]"),  # IM == MM
            (tiers((0, 50, 10_000), (0, 20, 25_000)), "market.tiers[1]"),
            (tiers((5, 50, 10_000)), "market.tiers[0]"),
            (tiers((0, 0, 10_000)), "market.tiers[0]"),
        ],
    ),
}
CASES["fill_price_band_ppm"] = ([20_000, 0], [(-1, "market.fill_price_band_ppm")])
CASES["mark_max_jump_ppm"] = ([100_000, 0], [(-1, "market.mark_max_jump_ppm")])
CASES["mark_max_divergence_ppm"] = (
    [20_000, 0],
    [(-1, "market.mark_max_divergence_ppm"), (1_000_001, "market.mark_max_divergence_ppm")],
)
CASES["mark_stale_after_ms"] = ([10_000, 0], [(-1, "market.mark_stale_after_ms")])
CASES["order_price_band_ppm"] = (
    [30_000, 0],
    [(-1, "market.order_price_band_ppm"), (1_000_001, "market.order_price_band_ppm")],
)
CASES["open_interest_cap"] = ([5_000, 0], [(-1, "market.open_interest_cap")])
CASES["max_position_notional"] = ([1_000_000 * USDT, 0], [(-1, "market.max_position_notional")])
CASES["max_open_orders"] = (
    [5, 200],
    [(0, "market.max_open_orders"), (100_001, "market.max_open_orders")],
)
CASES["partial_liquidation_policy"] = (
    [types_pb2.PARTIAL_LIQUIDATION_POLICY_FULL],
    [
        # Partial policies need a fee cap below 100 % (BTC-USDT keeps the whole surplus).
        (types_pb2.PARTIAL_LIQUIDATION_POLICY_TIER_STEP, "market.partial_liquidation_policy"),
        (types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION, "market.partial_liquidation_policy"),
        (types_pb2.PARTIAL_LIQUIDATION_POLICY_UNSPECIFIED, "market.partial_liquidation_policy"),
        (99, "market.partial_liquidation_policy"),
    ],
)
CASES["partial_fraction_ppm"] = (
    [500_000, 1, 1_000_000],
    [(0, "market.partial_fraction_ppm"), (1_000_001, "market.partial_fraction_ppm")],
)
CASES["partial_cooldown_ms"] = ([0, 60_000], [(-1, "market.partial_cooldown_ms")])
CASES["takeover_price"] = (
    [types_pb2.TAKEOVER_PRICE_BANKRUPTCY, types_pb2.TAKEOVER_PRICE_MARK],
    [(types_pb2.TAKEOVER_PRICE_UNSPECIFIED, "market.takeover_price"), (7, "market.takeover_price")],
)
CASES["cross_liquidation"] = (
    [types_pb2.CROSS_LIQUIDATION_POLICY_STEP_DOWN, types_pb2.CROSS_LIQUIDATION_POLICY_ALL_AT_ONCE],
    [
        (types_pb2.CROSS_LIQUIDATION_POLICY_UNSPECIFIED, "market.cross_liquidation"),
        (7, "market.cross_liquidation"),
    ],
)


def test_every_changeable_field_has_a_case() -> None:
    fixed = {"symbol", "contract_type", "settle_asset", "price_decimals", "quantity_decimals"}
    fixed |= {"contract_value", "mark_price", "partial_liquidation"}  # the last: its own test
    fixed |= {"status", "mark_guard", "good_mark_price"}  # output only (the lifecycle RPCs)
    assert set(types_pb2.Market.DESCRIPTOR.fields_by_name) - fixed == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_field_that_is_set_changes_and_nothing_else_does(d: Daemon, name: str) -> None:
    original = market(d)
    rest = others(original, name)
    values, bad = CASES[name]
    for value in values:
        got = update(d, **{name: value})
        for m in (got, market(d)):
            assert others(m, name) == rest
            if name == "tiers":
                assert [(t.notional_floor, t.max_leverage) for t in m.tiers] == [
                    (t.notional_floor, t.max_leverage) for t in value
                ]
            else:
                assert m.HasField(name) and getattr(m, name) == value, (name, value)  # type: ignore[arg-type]
    for value, field in bad:
        e = refused(d, **{name: value})
        assert e.code() == INVALID, e
        assert str(e.details()).startswith(field), e.details()
    # Put it back (a cap that was not set is cleared).
    if name == "fund_loss_cap" and not original.HasField("fund_loss_cap"):
        update(d, clear_fund_loss_cap=True)
    else:
        update(d, **{name: getattr(original, name)})
    assert market(d) == original


def test_reduce_only_omitted_keeps_it(d: Daemon) -> None:
    """The bug: an UpdateMarket without reduce_only switched reduce-only off."""
    update(d, symbol="ETH-USDT", reduce_only=True)
    update(d, symbol="ETH-USDT", fund_fee_share_ppm=100_000)
    assert market(d, "ETH-USDT").reduce_only
    # ... and it still works: an opening fill is refused.
    s = RawStream(d, "gw-reduce")
    r = s.send(
        U(deposit=ingest_pb2.Deposit(account=501, asset="USDT", amount=10_000 * USDT)),
        U(deposit=ingest_pb2.Deposit(account=502, asset="USDT", amount=10_000 * USDT)),
        U(mark_price=ingest_pb2.MarkPrice(market="ETH-USDT", price=300_000)),
        U(margin_transfer=ingest_pb2.MarginTransfer(account=501, market="ETH-USDT", amount=USDT)),
        U(margin_transfer=ingest_pb2.MarginTransfer(account=502, market="ETH-USDT", amount=USDT)),
        U(
            fill=ingest_pb2.Fill(
                market="ETH-USDT",
                trade_id=9_001,
                buyer_account=501,
                seller_account=502,
                price=300_000,
                quantity=1,
            )
        ),
    )
    s.close()
    assert [(x.sequence, x.code) for x in r.rejections] == [
        (6, ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION)
    ], r
    update(d, symbol="ETH-USDT", reduce_only=False, fund_fee_share_ppm=0)
    assert not market(d, "ETH-USDT").reduce_only


def test_a_cap_can_be_cleared_and_zero_is_a_cap(d: Daemon) -> None:
    assert not market(d, "BTC-USD").HasField("fund_loss_cap")  # the default: no cap
    assert update(d, symbol="BTC-USD", fund_loss_cap=0).HasField("fund_loss_cap")
    assert market(d, "BTC-USD").fund_loss_cap == 0
    update(d, symbol="BTC-USD", fund_loss_cap=12_345)
    assert market(d, "BTC-USD").fund_loss_cap == 12_345
    # Another field alone keeps the cap.
    update(d, symbol="BTC-USD", fund_fee_share_ppm=0)
    assert market(d, "BTC-USD").fund_loss_cap == 12_345
    e = refused(d, symbol="BTC-USD", fund_loss_cap=1, clear_fund_loss_cap=True)
    assert e.code() == INVALID and str(e.details()).startswith("clear_fund_loss_cap")
    update(d, symbol="BTC-USD", clear_fund_loss_cap=True)
    assert not market(d, "BTC-USD").HasField("fund_loss_cap")


def test_partial_liquidation_needs_a_fee_cap_below_100_percent(d: Daemon) -> None:
    original = market(d, "ETH-USDT")
    assert original.liquidation_fee_cap_ppm == 1_000_000 and not original.partial_liquidation
    e = refused(d, symbol="ETH-USDT", partial_liquidation=True)
    assert e.code() == INVALID
    assert str(e.details()).startswith("market.partial_liquidation: "), e.details()
    # Both in one request: checked together.
    got = update(d, symbol="ETH-USDT", partial_liquidation=True, liquidation_fee_cap_ppm=10_000)
    assert got.partial_liquidation and got.liquidation_fee_cap_ppm == 10_000
    # The fee cap cannot go back to 100 % while partial liquidation is on ...
    e = refused(d, symbol="ETH-USDT", liquidation_fee_cap_ppm=1_000_000)
    assert str(e.details()).startswith("market.partial_liquidation: "), e.details()
    # ... false switches it off (it is not "not given").
    update(d, symbol="ETH-USDT", partial_liquidation=False, liquidation_fee_cap_ppm=1_000_000)
    assert market(d, "ETH-USDT") == original
    # The policy, the same way.
    fraction = types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION
    got = update(
        d, symbol="ETH-USDT", partial_liquidation_policy=fraction, liquidation_fee_cap_ppm=10_000
    )
    assert got.partial_liquidation_policy == fraction
    e = refused(d, symbol="ETH-USDT", liquidation_fee_cap_ppm=1_000_000)
    assert str(e.details()).startswith("market.partial_liquidation_policy: "), e.details()
    update(
        d,
        symbol="ETH-USDT",
        partial_liquidation_policy=types_pb2.PARTIAL_LIQUIDATION_POLICY_FULL,
        liquidation_fee_cap_ppm=1_000_000,
    )
    assert market(d, "ETH-USDT") == original


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({}, INVALID, "market"),  # nothing to change
        ({"symbol": "NOPE", "tick_size": 10}, grpc.StatusCode.NOT_FOUND, "market.symbol"),
        ({"symbol": "", "tick_size": 10}, INVALID, "market.symbol"),
        ({"price_decimals": 3}, INVALID, "market.price_decimals"),
        ({"quantity_decimals": 1}, INVALID, "market.quantity_decimals"),
        ({"contract_value": 100}, INVALID, "market.contract_value"),
        ({"settle_asset": "BTC"}, INVALID, "market.settle_asset"),
        ({"contract_type": types_pb2.CONTRACT_TYPE_INVERSE}, INVALID, "market.contract_type"),
    ],
)
def test_refusals_name_the_field(
    d: Daemon, fields: dict[str, Any], code: grpc.StatusCode, field: str
) -> None:
    e = refused(d, **fields)
    assert e.code() == code, e
    assert str(e.details()).startswith(f"{field}: "), e.details()


def test_repeating_what_cannot_change_is_fine(d: Daemon) -> None:
    """A client may send back what ListMarkets gave it, with one setting changed."""
    m = market(d)
    request = types_pb2.Market()
    request.CopyFrom(m)
    request.fund_fee_share_ppm = 1
    got = admin(d).UpdateMarket(admin_pb2.UpdateMarketRequest(market=request)).market
    assert got.fund_fee_share_ppm == 1 and others(got, "fund_fee_share_ppm") == others(
        m, "fund_fee_share_ppm"
    )
    update(d, fund_fee_share_ppm=m.fund_fee_share_ppm)


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_changes_survive_a_restart(tmp_path: Path, how: str) -> None:
    """Replayed from the journal (after kill -9) or restored from the shutdown snapshot:
    a cleared cap stays cleared, set flags and enum settings stay set."""
    first = start_daemon(tmp_path)
    try:
        update(first, fund_loss_cap=7 * USDT)
        update(first, clear_fund_loss_cap=True)
        update(first, symbol="BTC-USD", fund_loss_cap=0, reduce_only=True)
        update(first, symbol="ETH-USDT", partial_liquidation=True, liquidation_fee_cap_ppm=1)
        update(first, symbol="ETH-USDT", margin_call_ppm=0)
        update(
            first,
            symbol="BTC-USD",
            takeover_price=types_pb2.TAKEOVER_PRICE_BANKRUPTCY,
            partial_liquidation_policy=types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION,
            partial_fraction_ppm=300_000,
            liquidation_fee_cap_ppm=5_000,
        )
        before = [market(first, s) for s in ("BTC-USDT", "BTC-USD", "ETH-USDT")]
    finally:
        if how == "kill":
            first.process.kill()  # acknowledged = journaled: nothing else is needed
            first.process.wait()
        else:
            assert first.stop() == 0
    again = start_daemon(tmp_path)
    try:
        after = [market(again, s) for s in ("BTC-USDT", "BTC-USD", "ETH-USDT")]
        recovered = [
            line for line in again.log.read_text().splitlines() if "riskd_recovered" in line
        ]
    finally:
        assert again.stop() == 0
    assert recovered and ('"replayed": 0' in recovered[0]) == (how == "stop"), recovered
    assert [others(m) for m in after] == [others(m) for m in before]
    assert not after[0].HasField("fund_loss_cap")
    assert after[1].HasField("fund_loss_cap") and after[1].fund_loss_cap == 0
    assert after[1].reduce_only and after[2].partial_liquidation
    assert after[1].takeover_price == types_pb2.TAKEOVER_PRICE_BANKRUPTCY
    assert after[1].partial_liquidation_policy == types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION
    assert after[2].HasField("margin_call_ppm") and after[2].margin_call_ppm == 0


_INT64 = st.one_of(
    st.sampled_from([0, 1, -1, 999_999, 1_000_000, 1_000_001, 2**63 - 1, -(2**63)]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "tick_size": _INT64,
    "step_size": _INT64,
    "liquidation_fee_cap_ppm": _INT64,
    "fund_fee_share_ppm": _INT64,
    "margin_call_ppm": _INT64,
    "fund_loss_cap": _INT64,
    "reduce_only": st.booleans(),
    "partial_liquidation": st.booleans(),
    "liquidation_mode": st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.just(1),
    "adl_policy": st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.just(2),
    "tiers": st.lists(
        st.tuples(_INT64, st.integers(-5, 2_000), st.integers(-5, 1_000_001)), max_size=3
    ).map(lambda rows: tiers(*rows)),
}
_FIELDS["fill_price_band_ppm"] = _INT64
_FIELDS["mark_max_jump_ppm"] = _INT64
_FIELDS["mark_max_divergence_ppm"] = _INT64
_FIELDS["mark_stale_after_ms"] = _INT64
_FIELDS["order_price_band_ppm"] = _INT64
_FIELDS["open_interest_cap"] = _INT64
_FIELDS["max_position_notional"] = _INT64
_FIELDS["max_open_orders"] = _INT64
_FIELDS["partial_fraction_ppm"] = _INT64
_FIELDS["partial_cooldown_ms"] = _INT64
_FIELDS["partial_liquidation_policy"] = st.integers(min_value=-1, max_value=4)
_FIELDS["takeover_price"] = st.integers(min_value=-1, max_value=3)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    symbol=st.sampled_from(["BTC-USDT", "ETH-USDT", "BTC-USD"]),
    fields=st.fixed_dictionaries({}, optional=_FIELDS),
    clear=st.booleans(),
)
def test_any_request_is_applied_exactly_or_refused_naming_a_field(
    d: Daemon, symbol: str, fields: dict[str, Any], clear: bool
) -> None:
    """Random settings, in or out of range: either every field that was set is in force
    afterwards and nothing else changed, or INVALID_ARGUMENT names a field and nothing
    changed at all (never UNKNOWN, never a partial change)."""
    if not fields.get("tiers", True):
        del fields["tiers"]  # empty tiers: keep the table (a repeated field has no presence)
    original = market(d, symbol)
    digest = check(d)
    try:
        got = update(d, symbol=symbol, clear_fund_loss_cap=clear, **fields)
    except grpc.RpcError as e:
        event("refused")
        assert e.code() == INVALID, e
        assert re.match(r"^(market(\.\w+(\[\d+\])?)?|clear_fund_loss_cap): ", str(e.details()))
        assert (market(d, symbol), check(d)) == (original, digest)
        return
    event("applied")
    changed = set(fields) | ({"fund_loss_cap"} if clear else set())
    assert others(market(d, symbol), *changed) == others(original, *changed)
    for name, value in fields.items():
        if name == "tiers":
            assert [t.notional_floor for t in got.tiers] == [t.notional_floor for t in value]
        else:
            assert getattr(got, name) == value
    if clear:
        assert not got.HasField("fund_loss_cap")
    # Back to where it was, for the next example and the other tests.
    restore = types_pb2.Market()
    restore.CopyFrom(original)
    restore.ClearField("mark_price")
    admin(d).UpdateMarket(
        admin_pb2.UpdateMarketRequest(
            market=restore, clear_fund_loss_cap=not original.HasField("fund_loss_cap")
        )
    )
    assert market(d, symbol) == original
