"""The ingest front-end process (``server.frontend_listen``): the same answers as the
engine's own port, acks still durable, and a front end's crash or the daemon's
stop loses nothing and applies nothing twice."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import riskd_command
from riskd import config as config_mod
from riskd.actors.sequencer import Sequencer
from riskd.api import handoff
from riskd.api.frontend_link import FrontendFailed, FrontendLink, _Connection
from riskd.api.handoff import Op
from riskd.core import Engine
from riskd.core.events import Deposit, Input
from riskd.core.invariants import digest as engine_digest
from riskd.dev_certs import issue, make_ca
from riskd.metrics import Metrics
from riskd.v1 import admin_pb2, admin_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from riskd_client.gateway import Gateway

from .conftest import Daemon, start_daemon
from .scenario import USDT, crash_scenario, run_engine, send, stamp
from .test_bad_input import RawStream, co, dep, det, fill, mark, mt
from .test_rotation import AFTER, BEFORE, Stream, config_text, credentials, wait_for_log

FRONTEND = ("--frontend-listen", "127.0.0.1:0")
U = ingest_pb2.Update
MARK = ingest_pb2.MarkPrice(market="BTC-USDT", price=5_000_000)


def front(d: Daemon) -> Daemon:
    """The same daemon, addressed at its front end's port."""
    assert d.frontend_port and d.frontend_port != d.grpc_port
    return dataclasses.replace(d, grpc_port=d.frontend_port)


def digest(d: Daemon) -> str:
    return (
        admin_pb2_grpc.AdminServiceStub(d.channel())
        .CheckState(admin_pb2.CheckStateRequest())
        .digest
    )


def scrape(d: Daemon, name: str) -> float:
    url = f"http://127.0.0.1:{d.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def eventually(check: Callable[[], bool]) -> bool:
    """Whether ``check`` holds within a few seconds: the front end forwards its
    metrics on its own, after the answer the caller already has."""
    deadline = time.monotonic() + 10
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def frontend_pids(d: Daemon) -> list[int]:
    """The front-end processes the daemon started, oldest first (its log says)."""
    pids = []
    for line in d.log.read_text().splitlines():
        if '"frontend_started"' in line:
            pids.append(json.loads(line)["pid"])
    return pids


