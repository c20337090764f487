"""End to end against a real daemon on loopback with the real client stubs."""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from riskd import config as config_mod
from riskd.core import Engine
from riskd.core.invariants import digest
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)
from riskd_client.gateway import Gateway

from .conftest import Daemon
from .scenario import USDT, crash_scenario, run_engine, send


def events(d: Daemon, start: int = 1, seconds: float = 1.5) -> list[events_pb2.Event]:
    stub = events_pb2_grpc.EventServiceStub(d.channel())
    out = []
    try:
        for r in stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=start), timeout=seconds):
            out.append(r.event)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    return out


def scrape(d: Daemon) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name}{labels} not in scrape")


async def stream(d: Daemon, inputs: list, gateway: str = "gw-test") -> Gateway:
    async with Gateway(d.target, gateway, batch_size=4) as gw:
        for x in inputs:
            send(gw, x)
        await gw.flush()
    return gw


def test_health_and_reflection(daemon: Daemon) -> None:
    ch = daemon.channel()
    health = health_pb2_grpc.HealthStub(ch)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    assert health.Check(health_pb2.HealthCheckRequest(service="riskd.v1.IngestService")).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    responses = refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"riskd.v1.IngestService", "riskd.v1.QueryService", "grpc.health.v1.Health"} <= names


def test_crash_liquidation_fund_and_adl_end_to_end(daemon: Daemon) -> None:
    inputs = crash_scenario()
    before = scrape(daemon)
    assert metric(before, "riskd_insurance_fund_balance_quantums", asset="USDT") == 0
    gw = asyncio.run(stream(daemon, inputs))
    assert gw.acked_sequence == len(inputs)
    assert gw.rejections == []

    evs = events(daemon)
    kinds = [e.WhichOneof("kind") for e in evs]
    assert [e.sequence for e in evs] == list(range(1, len(evs) + 1))
    settled = [e.liquidation_settled for e in evs if e.HasField("liquidation_settled")]
    assert {s.account for s in settled} >= {1, 3}
    fees = [
        e.fund_flow
        for e in evs
        if e.HasField("fund_flow") and e.fund_flow.kind == "liquidation_fee"
    ]
    assert fees and all(f.amount > 0 for f in fees)
    notices = [e.adl_notice for e in evs if e.HasField("adl_notice")]
    assert notices, kinds
    assert {n.account for n in notices} <= {2, 4}
    # Each ADL execution also comes as a whole, with what it covered and cost.
    adls = [e.adl_executed for e in evs if e.HasField("adl_executed")]
    assert adls and {a.market for a in adls} == {"BTC-USDT"}
    assert sum(a.counterparties for a in adls) == len(notices)
    assert sum(a.quantity for a in adls) == sum(n.quantity for n in notices)
    assert {n.liquidation_id for n in notices} == {a.liquidation_id for a in adls}
    assert all(a.overshoot == a.haircut + a.fund_paid - a.deficit >= 0 for a in adls)
    assert sum(a.deficit for a in adls) > 0
    after = scrape(daemon)
    # ADL metrics carry the reason of each execution (see test_waterfall_e2e).
    reasons = {events_pb2.AdlReason.Name(a.reason)[len("ADL_REASON_") :].lower() for a in adls}
    overshoot = sum(
        metric(after, "riskd_adl_overshoot_quantums_total", market="BTC-USDT", reason=r)
        for r in reasons
    )
    assert overshoot == sum(a.overshoot for a in adls)

    # The pure engine, fed the same inputs, must agree with the daemon exactly.
    engine = run_engine(inputs, Engine(config_mod.load().markets, config_mod.load().funds))
    admin = admin_pb2_grpc.AdminServiceStub(daemon.channel())
    state = admin.CheckState(admin_pb2.CheckStateRequest())
    assert list(state.violations) == []
    assert state.digest == digest(engine)

    query = query_pb2_grpc.QueryServiceStub(daemon.channel())
    fund = query.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
    assert fund.balance == engine.funds["USDT"].balance
    for n in notices:
        pos = query.GetAccount(query_pb2.GetAccountRequest(account=n.account, asset="USDT"))
        core = engine.markets["BTC-USDT"].view(n.account)
        assert [p.size for p in pos.positions] == ([core.size] if core else [])
        assert pos.wallet_balance == engine.wallets["USDT"].balance(n.account)
        assert all(p.size > -100 for p in pos.positions)  # the short was reduced
    ledger = query.ListFundLedger(query_pb2.ListFundLedgerRequest(asset="USDT", page_size=1000))
    assert [e.balance_after for e in ledger.entries][-1] == fund.balance

    after = scrape(daemon)
    assert metric(after, "riskd_insurance_fund_balance_quantums", asset="USDT") == fund.balance
    assert metric(after, "riskd_liquidations_total", market="BTC-USDT", outcome="adl") >= 1
    assert sum(
        metric(after, "riskd_adl_events_total", market="BTC-USDT", reason=r) for r in reasons
    ) == len(adls)
    assert "account" not in after


