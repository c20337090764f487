"""Two riskd nodes, one shard: kill -9 or SIGSTOP the owner, the other serves the same state.

Real etcd (3 members) and PostgreSQL on loopback; riskd as subprocesses.  Waits
are deadlines against hangs, never timing assertions (benchmarks/failover.py
measures the takeover time).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from riskd.storage.postgres import PostgresJournal
from riskd.v1 import (
    cluster_pb2,
    cluster_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
)
from riskd_client.gateway import Gateway

from ..api.scenario import crash_scenario, send
from ..api.test_durability import pure_digest
from ..api.test_frontend import gone
from ..api.test_node_client import NODE_DIR
from ..api.test_node_client import install as install_node_client
from .services import EtcdCluster, Postgres, free_port, wait_for


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    address: str
    log: Path
    #: Where gateways stream: its front end's address, or ``address`` without one.
    ingest: str = ""

    def lines(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def said(self, event: str) -> bool:
        return any(rec.get("event") == event for rec in self.lines())


def start_node(
    tmp: Path,
    name: str,
    pg: Postgres,
    etcd: EtcdCluster,
    config: Path,
    shard: str,
    frontend: bool = False,
) -> Node:
    address = f"127.0.0.1:{free_port()}"
    ingest = f"127.0.0.1:{free_port()}" if frontend else address
    log = tmp / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "riskd.cli", "serve", "--config", str(config),
         "--grpc-listen", address, "--metrics-listen", "127.0.0.1:0",
         "--data-dir", str(tmp / name), "--storage", pg.dsn,
         "--etcd", ",".join(etcd.endpoints), "--lease-ttl", "1", "--shard", shard,
         *(("--frontend-listen", ingest) if frontend else ())],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    node = Node(process, address, log, ingest)
    wait_for(lambda: node.said("riskd_serving") or node.said("riskd_standby")
             or process.poll() is not None, f"{name} to serve or stand by")  # fmt: skip
    assert process.poll() is None, log.read_text()
    return node


def _config(tmp: Path) -> Path:
    """The default config (a snapshot every 300 s: none during a test)."""
    from riskd.config import default_toml

    path = tmp / "riskd.toml"
    path.write_text(default_toml())
    return path


def digest(address: str) -> str:
    from riskd.v1 import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        return str(stub.CheckState(admin_pb2.CheckStateRequest()).digest)


def _two_nodes(tmp: Path, pg: Postgres, etcd: EtcdCluster, shard: str, frontend: bool):  # type: ignore[no-untyped-def]
    config = _config(tmp)
    a = start_node(tmp, "node-a", pg, etcd, config, shard, frontend)
    wait_for(lambda: a.said("riskd_serving"), "node a to own the shard")
    b = start_node(tmp, "node-b", pg, etcd, config, shard, frontend)
    assert b.said("riskd_standby") and not b.said("riskd_serving")
    try:
        yield a, b
    finally:
        for n in (a, b):
            if n.process.poll() is None:
                n.process.kill()
            n.process.wait(10)
        for pid in frontend_pids(a) + frontend_pids(b):  # none left behind, even on a failure
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def two_nodes(tmp_path: Path, pg: Postgres, etcd: EtcdCluster, shard: str):  # type: ignore[no-untyped-def]
    yield from _two_nodes(tmp_path, pg, etcd, shard, frontend=False)


@pytest.fixture
def two_front_ends(tmp_path: Path, pg: Postgres, etcd: EtcdCluster, shard: str):  # type: ignore[no-untyped-def]
    """Two nodes each with an ingest front end (server.frontend_listen)."""
    yield from _two_nodes(tmp_path, pg, etcd, shard, frontend=True)


def frontend_pids(n: Node) -> list[int]:
    """The front-end processes the node's engine started (its log says)."""
    return [int(str(rec["pid"])) for rec in n.lines() if rec.get("event") == "frontend_started"]