def gone(pid: int) -> bool:
    """Exited (a zombie no one has reaped yet counts: it serves nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("frontend"), *FRONTEND)
    try:
        # Funded accounts 11, 12 with isolated margin and a BTC-USDT mark, through the front end.
        s = RawStream(front(daemon), "gw-setup")
        r = s.send(dep(11, amount=10**6 * USDT), dep(12, amount=10**6 * USDT), mark())
        r = s.send(mt(11, amount=10**5 * USDT), mt(12, amount=10**5 * USDT))
        assert list(r.rejections) == [] and r.acked_sequence == 5, r
        s.close()
        yield daemon
    finally:
        code = daemon.stop()
        assert code == 0, f"riskd exited with {code}:\n{daemon.log.read_text()}"
    log = daemon.log.read_text()
    assert "ingest_internal_error" not in log and "Traceback" not in log
    (pid,) = frontend_pids(daemon)
    assert gone(pid)


def test_front_end_serves_ingest_and_health_only(d: Daemon) -> None:
    fe = front(d).channel()
    health = health_pb2_grpc.HealthStub(fe)
    for name in ("", "riskd.v1.IngestService"):
        r = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        admin_pb2_grpc.AdminServiceStub(fe).CheckState(admin_pb2.CheckStateRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rejections_equal_the_engine_ports(d: Daemon) -> None:
    """Per-update refusals (decoding, routing, the core) read the same on both ports."""
    before = digest(d)
    bad = [
        fill(quantity=0),
        mark(price=5_000_001),
        mark(market="NOPE"),
        dep(asset="DOGE"),
        fill(seller_account=11),
        mt(amount=0),
        co(account=999_999),  # a streamed check: an order refusal
        ingest_pb2.Update(),
    ]
    answers = []
    for port in (d, front(d)):
        s = RawStream(port)
        answers.append(s.send(*bad))
        s.close()
    engine, fe = answers
    assert fe.acked_sequence == engine.acked_sequence == len(bad)
    assert len(fe.rejections) == len(bad)
    assert list(fe.rejections) == list(engine.rejections)
    assert any(r.order_refusal for r in fe.rejections)
    assert digest(d) == before


@pytest.mark.parametrize(
    "case", ["wrong-epoch", "too-large", "gap", "sequence-0", "bad-epoch-key", "long-gateway"]
)
def test_stream_statuses_equal_the_engine_ports(d: Daemon, case: str) -> None:
    before = digest(d)
    results = []
    for port in (d, front(d)):
        try:
            if case == "bad-epoch-key":
                RawStream(port, epoch="abc")  # type: ignore[arg-type]
                raise AssertionError("accepted")
            if case == "long-gateway":
                RawStream(port, gateway="g" * 33)
                raise AssertionError("accepted")
            s = RawStream(port, epoch=4)
            request = {
                "wrong-epoch": ingest_pb2.IngestRequest(
                    epoch=5, updates=[ingest_pb2.Update(sequence=1, mark_price=mark().mark_price)]
                ),
                "too-large": ingest_pb2.IngestRequest(
                    updates=[
                        ingest_pb2.Update(sequence=i, mark_price=mark().mark_price)
                        for i in range(1, 4098)
                    ]
                ),
                "gap": ingest_pb2.IngestRequest(
                    updates=[ingest_pb2.Update(sequence=3, mark_price=mark().mark_price)]
                ),
                "sequence-0": ingest_pb2.IngestRequest(
                    updates=[ingest_pb2.Update(sequence=0, mark_price=mark().mark_price)]
                ),
            }[case]
            e = s.fails(request)
        except grpc.RpcError as err:
            e = err
        results.append((e.code(), det(e)))
    assert results[0][0] != grpc.StatusCode.OK
    assert results[1] == results[0]
    assert digest(d) == before


def test_unary_check_order_through_the_front_end(d: Daemon) -> None:
    stub = ingest_pb2_grpc.IngestServiceStub(front(d).channel())
    md = [("x-riskd-gateway", "gw-unary-fe")]
    ok = stub.CheckOrder(
        ingest_pb2.CheckOrderRequest(order=co(order_id=77).check_order), metadata=md
    )
    assert ok.accepted and ok.reserved > 0 and ok.available > 0
    refused = stub.CheckOrder(
        ingest_pb2.CheckOrderRequest(order=co(order_id=78, account=999_999).check_order),
        metadata=md,
    )
    assert not refused.accepted and refused.refusal and refused.field.startswith("order.")
    engine_stub = ingest_pb2_grpc.IngestServiceStub(d.channel())
    same = engine_stub.CheckOrder(
        ingest_pb2.CheckOrderRequest(order=co(order_id=79, account=999_999).check_order),
        metadata=md,
    )
    assert (same.refusal, same.field, same.message) == (
        refused.refusal,
        refused.field,
        refused.message,
    )
    before = digest(d)
    for request in (
        ingest_pb2.CheckOrderRequest(),
        ingest_pb2.CheckOrderRequest(order=co(market="NOPE").check_order),
    ):
        codes = []
        for s in (engine_stub, stub):
            with pytest.raises(grpc.RpcError) as e:
                s.CheckOrder(request, metadata=md)
            codes.append((e.value.code(), det(e.value)))
        assert codes[0] == codes[1] and codes[0][0] != grpc.StatusCode.OK
    assert digest(d) == before


def test_stream_gauge_is_the_engines(d: Daemon) -> None:
    """The front end's streams show in the engine's one scrape."""
    base = scrape(d, "riskd_ingest_streams_open")
    s = RawStream(front(d))
    assert s.send(mark(market="NOPE")).acked_sequence == 1
    assert eventually(lambda: scrape(d, "riskd_ingest_streams_open") == base + 1)
    s.close()


async def acked(gw: Gateway, n: int) -> None:
    """Until the gateway holds acks up to ``n`` (the stream is mid-flight)."""
    while gw.acked_sequence < n:  # noqa: ASYNC110 - the helper has no event for it
        await asyncio.sleep(0.005)


def test_engine_gone_ends_front_end_streams_unavailable_and_it_exits(tmp_path: Path) -> None:
    """SIGKILL of the engine: the front end's open streams end UNAVAILABLE, and the
    front end exits (no orphan serving a port nothing stands behind)."""
    d = start_daemon(tmp_path, *FRONTEND)
    s = RawStream(front(d))
    assert s.send(mark(market="NOPE")).acked_sequence == 1
    (pid,) = frontend_pids(d)
    d.process.kill()
    d.process.wait(10)
    with pytest.raises(grpc.RpcError) as e:
        s.send(mark(market="NOPE"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    s.q.put(None)
    s.channel.close()
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def test_front_end_has_the_engines_tls_and_access_policy_and_reloads_it(tmp_path: Path) -> None:
    """Mutual TLS with the same certificates, roles checked by the same interceptor
    (its denials counted in the engine's scrape), and a SIGHUP's new policy: a
    revoked gateway's stream through the front end ends at its next batch."""
    ca = make_ca()
    ca.write(tmp_path, "ca")
    issue(ca, "riskd", server_hosts=["127.0.0.1"]).write(tmp_path, "server")
    gw, ops = issue(ca, "gw-a"), issue(ca, "ops")
    (tmp_path / "riskd.toml").write_text(config_text(tmp_path, BEFORE))
    d = start_daemon(tmp_path, "--config", str(tmp_path / "riskd.toml"), *FRONTEND)
    fe = front(d)
    try:
        with grpc.insecure_channel(fe.target) as plain:  # no certificate, no RPC
            with pytest.raises(grpc.RpcError) as e:
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        stream = Stream(fe, credentials(ca, gw))
        ok = stream.send(U(sequence=1, mark_price=MARK))
        assert ok.acked_sequence == 1 and not ok.rejections
        with grpc.secure_channel(fe.target, credentials(ca, ops)) as admin:
            with pytest.raises(grpc.RpcError) as e:  # an admin is no gateway
                ingest_pb2_grpc.IngestServiceStub(admin).CheckOrder(
                    ingest_pb2.CheckOrderRequest(order=co().check_order), timeout=5
                )
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert eventually(lambda: scrape(d, "riskd_rpc_denied_total") == 1)
        (tmp_path / "riskd.toml").write_text(config_text(tmp_path, AFTER))
        d.process.send_signal(signal.SIGHUP)
        wait_for_log(d, "config_reloaded")
        # The policy goes to the front end after that line, unacknowledged: a
        # batch or two may still be served before it lands.
        for seq in itertools.count(2):
            stream.q.put(ingest_pb2.IngestRequest(updates=[U(sequence=seq, mark_price=MARK)]))
            try:
                assert next(stream.call).acked_sequence == seq and seq < 100
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
                break
            time.sleep(0.02)
        stream.q.put(None)
        stream.channel.close()
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize(
    ("wire", "before_applied"),
    [
        (handoff.frame((Op.INGEST, 1, False, "gw", 1, [(1, 999, ())], "other", 1)), True),
        (handoff.frame((99,)), True),  # no such message
        (b"\x00\x00\x00\x03abc", False),  # not marshal
        (b"\xff\xff\xff\xff", False),  # a frame too large to be one
    ],
    ids=["unknown-kind", "unknown-op", "not-marshal", "too-large"],
)
def test_a_broken_front_end_cannot_take_the_engine_down(wire: bytes, before_applied: bool) -> None:
    """The engine's reader ends that connection (the front end is restarted) and
    raises nothing into the daemon.  A message that does not make sense ends it
    after the messages before it; bytes that are no frames, with the rest of
    that read (a broken front end's last words: its gateways resume anyway)."""
    metrics = Metrics()
    cfg = config_mod.load()

    async def main() -> None:
        ours, theirs = trio.socket.socketpair()
        link = FrontendLink(cfg, "127.0.0.1:0", cast(Sequencer, None), metrics, 8, "info")
        conn = _Connection(link, trio.SocketStream(ours))
        peer = trio.SocketStream(theirs)
        await peer.send_all(handoff.frame((Op.METRICS, 2, 0.0, 0, 1, 0)) + wire)
        with trio.fail_after(10):
            await conn.serve()  # returns: the connection is over
        await peer.aclose()

    trio.run(main)
    applied = 1 if before_applied else 0
    assert metrics.registry.get_sample_value("riskd_ingest_streams_open") == 2 * applied
    assert metrics.registry.get_sample_value("riskd_rpc_denied_total") == applied


def test_a_busy_front_end_port_refuses_the_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run(
            [*riskd_command(tmp_path / "data"), "--frontend-listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().startswith(
        f"riskd: cannot listen on server.frontend_listen 127.0.0.1:{port}: "
    ), p.stderr


def test_a_front_end_that_cannot_bind_says_why_and_the_link_refuses_to_start() -> None:
    """The daemon checks the port first; one taken in between is the front end's
    own FAILED frame, raised by the engine's side as one line (exit 2 in riskd)."""
    cfg = config_mod.load()

    async def main() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            address = f"127.0.0.1:{busy.getsockname()[1]}"
            link = FrontendLink(cfg, address, cast(Sequencer, None), Metrics(), 8, "info")
            async with trio.open_nursery() as nursery:
                with pytest.raises(FrontendFailed) as e, trio.fail_after(30):
                    await link.start(nursery)
        assert str(e.value).startswith(f"cannot listen on server.frontend_listen {address}: ")
        assert link.process is not None and link.process.wait(10) == 2

    trio.run(main)


def test_a_refused_start_leaves_no_front_end_behind(tmp_path: Path) -> None:
    """The front end is started while the engine recovers; a recovery that
    fails (exit 3) kills it: one line on stderr, none from an orphan."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "journal.sqlite3").write_bytes(b"\xff" * 4096)  # not a database
    p = subprocess.run(
        riskd_command(data, *FRONTEND), capture_output=True, text=True, timeout=60, check=False
    )
    assert p.returncode == 3, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("riskd")]
    assert len(lines) == 1 and "journal is unreadable" in lines[0], p.stderr


def test_a_cluster_node_needs_a_fixed_front_end_port(tmp_path: Path) -> None:
    """Its standby holds the port and its front end binds it again at a takeover."""
    p = subprocess.run(
        [
            *riskd_command(tmp_path / "data", *FRONTEND),
            *("--storage", "postgresql://nowhere/riskd", "--etcd", "http://127.0.0.1:1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (
        "riskd: bad configuration: server.frontend_listen: a cluster node (--etcd) needs"
        " a fixed port, not 0"
    ), p.stderr


def _deposits(n: int, ts: int) -> list[Input]:
    return [Deposit(1 + i % 4, "USDT", USDT, ts) for i in range(n)]


def test_front_end_killed_then_daemon_stopped_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of the front end mid-stream: it is started again on its port, the
    gateway resumes from its acked sequence, and every update is applied once.
    Then SIGTERM of the daemon mid-stream: the stream ends after its acks, the
    front end is gone, and a restart reproduces the state."""
    d = start_daemon(tmp_path, *FRONTEND)
    fe = front(d)
    t = stamp()
    first = crash_scenario() + _deposits(3000, t)
    more = _deposits(50, t)

    async def killed() -> Gateway:
        async with Gateway(fe.target, "gw-kill", epoch=1, batch_size=4, window=64) as gw:
            for x in first:
                send(gw, x)
            await acked(gw, 40)
            (pid,) = frontend_pids(d)
            os.kill(pid, signal.SIGKILL)
            for x in more:  # sent only once the stream is back
                send(gw, x)
            await gw.flush(timeout=30)
            assert gw.reconnects >= 1
        return gw

    try:
        gw = asyncio.run(killed())
        inputs = first + more
        assert gw.acked_sequence == len(inputs)
        assert len(frontend_pids(d)) == 2  # restarted
        assert scrape(d, "riskd_frontend_restarts_total") == 1
        assert eventually(lambda: scrape(d, "riskd_ingest_streams_open") == 0)
        cfg = config_mod.load()
        assert digest(d) == engine_digest(run_engine(inputs, Engine(cfg.markets, cfg.funds)))
        assert '"frontend_exited"' in d.log.read_text()

        flood = _deposits(2000, t)

        async def stopped() -> int:
            gw = Gateway(fe.target, "gw-term", epoch=1, batch_size=1, window=64)
            await gw.start()
            for x in flood:
                send(gw, x)
            await acked(gw, 20)
            d.process.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, d.process.wait, 20)
            assert code == 0
            done = gw.acked_sequence
            await gw.close()
            return done

        done = asyncio.run(stopped())
        assert 20 <= done <= len(flood)
        log = d.log.read_text()
        assert "frontend_stopped" in log and "ingest_internal_error" not in log
        assert all(gone(pid) for pid in frontend_pids(d))
        expected = run_engine(inputs + flood[:done], Engine(cfg.markets, cfg.funds))
    finally:
        d.stop()
    again = start_daemon(tmp_path, *FRONTEND)
    try:
        assert digest(again) == engine_digest(expected)
    finally:
        assert again.stop() == 0
