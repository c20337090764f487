"""The first example in the docs, clients/python/examples/gateway.py, still runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import Daemon

EXAMPLE = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples" / "gateway.py"


def test_example_gateway_runs_to_a_liquidation(daemon: Daemon) -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), "--target", daemon.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert "gateway: session epoch 1" in lines  # assigned by riskd, not chosen by the example
    settled = [line for line in lines if line.startswith("event") and "liquidation_settled" in line]
    assert settled, run.stdout
    assert "account: 1 " in settled[0]  # the thinly margined long
    assert "gateway: mark 45,100.00, long liquidated" in lines
    assert lines[-1].startswith('insurance fund asset: "USDT" balance: ')
