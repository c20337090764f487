"""Second-language check: a Node client built from the .proto files alone.

``clients/node/ingest.js`` (``@grpc/grpc-js`` + ``@grpc/proto-loader`` from npm)
streams one batch into a real daemon; the result is then read back with the
Python stubs.  Skipped when node/npm are missing or ``npm ci`` cannot install.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest

from riskd.config import default_toml
from riskd.dev_certs import write_dev_set
from riskd.v1 import query_pb2, query_pb2_grpc

from .conftest import Daemon, start_daemon

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
USDT = 10**6
N = 5  # updates in the batch that ingest.js sends
BAD = 3  # index in that batch of the off-tick mark price

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are not both on PATH",
)


def _installed() -> bool:
    modules = NODE_DIR / "node_modules" / "@grpc"
    return all((modules / p / "package.json").exists() for p in ("grpc-js", "proto-loader"))


def install() -> str | None:
    """``npm ci`` in ``clients/node`` unless its dependencies are there (kept
    between runs); None when they are, else why not.  Under a file lock: two
    xdist workers may both ask (this file, tests/cluster), and a second
    ``npm ci`` deletes node_modules under the first one's tests."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not both on PATH"
    key = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"riskd-npm-ci-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return None
        try:
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            return "npm ci in clients/node timed out (no registry?)"
        if done.returncode != 0 or not _installed():
            return f"npm ci in clients/node failed (no registry?): {done.stderr[-500:]}"
    return None


@pytest.fixture(scope="module")
def node_client() -> Path:
    """``clients/node``'s ``ingest.js``, its dependencies installed."""
    why = install()
    if why:
        pytest.skip(why)
    return NODE_DIR / "ingest.js"


def _run(node_client: Path, target: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(node_client), target],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )


def test_node_client_streams_a_batch(node_client: Path, daemon: Daemon) -> None:
    query = query_pb2_grpc.QueryServiceStub(daemon.channel())
    epochs = []
    for n in (1, 2):  # each run is a new session: the second applies again
        run = _run(node_client, daemon.target)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert f"first response: epoch={result['epoch']} acked_sequence=0" in run.stderr
        epochs.append(int(result["epoch"]))
        assert result["acked"] == N and result["duplicates"] == 0
        assert result["rejections"] == [
            {
                "sequence": BAD + 1,
                "code": "REJECTION_CODE_INVALID_ARGUMENT",
                "field": f"updates[{BAD}].mark_price.price",
            }
        ]
        account = query.GetAccount(query_pb2.GetAccountRequest(account=42, asset="USDT"))
        assert account.wallet_balance == n * 900 * USDT  # 1000 deposited, 100 moved to margin
        # The isolated margin bucket shows up as a position of size 0.
        assert [(p.market, p.size, p.isolated_margin) for p in account.positions] == [
            ("BTC-USDT", 0, n * 100 * USDT)
        ]
    assert epochs[1] > epochs[0]

    # Resuming an epoch whose sequences riskd already holds: refused before sending.
    run = _run(node_client, daemon.target, RISKD_EPOCH=str(epochs[1]))
    assert run.returncode != 0
    assert f"already acknowledged sequences 1..{N} of epoch {epochs[1]}" in run.stderr
    account = query.GetAccount(query_pb2.GetAccountRequest(account=42, asset="USDT"))
    assert account.wallet_balance == 2 * 900 * USDT  # nothing applied, nothing dropped


def test_node_client_over_mutual_tls(node_client: Path, tmp_path: Path) -> None:
    """The same batch over mTLS: riskd knows the Node gateway by its certificate."""
    certs = write_dev_set(tmp_path / "tls", ["node-gw", "reader"])
    config = tmp_path / "riskd.toml"
    config.write_text(
        default_toml().replace("plaintext = true", "")
        + f'\n[server.tls]\ncert = "{certs["server"][0]}"\nkey = "{certs["server"][1]}"\n'
        f'client_ca = "{certs["ca"][0]}"\n'
        '\n[access.node-gw]\nroles = ["gateway"]\nmarkets = ["BTC-USDT"]\n'
        '\n[access.reader]\nroles = ["reader"]\n'
    )
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        env = {
            **os.environ,
            "RISKD_TLS_CA": str(certs["ca"][0]),
            "RISKD_TLS_CERT": str(certs["node-gw"][0]),
            "RISKD_TLS_KEY": str(certs["node-gw"][1]),
        }
        target = f"localhost:{d.grpc_port}"
        run = subprocess.run(
            ["node", str(node_client), target], capture_output=True, text=True, timeout=30, env=env
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout.strip().splitlines()[-1])["acked"] == N
        creds = grpc.ssl_channel_credentials(
            certs["ca"][0].read_bytes(),
            certs["reader"][1].read_bytes(),
            certs["reader"][0].read_bytes(),
        )
        with grpc.secure_channel(target, creds) as channel:
            query = query_pb2_grpc.QueryServiceStub(channel)
            account = query.GetAccount(query_pb2.GetAccountRequest(account=42, asset="USDT"))
        assert account.wallet_balance == 900 * USDT
        # Without the certificate the Node client does not get in.
        bare = {k: v for k, v in env.items() if not k.startswith("RISKD_TLS")}
        refused = subprocess.run(
            ["node", str(node_client), target], capture_output=True, text=True, timeout=30, env=bare
        )
        assert refused.returncode != 0
    finally:
        assert d.stop() == 0


def test_node_order_helpers_check_amend_cancel_and_send_the_index(
    node_client: Path, daemon: Daemon
) -> None:
    """``clients/node/orders.js`` (the ``riskd.js`` helpers): stream checks, an amend, a
    cancel, unary checks, and marks with an index price that the mark guard judges."""
    from riskd.v1 import admin_pb2, admin_pb2_grpc, types_pb2

    admin = admin_pb2_grpc.AdminServiceStub(daemon.channel())
    admin.UpdateMarket(
        admin_pb2.UpdateMarketRequest(
            market=types_pb2.Market(symbol="BTC-USDT", mark_max_divergence_ppm=10_000)
        )
    )
    run = subprocess.run(
        ["node", str(node_client.parent / "orders.js"), daemon.target, "77"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["stream"] == [
        {
            "sequence": 5,
            "field": "updates[4].check_order.quantity",
            "order_refusal": "ORDER_REFUSAL_INSUFFICIENT_BALANCE",
        }
    ]
    no = "ORDER_REFUSAL_UNSPECIFIED"
    refused = "ORDER_REFUSAL_INSUFFICIENT_BALANCE"
    assert got["unary"] == [
        {"accepted": True, "refusal": no, "field": "", "reserved": "40000000", "available": "0"},
        {
            "accepted": False,
            "refusal": refused,
            "field": "order.quantity",
            "reserved": "0",
            "available": "0",
        },
    ]
    # the cancel freed 60; the check still runs on the last good mark
    assert got["after_cancel"] == [
        {
            "accepted": True,
            "refusal": no,
            "field": "",
            "reserved": "4000000",
            "available": "56000000",
        }
    ]
    query = query_pb2_grpc.QueryServiceStub(daemon.channel())
    markets = {m.symbol: m for m in query.ListMarkets(query_pb2.ListMarketsRequest()).markets}
    assert markets["BTC-USDT"].mark_guard == types_pb2.MARK_GUARD_REASON_DIVERGENCE
