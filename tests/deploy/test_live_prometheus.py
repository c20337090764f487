"""A real Prometheus scrapes a real riskd; the metrics are checked against it.

- after the crash scenario (liquidations, a fund inflow, ADL), a PromQL query
  over Prometheus' HTTP API returns the fund balance riskd's QueryService reports,
  and the real server, loaded with deploy/prometheus/riskd-alerts.yml, fires
  RiskdAdlExecuted;
- ``promtool check metrics`` is clean on a real scrape;
- drift: every metric the dashboard and the alert rules use exists in a real
  scrape, every exported metric is documented in docs/architecture.md, and the
  metrics are in base units with ``_total`` counters and sensible buckets.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import platform
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

import riskd

from .conftest import (
    ALERTS,
    ARCHITECTURE,
    DASHBOARD,
    DEPLOY,
    api_helpers,
    run_tool,
    tool,
    yaml_module,
)
from .test_prometheus_rules import dashboard_exprs

# Metrics the dashboard or the alert rules use that riskd does not export yet.
# Add a name here when a rule needs a metric before riskd has it; when riskd
# exports it, test_expected_metrics_are_not_exported_yet fails until the name
# is deleted, so the list cannot go stale. (riskd_invariant_violations and
# riskd_liquidations_in_progress were here until riskd exported them.)
EXPECTED_NOT_YET_EXPORTED: frozenset[str] = frozenset()

# Exported but missing from docs/architecture.md's metrics table. Document it
# there and delete it here: test_exported_metrics_are_documented fails until you do.
EXPORTED_NOT_YET_DOCUMENTED: frozenset[str] = frozenset()

# Families without a unit suffix: counts of events or of things.
DIMENSIONLESS = frozenset(
    {
        "riskd_liquidations",
        "riskd_adl_events",
        "riskd_updates",
        "riskd_ingest_streams_open",
        "riskd_ingest_throttled",
        "riskd_rpc_denied",
        "riskd_event_subscribers",
        "riskd_liquidations_in_progress",
        "riskd_invariant_violations",
        "riskd_fund_stress_coverage_ratio",
        "riskd_asset_decimals",  # a count of digits
        "riskd_event_subscriptions_refused",
        "riskd_rpc_denied_unrecorded",
        "riskd_cross_liquidations",
        "riskd_fills_unreserved",
        "riskd_mark_guard",  # 1 while on
        "riskd_market_status",  # 1 for the status
        "riskd_frontend_restarts",
    }
)
UNITS = ("_quantums", "_seconds", "_messages", "_info")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@dataclass
class Live:
    """A riskd that went through the crash scenario."""

    daemon: Any  # tests/api/conftest.py Daemon
    scrape: str  # /metrics right after the scenario
    fund_balance: int  # USDT fund balance, from QueryService.GetInsuranceFund


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    conf, scenario = api_helpers()
    from riskd.v1 import query_pb2, query_pb2_grpc
    from riskd_client.gateway import Gateway

    daemon = conf.start_daemon(tmp_path_factory.mktemp("riskd"))
    try:

        async def drive() -> None:
            async with Gateway(daemon.target, "gw-deploy", batch_size=4) as gw:
                for x in scenario.crash_scenario():
                    scenario.send(gw, x)
                await gw.flush()
                assert gw.rejections == []

        asyncio.run(drive())
        query = query_pb2_grpc.QueryServiceStub(daemon.channel())
        fund = query.GetInsuranceFund(query_pb2.GetInsuranceFundRequest(asset="USDT")).fund
        yield Live(daemon, _scrape(daemon.metrics_port), fund.balance)
    finally:
        assert daemon.stop() == 0, daemon.log.read_text()


@pytest.fixture(scope="module")
def prom_url(live: Live, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on loopback scraping ``live`` every second, with
    deploy/prometheus/riskd-alerts.yml loaded; its base URL."""
    prometheus = tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "riskd",
                        "static_configs": [{"targets": [f"127.0.0.1:{live.daemon.metrics_port}"]}],
                    }
                ],
            }
        )
    )
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        prom = subprocess.Popen(
            [
                prometheus,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert prom.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            time.sleep(0.1)
        yield url
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


def poll(deadline_s: float, check: Callable[[], T | None]) -> T | None:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last is not None:
            return last
        time.sleep(0.25)
    return None


def test_prometheus_query_returns_the_fund_balance(live: Live, prom_url: str) -> None:
    assert live.fund_balance > 0  # the scenario's liquidation fee went in
    q = urllib.parse.quote('riskd_insurance_fund_balance_quantums{asset="USDT"}')
    seen: list[object] = []

    def check() -> float | None:
        res = http_json(f"{prom_url}/api/v1/query?query={q}")
        assert res["status"] == "success"
        values = [float(r["value"][1]) for r in res["data"]["result"]]
        seen.append(values)
        return values[0] if values == [float(live.fund_balance)] else None

    assert poll(30, check) == live.fund_balance, f"last results: {seen[-3:]}"


def test_asset_unit_rules_give_the_fund_balance_in_usdt(live: Live, prom_url: str) -> None:
    """The dashboard's division by 10^decimals, on the real server: the USDT
    fund balance in whole USDT (6 decimals) is GetInsuranceFund's / 10^6."""
    q = urllib.parse.quote('riskd:insurance_fund_balance_units{asset="USDT"}')
    want = live.fund_balance / 10**6
    seen: list[object] = []

    def check() -> float | None:
        res = http_json(f"{prom_url}/api/v1/query?query={q}")
        values = [float(r["value"][1]) for r in res["data"]["result"]]
        seen.append(values)
        return values[0] if values == [want] else None

    assert poll(30, check) == want, f"last results: {seen[-3:]}"
    q = urllib.parse.quote("riskd:market_quantums_per_unit")
    res = http_json(f"{prom_url}/api/v1/query?query={q}")["data"]["result"]
    scales = {(r["metric"]["market"], r["metric"]["asset"]): float(r["value"][1]) for r in res}
    assert scales == {("BTC-USDT", "USDT"): 1e6, ("ETH-USDT", "USDT"): 1e6, ("BTC-USD", "BTC"): 1e8}


def test_real_prometheus_fires_the_adl_alert(prom_url: str) -> None:
    def check() -> list[dict] | None:
        alerts = http_json(f"{prom_url}/api/v1/alerts")["data"]["alerts"]
        adl = [
            a
            for a in alerts
            if a["labels"]["alertname"] == "RiskdAdlExecuted" and a["state"] == "firing"
        ]
        return adl or None

    adl = poll(30, check)
    assert adl, "RiskdAdlExecuted did not fire on the real server"
    assert adl[0]["labels"]["market"] == "BTC-USDT"
    assert adl[0]["annotations"]["runbook_url"].endswith("#riskdadlexecuted")
    rules = http_json(f"{prom_url}/api/v1/rules")["data"]["groups"]
    assert all(r["health"] in {"ok", "unknown"} for g in rules for r in g["rules"]), rules


def test_promtool_check_metrics_is_clean(live: Live) -> None:
    out = run_tool(tool("promtool"), "check", "metrics", stdin=live.scrape)
    assert out.strip() == "", out


def test_grpc_health_check_script(live: Live) -> None:
    """The container HEALTHCHECK script says SERVING for a running (plaintext,
    development) riskd when asked for plaintext; the TLS runs are in
    test_health_check_tls.py."""
    script = DEPLOY / "docker" / "grpc_health_check.py"
    out = subprocess.run(
        [sys.executable, str(script), live.daemon.target, "--plaintext"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stdout.strip() == "SERVING", out
    down = subprocess.run(
        [sys.executable, str(script), f"127.0.0.1:{free_port()}", "--plaintext"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1


# ------------------------------------------------------------------- drift


def riskd_families(scrape: str) -> list[Metric]:
    """Parsed riskd_* families, less prometheus_client's ``X_created`` companions
    of counters and histograms (the text parser reports them as gauges). The
    standard process_* and python_* families are prometheus_client's own."""
    fams = [f for f in text_string_to_metric_families(scrape) if f.name.startswith("riskd_")]
    stems = {f.name for f in fams if f.type in {"counter", "histogram"}}
    return [f for f in fams if not (f.name.endswith("_created") and f.name[:-8] in stems)]


def families(scrape: str) -> dict[str, str]:
    """Exported metric families by the name PromQL uses, with their type."""
    out = {}
    for fam in riskd_families(scrape):
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = fam.type
    return out


def queryable(fams: dict[str, str]) -> set[str]:
    names = set()
    for name, typ in fams.items():
        if typ == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def used_metrics() -> set[str]:
    yaml = yaml_module()
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [str(r["expr"]) for g in rules["groups"] for r in g["rules"]]
    exprs += dashboard_exprs()
    return {m for e in exprs for m in re.findall(r"\b(riskd_[a-z0-9_]+)", e)}


def documented() -> set[str]:
    """Metric names in docs/architecture.md, with "`a_inflow_b` / `_outflow_`"
    shorthand expanded into every candidate substitution."""
    names: set[str] = set()
    for line in ARCHITECTURE.read_text().splitlines():
        full = None
        for tok in re.findall(r"`([a-z0-9_]+)`", line):
            if tok.startswith("riskd_"):
                full = tok
                names.add(tok)
            elif full and tok.startswith("_") and tok.endswith("_"):
                parts = full.split("_")
                for i in range(len(parts)):
                    names.add("_".join([*parts[:i], tok.strip("_"), *parts[i + 1 :]]))
    return names


def test_every_used_metric_is_exported(live: Live) -> None:
    exported = queryable(families(live.scrape))
    missing = used_metrics() - exported - EXPECTED_NOT_YET_EXPORTED
    assert missing == set(), f"dashboard/rules use metrics riskd does not export: {missing}"


def test_expected_metrics_are_not_exported_yet(live: Live) -> None:
    exported = queryable(families(live.scrape))
    stale = EXPECTED_NOT_YET_EXPORTED & exported
    assert stale == set(), f"now exported: delete from EXPECTED_NOT_YET_EXPORTED: {stale}"
    assert used_metrics() >= EXPECTED_NOT_YET_EXPORTED, "unused: delete it"


def test_exported_metrics_are_documented(live: Live) -> None:
    exported = set(families(live.scrape))
    docs = documented()
    assert exported - docs - EXPORTED_NOT_YET_DOCUMENTED == set()
    stale = EXPORTED_NOT_YET_DOCUMENTED & docs
    assert stale == set(), f"now documented: delete from EXPORTED_NOT_YET_DOCUMENTED: {stale}"


def test_process_python_and_build_info_are_exported(live: Live) -> None:
    fams = {f.name: f for f in text_string_to_metric_families(live.scrape)}
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
        "process_start_time_seconds",
        "python_info",
        "python_gc_collections",
    ):
        assert name in fams, name
    assert fams["process_resident_memory_bytes"].samples[0].value > 0
    (build,) = fams["riskd_build_info"].samples
    assert build.labels == {
        "version": riskd.__version__,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "core": riskd.core_build(),
    }
    assert build.value == 1
    decimals = {s.labels["asset"]: s.value for s in fams["riskd_asset_decimals"].samples}
    assert decimals == {"USDT": 6, "BTC": 8}
    markets = {s.labels["market"]: s.labels["asset"] for s in fams["riskd_market_info"].samples}
    assert markets == {"BTC-USDT": "USDT", "ETH-USDT": "USDT", "BTC-USD": "BTC"}


def test_metrics_are_in_base_units_with_total_counters_and_sane_buckets(live: Live) -> None:
    fams = riskd_families(live.scrape)
    assert fams
    for fam in fams:
        assert fam.name.startswith("riskd_"), fam.name
        assert not re.search(r"_(milli|micro|nano)?(ms|us|ns|millis\w*|bytes_kb)$", fam.name)
        base = fam.name.removesuffix("_total")
        assert base in DIMENSIONLESS or base.endswith(UNITS), f"{fam.name}: no base unit"
        for s in fam.samples:
            assert "account" not in s.labels, s
            if fam.type == "counter" and not s.name.endswith("_created"):
                assert s.name.endswith("_total"), s.name
    assert "# TYPE riskd_liquidations_total counter" in live.scrape
    hist = [f for f in fams if f.type == "histogram"]
    assert [f.name for f in hist] == [
        "riskd_batch_duration_seconds",
        "riskd_ingest_queue_seconds",
        "riskd_ingest_durable_seconds",
        "riskd_journal_commit_seconds",
        "riskd_gc_pause_seconds",
    ]
    for h in hist:
        bounds = sorted(
            {
                float(s.labels["le"])
                for s in h.samples
                if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
            }
        )
        # Batches take tens of µs (a few marks) to tens of ms (a cascade).
        assert len(bounds) >= 8
        assert bounds[0] <= 0.0001 and bounds[-1] >= 1.0
        assert all(b / a <= 2.5 + 1e-9 for a, b in itertools.pairwise(bounds))
        count = sum(s.value for s in h.samples if s.name.endswith("_count"))
        assert count > 0  # the scenario's batches were observed


def test_mark_age_panel_counts_an_unstamped_mark_from_its_arrival(
    live: Live, prom_url: str
) -> None:
    """The dashboard's "Mark price age by market" on the real server after a mark
    sent without a timestamp (0, as the README's snippet sends it): an age since
    riskd applied it, not the 56 years since 1970 that also kept
    RiskdMarkPriceStale firing."""
    from riskd_client.gateway import Gateway

    panels = json.loads(DASHBOARD.read_text())["panels"]
    [expr] = [t["expr"] for p in panels if p.get("title") == "Mark price age by market"
              for t in p["targets"]]  # fmt: skip
    q = urllib.parse.quote(expr.replace("$market", "ETH-USDT"))

    async def mark() -> None:
        async with Gateway(live.daemon.target, "gw-deploy-marks") as gw:
            gw.mark_price("ETH-USDT", 300_000)

    asyncio.run(mark())
    day = 86_400.0
    seen: list[object] = []

    def check() -> float | None:
        values = [
            float(r["value"][1])
            for r in http_json(f"{prom_url}/api/v1/query?query={q}")["data"]["result"]
        ]
        seen.append(values)
        return values[0] if len(values) == 1 and values[0] < day else None

    age = poll(30, check)
    assert age is not None and -1.0 < age < day, f"last results: {seen[-3:]}"
