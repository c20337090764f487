"""Stress coverage through a real daemon: QueryService.GetStressCoverage and the gauges."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from riskd import config as config_mod
from riskd.config import ConfigError, default_toml, parse
from riskd.core import Engine, stress
from riskd.core.events import Deposit, Fill, FundInjection, Input, MarginTransfer, MarkPrice
from riskd.v1 import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc

from .conftest import Daemon, start_daemon
from .scenario import USDT, run_engine, stamp
from .test_access import Tls, det, ingest, mark
from .test_access import tls as tls  # the mutual-TLS daemon with its access policy
from .test_daemon_e2e import metric, scrape, stream

M = "BTC-USDT"


def book() -> list[Input]:
    """0.1 BTC positions at 50,000, no fees: 1 long at 10x (BP 45,000), 3 long at 2.5x
    (BP 30,000), 4 short at 8.3x (BP 56,000), 2 short at 1x."""
    t = stamp()
    return [
        *(Deposit(a, "USDT", 10_000 * USDT, t) for a in (1, 2, 3, 4)),
        MarginTransfer(1, M, 500 * USDT, t),
        MarginTransfer(2, M, 5_000 * USDT, t),
        MarginTransfer(3, M, 2_000 * USDT, t),
        MarginTransfer(4, M, 600 * USDT, t),
        MarkPrice(M, 5_000_000, t),
        Fill(M, 1, 1, 2, 5_000_000, 100, 0, 0, t),
        Fill(M, 2, 3, 4, 5_000_000, 100, 0, 0, t),
    ]


@pytest.fixture
def fast(tmp_path: Path) -> Daemon:
    """A daemon whose periodic check (and so the stress gauges) runs every 0.2 s."""
    config = tmp_path / "riskd.toml"
    config.write_text(
        default_toml().replace("invariant_check_seconds = 60", "invariant_check_seconds = 0.2")
    )
    return start_daemon(tmp_path, "--config", str(config))


def scrape_when_shortfall(d: Daemon, labels: dict[str, str], want: int) -> str:
    """The first scrape whose stress shortfall gauge reads ``want`` (set by a periodic
    check, so it may take a few scrapes); fails if none does within 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = scrape(d)
        try:
            if metric(text, "riskd_fund_stress_shortfall_quantums", **labels) == want:
                break
        except KeyError:
            pass
        time.sleep(0.1)
    assert metric(text, "riskd_fund_stress_shortfall_quantums", **labels) == want
    return text


