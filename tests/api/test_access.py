"""Issue 7, who may talk to riskd: a real daemon over real mutual TLS.

Certificates are made here (``riskd.dev_certs``): a CA, a server certificate,
client certificates for each identity in the policy, one for an identity the
policy does not know, an expired one and one from another CA.  Each case
checks the status the caller gets and, where state could change, that it did
not.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from riskd.config import default_toml
from riskd.dev_certs import Issued, issue, make_ca
from riskd.storage.admin_log import verify
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    withdrawal_pb2,
    withdrawal_pb2_grpc,
)
from riskd_client.gateway import retry_delay

from .conftest import Daemon, start_daemon

USDT = 10**6
DENIED = ingest_pb2.REJECTION_CODE_PERMISSION_DENIED
POLICY = """
[access.gw-btc]
roles = ["gateway"]
markets = ["BTC-USDT"]

[access.gw-eth]
roles = ["gateway"]
markets = ["ETH-USDT"]

[access.gw-slow]
roles = ["gateway"]
markets = ["*"]
updates_per_second = 20
burst = 20

[access.watcher]
roles = ["reader"]

[access.gw-watch]
roles = ["gateway", "reader"]
markets = ["BTC-USDT"]

[access.ops]
roles = ["admin", "reader"]
"""


@dataclass
class Pki:
    ca: Issued
    dir: Path

    def write(self, name: str, issued: Issued) -> tuple[Path, Path]:
        return issued.write(self.dir, name)

    def credentials(self, name: str, ca: Issued | None = None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            (ca or self.ca).cert_pem,
            (self.dir / f"{name}.key").read_bytes(),
            (self.dir / f"{name}.crt").read_bytes(),
        )


@dataclass
class Tls:
    daemon: Daemon
    pki: Pki
    data: Path

    def channel(self, name: str) -> grpc.Channel:
        return grpc.secure_channel(self.daemon.target, self.pki.credentials(name))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = Pki(make_ca(), tmp)
    pki.write("ca", pki.ca)
    pki.write("server", issue(pki.ca, "riskd", server_hosts=["127.0.0.1", "localhost"]))
    for name in ("gw-btc", "gw-eth", "gw-slow", "gw-watch", "watcher", "ops", "stranger"):
        pki.write(name, issue(pki.ca, name))
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    expired = issue(
        pki.ca,
        "gw-btc",
        not_before=yesterday - dt.timedelta(days=30),
        not_after=yesterday,
    )
    pki.write("expired", expired)
    other = make_ca("another CA")
    pki.write("foreign", issue(other, "gw-btc"))
    config = tmp / "riskd.toml"
    config.write_text(
        default_toml().replace("plaintext = true", "")
        + f'\n[server.tls]\ncert = "{tmp / "server.crt"}"\nkey = "{tmp / "server.key"}"\n'
        f'client_ca = "{tmp / "ca.crt"}"\n' + POLICY
    )
    d = start_daemon(tmp, "--config", str(config))
    try:
        yield Tls(d, pki, tmp / "data")
    finally:
        assert d.stop() == 0


EPOCHS = itertools.count(1)


def ingest(channel: grpc.Channel, *batches: list[ingest_pb2.Update], gateway: str = "") -> Any:
    """Send batches on one stream; returns (responses, final RpcError or None).

    Each call is a new epoch, so its sequence numbers start again at 1.
    """
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    seq = iter(range(1, 10**6))
    requests = []
    for batch in batches:
        for u in batch:
            u.sequence = next(seq)
        requests.append(ingest_pb2.IngestRequest(updates=batch))
    metadata: tuple[tuple[str, str], ...] = (("x-riskd-epoch", str(next(EPOCHS))),)
    if gateway:
        metadata += (("x-riskd-gateway", gateway),)
    responses = []
    try:
        for r in stub.Ingest(iter(requests), metadata=metadata, timeout=10):
            responses.append(r)
    except grpc.RpcError as e:
        return responses, e
    return responses, None


def mark(market: str, price: int) -> ingest_pb2.Update:
    return ingest_pb2.Update(mark_price=ingest_pb2.MarkPrice(market=market, price=price))


def deposit(account: int, asset: str, amount: int) -> ingest_pb2.Update:
    return ingest_pb2.Update(
        deposit=ingest_pb2.Deposit(account=account, asset=asset, amount=amount)
    )


def digest(t: Tls) -> str:
    admin = admin_pb2_grpc.AdminServiceStub(t.channel("ops"))
    return admin.CheckState(admin_pb2.CheckStateRequest()).digest


def metric(t: Tls, name: str) -> float:
    """One unlabelled sample from a real scrape of the metrics endpoint."""
    url = f"http://127.0.0.1:{t.daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def healthy(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    return status == health_pb2.HealthCheckResponse.SERVING


# --- the handshake: no valid certificate, no RPC at all ------------------------------


def test_valid_certificate_is_served(tls: Tls) -> None:
    assert healthy(tls.channel("gw-btc"))


def test_plaintext_client_is_refused(tls: Tls) -> None:
    with pytest.raises(grpc.RpcError) as e:
        healthy(grpc.insecure_channel(tls.daemon.target))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_certificate_is_refused(tls: Tls) -> None:
    creds = grpc.ssl_channel_credentials(tls.pki.ca.cert_pem)
    with pytest.raises(grpc.RpcError) as e:
        healthy(grpc.secure_channel(tls.daemon.target, creds))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_from_another_ca_is_refused(tls: Tls) -> None:
    with pytest.raises(grpc.RpcError) as e:
        healthy(tls.channel("foreign"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_expired_certificate_is_refused(tls: Tls) -> None:
    with pytest.raises(grpc.RpcError) as e:
        healthy(tls.channel("expired"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


# --- identities and roles -----------------------------------------------------------


def test_certificate_without_an_access_entry_is_denied(tls: Tls) -> None:
    q = query_pb2_grpc.QueryServiceStub(tls.channel("stranger"))
    with pytest.raises(grpc.RpcError) as e:
        q.ListMarkets(query_pb2.ListMarketsRequest())
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "stranger" in e.value.details()


def test_spoofed_identity_in_metadata_is_denied(tls: Tls) -> None:
    before = digest(tls)
    responses, error = ingest(tls.channel("gw-btc"), [mark("ETH-USDT", 300_000)], gateway="gw-eth")
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "x-riskd-gateway" in error.details()
    assert responses == []
    assert digest(tls) == before


def test_gateway_sending_for_another_gateways_market_is_denied_per_update(tls: Tls) -> None:
    before = digest(tls)
    responses, error = ingest(tls.channel("gw-btc"), [mark("ETH-USDT", 300_000)])
    assert error is None
    (ack,) = [r for r in responses if r.acked_sequence]
    assert [(r.code, r.field) for r in ack.rejections] == [(DENIED, "updates[0].mark_price.market")]
    assert digest(tls) == before
    # In a mixed batch only the foreign update is refused; the rest is applied.
    responses, error = ingest(
        tls.channel("gw-eth"),
        [
            deposit(501, "USDT", 7 * USDT),
            mark("BTC-USDT", 5_000_000),
            mark("ETH-USDT", 300_000),
            deposit(502, "BTC", 1),
        ],
    )
    assert error is None
    rejections = [(r.sequence, r.code, r.field) for r in responses[-1].rejections]
    assert rejections == [
        (2, DENIED, "updates[1].mark_price.market"),
        (4, DENIED, "updates[3].deposit.asset"),
    ]
    q = query_pb2_grpc.QueryServiceStub(tls.channel("watcher"))
    account = q.GetAccount(query_pb2.GetAccountRequest(account=501, asset="USDT"))
    assert account.wallet_balance == 7 * USDT
    markets = {m.symbol: m for m in q.ListMarkets(query_pb2.ListMarketsRequest()).markets}
    assert markets["ETH-USDT"].mark_price == 300_000


def test_reader_cannot_stream_updates_or_withdraw(tls: Tls) -> None:
    ch = tls.channel("watcher")
    _, error = ingest(ch, [mark("BTC-USDT", 5_000_000)])
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(ch)
    with pytest.raises(grpc.RpcError) as e:
        w.Withdraw(
            withdrawal_pb2.WithdrawRequest(account=1, asset="USDT", amount=1, withdrawal_id=1)
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_gateway_cannot_withdraw_an_asset_it_does_not_serve(tls: Tls) -> None:
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(tls.channel("gw-btc"))
    with pytest.raises(grpc.RpcError) as e:
        w.Withdraw(
            withdrawal_pb2.WithdrawRequest(account=1, asset="BTC", amount=1, withdrawal_id=9)
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = rpc_status.from_call(e.value)
    assert status is not None and "asset" in e.value.details()


def test_admin_rpc_from_a_gateway_is_denied_and_audited(tls: Tls) -> None:
    before = digest(tls)
    admin = admin_pb2_grpc.AdminServiceStub(tls.channel("gw-btc"))
    with pytest.raises(grpc.RpcError) as e:
        admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=10**9, cause="x"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin" in e.value.details()
    assert digest(tls) == before
    records = audit_records(tls)
    assert any(
        r["step"] == "denied"
        and r["identity"] == ["gw-btc"]
        and r["method"] == "/riskd.v1.AdminService/InjectFund"
        for r in records
    ), records


def test_admin_rpc_from_an_admin_is_applied_and_audited(tls: Tls) -> None:
    q = query_pb2_grpc.QueryServiceStub(tls.channel("ops"))
    before = q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund.balance
    admin = admin_pb2_grpc.AdminServiceStub(tls.channel("ops"))
    r = admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=5 * USDT, cause="seed"))
    assert r.balance_after == before + 5 * USDT
    calls = [x for x in audit_records(tls) if x["method"].endswith("/InjectFund")]
    requested = [x for x in calls if x["step"] == "requested" and x["identity"] == "ops"]
    assert requested and requested[-1]["request"]["amount"] == str(5 * USDT)
    completed = [
        x for x in calls if x["step"] == "completed" and x["call"] == requested[-1]["call"]
    ]
    assert [x["code"] for x in completed] == ["OK"]
    assert verify(tls.data / "admin-audit.jsonl")[1] is None


def audit_records(t: Tls) -> list[dict[str, object]]:
    lines = (t.data / "admin-audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# --- overload: a gateway over its rate limit ----------------------------------------


def test_slightly_over_the_rate_limit_is_slowed_not_refused(tls: Tls) -> None:
    paced = metric(tls, "riskd_ingest_paced_seconds_total")
    # 20 tokens a second: three batches of 10 cannot all pass at once, the
    # third waits ~0.5 s for its tokens while the stream is not read.
    batches = [[deposit(800 + 10 * b + i, "USDT", 1) for i in range(10)] for b in range(3)]
    responses, error = ingest(tls.channel("gw-slow"), *batches)
    assert error is None
    assert responses[-1].acked_sequence == 30 and not responses[-1].rejections
    assert metric(tls, "riskd_ingest_paced_seconds_total") > paced


def test_burst_far_over_the_rate_limit_is_refused_with_retry_info(tls: Tls) -> None:
    time.sleep(1.5)  # the bucket refills after the previous test
    ch = tls.channel("gw-slow")
    # 20 tokens: the first batch (25 deposits) empties the bucket into debt;
    # the second would have to wait more than a second: refused.
    first = [deposit(900 + i, "USDT", 1) for i in range(25)]
    second = [deposit(950 + i, "USDT", 1) for i in range(30)]
    responses, error = ingest(ch, first, second)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert max(r.acked_sequence for r in responses) == 25  # the first batch was acked
    delay = retry_delay(error)  # type: ignore[arg-type]
    assert delay is not None and 1.0 < delay <= 2.0
    assert metric(tls, "riskd_ingest_throttled_total") >= 1
    # Marks are not charged: the mark feed keeps flowing while fills are refused.
    responses, error = ingest(ch, [mark("BTC-USDT", 5_000_000) for _ in range(3)])
    assert error is None
    assert responses[-1].acked_sequence == 3 and not responses[-1].rejections


# --- plaintext is for loopback only --------------------------------------------------


def test_plaintext_on_a_non_loopback_address_refuses_to_start(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "serve", "--grpc-listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "loopback" in r.stderr and "server.grpc_listen" in r.stderr
    assert not (tmp_path / "riskd-data").exists()


def test_tls_daemon_still_healthy_after_all_that(tls: Tls) -> None:
    assert healthy(tls.channel("watcher"))


def test_every_served_service_has_an_access_rule(tls: Tls) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from riskd.api.auth import SERVICE_ROLES

    stub = reflection_pb2_grpc.ServerReflectionStub(tls.channel("stranger"))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = stub.ServerReflectionInfo(iter([request]))
    served = {s.name for s in response.list_services_response.service}
    assert "riskd.v1.AdminService" in served
    assert served <= set(SERVICE_ROLES), served - set(SERVICE_ROLES)


def test_event_stream_is_scoped_to_the_granted_markets(tls: Tls) -> None:
    scoped = events_pb2_grpc.EventServiceStub(tls.channel("gw-watch"))
    with pytest.raises(grpc.RpcError) as e:
        next(iter(scoped.Subscribe(events_pb2.SubscribeRequest(markets=["ETH-USDT"]), timeout=5)))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "ETH-USDT" in det(e.value)
    # A fund injection is an event of no market: an unscoped reader sees it,
    # a reader scoped to BTC-USDT does not (its default is its granted markets).
    admin = admin_pb2_grpc.AdminServiceStub(tls.channel("ops"))
    admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1, cause="scope-test"))
    everything = events_pb2_grpc.EventServiceStub(tls.channel("watcher"))
    seen = everything.Subscribe(events_pb2.SubscribeRequest(from_sequence=1), timeout=5)
    assert any(r.event.fund_flow.cause == "scope-test" for r in _until_quiet(seen))
    mine = scoped.Subscribe(events_pb2.SubscribeRequest(from_sequence=1), timeout=2)
    assert all(r.event.fund_flow.cause != "scope-test" for r in _until_quiet(mine))


def _until_quiet(stream: Any) -> list[Any]:
    """The events a subscription delivers before its deadline."""
    out = []
    try:
        for r in stream:
            out.append(r)
            if r.event.fund_flow.cause == "scope-test":
                break
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    return out


def det(e: grpc.RpcError) -> str:
    return str(e.details() or "")


def test_queries_are_scoped_to_the_granted_markets(tls: Tls) -> None:
    responses, error = ingest(
        tls.channel("gw-eth"),
        [deposit(777, "USDT", 9 * USDT), margin(777, "ETH-USDT", 2 * USDT)],
    )
    assert error is None and not responses[-1].rejections
    responses, error = ingest(
        tls.channel("gw-btc"), [deposit(777, "USDT", USDT), margin(777, "BTC-USDT", USDT)]
    )
    assert error is None and not responses[-1].rejections
    request = query_pb2.GetAccountRequest(account=777, asset="USDT")
    everything = query_pb2_grpc.QueryServiceStub(tls.channel("watcher")).GetAccount(request)
    assert {p.market for p in everything.positions} == {"BTC-USDT", "ETH-USDT"}
    q = query_pb2_grpc.QueryServiceStub(tls.channel("gw-watch"))  # reader of BTC-USDT only
    assert {p.market for p in q.GetAccount(request).positions} == {"BTC-USDT"}
    with pytest.raises(grpc.RpcError) as e:
        q.GetPosition(query_pb2.GetPositionRequest(account=777, market="ETH-USDT"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and det(e.value).startswith("market")
    with pytest.raises(grpc.RpcError) as e:
        q.GetAccount(query_pb2.GetAccountRequest(account=777, asset="BTC"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and det(e.value).startswith("asset")
    # The insurance fund is visible to every reader.
    assert q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="BTC")).fund.asset == "BTC"


def margin(account: int, market: str, amount: int) -> ingest_pb2.Update:
    return ingest_pb2.Update(
        margin_transfer=ingest_pb2.MarginTransfer(account=account, market=market, amount=amount)
    )


def withdraw(t: Tls, identity: str, account: int, asset: str, wid: int) -> Any:
    w = withdrawal_pb2_grpc.WithdrawalServiceStub(t.channel(identity))
    return w.Withdraw(
        withdrawal_pb2.WithdrawRequest(account=account, asset=asset, amount=USDT, withdrawal_id=wid)
    )


def test_withdrawals_need_every_market_where_the_account_has_a_position(tls: Tls) -> None:
    """Issue 11: a gateway granted only ETH-USDT may not withdraw the USDT of an account
    trading BTC-USDT; the gateway of BTC-USDT (or one granted every market) may."""
    responses, error = ingest(
        tls.channel("gw-btc"),
        [deposit(880, "USDT", 100 * USDT), margin(880, "BTC-USDT", 10 * USDT)],
    )
    assert error is None and not responses[-1].rejections
    before = digest(tls)
    with pytest.raises(grpc.RpcError) as e:
        withdraw(tls, "gw-eth", 880, "USDT", 88_001)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert det(e.value).startswith("account") and "BTC-USDT" in det(e.value)
    assert digest(tls) == before
    assert withdraw(tls, "gw-btc", 880, "USDT", 88_002).approved
    assert withdraw(tls, "gw-slow", 880, "USDT", 88_003).approved  # markets = ["*"]
    # Margin back in the wallet and nothing open: the wallet is the asset's again.
    responses, error = ingest(tls.channel("gw-btc"), [margin(880, "BTC-USDT", -10 * USDT)])
    assert error is None and not responses[-1].rejections
    assert withdraw(tls, "gw-eth", 880, "USDT", 88_004).approved


def test_an_account_in_two_markets_is_withdrawn_only_by_a_gateway_of_both(tls: Tls) -> None:
    for gw, market in (("gw-btc", "BTC-USDT"), ("gw-eth", "ETH-USDT")):
        responses, error = ingest(
            tls.channel(gw), [deposit(881, "USDT", 50 * USDT), margin(881, market, 5 * USDT)]
        )
        assert error is None and not responses[-1].rejections
    before = digest(tls)
    for gw, other in (("gw-btc", "ETH-USDT"), ("gw-eth", "BTC-USDT")):
        with pytest.raises(grpc.RpcError) as e:
            withdraw(tls, gw, 881, "USDT", 88_100 + len(gw))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert det(e.value).startswith("account") and other in det(e.value)
    assert digest(tls) == before
    assert withdraw(tls, "gw-slow", 881, "USDT", 88_199).approved