def test_standby_routes_to_the_owner_and_the_helper_follows(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b = two_nodes
    with grpc.insecure_channel(b.address) as ch:
        route = cluster_pb2_grpc.ClusterServiceStub(ch)
        for request in (
            cluster_pb2.RouteRequest(asset="USDT"),
            cluster_pb2.RouteRequest(market="BTC-USDT"),
        ):
            got = route.Route(request)
            assert got.address == a.address and got.epoch > 0
        with pytest.raises(grpc.RpcError) as e:
            route.Route(cluster_pb2.RouteRequest(market="DOGE-USDT"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "market" in (e.value.details() or "")
        with pytest.raises(grpc.RpcError) as e:
            route.Route(cluster_pb2.RouteRequest())
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        q = query_pb2_grpc.QueryServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            q.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT"))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(e.value.trailing_metadata() or ()).get("riskd-owner") == a.address

    inputs = crash_scenario()

    async def via_standby() -> Gateway:
        async with Gateway(b.address, "gw-route", batch_size=2) as gw:
            for x in inputs:
                send(gw, x)
            await gw.flush()
        return gw

    gw = asyncio.run(via_standby())
    assert gw.redirects == 1 and gw.target == a.address
    assert gw.acked_sequence == len(inputs) and digest(a.address) == pure_digest(inputs)

    # SIGTERM stops a standby cleanly (it died by the signal before), the owner unmoved.
    b.process.send_signal(signal.SIGTERM)
    assert b.process.wait(10) == 0 and b.said("riskd_standby_stopping")
    assert not b.said("riskd_serving") and digest(a.address) == pure_digest(inputs)


def test_the_owner_answers_route_and_the_node_client_follows_a_redirect(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b = two_nodes
    with grpc.insecure_channel(a.address) as ch:
        route = cluster_pb2_grpc.ClusterServiceStub(ch)
        got = route.Route(cluster_pb2.RouteRequest(market="BTC-USDT"))
        assert got.address == a.address and got.epoch > 0 and got.shard
        with pytest.raises(grpc.RpcError) as e:
            route.Route(cluster_pb2.RouteRequest(asset="DOGE"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND and "asset" in (e.value.details() or "")
    why = install_node_client()
    if why:
        pytest.skip(why)
    run = subprocess.run(
        ["node", str(NODE_DIR / "ingest.js"), b.address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["redirects"] == 1 and result["acked"] == 5 and result["duplicates"] == 0
    assert f"redirected to the shard's owner {a.address}" in run.stderr
    with grpc.insecure_channel(a.address) as ch:
        account = query_pb2_grpc.QueryServiceStub(ch).GetAccount(
            query_pb2.GetAccountRequest(account=42, asset="USDT")
        )
    assert account.wallet_balance == 900 * 10**6  # applied once, on the owner
    # The owner dies: pointed at it, with the other node in RISKD_NODES, the
    # client goes on to b, follows its redirects until b owns the shard, and
    # lands its batch there (a new session: applied a second time).
    a.process.kill()
    a.process.wait(10)
    run = subprocess.run(
        ["node", str(NODE_DIR / "ingest.js"), a.address],
        capture_output=True, text=True, timeout=60, env={**os.environ, "RISKD_NODES": b.address},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1])["acked"] == 5
    assert f"trying {b.address}" in run.stderr
    with grpc.insecure_channel(b.address) as ch:
        account = query_pb2_grpc.QueryServiceStub(ch).GetAccount(
            query_pb2.GetAccountRequest(account=42, asset="USDT")
        )
    assert account.wallet_balance == 2 * 900 * 10**6


def _failover(
    a: Node, b: Node, stop_owner: signal.Signals, first: str = ""
) -> tuple[str, int, Gateway]:
    """A gateway streams to the owner a (at its ingest address, or sent there
    from ``first``), a stops half way, b takes over; (where the first half was
    acked, how many, the gateway)."""
    inputs = crash_scenario()
    half = len(inputs) // 2

    async def run() -> tuple[str, int, Gateway]:
        gw = Gateway(
            first or a.ingest,
            "gw-failover",
            batch_size=2,
            window=4,
            nodes=[a.ingest, b.ingest],
            ack_timeout=1.0,
        )
        await gw.start()
        for x in inputs[:half]:
            send(gw, x)
        await gw.flush()
        target, acked = gw.target, gw.acked_sequence
        a.process.send_signal(stop_owner)
        for x in inputs[half:]:
            send(gw, x)
        await gw.flush(timeout=60)  # served again by b, resumed by acknowledged sequence
        await gw.close()
        return target, acked, gw

    return asyncio.run(run())


def test_kill9_of_the_owner_the_standby_serves_nothing_lost_nothing_twice(two_nodes) -> None:  # type: ignore[no-untyped-def]
    a, b = two_nodes
    inputs = crash_scenario()
    _, acked, gw = _failover(a, b, signal.SIGKILL)
    assert acked == len(inputs) // 2 and gw.acked_sequence == len(inputs)
    assert gw.rejections == [] and gw.target == b.address
    assert b.said("riskd_serving")
    assert digest(b.address) == pure_digest(inputs)


def _redirected(call: object, *args: object) -> str | None:
    """The ``riskd-owner`` a standby's UNAVAILABLE named for ``call(*args)``."""
    with pytest.raises(grpc.RpcError) as e:
        got = call(*args)  # type: ignore[operator]
        if not isinstance(got, Message):
            list(got)  # a stream: its status comes with its end
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    return dict(e.value.trailing_metadata() or ()).get("riskd-owner")


def test_front_ends_in_a_cluster_redirect_route_and_fail_over(two_front_ends) -> None:  # type: ignore[no-untyped-def]
    """One test for both (each pair of nodes costs seconds to start): a standby's
    ports send streams to the owner's front end and Route names it; kill -9 of
    the owner ends its front end too and b's own front end takes the stream."""
    a, b = two_front_ends
    assert a.ingest != a.address and b.ingest != b.address
    (pid,) = frontend_pids(a)
    assert not frontend_pids(b)  # a standby runs no front end: its port redirects
    for port in (b.ingest, b.address):
        with grpc.insecure_channel(port) as ch:
            ingest = ingest_pb2_grpc.IngestServiceStub(ch)
            # IngestService to the owner's front end, anything else to its gRPC port.
            assert _redirected(ingest.Ingest, iter(())) == a.ingest
            assert _redirected(ingest.CheckOrder, ingest_pb2.CheckOrderRequest()) == a.ingest
            query = query_pb2_grpc.QueryServiceStub(ch).GetInsuranceFund
            assert _redirected(query, query_pb2.GetInsuranceFundRequest(asset="USDT")) == a.address
            got = cluster_pb2_grpc.ClusterServiceStub(ch).Route(
                cluster_pb2.RouteRequest(asset="USDT")
            )
            assert (got.address, got.ingest_address) == (a.address, a.ingest) and got.epoch > 0
    with grpc.insecure_channel(a.address) as ch:
        owner = cluster_pb2_grpc.ClusterServiceStub(ch).Route(
            cluster_pb2.RouteRequest(market="BTC-USDT")
        )
    assert (owner.address, owner.ingest_address, owner.epoch) == (a.address, a.ingest, got.epoch)

    # The gateway starts at the standby's front-end port and is sent to a's.
    inputs = crash_scenario()
    before, acked, gw = _failover(a, b, signal.SIGKILL, first=b.ingest)
    assert before == a.ingest and acked == len(inputs) // 2
    wait_for(lambda: gone(pid), "the killed owner's front end to exit")  # no orphan serving
    assert gw.acked_sequence == len(inputs) and gw.rejections == []
    assert gw.target == b.ingest  # b's own front end took the stream
    assert b.said("riskd_serving") and len(frontend_pids(b)) == 1
    assert digest(b.address) == pure_digest(inputs)  # nothing lost, nothing applied twice


@pytest.fixture(params=[False, True], ids=["engine-port", "front-end"])
def nodes_either_way(request, tmp_path: Path, pg: Postgres, etcd: EtcdCluster, shard: str):  # type: ignore[no-untyped-def]
    """Two nodes, without and with ingest front ends."""
    yield from _two_nodes(tmp_path, pg, etcd, shard, frontend=request.param)


def test_a_sigstopped_owner_resumed_after_the_takeover_writes_nothing(  # type: ignore[no-untyped-def]
    nodes_either_way, pg: Postgres, shard: str
) -> None:
    """A paused engine's front end still takes streams but acks nothing: the
    gateway gives it up after ack_timeout as it gives up a paused engine."""
    a, b = nodes_either_way
    inputs = crash_scenario()
    _, _, gw = _failover(a, b, signal.SIGSTOP)
    assert gw.acked_sequence == len(inputs) and digest(b.address) == pure_digest(inputs)
    reader = PostgresJournal(pg.dsn, shard, readonly=True)
    try:
        before = list(reader.replay())
        a.process.send_signal(signal.SIGCONT)
        assert a.process.wait(30) == 4  # its lease is gone, or its append was refused
        assert list(reader.replay()) == before  # the former owner wrote nothing
    finally:
        reader.close()
    for pid in frontend_pids(a):  # exit 4 ends its front end too
        wait_for(partial(gone, pid), "the former owner's front end to exit")
    assert digest(b.address) == pure_digest(inputs)


def test_a_standby_speaks_the_owners_mutual_tls(
    tmp_path: Path, pg: Postgres, etcd: EtcdCluster, shard: str
) -> None:
    from riskd.config import default_toml
    from riskd.dev_certs import write_dev_set

    tls = tmp_path / "tls"
    write_dev_set(tls, ["ops"], ["127.0.0.1", "localhost"])
    config = tmp_path / "riskd.toml"
    config.write_text(
        default_toml().replace("plaintext = true", "")
        + f'\n[server.tls]\ncert = "{tls / "server.crt"}"\nkey = "{tls / "server.key"}"\n'
        f'client_ca = "{tls / "ca.crt"}"\n'
        '\n[access.ops]\nroles = ["admin"]\n'
    )
    # With front ends: the standby's second port and the owner's front end too.
    a = start_node(tmp_path, "node-a", pg, etcd, config, shard, frontend=True)
    b = start_node(tmp_path, "node-b", pg, etcd, config, shard, frontend=True)
    try:
        wait_for(lambda: a.said("riskd_serving") or b.said("riskd_serving"), "an owner")
        owner, standby = (a, b) if a.said("riskd_serving") else (b, a)
        wait_for(lambda: standby.said("riskd_standby"), "the standby")
        creds = grpc.ssl_channel_credentials(
            (tls / "ca.crt").read_bytes(),
            (tls / "ops.key").read_bytes(),
            (tls / "ops.crt").read_bytes(),
        )
        without_cert = grpc.ssl_channel_credentials((tls / "ca.crt").read_bytes())
        for port in (standby.address, standby.ingest):
            with grpc.secure_channel(port, creds) as ch:
                got = cluster_pb2_grpc.ClusterServiceStub(ch).Route(
                    cluster_pb2.RouteRequest(asset="USDT"), timeout=10
                )
                assert (got.address, got.ingest_address) == (owner.address, owner.ingest)
            with grpc.secure_channel(port, without_cert) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    cluster_pb2_grpc.ClusterServiceStub(ch).Route(
                        cluster_pb2.RouteRequest(asset="USDT"), timeout=10
                    )
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            with grpc.insecure_channel(port) as ch, pytest.raises(grpc.RpcError):
                cluster_pb2_grpc.ClusterServiceStub(ch).Route(
                    cluster_pb2.RouteRequest(asset="USDT"), timeout=10
                )
        with grpc.secure_channel(owner.address, creds) as ch:
            got = cluster_pb2_grpc.ClusterServiceStub(ch).Route(
                cluster_pb2.RouteRequest(market="BTC-USDT"), timeout=10
            )
            assert got.address == owner.address  # the owner names itself
        with grpc.secure_channel(owner.ingest, creds) as ch:  # its front end, over mTLS
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for n in (a, b):
            n.process.kill()
            n.process.wait(10)
        for pid in frontend_pids(a) + frontend_pids(b):
            wait_for(partial(gone, pid), "the front ends to exit")