def test_stress_coverage_query_and_gauges(fast: Daemon) -> None:
    d = fast
    try:
        admin = admin_pb2_grpc.AdminServiceStub(d.channel())
        admin.InjectFund(admin_pb2.InjectFundRequest(asset="USDT", amount=1_000 * USDT))
        inputs = book()
        gw = asyncio.run(stream(d, inputs))
        assert gw.rejections == []
        query = query_pb2_grpc.QueryServiceStub(d.channel())
        got = query.GetStressCoverage(query_pb2.GetStressCoverageRequest(asset="USDT"))
        assert got.asset == "USDT"
        # ETH-USDT has no mark yet: no rows for it.  BTC-USDT: the eight default moves.
        assert [(r.market, r.move_ppm) for r in got.rows] == [
            (M, m) for m in stress.DEFAULT_MOVES_PPM
        ]
        by = {r.move_ppm: r for r in got.rows}
        # Fund 1,000 with the default 30 % drawdown guard: it may pay 300 now.
        assert {r.budget for r in got.rows} == {300 * USDT}
        # -20 % (40,000): 1 owes 0.1 x 5,000 = 500; 3 (BP 30,000) nothing.
        r = by[-200_000]
        assert (r.price, r.positions, r.shortfall, r.payable, r.coverage_ppm) == (
            4_000_000, 1, 500 * USDT, 300 * USDT, 600_000,
        )  # fmt: skip
        # +30 % (65,000): 4 owes 0.1 x 15,000 - 600 = 900; 2 is at 1x.
        r = by[300_000]
        assert (r.positions, r.shortfall, r.payable, r.coverage_ppm) == (
            1, 900 * USDT, 300 * USDT, 333_333,
        )  # fmt: skip
        assert by[-50_000].shortfall == 0 and by[-50_000].coverage_ppm == 1_000_000

        # The pure engine, fed the same inputs, computes the same rows.
        cfg = config_mod.load()
        engine = Engine(cfg.markets, cfg.funds)
        engine.apply(FundInjection("USDT", 1_000 * USDT, "seed"))
        run_engine(inputs, engine)
        want = [x for x in stress.every_market(engine) if x.asset == "USDT"]
        assert [
            (r.market, r.move_ppm, r.price, r.positions, r.shortfall, r.payable, r.coverage_ppm)
            for r in got.rows
        ] == [
            (x.market, x.move_ppm, x.price, x.positions, x.shortfall, x.payable, x.coverage_ppm)
            for x in want
        ]

        # Moves of the caller's choosing, in its order.
        mine = query.GetStressCoverage(
            query_pb2.GetStressCoverageRequest(asset="USDT", moves_ppm=[-100_001, 125_000])
        )
        assert [(r.move_ppm, r.price) for r in mine.rows] == [
            (-100_001, 4_499_990),  # 44,999.95 rounded away from the mark: 44,999.90
            (125_000, 5_625_000),
        ]
        assert mine.rows[0].shortfall == USDT // 100  # 0.1 x 0.10 = 0.01 USDT

        # The gauges follow on the periodic check.
        labels = {"asset": "USDT", "market": M, "move": "-20%"}
        text = scrape_when_shortfall(d, labels, 500 * USDT)
        assert metric(text, "riskd_fund_stress_payable_quantums", **labels) == 300 * USDT
        assert metric(text, "riskd_fund_stress_coverage_ratio", **labels) == 0.6
        plus = {"asset": "USDT", "market": M, "move": "+30%"}
        assert metric(text, "riskd_fund_stress_shortfall_quantums", **plus) == 900 * USDT
        assert metric(text, "riskd_fund_stress_timestamp_seconds") > 0
        assert "account" not in text
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (query_pb2.GetStressCoverageRequest(asset="DOGE"), grpc.StatusCode.NOT_FOUND, "asset"),
        (
            query_pb2.GetStressCoverageRequest(asset="USDT", moves_ppm=[0]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "moves_ppm",
        ),
        (
            query_pb2.GetStressCoverageRequest(asset="USDT", moves_ppm=[-1_000_000]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "moves_ppm",
        ),
        (
            query_pb2.GetStressCoverageRequest(asset="USDT", moves_ppm=[5, 5]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "moves_ppm",
        ),
        (
            query_pb2.GetStressCoverageRequest(asset="USDT", moves_ppm=list(range(1, 34))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "moves_ppm",
        ),
    ],
)
def test_stress_coverage_refusals_name_the_field(
    daemon: Daemon, request_: query_pb2.GetStressCoverageRequest, code: grpc.StatusCode, field: str
) -> None:
    query = query_pb2_grpc.QueryServiceStub(daemon.channel())
    with pytest.raises(grpc.RpcError) as info:
        query.GetStressCoverage(request_)
    assert info.value.code() == code
    assert field in (info.value.details() or "")


def test_stress_coverage_is_scoped_to_the_granted_markets(tls: Tls) -> None:
    for gw, market in (("gw-btc", "BTC-USDT"), ("gw-eth", "ETH-USDT")):
        responses, error = ingest(tls.channel(gw), [mark(market, 5_000_000)])
        assert error is None and not responses[-1].rejections
    request = query_pb2.GetStressCoverageRequest(asset="USDT", moves_ppm=[-100_000])
    every = query_pb2_grpc.QueryServiceStub(tls.channel("watcher")).GetStressCoverage(request)
    assert [r.market for r in every.rows] == ["BTC-USDT", "ETH-USDT"]
    q = query_pb2_grpc.QueryServiceStub(tls.channel("gw-watch"))  # reader of BTC-USDT only
    assert [r.market for r in q.GetStressCoverage(request).rows] == ["BTC-USDT"]
    with pytest.raises(grpc.RpcError) as e:
        q.GetStressCoverage(query_pb2.GetStressCoverageRequest(asset="BTC"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and det(e.value).startswith("asset")
    with pytest.raises(grpc.RpcError) as e:  # a gateway without the reader role
        query_pb2_grpc.QueryServiceStub(tls.channel("gw-btc")).GetStressCoverage(request)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_stress_moves_are_configured_in_server(tmp_path: Path) -> None:
    config = tmp_path / "riskd.toml"
    config.write_text(
        default_toml()
        .replace("invariant_check_seconds = 60", "invariant_check_seconds = 0.2")
        .replace("[server]", "[server]\nstress_moves_ppm = [-150000, 250000]", 1)
    )
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        asyncio.run(stream(d, book()))
        query = query_pb2_grpc.QueryServiceStub(d.channel())
        got = query.GetStressCoverage(query_pb2.GetStressCoverageRequest(asset="USDT"))
        assert [(r.market, r.move_ppm) for r in got.rows] == [(M, -150_000), (M, 250_000)]
        by = {r.move_ppm: r for r in got.rows}
        # 42,500: 1 owes 0.1 x 2,500 = 250.  62,500: 4 owes 0.1 x 12,500 - 600 = 650.
        assert (by[-150_000].shortfall, by[250_000].shortfall) == (250 * USDT, 650 * USDT)
        labels = {"asset": "USDT", "market": M, "move": "-15%"}
        text = scrape_when_shortfall(d, labels, 250 * USDT)
        plus = {"asset": "USDT", "market": M, "move": "+25%"}
        assert metric(text, "riskd_fund_stress_shortfall_quantums", **plus) == 650 * USDT
        assert 'move="-10%"' not in text  # only the configured moves
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "server.stress_moves_ppm: must not be empty"),
        ("-50000", "server.stress_moves_ppm: must be an array"),
        ("[0]", "server.stress_moves_ppm: each move must be in"),
        ("[-1000000]", "server.stress_moves_ppm[0]: must be in -999999..10000000"),
        ("[50000, 50000]", "server.stress_moves_ppm: moves must not repeat"),
        ("[1.5]", "server.stress_moves_ppm[0]: must be an integer"),
    ],
)
def test_bad_stress_moves_are_refused_by_name(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(default_toml().replace("[server]", f"[server]\nstress_moves_ppm = {value}", 1))
    assert str(e.value).startswith(message), e.value