def test_resend_after_reconnect_applies_once(daemon: Daemon) -> None:
    inputs = crash_scenario()

    async def go() -> Gateway:
        # First connection: batches in flight when the stream is cut.
        gw = Gateway(daemon.target, "gw-resume", epoch=1, batch_size=3)
        await gw.start()
        for x in inputs[: len(inputs) // 2 + 1]:
            send(gw, x)
        gw._seal()
        await asyncio.sleep(0.01)
        await gw.close()
        # A new helper that does not know what was acked resends everything.
        gw2 = Gateway(daemon.target, "gw-resume", epoch=1, batch_size=3)
        async with gw2:
            for x in inputs:
                send(gw2, x)
            await gw2.flush()
        return gw2

    gw = asyncio.run(go())
    assert gw.acked_sequence == len(inputs)
    engine = run_engine(inputs, Engine(config_mod.load().markets, config_mod.load().funds))
    admin = admin_pb2_grpc.AdminServiceStub(daemon.channel())
    assert admin.CheckState(admin_pb2.CheckStateRequest()).digest == digest(engine)


def test_sequence_gap_is_refused_with_expected_sequence(daemon: Daemon) -> None:
    async def go() -> None:
        gw = Gateway(daemon.target, "gw-gap")
        async with gw:
            gw.next_sequence = 5  # skip 1..4
            gw.mark_price("BTC-USDT", 5_000_000)
            with pytest.raises(Exception) as info:
                await gw.flush(timeout=5)
            assert "expected 1" in str(info.value)
            assert "FAILED_PRECONDITION" in str(info.value)
            raise SystemExit  # leave without the final flush

    with pytest.raises(SystemExit):
        asyncio.run(go())


def test_rejections_name_the_field_and_change_nothing(daemon: Daemon) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(daemon.channel())
    before = admin.CheckState(admin_pb2.CheckStateRequest()).digest

    async def go() -> Gateway:
        async with Gateway(daemon.target, "gw-bad") as gw:
            gw.mark_price("BTC-USDT", 5_000_005)  # off tick (tick 10)
            gw.mark_price("NOPE", 5_000_000)
            gw.deposit(1, "USDT", -5)
            gw.fill("BTC-USDT", 1, 1, 5_000_000, 100)
            await gw.flush()
        return gw

    gw = asyncio.run(go())
    got = [(r.sequence, r.field) for r in gw.rejections]
    assert got == [
        (1, "updates[0].mark_price.price"),
        (2, "updates[1].mark_price.market"),
        (3, "updates[2].deposit.amount"),
        (4, "updates[3].fill.seller_account"),
    ]
    assert admin.CheckState(admin_pb2.CheckStateRequest()).digest == before


def test_withdrawal_is_atomic_and_idempotent(daemon: Daemon) -> None:
    asyncio.run(stream(daemon, crash_scenario()[:1]))  # account 1 deposits 10,000
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(daemon.channel())
    ok = w.Withdraw(
        withdrawal_pb2.WithdrawRequest(
            account=1, asset="USDT", amount=4_000 * USDT, withdrawal_id=1
        )
    )
    assert ok.approved and ok.wallet_balance == 6_000 * USDT
    again = w.Withdraw(
        withdrawal_pb2.WithdrawRequest(
            account=1, asset="USDT", amount=4_000 * USDT, withdrawal_id=1
        )
    )
    assert again == ok
    refused = w.Withdraw(
        withdrawal_pb2.WithdrawRequest(
            account=1, asset="USDT", amount=7_000 * USDT, withdrawal_id=2
        )
    )
    assert not refused.approved and "less than" in refused.reason
    with pytest.raises(grpc.RpcError) as e:
        w.Withdraw(
            withdrawal_pb2.WithdrawRequest(account=1, asset="USDT", amount=-1, withdrawal_id=3)
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "amount" in e.value.details()
    q = query_pb2_grpc.QueryServiceStub(daemon.channel())
    assert (
        q.GetAccount(query_pb2.GetAccountRequest(account=1, asset="USDT")).wallet_balance
        == 6_000 * USDT
    )


def test_sigterm_drains_streams_and_exits_cleanly(daemon: Daemon) -> None:
    """Streams in flight at SIGTERM end with OK after their acks; exit code 0."""
    inputs = crash_scenario()

    async def go() -> tuple[Gateway, BaseException | None]:
        gw = Gateway(daemon.target, "gw-term", batch_size=1, window=64)
        await gw.start()
        for _ in range(200):
            for x in inputs[:4]:
                send(gw, x)
        await gw.wait_for_window()
        daemon.process.send_signal(signal.SIGTERM)
        try:
            await gw.flush(timeout=10)
            error = None
        except BaseException as e:  # the daemon went away before acking all
            error = e
        await gw.close()
        return gw, error

    gw, _ = asyncio.run(go())
    assert daemon.process.wait(20) == 0
    log = daemon.log.read_text()
    assert "riskd_stopping" in log and "riskd_stopped" in log
    # The journal was closed, not left to the collector: its WAL is checkpointed away.
    data = daemon.log.parent / "data"
    assert (data / "journal.sqlite3").stat().st_size > 0
    assert not (data / "journal.sqlite3-wal").exists()
    assert "ingest_internal_error" not in log
    assert gw.acked_sequence > 0
