"""deploy/riskd.toml really serves mutual TLS, and the health check script
(container HEALTHCHECK, Kubernetes exec probes) passes against it with a
client certificate that has no [access] entry, as the deployments run it.

The daemon runs deploy/riskd.toml itself, with /etc/riskd/tls rewritten to a
temporary directory holding what `riskd dev-certs` writes for compose (hosts
riskd, localhost, 127.0.0.1; clients for every [access] identity and probe).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from riskd.dev_certs import issue, make_ca, write_dev_set

from .conftest import HEALTH_CHECK, RISKD_TOML, api_helpers

TLS_DIR = "/etc/riskd/tls"


@dataclass
class TlsDaemon:
    daemon: Any  # tests/api/conftest.py Daemon
    certs: Path

    def run_check(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            [sys.executable, str(HEALTH_CHECK), self.daemon.target, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **(env or {})},
        )

    def files(self, name: str) -> list[str]:
        return [
            "--ca",
            str(self.certs / "ca.crt"),
            "--cert",
            str(self.certs / f"{name}.crt"),
            "--key",
            str(self.certs / f"{name}.key"),
        ]

    def channel(self, name: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            (self.certs / "ca.crt").read_bytes(),
            (self.certs / f"{name}.key").read_bytes(),
            (self.certs / f"{name}.crt").read_bytes(),
        )
        return grpc.secure_channel(self.daemon.target, creds)


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDaemon]:
    from riskd.config import parse

    conf, _ = api_helpers()
    tmp = tmp_path_factory.mktemp("riskd-tls")
    certs = tmp / "tls"
    identities = list(parse(RISKD_TOML.read_text()).access.grants)
    write_dev_set(certs, [*identities, "probe"], ("riskd", "localhost", "127.0.0.1"))
    foreign = make_ca("another CA")
    issue(foreign, "probe").write(certs, "foreign")
    text = RISKD_TOML.read_text()
    assert TLS_DIR in text
    config = tmp / "riskd.toml"
    config.write_text(text.replace(TLS_DIR, str(certs)))
    # start_daemon overrides the listen addresses (loopback, free ports) and
    # the data directory, as the image's ENTRYPOINT does.
    daemon = conf.start_daemon(tmp, "--config", str(config))
    try:
        yield TlsDaemon(daemon, certs)
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


def test_serving_with_the_probe_certificate(tls_daemon: TlsDaemon) -> None:
    out = tls_daemon.run_check(*tls_daemon.files("probe"))
    assert out.returncode == 0 and out.stdout.strip() == "SERVING", out


def test_environment_and_server_name_as_kubernetes_runs_it(tls_daemon: TlsDaemon) -> None:
    """RISKD_TLS_* instead of flags; --server-name riskd while dialing 127.0.0.1."""
    c = tls_daemon.certs
    env = {
        "RISKD_TLS_CA": str(c / "ca.crt"),
        "RISKD_TLS_CERT": str(c / "probe.crt"),
        "RISKD_TLS_KEY": str(c / "probe.key"),
    }
    out = tls_daemon.run_check("--server-name", "riskd", env=env)
    assert out.returncode == 0 and out.stdout.strip() == "SERVING", out
    wrong = tls_daemon.run_check("--server-name", "elsewhere", env=env)
    assert wrong.returncode == 1, wrong


def test_unhealthy_without_a_valid_client_certificate(tls_daemon: TlsDaemon) -> None:
    plaintext = tls_daemon.run_check("--plaintext")
    assert plaintext.returncode == 1, plaintext
    foreign = tls_daemon.run_check(*tls_daemon.files("foreign"))
    assert foreign.returncode == 1, foreign
    missing = tls_daemon.run_check(*tls_daemon.files("nobody"))
    assert missing.returncode == 1 and "cannot read TLS file" in missing.stderr, missing


def test_the_access_examples_work_and_the_probe_may_only_check_health(
    tls_daemon: TlsDaemon,
) -> None:
    from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc

    def markets(name: str) -> list[str]:
        stub = query_pb2_grpc.QueryServiceStub(tls_daemon.channel(name))
        reply = stub.ListMarkets(query_pb2.ListMarketsRequest(), timeout=10)
        return sorted(m.symbol for m in reply.markets)

    assert markets("dashboard") == ["BTC-USD", "BTC-USDT", "ETH-USDT"]
    assert markets("ops") == markets("dashboard")
    for name in ("probe", "gateway-1"):
        with pytest.raises(grpc.RpcError) as e:
            markets(name)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
    admin = admin_pb2_grpc.AdminServiceStub(tls_daemon.channel("ops"))
    assert admin.CheckState(admin_pb2.CheckStateRequest(), timeout=10).digest
