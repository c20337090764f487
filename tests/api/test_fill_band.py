"""Issue 11, fill price sanity through the real daemon (default config: a 5 % band).

Each refusal is checked the way tests/api/test_bad_input.py checks bad input:
the rejection's code and field, and an unchanged state digest.  The config
key is checked on its own at the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from riskd import config
from riskd.v1 import admin_pb2, ingest_pb2, query_pb2, query_pb2_grpc, types_pb2

from .conftest import Daemon, start_daemon
from .test_bad_input import RawStream, admin, digest

U = ingest_pb2.Update
PRECONDITION = ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION
USDT = 10**6
BTC = 10**8
_trades = itertools.count(1)


def fill(market: str, buyer: int, seller: int, price: int, quantity: int) -> ingest_pb2.Update:
    return U(
        fill=ingest_pb2.Fill(
            market=market,
            trade_id=next(_trades),
            buyer_account=buyer,
            seller_account=seller,
            price=price,
            quantity=quantity,
        )
    )


def mark(market: str, price: int) -> ingest_pb2.Update:
    return U(mark_price=ingest_pb2.MarkPrice(market=market, price=price))


def fund(account: int, market: str, asset: str, amount: int) -> list[ingest_pb2.Update]:
    return [
        U(deposit=ingest_pb2.Deposit(account=account, asset=asset, amount=2 * amount)),
        U(margin_transfer=ingest_pb2.MarginTransfer(account=account, market=market, amount=amount)),
    ]


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("fill-band"))
    try:
        yield daemon
        checked = admin(daemon).CheckState(admin_pb2.CheckStateRequest())
        assert list(checked.violations) == []
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def refused(d: Daemon, update: ingest_pb2.Update, field: str) -> str:
    """Send ``update`` alone: refused FAILED_PRECONDITION on ``field``, nothing changed."""
    before = digest(d)
    s = RawStream(d)
    r = s.send(update)
    s.close()
    assert [(x.code, x.field) for x in r.rejections] == [(PRECONDITION, field)], r
    assert digest(d) == before
    return r.rejections[0].message


def applied(d: Daemon, *updates: ingest_pb2.Update) -> None:
    s = RawStream(d)
    r = s.send(*updates)
    s.close()
    assert list(r.rejections) == [], r


def test_markets_show_their_band(d: Daemon) -> None:
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    markets = q.ListMarkets(query_pb2.ListMarketsRequest()).markets
    assert {m.symbol: m.fill_price_band_ppm for m in markets} == {
        "BTC-USDT": 50_000,
        "ETH-USDT": 50_000,
        "BTC-USD": 50_000,
    }


def test_no_fill_before_the_first_mark(d: Daemon) -> None:
    applied(d, *fund(31, "BTC-USD", "BTC", BTC), *fund(32, "BTC-USD", "BTC", BTC))
    message = refused(d, fill("BTC-USD", 31, 32, 500_000, 10), "updates[0].fill.price")
    assert "no mark price yet" in message
    applied(d, mark("BTC-USD", 500_000), fill("BTC-USD", 31, 32, 500_000, 10))


def test_the_issue_attack_is_refused_and_the_fund_untouched(d: Daemon) -> None:
    """At mark 50,000 an account with 1,000 USDT margin sells 1 BTC to an accomplice."""
    applied(
        d,
        *fund(41, "BTC-USDT", "USDT", 1_000 * USDT),
        *fund(42, "BTC-USDT", "USDT", 100_000 * USDT),
        mark("BTC-USDT", 5_000_000),
    )
    q = query_pb2_grpc.QueryServiceStub(d.channel())
    fund_before = q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
    # At 40,000: outside the band; the message names the band and the mark.
    message = refused(d, fill("BTC-USDT", 42, 41, 4_000_000, 1_000), "updates[0].fill.price")
    assert "50000 ppm" in message and "5000000" in message
    # At 47,500: inside the band, but the seller would be bankrupt at the mark.
    refused(d, fill("BTC-USDT", 42, 41, 4_750_000, 1_000), "updates[0].fill.seller_account")
    # The buyer's side is checked the same way.
    refused(d, fill("BTC-USDT", 41, 42, 5_250_000, 1_000), "updates[0].fill.buyer_account")
    # A fair trade goes through.
    applied(d, fill("BTC-USDT", 42, 41, 5_000_000, 100))
    after = q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
    assert after.balance == fund_before.balance


def test_update_market_turns_the_band_off_and_on(d: Daemon) -> None:
    a = admin(d)
    applied(
        d,
        *fund(51, "ETH-USDT", "USDT", 10_000 * USDT),
        *fund(52, "ETH-USDT", "USDT", 10_000 * USDT),
        mark("ETH-USDT", 300_000),
    )
    off_market = fill("ETH-USDT", 51, 52, 400_000, 10)  # a third above the mark
    refused(d, off_market, "updates[0].fill.price")
    a.UpdateMarket(
        admin_pb2.UpdateMarketRequest(
            market=types_pb2.Market(symbol="ETH-USDT", fill_price_band_ppm=0)
        )
    )
    applied(d, fill("ETH-USDT", 51, 52, 400_000, 10))  # off: the gateway is trusted
    a.UpdateMarket(
        admin_pb2.UpdateMarketRequest(
            market=types_pb2.Market(symbol="ETH-USDT", fill_price_band_ppm=50_000)
        )
    )
    refused(d, fill("ETH-USDT", 51, 52, 400_000, 10), "updates[0].fill.price")


def test_config_band_defaults_to_five_percent_and_is_range_checked() -> None:
    text = config.default_toml()
    assert "fill_price_band_ppm = 50000" in text
    unset = text.replace("fill_price_band_ppm = 50000", "")
    assert {m.fill_price_band_ppm for m in config.parse(unset).markets} == {50_000}
    off = config.parse(text.replace("fill_price_band_ppm = 50000", "fill_price_band_ppm = 0"))
    assert {m.symbol: m.fill_price_band_ppm for m in off.markets}["BTC-USDT"] == 0
    with pytest.raises(ValueError, match=r"markets\.BTC-USDT\.fill_price_band_ppm"):
        config.parse(text.replace("fill_price_band_ppm = 50000", "fill_price_band_ppm = 1000001"))
