"""Issue 11, bounded everything: event subscriptions and the admin audit log,
against a real daemon.

* subscriptions are capped per identity and in total (RESOURCE_EXHAUSTED
  naming the limit), and a closed one frees its place;
* a denied caller sending large AdminService requests costs a bounded number
  of bounded audit lines (size and SHA-256, never the request), the rest are
  counted; an admin's large request is recorded the same bounded way;
* an audit write that fails (RLIMIT_FSIZE) stops the daemon with exit 4,
  leaving no torn line and the action not applied; a torn tail left by a
  crash is cut at the next start and ``riskd audit`` passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from riskd.config import default_toml
from riskd.dev_certs import issue, make_ca
from riskd.storage.admin_log import AdminLog, verify
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)

from .conftest import Daemon, start_daemon
from .test_daemon_e2e import metric, scrape

USDT = 10**6
AUDIT = "admin-audit.jsonl"


def with_server_keys(text: str, **keys: int) -> str:
    for key in keys:  # drop the default's line for it, if any
        text = re.sub(rf"(?m)^{key}\s*=.*$", "", text)
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    assert text.count("[server]\n") == 1
    return text.replace("[server]\n", "[server]\n" + lines)


# --- subscriptions ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("capped")
    config = tmp / "riskd.toml"
    config.write_text(
        with_server_keys(default_toml(), max_subscriptions=5, max_subscriptions_per_identity=3)
    )
    d = start_daemon(tmp, "--config", str(config))
    try:
        # One event, so an accepted subscription from sequence 1 proves itself by yielding it.
        admin = admin_pb2_grpc.AdminServiceStub(d.channel())
        admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=USDT, cause="seed"))
        yield d
    finally:
        assert d.stop() == 0


def subscribe(d: Daemon, name: str) -> Any:
    """A subscription as ``name``; returns the call once its first event arrived."""
    stub = events_pb2_grpc.EventServiceStub(d.channel())
    call = stub.Subscribe(
        events_pb2.SubscribeRequest(from_sequence=1),
        metadata=(("x-riskd-gateway", name),),
        timeout=60,
    )
    assert next(call).event.sequence == 1
    return call


def refused(d: Daemon, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        subscribe(d, name)
    return e.value


def test_subscriptions_are_capped_per_identity_then_in_total(capped: Daemon) -> None:
    open_calls = [subscribe(capped, "alice") for _ in range(3)]
    e = refused(capped, "alice")
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_subscriptions_per_identity = 3" in e.details()
    assert "'alice' already has 3" in e.details()
    open_calls += [subscribe(capped, "bob") for _ in range(2)]
    e = refused(capped, "carol")  # carol has none, but 5 are open in all
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_subscriptions = 5" in e.details()
    text = scrape(capped)
    assert metric(text, "riskd_event_subscribers") == 5
    assert metric(text, "riskd_event_subscriptions_refused_total", limit="per_identity") >= 1
    assert metric(text, "riskd_event_subscriptions_refused_total", limit="total") >= 1
    # A closed subscription frees its place (the server notices the cancel on its own time).
    open_calls.pop(0).cancel()
    deadline = time.monotonic() + 30
    while True:
        try:
            open_calls.append(subscribe(capped, "carol"))
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "a cancelled subscription kept its place"
            time.sleep(0.05)
    for call in open_calls:
        call.cancel()


# --- denied admin calls with large requests (mutual TLS) --------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Path, Path]]:
    tmp = tmp_path_factory.mktemp("tls-bounds")
    ca = make_ca()
    ca.write(tmp, "ca")
    issue(ca, "riskd", server_hosts=["127.0.0.1", "localhost"]).write(tmp, "server")
    for name in ("gw", "ops"):
        issue(ca, name).write(tmp, name)
    config = tmp / "riskd.toml"
    config.write_text(
        default_toml().replace("plaintext = true", "")
        + f'\n[server.tls]\ncert = "{tmp / "server.crt"}"\nkey = "{tmp / "server.key"}"\n'
        f'client_ca = "{tmp / "ca.crt"}"\n'
        '[access.gw]\nroles = ["gateway"]\nmarkets = ["BTC-USDT"]\n'
        '[access.ops]\nroles = ["admin", "reader"]\n'
    )
    d = start_daemon(tmp, "--config", str(config))
    try:
        yield d, tmp, tmp / "data"
    finally:
        assert d.stop() == 0


def tls_channel(tmp: Path, d: Daemon, name: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        (tmp / "ca.crt").read_bytes(),
        (tmp / f"{name}.key").read_bytes(),
        (tmp / f"{name}.crt").read_bytes(),
    )
    return grpc.secure_channel(
        d.target, creds, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    )


def big_update(symbol: str, tiers: int) -> admin_pb2.UpdateMarketRequest:
    return admin_pb2.UpdateMarketRequest(
        market=types_pb2.Market(
            symbol=symbol,
            tiers=[
                types_pb2.RiskTier(
                    notional_floor=i * 10**9,
                    max_leverage=100,
                    maintenance_margin_rate_ppm=5_000,
                    cum=i,
                )
                for i in range(tiers)
            ],
        )
    )


def audit_lines(data: Path) -> list[bytes]:
    return (data / AUDIT).read_bytes().splitlines()


def test_denied_large_admin_calls_cost_bounded_lines_and_are_counted(
    tls: tuple[Daemon, Path, Path],
) -> None:
    d, tmp, data = tls
    request = big_update("BTC-USDT", 60_000)
    wire = request.SerializeToString()
    assert len(wire) > 1_000_000
    before = len(audit_lines(data)) if (data / AUDIT).exists() else 0
    size_before = (data / AUDIT).stat().st_size if (data / AUDIT).exists() else 0
    unrecorded = metric(scrape(d), "riskd_rpc_denied_unrecorded_total")
    admin = admin_pb2_grpc.AdminServiceStub(tls_channel(tmp, d, "gw"))
    calls = 60
    for _ in range(calls):
        with pytest.raises(grpc.RpcError) as e:
            admin.UpdateMarket(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    lines = audit_lines(data)[before:]
    records = [json.loads(line) for line in lines]
    assert all(r["step"] == "denied" and r["identity"] == ["gw"] for r in records)
    # A burst of 20, then one per 10 s: the rest only counted.
    assert 20 <= len(records) < 30, len(records)
    assert max(map(len, lines)) < 2_000
    assert (data / AUDIT).stat().st_size - size_before < 60_000  # not 60 x 1.3 MB
    first = records[0]
    assert first["request_bytes"] == len(wire)
    assert first["request_sha256"] == hashlib.sha256(wire).hexdigest()
    assert first["request"]["market"]["symbol"] == "BTC-USDT"
    assert first["request_repeated"] == {"market.tiers": 60_000}
    counted = metric(scrape(d), "riskd_rpc_denied_unrecorded_total") - unrecorded
    assert counted == calls - len(records)
    # The rpc_denied log line has the same budget: one per recorded call, not per call.
    logged = [line for line in d.log.read_text().splitlines() if '"rpc_denied"' in line]
    assert len(logged) == len(records)
    assert json.loads(logged[-1])["unrecorded_before"] >= 0
    assert verify(data / AUDIT) == (len(audit_lines(data)), None)


def test_an_admins_large_request_is_recorded_as_a_bounded_digest(
    tls: tuple[Daemon, Path, Path],
) -> None:
    d, tmp, data = tls
    before = len(audit_lines(data)) if (data / AUDIT).exists() else 0
    request = big_update("NOPE-" + "X" * 1_000, 30_000)
    admin = admin_pb2_grpc.AdminServiceStub(tls_channel(tmp, d, "ops"))
    with pytest.raises(grpc.RpcError) as e:
        admin.UpdateMarket(request, timeout=30)
    assert e.value.code() != grpc.StatusCode.PERMISSION_DENIED
    # The status may reach the client before the "completed" line is written.
    deadline = time.monotonic() + 30
    while len(lines := audit_lines(data)[before:]) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == ["requested", "completed"]
    assert records[0]["identity"] == "ops"
    assert records[0]["request_bytes"] == request.ByteSize()
    symbol = records[0]["request"]["market"]["symbol"]
    assert symbol.startswith("NOPE-XXX") and symbol.endswith("(1005 chars)")
    assert max(map(len, lines)) < 2_000
    assert records[1]["code"] == e.value.code().name


# --- an audit write that fails, and a torn tail ------------------------------------------


def fund_balance(channel: grpc.Channel) -> int:
    q = query_pb2_grpc.QueryServiceStub(channel)
    balance: int = q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund.balance
    return balance


def start_limited(tmp: Path, fsize: int) -> tuple[subprocess.Popen[bytes], Path, int]:
    """``riskd serve`` with RLIMIT_FSIZE (plaintext); waits for serving, returns its port."""
    log = tmp / f"riskd-limited-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "riskd.cli", "serve", "--grpc-listen", "127.0.0.1:0",
             "--metrics-listen", "127.0.0.1:0", "--data-dir", str(tmp / "data")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    # Set from outside, not by preexec_fn: that runs Python in the forked child of
    # this multi-threaded test process (xdist's and grpc's threads), which
    # subprocess documents as unsafe; once it left the daemon with a broken
    # epoll fd.  Nothing writes to the audit log before riskd serves.
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (fsize, fsize))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"riskd_serving"' in line:
                return process, log, json.loads(line)["grpc_port"]
        if process.poll() is not None:
            raise RuntimeError(f"riskd exited early:\n{log.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"riskd did not start:\n{log.read_text()}")


def test_a_failed_audit_write_stops_the_daemon_and_the_action_does_not_run(
    tmp_path: Path,
) -> None:
    limit = 1 << 20
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / AUDIT
    log = AdminLog(path)
    while log.size < limit - 400:  # leave room for less than one more line
        log.append({"step": "filler", "pad": "p" * min(2_000, max(0, limit - 700 - log.size))})
    log.close()
    lines_before = len(path.read_bytes().splitlines())
    process, out, port = start_limited(tmp_path, limit)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        before = fund_balance(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            admin.InjectFund(
                admin_pb2.InjectFundRequest(asset="USDT", amount=7 * USDT, cause="x" * 200),
                timeout=30,
            )
        assert process.wait(30) == 4, out.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    text = out.read_text()
    assert '"storage_fault"' in text and "File too large" in text, text
    assert '"admin audit log"' in text
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and len(raw.splitlines()) == lines_before  # nothing torn
    # A crash mid-write could still leave a torn tail: the next start cuts it.
    with path.open("ab") as f:
        f.write(b'{"step":"requested","torn')
    d = start_daemon(tmp_path)
    try:
        assert fund_balance(d.channel()) == before  # the unrecorded injection never ran
    finally:
        assert d.stop() == 0
    assert '"admin_audit_torn_tail_cut"' in d.log.read_text()
    assert verify(path) == (lines_before, None)
    audit = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "audit", "--data", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "ok   admin audit log" in audit.stdout


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_refused_large_requests_do_not_pile_up_in_memory(tls: tuple[Daemon, Path, Path]) -> None:
    # A refusal raised while handling another exception used to keep the request
    # alive in a reference cycle until a full GC: +19 MB per 1.8 MB request.
    d, tmp, _ = tls
    request = big_update("BTC-USDT", 90_000)
    request.market.tiers[0].notional_floor = 1  # the first tier must start at 0: INVALID_ARGUMENT
    admin = admin_pb2_grpc.AdminServiceStub(tls_channel(tmp, d, "ops"))

    def refuse(n: int) -> None:
        for _ in range(n):
            with pytest.raises(grpc.RpcError) as e:
                admin.UpdateMarket(request, timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    refuse(5)  # buffers for a message this size, once
    settled = rss_mb(d.process.pid)
    refuse(30)
    assert rss_mb(d.process.pid) - settled < 100, "refused requests are being kept"
