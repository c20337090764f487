"""Operating mTLS without restarts: certificates rotate by replacing the files,
the access policy reloads on SIGHUP.  A real daemon over real TLS; the same
process (pid) throughout."""

from __future__ import annotations

import os
import queue
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from riskd.config import default_toml
from riskd.dev_certs import Issued, issue, make_ca
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
)

from .conftest import Daemon, start_daemon

BEFORE = """
[access.gw-a]
roles = ["gateway"]
markets = ["BTC-USDT"]

[access.ops]
roles = ["admin"]

[access.watcher]
roles = ["reader"]
"""
AFTER = """
[access.ops]
roles = ["admin"]

[access.ops-2]
roles = ["admin"]
"""


def replace(path: Path, data: bytes) -> None:
    """Write-then-rename, as a rotation tool (or Kubernetes' secret volume) does."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def config_text(tmp: Path, policy: str) -> str:
    return (
        default_toml().replace("plaintext = true", "")
        + f'\n[server.tls]\ncert = "{tmp / "server.crt"}"\nkey = "{tmp / "server.key"}"\n'
        f'client_ca = "{tmp / "ca.crt"}"\n' + policy
    )


def credentials(ca: Issued, client: Issued) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca.cert_pem, client.key_pem, client.cert_pem)


def healthy(d: Daemon, creds: grpc.ChannelCredentials) -> bool:
    with grpc.secure_channel(d.target, creds) as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            return False
        return r.status == health_pb2.HealthCheckResponse.SERVING


def wait_for_log(d: Daemon, event: str, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while d.log.read_text().count(f'"{event}"') < count:
        assert time.monotonic() < deadline, f"no {event} in the log"
        time.sleep(0.05)


@pytest.fixture
def tls_dir(tmp_path: Path) -> Path:
    ca = make_ca()
    ca.write(tmp_path, "ca")
    issue(ca, "riskd", server_hosts=["127.0.0.1"]).write(tmp_path, "server")
    for name in ("gw-a", "ops", "ops-2", "watcher"):
        issue(ca, name).write(tmp_path, name)
    (tmp_path / "riskd.toml").write_text(config_text(tmp_path, BEFORE))
    return tmp_path


def test_certificates_rotate_without_a_restart(tls_dir: Path) -> None:
    d = start_daemon(tls_dir, "--config", str(tls_dir / "riskd.toml"))
    try:
        old_ca = _load(tls_dir, "ca")
        old_client = credentials(old_ca, _load(tls_dir, "ops"))
        assert healthy(d, old_client)

        # Half a rotation (a new certificate, the old key) is not taken up.
        new_ca = make_ca("rotated CA")
        new_server = issue(new_ca, "riskd", server_hosts=["127.0.0.1"])
        replace(tls_dir / "server.crt", new_server.cert_pem)
        assert healthy(d, old_client)
        wait_for_log(d, "tls_reload_failed")

        # The whole rotation: new server certificate and key, new client CA.
        replace(tls_dir / "server.key", new_server.key_pem)
        replace(tls_dir / "ca.crt", new_ca.cert_pem)
        new_client = credentials(new_ca, issue(new_ca, "ops"))
        assert healthy(d, new_client)
        assert not healthy(d, old_client)  # the old CA's clients are out
        wait_for_log(d, "tls_reloaded")
        assert d.process.poll() is None
    finally:
        assert d.stop() == 0


def test_access_policy_reloads_on_sighup(tls_dir: Path) -> None:
    d = start_daemon(tls_dir, "--config", str(tls_dir / "riskd.toml"))
    ca = _load(tls_dir, "ca")
    try:
        stream = Stream(d, credentials(ca, _load(tls_dir, "gw-a")))
        ok = stream.send(ingest_pb2.Update(sequence=1, mark_price=_mark()))
        assert ok.acked_sequence == 1 and not ok.rejections
        newcomer = admin_pb2_grpc.AdminServiceStub(
            grpc.secure_channel(d.target, credentials(ca, _load(tls_dir, "ops-2")))
        )
        with pytest.raises(grpc.RpcError) as e:
            newcomer.CheckState(admin_pb2.CheckStateRequest())
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

        # A config that does not parse changes nothing.
        (tls_dir / "riskd.toml").write_text(config_text(tls_dir, BEFORE + "\n[access.x]\n"))
        d.process.send_signal(signal.SIGHUP)
        wait_for_log(d, "config_reload_failed")
        ok = stream.send(ingest_pb2.Update(sequence=2, mark_price=_mark()))
        assert ok.acked_sequence == 2

        # A reader following events from now on.
        watcher = grpc.secure_channel(d.target, credentials(ca, _load(tls_dir, "watcher")))
        follow = events_pb2_grpc.EventServiceStub(watcher).Subscribe(
            events_pb2.SubscribeRequest(), timeout=30
        )

        # gw-a and watcher revoked, ops-2 granted: open streams end at their next
        # batch or event.
        (tls_dir / "riskd.toml").write_text(config_text(tls_dir, AFTER))
        d.process.send_signal(signal.SIGHUP)
        wait_for_log(d, "config_reloaded")
        error = stream.fails(ingest_pb2.Update(sequence=3, mark_price=_mark()))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert newcomer.CheckState(admin_pb2.CheckStateRequest()).digest
        newcomer.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1, cause="x"))
        with pytest.raises(grpc.RpcError) as e:
            next(follow)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        watcher.close()
        assert d.process.poll() is None
    finally:
        assert d.stop() == 0


class Stream:
    """One long-lived Ingest stream over TLS, a batch at a time."""

    def __init__(self, d: Daemon, creds: grpc.ChannelCredentials) -> None:
        self.channel = grpc.secure_channel(d.target, creds)
        self.q: queue.Queue[ingest_pb2.IngestRequest | None] = queue.Queue()

        def requests() -> Iterator[ingest_pb2.IngestRequest]:
            while (item := self.q.get()) is not None:
                yield item

        stub = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.call = stub.Ingest(requests(), metadata=(("x-riskd-epoch", "1"),), timeout=60)
        assert next(self.call).acked_sequence == 0

    def send(self, *updates: ingest_pb2.Update) -> ingest_pb2.IngestResponse:
        self.q.put(ingest_pb2.IngestRequest(updates=updates))
        return next(self.call)

    def fails(self, *updates: ingest_pb2.Update) -> grpc.RpcError:
        self.q.put(ingest_pb2.IngestRequest(updates=updates))
        with pytest.raises(grpc.RpcError) as info:
            for _ in self.call:
                pass
        self.q.put(None)
        self.channel.close()
        return info.value


def _mark() -> ingest_pb2.MarkPrice:
    return ingest_pb2.MarkPrice(market="BTC-USDT", price=5_000_000)


def _load(directory: Path, name: str) -> Issued:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{name}.key").read_bytes(), None)
    return Issued(cert, key)  # type: ignore[arg-type]
