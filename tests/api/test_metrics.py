"""Operational metrics from a real scrape: invariant checks and liquidation backlog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from riskd.config import default_toml

from .conftest import start_daemon
from .scenario import crash_scenario
from .test_daemon_e2e import metric, scrape, stream


def test_periodic_invariant_check_and_liquidations_in_progress(tmp_path: Path) -> None:
    config = tmp_path / "riskd.toml"
    config.write_text(
        default_toml().replace("invariant_check_seconds = 60", "invariant_check_seconds = 0.2")
    )
    d = start_daemon(tmp_path, "--config", str(config))
    try:
        asyncio.run(stream(d, crash_scenario()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = scrape(d)
            if metric(text, "riskd_invariant_check_timestamp_seconds") > 0:
                break
            time.sleep(0.1)
        assert metric(text, "riskd_invariant_check_timestamp_seconds") > 0
        assert metric(text, "riskd_invariant_violations") == 0
        # Every liquidation of the scenario settled: nothing is left in progress.
        assert metric(text, "riskd_liquidations_in_progress", market="BTC-USDT") == 0
    finally:
        assert d.stop() == 0
