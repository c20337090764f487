"""Issue 7, bad input: every class is refused naming the field and changes nothing.

All tests share one real ``riskd serve`` (module scope); each test uses its own
gateway id so sequence numbers never interfere.  Per-update rejections are
checked on ``IngestResponse.rejections``; stream-level problems on the gRPC
status that ends the stream.  The state digest comes from
``AdminService.CheckState``.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    types_pb2,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)

from .conftest import Daemon, start_daemon

U = ingest_pb2.Update
INVALID = ingest_pb2.REJECTION_CODE_INVALID_ARGUMENT
NOT_FOUND = ingest_pb2.REJECTION_CODE_NOT_FOUND
PRECONDITION = ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
USDT = 10**6
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("bad-input"))
    try:
        # ETH-USDT gets step_size 10 so an off-step quantity exists (defaults are 1).
        admin(daemon).UpdateMarket(
            admin_pb2.UpdateMarketRequest(market=types_pb2.Market(symbol="ETH-USDT", step_size=10))
        )
        # Funded accounts 11, 12 with isolated margin and a BTC-USDT mark price.
        s = RawStream(daemon, "gw-setup")
        r = s.send(
            U(deposit=ingest_pb2.Deposit(account=11, asset="USDT", amount=10**6 * USDT)),
            U(deposit=ingest_pb2.Deposit(account=12, asset="USDT", amount=10**6 * USDT)),
            U(mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=5_000_000)),
            U(mark_price=ingest_pb2.MarkPrice(market="ETH-USDT", price=300_000)),
            U(
                margin_transfer=ingest_pb2.MarginTransfer(
                    account=11, market="BTC-USDT", amount=10**5 * USDT
                )
            ),
            U(
                margin_transfer=ingest_pb2.MarginTransfer(
                    account=12, market="BTC-USDT", amount=10**5 * USDT
                )
            ),
        )
        assert list(r.rejections) == [], r
        s.close()
        # Opened before every bad input below; must still work after all of them.
        bystander = RawStream(daemon, "gw-bystander")
        assert bystander.send(mark(market="NOPE")).acked_sequence == 1
        yield daemon
        r = bystander.send(mark(market="NOPE"), mark(price=5_000_000))
        assert r.acked_sequence == 3 and [x.sequence for x in r.rejections] == [2], r
        bystander.close()
        assert list(admin(daemon).CheckState(admin_pb2.CheckStateRequest()).violations) == []
    finally:
        code = daemon.stop()
        assert code == 0, f"riskd exited with {code}:\n{daemon.log.read_text()}"
    log = daemon.log.read_text()
    assert "ingest_internal_error" not in log
    assert "Traceback" not in log


def det(e: grpc.RpcError) -> str:
    """The status details (``field: why``) of a failed call."""
    return str(e.details() or "")


def admin(d: Daemon) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(d.channel())


def digest(d: Daemon) -> str:
    return admin(d).CheckState(admin_pb2.CheckStateRequest()).digest


def healthy(d: Daemon) -> bool:
    h = health_pb2_grpc.HealthStub(d.channel())
    r = h.Check(health_pb2.HealthCheckRequest(service="riskd.v1.IngestService"), timeout=5)
    return r.status == health_pb2.HealthCheckResponse.SERVING


class RawStream:
    """A raw bidi Ingest stream, one request then one response at a time."""

    def __init__(self, d: Daemon, gateway: str | None = None, epoch: int = 1) -> None:
        self.channel = d.channel()
        self.q: queue.Queue[ingest_pb2.IngestRequest | None] = queue.Queue()
        self.gateway = gateway or f"gw-{next(_ids)}"
        self.next_sequence = 1

        def requests() -> Iterator[ingest_pb2.IngestRequest]:
            while (item := self.q.get()) is not None:
                yield item

        stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.call = stub.Ingest(
            requests(),
            metadata=(("x-riskd-gateway", self.gateway), ("x-riskd-epoch", str(epoch))),
            timeout=60,
        )
        self.acked = next(self.call).acked_sequence

    def send_request(self, request: ingest_pb2.IngestRequest) -> ingest_pb2.IngestResponse:
        self.q.put(request)
        return next(self.call)

    def send(self, *updates: ingest_pb2.Update, epoch: int = 0) -> ingest_pb2.IngestResponse:
        batch = []
        for u in updates:
            u = ingest_pb2.Update.FromString(u.SerializeToString())
            if not u.sequence:
                u.sequence = self.next_sequence
                self.next_sequence += 1
            batch.append(u)
        return self.send_request(ingest_pb2.IngestRequest(epoch=epoch, updates=batch))

    def fails(self, request: ingest_pb2.IngestRequest) -> grpc.RpcError:
        """Send ``request``; the stream must end with an error status."""
        self.q.put(request)
        with pytest.raises(grpc.RpcError) as info:
            for _ in self.call:
                pass
        self.q.put(None)  # release the request thread
        self.channel.close()
        return info.value

    def close(self) -> None:
        self.q.put(None)
        for _ in self.call:
            pass
        assert self.call.code() == grpc.StatusCode.OK
        self.channel.close()


# --- 1. per-update rejections -------------------------------------------------------

FILL = {
    "market": "BTC-USDT",
    "trade_id": 1,
    "buyer_account": 11,
    "seller_account": 12,
    "price": 5_000_000,
    "quantity": 1,
}


def fill(**kw: object) -> ingest_pb2.Update:
    return U(fill=ingest_pb2.Fill(**{**FILL, **kw}))  # type: ignore[arg-type]


def mark(market: str = "BTC-USDT", price: int = 5_000_000) -> ingest_pb2.Update:
    return U(mark_price=ingest_pb2.MarkPrice(market=market, price=price))


def dep(account: int = 11, asset: str = "USDT", amount: int = USDT) -> ingest_pb2.Update:
    return U(deposit=ingest_pb2.Deposit(account=account, asset=asset, amount=amount))


def mt(account: int = 11, market: str = "BTC-USDT", amount: int = USDT) -> ingest_pb2.Update:
    return U(
        margin_transfer=ingest_pb2.MarginTransfer(account=account, market=market, amount=amount)
    )


def mode(
    account: int = 11, market: str = "BTC-USDT", cross: int = types_pb2.MARGIN_MODE_CROSS
) -> ingest_pb2.Update:
    return U(
        margin_mode=ingest_pb2.SetMarginMode(market=market, account=account, mode=cross)  # type: ignore[arg-type]
    )


def lf(**kw: object) -> ingest_pb2.Update:
    base = {
        "market": "BTC-USDT",
        "liquidation_id": 1,
        "counterparty_account": 12,
        "price": 5_000_000,
        "quantity": 1,
    }
    return U(liquidation_fill=ingest_pb2.LiquidationFill(**{**base, **kw}))  # type: ignore[arg-type]


def co(**kw: object) -> ingest_pb2.Update:
    base: dict[str, object] = {
        "market": "BTC-USDT",
        "order_id": 1,
        "account": 11,
        "side": ingest_pb2.ORDER_SIDE_BUY,
        "price": 5_000_000,
        "quantity": 1,
    }
    return U(check_order=ingest_pb2.CheckOrder(**{**base, **kw}))  # type: ignore[arg-type]


CASES = [
    # (id, update, code, field)
    ("missing-oneof", U(), INVALID, "updates[0].kind"),
    ("empty-market-fill", fill(market=""), INVALID, "updates[0].fill.market"),
    ("empty-market-mark", mark(market=""), INVALID, "updates[0].mark_price.market"),
    ("empty-asset-deposit", dep(asset=""), INVALID, "updates[0].deposit.asset"),
    ("zero-quantity", fill(quantity=0), INVALID, "updates[0].fill.quantity"),
    ("negative-quantity", fill(quantity=-5), INVALID, "updates[0].fill.quantity"),
    ("zero-price-fill", fill(price=0), INVALID, "updates[0].fill.price"),
    ("negative-price-fill", fill(price=-10), INVALID, "updates[0].fill.price"),
    ("zero-price-mark", mark(price=0), INVALID, "updates[0].mark_price.price"),
    ("int64-min-price-mark", mark(price=INT64_MIN), INVALID, "updates[0].mark_price.price"),
    ("negative-fee", fill(buyer_fee=-1), INVALID, "updates[0].fill.buyer_fee"),
    ("zero-deposit", dep(amount=0), INVALID, "updates[0].deposit.amount"),
    ("negative-deposit", dep(amount=-1), INVALID, "updates[0].deposit.amount"),
    ("deposit-past-supply-cap", dep(amount=2**61), INVALID, "updates[0].deposit.amount"),
    ("zero-margin-transfer", mt(amount=0), INVALID, "updates[0].margin_transfer.amount"),
    (
        "unknown-liquidation-id",
        lf(quantity=0),
        NOT_FOUND,
        "updates[0].liquidation_fill.liquidation_id",
    ),
    (
        "unknown-liquidation-done",
        U(liquidation_done=ingest_pb2.LiquidationDone(market="BTC-USDT", liquidation_id=7)),
        NOT_FOUND,
        "updates[0].liquidation_done.liquidation_id",
    ),
    ("off-tick-fill", fill(price=5_000_005), INVALID, "updates[0].fill.price"),
    ("off-tick-mark", mark(price=5_000_001), INVALID, "updates[0].mark_price.price"),
    (
        "negative-index-price",
        U(mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=5_000_000, index_price=-1)),
        INVALID,
        "updates[0].mark_price.index_price",
    ),
    (
        "off-step-quantity",
        fill(market="ETH-USDT", price=300_000, quantity=15),
        INVALID,
        "updates[0].fill.quantity",
    ),
    ("unknown-market-fill", fill(market="NOPE-USDT"), NOT_FOUND, "updates[0].fill.market"),
    ("unknown-market-mt", mt(market="NOPE"), NOT_FOUND, "updates[0].margin_transfer.market"),
    (
        "unknown-market-funding",
        U(funding_rate=ingest_pb2.FundingRate(market="NOPE", rate_e8=1)),
        NOT_FOUND,
        "updates[0].funding_rate.market",
    ),
    ("unknown-asset", dep(asset="DOGE"), NOT_FOUND, "updates[0].deposit.asset"),
    ("unknown-market-mode", mode(market="NOPE"), NOT_FOUND, "updates[0].margin_mode.market"),
    ("unspecified-mode", mode(cross=0), INVALID, "updates[0].margin_mode.mode"),
    ("account-0-mode", mode(account=0), INVALID, "updates[0].margin_mode.account"),
    # Account 11 holds isolated margin in BTC-USDT: not flat, so no switch.
    ("mode-switch-not-flat", mode(), PRECONDITION, "updates[0].margin_mode.mode"),
    ("account-0-buyer", fill(buyer_account=0), INVALID, "updates[0].fill.buyer_account"),
    ("account-0-deposit", dep(account=0), INVALID, "updates[0].deposit.account"),
    ("account-max-deposit", dep(account=UINT64_MAX), INVALID, "updates[0].deposit.account"),
    ("buyer-is-seller", fill(seller_account=11), INVALID, "updates[0].fill.seller_account"),
    ("long-market-id", mark(market="B" * 33), INVALID, "updates[0].mark_price.market"),
    ("non-ascii-market-id", mark(market="BTC-USDТ"), INVALID, "updates[0].mark_price.market"),
    (
        "non-printable-market-id",
        mark(market="BTC\x00USDT"),
        INVALID,
        "updates[0].mark_price.market",
    ),
    ("long-asset-id", dep(asset="U" * 33), INVALID, "updates[0].deposit.asset"),
    (
        "funding-rate-100pct",
        U(funding_rate=ingest_pb2.FundingRate(market="BTC-USDT", rate_e8=10**8)),
        INVALID,
        "updates[0].funding_rate.rate_e8",
    ),
    (
        "deposit-overflows-wallet",
        dep(account=11, amount=INT64_MAX),
        INVALID,
        "updates[0].deposit.amount",
    ),
    ("check-order-no-side", co(side=0), INVALID, "updates[0].check_order.side"),
    ("check-order-unknown-side", co(side=7), INVALID, "updates[0].check_order.side"),
    ("check-order-id-0", co(order_id=0), INVALID, "updates[0].check_order.order_id"),
    ("check-order-account-0", co(account=0), INVALID, "updates[0].check_order.account"),
    ("check-order-off-tick", co(price=5_000_005), INVALID, "updates[0].check_order.price"),
    ("check-order-quantity-0", co(quantity=0), INVALID, "updates[0].check_order.quantity"),
    ("check-order-leverage", co(leverage=-1), INVALID, "updates[0].check_order.leverage"),
    ("check-order-market", co(market="NOPE"), NOT_FOUND, "updates[0].check_order.market"),
    ("check-order-empty-market", co(market=""), INVALID, "updates[0].check_order.market"),
    (
        "amend-unknown-order",
        U(amend_order=ingest_pb2.AmendOrder(market="BTC-USDT", order_id=99, price=10, quantity=1)),
        NOT_FOUND,
        "updates[0].amend_order.order_id",
    ),
    (
        "amend-quantity-0",
        U(amend_order=ingest_pb2.AmendOrder(market="BTC-USDT", order_id=99, price=10)),
        INVALID,
        "updates[0].amend_order.quantity",
    ),
    (
        "cancel-unknown-order",
        U(cancel_order=ingest_pb2.CancelOrder(market="BTC-USDT", order_id=99)),
        NOT_FOUND,
        "updates[0].cancel_order.order_id",
    ),
    (
        "cancel-order-id-0",
        U(cancel_order=ingest_pb2.CancelOrder(market="BTC-USDT")),
        INVALID,
        "updates[0].cancel_order.order_id",
    ),
]


@pytest.mark.parametrize(
    ("update", "code", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_update_is_rejected_naming_the_field(
    d: Daemon, update: ingest_pb2.Update, code: int, field: str
) -> None:
    before = digest(d)
    s = RawStream(d)
    r = s.send(update)
    assert r.acked_sequence == 1
    assert [(x.sequence, x.code, x.field) for x in r.rejections] == [(1, code, field)], r
    assert r.rejections[0].message
    s.close()
    assert digest(d) == before


def test_trade_value_overflowing_int64_is_rejected(d: Daemon) -> None:
    before = digest(d)
    s = RawStream(d)
    # price and quantity each fit in int64; their product (the position basis) does not.
    r = s.send(fill(price=(INT64_MAX // 10) * 10, quantity=INT64_MAX))
    assert len(r.rejections) == 1, r
    x = r.rejections[0]
    assert x.code == INVALID, x
    assert x.field in {"updates[0].fill.price", "updates[0].fill.quantity"}, x
    assert "int64" in x.message
    s.close()
    assert digest(d) == before


def test_good_and_bad_updates_in_one_batch_only_bad_ones_rejected(d: Daemon) -> None:
    s = RawStream(d)
    r = s.send(mark(market="NOPE"), U(), mark(price=5_000_003))
    assert r.acked_sequence == 3
    assert [(x.sequence, x.field) for x in r.rejections] == [
        (1, "updates[0].mark_price.market"),
        (2, "updates[1].kind"),
        (3, "updates[2].mark_price.price"),
    ]
    s.close()


def test_unknown_enum_on_update_market(d: Daemon) -> None:
    before = digest(d)
    for field, market in [
        ("market.liquidation_mode", types_pb2.Market(symbol="BTC-USDT", liquidation_mode=99)),
        ("market.adl_policy", types_pb2.Market(symbol="BTC-USDT", adl_policy=99)),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            admin(d).UpdateMarket(admin_pb2.UpdateMarketRequest(market=market))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert det(e.value).startswith(field), det(e.value)
    with pytest.raises(grpc.RpcError) as e:
        admin(d).UpdateMarket(admin_pb2.UpdateMarketRequest(market=types_pb2.Market(symbol="NOPE")))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert "market" in det(e.value)
    assert digest(d) == before


_TIER = types_pb2.RiskTier(notional_floor=0, max_leverage=20, maintenance_margin_rate_ppm=25_000)


def _new(**kw: object) -> types_pb2.Market:
    base: dict[str, object] = {
        "symbol": "NEW-USDT",
        "contract_type": types_pb2.CONTRACT_TYPE_LINEAR,
        "settle_asset": "USDT",
        "price_decimals": 2,
        "quantity_decimals": 3,
        "tiers": [_TIER],
    }
    return types_pb2.Market(**{**base, **kw})  # type: ignore[arg-type]


_A = admin_pb2
LIFECYCLE = [
    # (id, method, request, code, field)
    ("add-existing", "AddMarket", _A.AddMarketRequest(market=_new(symbol="BTC-USDT")),
     grpc.StatusCode.FAILED_PRECONDITION, "market.symbol"),
    ("add-unknown-asset", "AddMarket", _A.AddMarketRequest(market=_new(settle_asset="DOGE")),
     grpc.StatusCode.FAILED_PRECONDITION, "market.settle_asset"),
    ("add-no-contract", "AddMarket", _A.AddMarketRequest(market=_new(contract_type=0)),
     grpc.StatusCode.INVALID_ARGUMENT, "market.contract_type"),
    ("add-no-tiers", "AddMarket", _A.AddMarketRequest(market=_new(tiers=[])),
     grpc.StatusCode.INVALID_ARGUMENT, "market.tiers"),
    ("add-long-symbol", "AddMarket", _A.AddMarketRequest(market=_new(symbol="N" * 33)),
     grpc.StatusCode.INVALID_ARGUMENT, "market.symbol"),
    ("add-bad-jump", "AddMarket", _A.AddMarketRequest(market=_new(mark_max_jump_ppm=-1)),
     grpc.StatusCode.INVALID_ARGUMENT, "market.mark_max_jump_ppm"),
    ("add-bad-decimals", "AddMarket", _A.AddMarketRequest(market=_new(price_decimals=9)),
     grpc.StatusCode.INVALID_ARGUMENT, "market.price_decimals"),
    ("status-unspecified", "SetMarketStatus", _A.SetMarketStatusRequest(market="BTC-USDT"),
     grpc.StatusCode.INVALID_ARGUMENT, "status"),
    ("status-settled", "SetMarketStatus",
     _A.SetMarketStatusRequest(market="BTC-USDT", status=types_pb2.MARKET_STATUS_SETTLED),
     grpc.StatusCode.INVALID_ARGUMENT, "status"),
    ("status-same", "SetMarketStatus",
     _A.SetMarketStatusRequest(market="BTC-USDT", status=types_pb2.MARKET_STATUS_OPEN),
     grpc.StatusCode.FAILED_PRECONDITION, "status"),
    ("status-unknown-market", "SetMarketStatus",
     _A.SetMarketStatusRequest(market="NOPE", status=types_pb2.MARKET_STATUS_HALTED),
     grpc.StatusCode.NOT_FOUND, "market"),
    ("guard-not-guarded", "OverrideMarkGuard", _A.OverrideMarkGuardRequest(market="BTC-USDT"),
     grpc.StatusCode.FAILED_PRECONDITION, "market"),
    ("guard-unknown-market", "OverrideMarkGuard", _A.OverrideMarkGuardRequest(market="NOPE"),
     grpc.StatusCode.NOT_FOUND, "market"),
    ("settle-price-0", "SettleMarket", _A.SettleMarketRequest(market="BTC-USDT"),
     grpc.StatusCode.INVALID_ARGUMENT, "price"),
    ("settle-off-tick", "SettleMarket", _A.SettleMarketRequest(market="BTC-USDT", price=5_000_001),
     grpc.StatusCode.INVALID_ARGUMENT, "price"),
    ("settle-unknown-market", "SettleMarket", _A.SettleMarketRequest(market="NOPE", price=10),
     grpc.StatusCode.NOT_FOUND, "market"),
    ("asset-existing", "AddAsset", _A.AddAssetRequest(symbol="USDT", decimals=6),
     grpc.StatusCode.FAILED_PRECONDITION, "symbol"),
    ("asset-no-symbol", "AddAsset", _A.AddAssetRequest(decimals=6),
     grpc.StatusCode.INVALID_ARGUMENT, "symbol"),
    ("asset-long-symbol", "AddAsset", _A.AddAssetRequest(symbol="U" * 33, decimals=6),
     grpc.StatusCode.INVALID_ARGUMENT, "symbol"),
    ("asset-control-symbol", "AddAsset", _A.AddAssetRequest(symbol="US\x01DC", decimals=6),
     grpc.StatusCode.INVALID_ARGUMENT, "symbol"),
    ("asset-no-decimals", "AddAsset", _A.AddAssetRequest(symbol="USDC"),
     grpc.StatusCode.INVALID_ARGUMENT, "decimals"),
    ("asset-decimals-19", "AddAsset", _A.AddAssetRequest(symbol="USDC", decimals=19),
     grpc.StatusCode.INVALID_ARGUMENT, "decimals"),
    ("asset-drawdown-0", "AddAsset",
     _A.AddAssetRequest(symbol="USDC", decimals=6, fund_drawdown_limit_ppm=0),
     grpc.StatusCode.INVALID_ARGUMENT, "fund_drawdown_limit_ppm"),
    ("asset-drawdown-over-1e6", "AddAsset",
     _A.AddAssetRequest(symbol="USDC", decimals=6, fund_drawdown_limit_ppm=1_000_001),
     grpc.StatusCode.INVALID_ARGUMENT, "fund_drawdown_limit_ppm"),
    ("asset-window-59s", "AddAsset",
     _A.AddAssetRequest(symbol="USDC", decimals=6, fund_window_seconds=59),
     grpc.StatusCode.INVALID_ARGUMENT, "fund_window_seconds"),
    ("inject-past-supply-cap", "InjectFund",
     _A.InjectFundRequest(asset="USDT", amount=2**61 + 1, cause="seed"),
     grpc.StatusCode.INVALID_ARGUMENT, "amount"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "request_", "code", "field"),
    [c[1:] for c in LIFECYCLE],
    ids=[c[0] for c in LIFECYCLE],
)
def test_lifecycle_bad_input(
    d: Daemon, method: str, request_: object, code: grpc.StatusCode, field: str
) -> None:
    before = digest(d)
    with pytest.raises(grpc.RpcError) as e:
        getattr(admin(d), method)(request_)
    assert e.value.code() == code, e.value
    assert det(e.value).startswith(field), det(e.value)
    assert digest(d) == before


def test_withdrawal_bad_input(d: Daemon) -> None:
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(d.channel())
    ok = w.Withdraw(
        withdrawal_pb2.WithdrawRequest(account=12, asset="USDT", amount=USDT, withdrawal_id=700)
    )
    assert ok.approved
    before = digest(d)
    cases = [
        (
            {"account": 12, "asset": "USDT", "amount": -1, "withdrawal_id": 701},
            grpc.StatusCode.INVALID_ARGUMENT,
            "amount",
        ),
        (
            {"account": 12, "asset": "USDT", "amount": 0, "withdrawal_id": 702},
            grpc.StatusCode.INVALID_ARGUMENT,
            "amount",
        ),
        (
            {"account": 12, "asset": "DOGE", "amount": 1, "withdrawal_id": 703},
            grpc.StatusCode.NOT_FOUND,
            "asset",
        ),
        (
            {"account": 12, "asset": "USDT", "amount": 1, "withdrawal_id": 0},
            grpc.StatusCode.INVALID_ARGUMENT,
            "withdrawal_id",
        ),
        (
            {"account": 0, "asset": "USDT", "amount": 1, "withdrawal_id": 704},
            grpc.StatusCode.INVALID_ARGUMENT,
            "account",
        ),
        # the same id with a different payload
        (
            {"account": 12, "asset": "USDT", "amount": 2 * USDT, "withdrawal_id": 700},
            grpc.StatusCode.FAILED_PRECONDITION,
            "withdrawal_id",
        ),
        (
            {"account": 11, "asset": "USDT", "amount": USDT, "withdrawal_id": 700},
            grpc.StatusCode.FAILED_PRECONDITION,
            "withdrawal_id",
        ),
    ]
    for req, code, field in cases:
        with pytest.raises(grpc.RpcError) as e:
            w.Withdraw(withdrawal_pb2.WithdrawRequest(**req))  # type: ignore[arg-type]
        assert e.value.code() == code, (req, e.value)
        assert det(e.value).startswith(f"{field}:"), (req, det(e.value))
    # The same id with the same payload is answered again, not applied twice.
    assert (
        w.Withdraw(
            withdrawal_pb2.WithdrawRequest(account=12, asset="USDT", amount=USDT, withdrawal_id=700)
        )
        == ok
    )
    assert digest(d) == before


# --- 2. stream-level refusals --------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (ingest_pb2.CheckOrderRequest(), grpc.StatusCode.INVALID_ARGUMENT, "order"),
        (
            ingest_pb2.CheckOrderRequest(order=co(side=0).check_order),
            grpc.StatusCode.INVALID_ARGUMENT,
            "order.side",
        ),
        (
            ingest_pb2.CheckOrderRequest(order=co(order_id=0).check_order),
            grpc.StatusCode.INVALID_ARGUMENT,
            "order.order_id",
        ),
        (
            ingest_pb2.CheckOrderRequest(order=co(price=-10).check_order),
            grpc.StatusCode.INVALID_ARGUMENT,
            "order.price",
        ),
        (
            ingest_pb2.CheckOrderRequest(order=co(market="NOPE").check_order),
            grpc.StatusCode.NOT_FOUND,
            "order.market",
        ),
        (
            ingest_pb2.CheckOrderRequest(order=co(market="B" * 33).check_order),
            grpc.StatusCode.INVALID_ARGUMENT,
            "order.market",
        ),
        (
            ingest_pb2.CheckOrderRequest(order=co().check_order, timestamp_ms=INT64_MIN),
            grpc.StatusCode.INVALID_ARGUMENT,
            "timestamp_ms",
        ),
    ],
    ids=["no-order", "no-side", "id-0", "negative-price", "unknown-market", "long-id", "ts"],
)
def test_check_order_unary_bad_input(
    d: Daemon, request_: ingest_pb2.CheckOrderRequest, code: grpc.StatusCode, field: str
) -> None:
    before = digest(d)
    stub = ingest_pb2_grpc.IngestServiceStub(d.channel())
    with pytest.raises(grpc.RpcError) as e:
        stub.CheckOrder(request_, metadata=[("x-riskd-gateway", "gw-unary")])
    assert e.value.code() == code, e.value
    assert det(e.value).startswith(field), det(e.value)
    assert digest(d) == before


def test_sequence_gap_ends_the_stream(d: Daemon) -> None:
    before = digest(d)
    s = RawStream(d)
    e = s.fails(
        ingest_pb2.IngestRequest(
            updates=[U(sequence=5, mark_price=ingest_pb2.MarkPrice(market="NOPE", price=10))]
        )
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert det(e).startswith("sequence:") and "expected 1" in det(e), det(e)
    # A gap later in a stream names the next expected sequence.
    s = RawStream(d)
    s.send(mark(market="NOPE"), mark(market="NOPE"))
    e = s.fails(
        ingest_pb2.IngestRequest(
            updates=[U(sequence=4, mark_price=ingest_pb2.MarkPrice(market="NOPE"))]
        )
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected 3" in det(e), det(e)
    assert digest(d) == before


def test_sequence_zero_ends_the_stream(d: Daemon) -> None:
    s = RawStream(d)
    e = s.fails(
        ingest_pb2.IngestRequest(
            updates=[U(sequence=0, mark_price=ingest_pb2.MarkPrice(market="NOPE"))]
        )
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert det(e).startswith("updates.sequence:"), det(e)


def test_stale_epoch_ends_the_stream(d: Daemon) -> None:
    before = digest(d)
    s = RawStream(d, "gw-epoch", epoch=5)
    assert s.send(mark(market="NOPE")).acked_sequence == 1
    s.close()
    old = RawStream(d, "gw-epoch", epoch=3)
    e = old.fails(
        ingest_pb2.IngestRequest(
            updates=[U(sequence=1, mark_price=ingest_pb2.MarkPrice(market="NOPE"))]
        )
    )
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert det(e).startswith("epoch:"), det(e)
    # The request's epoch must agree with the metadata.
    s = RawStream(d, "gw-epoch", epoch=5)
    e = s.fails(
        ingest_pb2.IngestRequest(
            epoch=6, updates=[U(sequence=2, mark_price=ingest_pb2.MarkPrice(market="NOPE"))]
        )
    )
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert det(e).startswith("epoch:"), det(e)
    assert digest(d) == before


@pytest.mark.parametrize("epoch", ["abc", "-1", str(2**63)])
def test_bad_epoch_metadata_refused(d: Daemon, epoch: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        RawStream(d, epoch=epoch)  # type: ignore[arg-type]
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert det(e.value).startswith("x-riskd-epoch:"), det(e.value)


@pytest.mark.parametrize("gateway", ["g" * 33, "gateway-id-" + "x" * 40])
def test_bad_gateway_id_refused(d: Daemon, gateway: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        RawStream(d, gateway=gateway)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert det(e.value).startswith("x-riskd-gateway:"), det(e.value)


def test_oversized_batch_ends_the_stream(d: Daemon) -> None:
    before = digest(d)
    s = RawStream(d)
    updates = [
        U(sequence=i, mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=5_000_000))
        for i in range(1, 4098)
    ]
    e = s.fails(ingest_pb2.IngestRequest(updates=updates))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert det(e).startswith("updates:") and "4097" in det(e), det(e)
    assert digest(d) == before


def test_oversized_message_ends_the_stream(d: Daemon) -> None:
    before = digest(d)
    s = RawStream(d)
    big = ingest_pb2.IngestRequest(
        updates=[U(sequence=1, mark_price=ingest_pb2.MarkPrice(market="X" * (5 * 2**20)))]
    )
    e = s.fails(big)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
    assert "message" in det(e).lower() or "larger" in det(e).lower(), det(e)
    assert healthy(d)
    assert digest(d) == before


def test_garbage_bytes_on_the_port(d: Daemon) -> None:
    before = digest(d)
    rnd = __import__("random").Random(7)
    for payload in [
        bytes(rnd.randrange(256) for _ in range(4096)),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(rnd.randrange(256) for _ in range(512)),
        b"\x00" * 100_000,
    ]:
        with socket.create_connection(("127.0.0.1", d.grpc_port), timeout=5) as sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except OSError:
                pass  # the server may reset the connection: fine
    assert healthy(d)
    assert digest(d) == before


GARBAGE = [
    b"\xff\xff\xff\xff",
    bytes(__import__("random").Random(11).randrange(256) for _ in range(300)),
]


def raw_ingest(ch: grpc.Channel):  # type: ignore[no-untyped-def]
    return ch.stream_stream(
        "/riskd.v1.IngestService/Ingest",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb2.IngestResponse.FromString,
    )


def test_garbage_bytes_as_a_request_leave_the_daemon_healthy(d: Daemon) -> None:
    before = digest(d)
    ch = d.channel()
    for payload in GARBAGE:
        with pytest.raises(DecodeError):  # not a valid IngestRequest on the wire
            ingest_pb2.IngestRequest.FromString(payload)
        call = raw_ingest(ch)(
            iter([payload]), metadata=(("x-riskd-gateway", f"gw-garbage-{next(_ids)}"),), timeout=10
        )
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass  # the status is asserted by the GAP test below
    # Unary methods: grpc's deserializer refuses the request.
    w = ch.unary_unary("/riskd.v1.WithdrawalService/Withdraw", request_serializer=lambda b: b)
    with pytest.raises(grpc.RpcError):
        w(GARBAGE[0], timeout=10)  # the code is asserted by the GAP test below
    ch.close()
    assert healthy(d)
    assert digest(d) == before
    s = RawStream(d)
    r = s.send(mark(price=5_000_000))
    assert r.acked_sequence == 1 and list(r.rejections) == []
    s.close()


def test_garbage_bytes_as_a_request_end_the_stream_with_an_error(d: Daemon) -> None:
    ch = d.channel()
    call = raw_ingest(ch)(
        iter([GARBAGE[0]]), metadata=(("x-riskd-gateway", f"gw-garbage-{next(_ids)}"),), timeout=10
    )
    with contextlib.suppress(grpc.RpcError):
        list(call)
    ch.close()
    assert call.code() in {grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT}, call.code()


def test_garbage_bytes_as_a_unary_request_are_invalid_argument(d: Daemon) -> None:
    ch = d.channel()
    w = ch.unary_unary("/riskd.v1.WithdrawalService/Withdraw", request_serializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        w(GARBAGE[0], timeout=10)
    ch.close()
    assert e.value.code() in {grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT}, e.value


# --- 3. duplicate (stale) sequences --------------------------------------------------


def test_duplicate_batch_is_acked_again_not_applied(d: Daemon) -> None:
    s = RawStream(d)
    batch = ingest_pb2.IngestRequest(
        updates=[
            U(sequence=1, **{"deposit": ingest_pb2.Deposit(account=11, asset="USDT", amount=5)}),
            U(sequence=2, mark_price=ingest_pb2.MarkPrice(market="NOPE", price=10)),
        ]
    )
    first = s.send_request(batch)
    assert first.acked_sequence == 2 and len(first.rejections) == 1
    before = digest(d)
    again = s.send_request(batch)
    assert again.acked_sequence == 2
    # Nothing applied again; the refused update is reported as first decided.
    assert list(again.rejections) == list(first.rejections)
    s.close()
    # A reconnect learns the acked sequence and the resend is not applied either.
    s2 = RawStream(d, s.gateway)
    assert s2.acked == 2
    assert s2.send_request(batch).acked_sequence == 2
    s2.close()
    assert digest(d) == before


# --- 4. generated cases ---------------------------------------------------------------

ids = st.one_of(
    st.sampled_from(["BTC-USDT", "ETH-USDT", "BTC-USD", "USDT", "BTC", ""]),
    st.text(max_size=40),
)
i64 = st.one_of(
    st.sampled_from([INT64_MIN, -1, 0, 1, 10, 5_000_000, INT64_MAX, INT64_MAX - 1]),
    st.integers(INT64_MIN, INT64_MAX),
)
u64 = st.one_of(
    st.sampled_from([0, 1, 11, 12, 13, UINT64_MAX, UINT64_MAX - 1]), st.integers(0, UINT64_MAX)
)
# Not stamped, stamped about now (accepted), or anything (mostly outside the skew window).
ts = st.one_of(
    st.just(0),
    st.integers(-5_000, 5_000).map(lambda d: time.time_ns() // 1_000_000 + d),
    st.integers(INT64_MIN, INT64_MAX),
)

accounts = st.sampled_from([11, 12, 13])
btc_price = st.integers(490_000, 510_000).map(lambda p: p * 10)
plausible_fill = st.builds(
    lambda pair, **kw: ingest_pb2.Fill(buyer_account=pair[0], seller_account=pair[1], **kw),
    st.sampled_from([(11, 12), (12, 11), (11, 13), (13, 12)]),
    market=st.just("BTC-USDT"),
    trade_id=u64,
    price=btc_price,
    quantity=st.integers(1, 1000),
)
plausible_transfer = st.builds(
    ingest_pb2.MarginTransfer,
    account=accounts,
    market=st.just("BTC-USDT"),
    amount=st.integers(1, 10**4 * USDT),
)

KINDS = {
    "fill": plausible_fill
    | st.builds(
        ingest_pb2.Fill,
        market=ids,
        trade_id=u64,
        buyer_account=u64,
        seller_account=u64,
        price=i64,
        quantity=i64,
        buyer_fee=i64,
        seller_fee=i64,
    ),
    "mark_price": st.builds(ingest_pb2.MarkPrice, market=st.just("BTC-USDT"), price=btc_price)
    | st.builds(ingest_pb2.MarkPrice, market=ids, price=i64),
    "deposit": st.builds(
        ingest_pb2.Deposit, account=accounts, asset=st.just("USDT"), amount=st.integers(1, 10**9)
    )
    | st.builds(ingest_pb2.Deposit, account=u64, asset=ids, amount=i64, deposit_id=u64),
    "margin_transfer": plausible_transfer
    | st.builds(ingest_pb2.MarginTransfer, account=u64, market=ids, amount=i64),
    "funding_rate": st.builds(ingest_pb2.FundingRate, market=ids, rate_e8=i64),
    "liquidation_fill": st.builds(
        ingest_pb2.LiquidationFill,
        market=st.just("BTC-USDT"),
        liquidation_id=st.integers(1, 5),
        counterparty_account=accounts,
        price=btc_price,
        quantity=st.integers(1, 100),
        counterparty_fee=st.integers(0, 100),
    )
    | st.builds(
        ingest_pb2.LiquidationFill,
        market=ids,
        liquidation_id=u64,
        counterparty_account=u64,
        price=i64,
        quantity=i64,
        counterparty_fee=i64,
    ),
    "liquidation_done": st.builds(
        ingest_pb2.LiquidationDone, market=st.just("BTC-USDT"), liquidation_id=st.integers(1, 5)
    )
    | st.builds(ingest_pb2.LiquidationDone, market=ids, liquidation_id=u64),
    "check_order": st.builds(
        ingest_pb2.CheckOrder,
        market=st.just("BTC-USDT"),
        order_id=st.integers(1, 5),
        account=accounts,
        side=st.sampled_from([1, 2]),
        price=btc_price,
        quantity=st.integers(1, 1000),
        reduce_only=st.booleans(),
        leverage=st.integers(0, 200),
    )
    | st.builds(
        ingest_pb2.CheckOrder,
        market=ids,
        order_id=u64,
        account=u64,
        side=st.integers(0, 3),
        price=i64,
        quantity=i64,
        reduce_only=st.booleans(),
        post_only=st.booleans(),
        leverage=i64,
    ),
    "amend_order": st.builds(
        ingest_pb2.AmendOrder,
        market=st.just("BTC-USDT"),
        order_id=st.integers(1, 5),
        price=btc_price,
        quantity=st.integers(1, 1000),
    )
    | st.builds(ingest_pb2.AmendOrder, market=ids, order_id=u64, price=i64, quantity=i64),
    "cancel_order": st.builds(
        ingest_pb2.CancelOrder, market=st.just("BTC-USDT"), order_id=st.integers(1, 5)
    )
    | st.builds(ingest_pb2.CancelOrder, market=ids, order_id=u64),
}
KNOWN_CODES = {
    INVALID,
    NOT_FOUND,
    PRECONDITION,
    ingest_pb2.REJECTION_CODE_PERMISSION_DENIED,
    ingest_pb2.REJECTION_CODE_RESOURCE_EXHAUSTED,
}


STATS = {k: [0, 0] for k in KINDS}  # applied, rejected (for the report; printed with -s)


@pytest.mark.parametrize("kind", list(KINDS))
def test_generated_updates_are_applied_or_rejected(d: Daemon, kind: str) -> None:
    bystander = RawStream(d)
    assert bystander.send(mark(market="NOPE")).acked_sequence == 1
    s = RawStream(d)

    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(st.tuples(KINDS[kind], ts), min_size=1, max_size=3))
    def one_batch(items: list[tuple[object, int]]) -> None:
        updates = [U(timestamp_ms=t, **{kind: x}) for x, t in items]  # type: ignore[arg-type]
        first = s.next_sequence
        r = s.send(*updates)
        STATS[kind][0] += len(updates) - len(r.rejections)
        STATS[kind][1] += len(r.rejections)
        assert r.acked_sequence == first + len(updates) - 1
        for x in r.rejections:
            assert first <= x.sequence < first + len(updates)
            assert x.code in KNOWN_CODES, x
            assert x.field.startswith(f"updates[{x.sequence - first}]."), x
            assert x.message

    one_batch()
    print(f"{kind}: applied {STATS[kind][0]}, rejected {STATS[kind][1]}")
    s.close()
    state = admin(d).CheckState(admin_pb2.CheckStateRequest())
    assert list(state.violations) == []
    assert healthy(d)
    r = bystander.send(mark(market="NOPE"), mark(price=5_000_000))
    assert r.acked_sequence == 3 and [x.sequence for x in r.rejections] == [2]
    bystander.close()


# --- 5. clock skew and reused ids ------------------------------------------------------


@pytest.mark.parametrize("timestamp_ms", [1, INT64_MAX, -1])
def test_timestamp_outside_skew_is_rejected(d: Daemon, timestamp_ms: int) -> None:
    s = RawStream(d)
    r = s.send(
        U(
            timestamp_ms=timestamp_ms,
            mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=5_000_000),
        )
    )
    s.close()
    assert [(x.code, x.field) for x in r.rejections] == [(INVALID, "updates[0].timestamp_ms")]


def test_duplicate_trade_id_with_different_payload_is_rejected(d: Daemon) -> None:
    s = RawStream(d)
    setup = s.send(
        dep(account=21, amount=10**5 * USDT),
        dep(account=22, amount=10**5 * USDT),
        mt(account=21, amount=10**4 * USDT),
        mt(account=22, amount=10**4 * USDT),
        mark(price=5_000_000),
    )
    assert list(setup.rejections) == [], setup
    first = s.send(fill(trade_id=4242, quantity=1, buyer_account=21, seller_account=22))
    assert list(first.rejections) == [], first
    before = digest(d)
    r = s.send(fill(trade_id=4242, quantity=2, buyer_account=22, seller_account=21))
    s.close()
    assert [(x.code, x.field) for x in r.rejections] == [(PRECONDITION, "updates[0].fill.trade_id")]
    assert digest(d) == before


def test_duplicate_deposit_id_with_different_payload_is_rejected(d: Daemon) -> None:
    s = RawStream(d)
    first = s.send(
        U(deposit=ingest_pb2.Deposit(account=13, asset="USDT", amount=100, deposit_id=9))
    )
    assert list(first.rejections) == [], first
    before = digest(d)
    r = s.send(U(deposit=ingest_pb2.Deposit(account=13, asset="USDT", amount=200, deposit_id=9)))
    s.close()
    assert [(x.code, x.field) for x in r.rejections] == [
        (PRECONDITION, "updates[0].deposit.deposit_id")
    ]
    assert digest(d) == before


# --- 6. hypothesis per class: random members of each class, exact code and field ------

_trade_ids = itertools.count(10**12)
_fresh_accounts = itertools.count(10**9)
KNOWN_SYMBOLS = {"BTC-USDT", "ETH-USDT", "BTC-USD", "USDT", "BTC"}
ascii_symbol = st.text(
    st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=32
).filter(lambda s: s not in KNOWN_SYMBOLS)
bad_symbol = st.one_of(
    st.text(min_size=1, max_size=20).filter(lambda s: not s.isascii() or not s.isprintable()),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=33, max_size=200),
)
# Each class: a strategy for (updates to send, the one expected to be refused
# (index), code, field).  Updates before the refused one set the case up.
CLASSES: dict[str, st.SearchStrategy[tuple[list[ingest_pb2.Update], int, int, str]]] = {
    "non-positive quantity": st.integers(INT64_MIN, 0).map(
        lambda q: ([fill(quantity=q)], 0, INVALID, "updates[0].fill.quantity")
    ),
    "non-positive price": st.integers(INT64_MIN, 0).map(
        lambda p: ([mark(price=p)], 0, INVALID, "updates[0].mark_price.price")
    ),
    "off-tick price": st.integers(1, INT64_MAX)
    .filter(lambda p: p % 10)
    .map(lambda p: ([mark(price=p)], 0, INVALID, "updates[0].mark_price.price")),
    "off-lot size": st.integers(1, 10**9)
    .filter(lambda q: q % 10)
    .map(
        lambda q: (
            [fill(market="ETH-USDT", price=300_000, quantity=q)],
            0,
            INVALID,
            "updates[0].fill.quantity",
        )
    ),
    "unknown market": ascii_symbol.map(
        lambda m: ([mark(market=m)], 0, NOT_FOUND, "updates[0].mark_price.market")
    ),
    "unknown asset": ascii_symbol.map(
        lambda a: ([dep(asset=a)], 0, NOT_FOUND, "updates[0].deposit.asset")
    ),
    "over-long or non-ASCII id": bad_symbol.map(
        lambda m: ([mark(market=m)], 0, INVALID, "updates[0].mark_price.market")
    ),
    "timestamp outside the skew window": st.one_of(
        st.integers(1, 10**12), st.integers(10**14, INT64_MAX), st.integers(INT64_MIN, -1)
    ).map(
        lambda t: (
            [
                U(
                    timestamp_ms=t,
                    mark_price=ingest_pb2.MarkPrice(market="BTC-USDT", price=5_000_000),
                )
            ],
            0,
            INVALID,
            "updates[0].timestamp_ms",
        )
    ),
    # Two fresh accounts each time: the fill price band refuses a fill that would
    # leave a side liquidatable, and accounts 11 and 12 end up anywhere.
    "reused trade id, other payload": st.integers(2, 50).map(
        lambda q: (
            [
                dep(account=(a := next(_fresh_accounts))),
                dep(account=(b := next(_fresh_accounts))),
                mt(account=a),
                mt(account=b),
                fill(trade_id=(i := next(_trade_ids)), buyer_account=a, seller_account=b),
                fill(trade_id=i, quantity=q, buyer_account=a, seller_account=b),
            ],
            5,
            PRECONDITION,
            "updates[5].fill.trade_id",
        )
    ),
    # A cross account (wallet 1,000, long 0.1 BTC at 50,000: IM 40) moves more than
    # its available 960 to an isolated position: refused, its bands untouched.
    "cross transfer beyond available": st.integers(961, 10_000).map(
        lambda x: (
            [
                dep(account=(a := next(_fresh_accounts)), amount=1_000 * USDT),
                dep(account=(b := next(_fresh_accounts)), amount=10_000 * USDT),
                mode(account=a),
                mt(account=b, amount=5_000 * USDT),
                mark(),
                fill(trade_id=next(_trade_ids), buyer_account=a, seller_account=b, quantity=100),
                mt(account=a, market="ETH-USDT", amount=x * USDT),
            ],
            6,
            PRECONDITION,
            "updates[6].margin_transfer.amount",
        )
    ),
}


@pytest.mark.parametrize("klass", list(CLASSES))
def test_each_class_refused_with_its_code_and_field_state_unchanged(d: Daemon, klass: str) -> None:
    s = RawStream(d)

    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(CLASSES[klass])
    def one(case: tuple[list[ingest_pb2.Update], int, int, str]) -> None:
        updates, bad, code, field = case
        if bad:  # the set-up updates go first, on their own
            assert list(s.send(*updates[:bad]).rejections) == []
        before = digest(d)
        r = s.send(*updates[bad:])
        got = [(x.code, x.field.replace("updates[0]", f"updates[{bad}]")) for x in r.rejections]
        assert got == [(code, field)], r
        assert digest(d) == before

    one()
    s.close()
    assert healthy(d)
