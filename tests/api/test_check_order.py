"""The risk gate through the real daemon: unary CheckOrder, check_order on the stream,
fills releasing reservations, the unreserved-fill counter, and a restart that
reproduces every reservation (kill -9: journal replay)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from riskd.v1 import admin_pb2, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc

from .conftest import Daemon, start_daemon
from .test_bad_input import RawStream, admin, digest
from .test_daemon_e2e import metric, scrape

U = ingest_pb2.Update
USDT = 10**6
P = 5_000_000  # 50,000 USDT
BUY, SELL = ingest_pb2.ORDER_SIDE_BUY, ingest_pb2.ORDER_SIDE_SELL
_accounts = itertools.count(100)
_orders = itertools.count(1)
_trades = itertools.count(1)


def order(
    account: int, side: int, quantity: int, price: int = P, **kw: object
) -> ingest_pb2.CheckOrder:
    return ingest_pb2.CheckOrder(
        market="BTC-USDT",
        order_id=kw.pop("order_id", None) or next(_orders),  # type: ignore[arg-type]
        account=account,
        side=side,
        price=price,
        quantity=quantity,
        **kw,  # type: ignore[arg-type]
    )


def check(d: Daemon, o: ingest_pb2.CheckOrder) -> ingest_pb2.CheckOrderResponse:
    stub = ingest_pb2_grpc.IngestServiceStub(d.channel())
    response: ingest_pb2.CheckOrderResponse = stub.CheckOrder(
        ingest_pb2.CheckOrderRequest(order=o), metadata=[("x-riskd-gateway", "gw-orders")]
    )
    return response


def funded(d: Daemon, margin: int) -> int:
    """A fresh account with ``margin`` USDT in its BTC-USDT isolated margin."""
    a = next(_accounts)
    s = RawStream(d)
    r = s.send(
        U(deposit=ingest_pb2.Deposit(account=a, asset="USDT", amount=margin * USDT)),
        U(
            margin_transfer=ingest_pb2.MarginTransfer(
                account=a, market="BTC-USDT", amount=margin * USDT
            )
        ),
    )
    s.close()
    assert list(r.rejections) == [], r
    return a


def send(d: Daemon, *updates: ingest_pb2.Update) -> ingest_pb2.IngestResponse:
    s = RawStream(d)
    r = s.send(*updates)
    s.close()
    return r


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("check-order"))
    try:
        assert not send(
            daemon, U(mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=P))
        ).rejections
        yield daemon
        checked = admin(daemon).CheckState(admin_pb2.CheckStateRequest())
        assert list(checked.violations) == []
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def test_unary_accepts_reserves_and_refuses_the_rest(d: Daemon) -> None:
    a = funded(d, 600)
    first = order(a, BUY, 1_000)  # 1 BTC at 50,000: 100x tier, 500 USDT
    r = check(d, first)
    assert (r.accepted, r.reserved, r.available) == (True, 500 * USDT, 100 * USDT), r
    before = digest(d)
    again = check(d, first)  # a retry: the same order, nothing more reserved
    assert (again.accepted, again.reserved, again.available) == (True, 500 * USDT, 100 * USDT)
    assert digest(d) == before
    no = check(d, order(a, BUY, 300))
    assert not no.accepted
    assert no.refusal == ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE
    assert no.field == "order.quantity" and no.message and no.available == 100 * USDT
    assert digest(d) == before
    lev = check(d, order(a, BUY, 100, leverage=125))  # 1.1 BTC is in the 100x tier
    assert (
        lev.refusal == ingest_pb2.ORDER_REFUSAL_LEVERAGE_ABOVE_TIER
        and lev.field == "order.leverage"
    )
    unknown = check(d, order(next(_accounts), BUY, 1))
    assert unknown.refusal == ingest_pb2.ORDER_REFUSAL_UNKNOWN_ACCOUNT
    assert digest(d) == before


def test_stream_batch_of_checks_reports_each_refusal(d: Daemon) -> None:
    a = funded(d, 100)  # 0.1 BTC at 125x costs 40 USDT: two fit, the third does not
    checks = [U(check_order=order(a, BUY, 100)) for _ in range(3)]
    checks.append(U(check_order=order(a, SELL, 1, reduce_only=True)))
    r = send(d, *checks)
    got = [(x.sequence, x.field, x.order_refusal) for x in r.rejections]
    assert got == [
        (3, "updates[2].check_order.quantity", ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE),
        (4, "updates[3].check_order.reduce_only", ingest_pb2.ORDER_REFUSAL_REDUCE_ONLY),
    ], r
    assert r.rejections[0].code == ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION
    # margin out may not take what the two orders hold
    out = send(
        d,
        U(
            margin_transfer=ingest_pb2.MarginTransfer(
                account=a, market="BTC-USDT", amount=-21 * USDT
            )
        ),
    )
    assert [x.field for x in out.rejections] == ["updates[0].margin_transfer.amount"]


def test_fills_release_and_unreserved_fills_are_counted(d: Daemon) -> None:
    buyer, seller = funded(d, 1_000), funded(d, 1_000)
    b, s = order(buyer, BUY, 1_000), order(seller, SELL, 1_000)
    assert check(d, b).accepted and check(d, s).accepted
    counted = metric(scrape(d), "riskd_fills_unreserved_total", market="BTC-USDT")
    fill = ingest_pb2.Fill(
        market="BTC-USDT",
        trade_id=next(_trades),
        buyer_account=buyer,
        seller_account=seller,
        price=P,
        quantity=400,
        buyer_order_id=b.order_id,
        seller_order_id=s.order_id,
    )
    assert not send(d, U(fill=fill)).rejections
    unnamed = ingest_pb2.Fill(
        market="BTC-USDT",
        trade_id=next(_trades),
        buyer_account=buyer,
        seller_account=seller,
        price=P,
        quantity=1,
    )
    assert not send(d, U(fill=unnamed)).rejections
    assert metric(scrape(d), "riskd_fills_unreserved_total", market="BTC-USDT") == counted + 1


def test_cancel_and_amend_on_the_stream(d: Daemon) -> None:
    a = funded(d, 100)
    o = order(a, BUY, 100)
    assert check(d, o).accepted
    amend = ingest_pb2.AmendOrder(market="BTC-USDT", order_id=o.order_id, price=P, quantity=300)
    r = send(d, U(amend_order=amend))
    assert [x.order_refusal for x in r.rejections] == [
        ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE
    ]
    amend.quantity = 250
    assert not send(d, U(amend_order=amend)).rejections
    assert check(d, order(a, BUY, 1)).refusal == ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE
    cancel = ingest_pb2.CancelOrder(market="BTC-USDT", order_id=o.order_id)
    assert not send(d, U(cancel_order=cancel)).rejections
    assert check(d, order(a, BUY, 250)).accepted


def test_open_orders_per_account_are_bounded(d: Daemon) -> None:
    """max_open_orders (UpdateMarket here; 200 by default) refuses a new order, unary
    and on the stream, changing nothing; a cancel makes room again."""
    from riskd.v1 import types_pb2

    def limit(n: int) -> None:
        m = types_pb2.Market(symbol="BTC-USDT", max_open_orders=n)
        got = admin(d).UpdateMarket(admin_pb2.UpdateMarketRequest(market=m)).market
        assert got.max_open_orders == n

    a = funded(d, 100)
    limit(2)
    try:
        first = order(a, BUY, 10)
        assert check(d, first).accepted and check(d, order(a, BUY, 10)).accepted
        before = digest(d)
        no = check(d, order(a, BUY, 10))
        assert (no.accepted, no.refusal, no.field) == (
            False,
            ingest_pb2.ORDER_REFUSAL_TOO_MANY_ORDERS,
            "order.order_id",
        ), no
        r = send(d, U(check_order=order(a, SELL, 10)))
        assert [(x.field, x.order_refusal) for x in r.rejections] == [
            ("updates[0].check_order.order_id", ingest_pb2.ORDER_REFUSAL_TOO_MANY_ORDERS)
        ]
        assert digest(d) == before
        assert check(d, first).accepted  # a retry of an open one is not a new order
        cancel = ingest_pb2.CancelOrder(market="BTC-USDT", order_id=first.order_id)
        assert not send(d, U(cancel_order=cancel), U(check_order=order(a, SELL, 10))).rejections
    finally:
        limit(200)


def test_a_later_mark_re_prices_what_orders_hold(d: Daemon) -> None:
    """Buy 1 BTC at 50,000 with 600 USDT: 500 reserved.  At a mark of 55,000 the
    order holds 550: the next check sees 50 available and margin out stops there."""

    def mark(price: int) -> None:
        assert not send(
            d, U(mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=price))
        ).rejections

    a = funded(d, 600)
    assert check(d, order(a, BUY, 1_000)).accepted
    mark(5_500_000)
    try:
        no = check(d, order(a, BUY, 100, price=5_500_000))  # needs 55
        assert (no.refusal, no.available) == (
            ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE,
            50 * USDT,
        ), no
        out = ingest_pb2.MarginTransfer(account=a, market="BTC-USDT", amount=-51 * USDT)
        assert [x.field for x in send(d, U(margin_transfer=out)).rejections] == [
            "updates[0].margin_transfer.amount"
        ]
    finally:
        mark(P)
    assert check(d, order(a, BUY, 100)).accepted  # 50 at 50,000 and 100x: fits the 100


def test_gate_settings_show_in_the_market(d: Daemon) -> None:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    got = {m.symbol: m for m in q.ListMarkets(query_pb2.ListMarketsRequest()).markets}
    assert got["BTC-USDT"].HasField("order_price_band_ppm")
    assert got["BTC-USDT"].open_interest_cap == 0
    assert got["BTC-USDT"].max_open_orders == 200


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_reservations_survive_a_restart(tmp_path: Path, how: str) -> None:
    """From the journal (kill -9) and from the shutdown snapshot (SIGTERM)."""
    first = start_daemon(tmp_path)
    try:
        assert not send(
            first, U(mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=P))
        ).rejections
        a = funded(first, 100)
        assert check(first, order(a, BUY, 100)).accepted
        assert not send(first, U(check_order=order(a, BUY, 100))).rejections
        before = digest(first)
    finally:
        if how == "kill":
            first.process.kill()  # acknowledged = journaled
            first.process.wait()
        else:
            assert first.stop() == 0
    again = start_daemon(tmp_path)
    try:
        assert digest(again) == before
        assert (
            check(again, order(a, BUY, 51)).refusal == ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE
        )
        assert check(again, order(a, BUY, 50)).accepted
    finally:
        assert again.stop() == 0


def test_the_python_gateway_helper_batches_checks(d: Daemon) -> None:
    import asyncio

    from riskd_client.gateway import Gateway

    a = funded(d, 50)  # 0.1 BTC at 125x: 40 USDT; the second does not fit

    async def go() -> list[ingest_pb2.Rejection]:
        async with Gateway(d.target, "gw-helper") as gw:
            gw.check_order("BTC-USDT", 900_001, a, BUY, P, 100)
            gw.check_order("BTC-USDT", 900_002, a, BUY, P, 100)
            gw.cancel_order("BTC-USDT", 900_001)
            gw.check_order("BTC-USDT", 900_003, a, SELL, P, 100, leverage=100)
            await gw.flush()
            return list(gw.rejections)

    got = [(r.sequence, r.order_refusal) for r in asyncio.run(go())]
    assert got == [(2, ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE)]


def test_gate_config_keys_are_read_and_range_checked() -> None:
    from riskd import config

    text = (Path(__file__).parents[2] / "riskd" / "default_config.toml").read_text()
    anchor = "fill_price_band_ppm = 50000"
    keys = (
        "max_position_notional = 2000000\norder_price_band_ppm = 30000\nopen_interest_cap = 5000\n"
    )
    parsed = {m.symbol: m for m in config.parse(text.replace(anchor, keys + anchor, 1)).markets}
    m = parsed["BTC-USDT"]
    assert (m.max_position_notional, m.order_price_band_ppm, m.open_interest_cap) == (
        2_000_000 * USDT,  # whole USDT, as tier floors
        30_000,
        5_000,
    )
    for bad in ("order_price_band_ppm = 1000001", "open_interest_cap = -1", "max_open_orders = 0"):
        with pytest.raises(ValueError, match=rf"markets\.BTC-USDT\.{bad.split()[0]}"):
            config.parse(text.replace(anchor, bad + "\n" + anchor, 1))


def test_unary_checks_are_charged_to_the_gateways_rate_limit(tmp_path: Path) -> None:
    import re

    import grpc

    text = (Path(__file__).parents[2] / "riskd" / "default_config.toml").read_text()
    for key, value in (("gateway_updates_per_second", 1), ("gateway_burst", 3)):
        text = re.sub(rf"^{key} = 0\b", f"{key} = {value}", text, count=1, flags=re.M)
    config = tmp_path / "riskd.toml"
    config.write_text(text)
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        answered = 0
        with pytest.raises(grpc.RpcError) as e:
            for _ in range(10):
                check(d, order(7, BUY, 1))
                answered += 1
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert 1 <= answered <= 4  # the burst, and perhaps a token refilled meanwhile
    finally:
        assert d.stop() == 0


def test_cross_account_orders_share_its_wallet_through_the_daemon(d: Daemon) -> None:
    """The daemon routes a cross account's checks through its whole wallet as the pure
    engine does (tests/core/test_risk_gate.py): one market's reservation is the other's
    refusal, on the stream and as a unary call, and withdrawals leave it."""
    from riskd.v1 import types_pb2, withdrawal_pb2, withdrawal_pb2_grpc

    a = next(_accounts)
    cross = types_pb2.MARGIN_MODE_CROSS
    setup = [
        U(mark_price=ingest_pb2.MarkPrice(market="ETH-USDT", price=300_000)),
        U(margin_mode=ingest_pb2.SetMarginMode(market="BTC-USDT", account=a, mode=cross)),
        U(margin_mode=ingest_pb2.SetMarginMode(market="ETH-USDT", account=a, mode=cross)),
        U(deposit=ingest_pb2.Deposit(account=a, asset="USDT", amount=1_000 * USDT)),
    ]
    assert not send(d, *setup).rejections
    assert check(d, order(a, BUY, 1_000)).reserved == 500 * USDT  # 1 BTC at 50,000: 100x
    eth = ingest_pb2.CheckOrder(
        market="ETH-USDT", order_id=next(_orders), account=a, side=SELL, price=300_000
    )
    eth.quantity = 20_000  # 20 ETH at 3,000 = 60,000 USDT: 600 at 100x, the wallet has 500
    r = send(d, U(check_order=eth))
    assert [x.order_refusal for x in r.rejections] == [
        ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE
    ]
    eth.quantity = 10_000  # 10 ETH = 30,000 USDT: 300 at 100x
    assert not send(d, U(check_order=eth)).rejections
    left = check(d, order(a, BUY, 1))  # 200 left of the wallet: 0.001 BTC costs 0.4
    assert left.accepted and left.available == 200 * USDT - left.reserved
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(d.channel())
    no = w.Withdraw(
        withdrawal_pb2.WithdrawRequest(
            account=a, asset="USDT", amount=201 * USDT, withdrawal_id=next(_orders)
        ),
        metadata=[("x-riskd-gateway", "gw-orders")],
    )
    assert not no.approved and "reserve" in no.reason


def test_concurrent_unary_checks_each_see_the_ones_before(tmp_path: Path) -> None:
    """Unary checks in flight together (crossing into the engine together, applied
    in one turn of the market) never spend the same margin, and each answer's
    figures are its own: read right after it, before the next.  A restart from
    the journal alone (kill -9) reproduces them."""
    import asyncio

    import grpc

    first = start_daemon(tmp_path)
    try:
        assert not send(
            first, U(mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=P))
        ).rejections
        a = funded(first, 330)  # 0.1 BTC at 50,000, 125x: 40 USDT each; 8 fit

        async def go() -> list[ingest_pb2.CheckOrderResponse]:
            async with grpc.aio.insecure_channel(first.target) as channel:
                stub = ingest_pb2_grpc.IngestServiceStub(channel)
                meta = [("x-riskd-gateway", "gw-many")]
                return list(
                    await asyncio.gather(
                        *(
                            stub.CheckOrder(
                                ingest_pb2.CheckOrderRequest(order=order(a, BUY, 100)),
                                metadata=meta,
                            )
                            for _ in range(12)
                        )
                    )
                )

        answers = asyncio.run(go())
        accepted = [r for r in answers if r.accepted]
        assert sorted(r.available for r in accepted) == [
            (330 - 40 * k) * USDT for k in range(8, 0, -1)
        ]
        assert {r.reserved for r in accepted} == {40 * USDT}
        refused = [r for r in answers if not r.accepted]
        assert len(refused) == 4
        assert {(r.refusal, r.available) for r in refused} == {
            (ingest_pb2.ORDER_REFUSAL_INSUFFICIENT_BALANCE, 10 * USDT)
        }
        before = digest(first)
    finally:
        first.process.kill()  # acknowledged = journaled
        first.process.wait()
    again = start_daemon(tmp_path)
    try:
        assert digest(again) == before
        assert check(again, order(a, BUY, 100)).available == 10 * USDT
    finally:
        assert again.stop() == 0
