"""A real riskd daemon on loopback, as a subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from benchmarks.harness import riskd_command, wait_event


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    grpc_port: int
    metrics_port: int
    log: Path
    #: The ingest front end's port (``--frontend-listen``; 0: none).
    frontend_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_daemon(tmp: Path, *extra: str) -> Daemon:
    """Start ``riskd serve`` on free ports; wait until it reports serving."""
    log = tmp / f"riskd-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            riskd_command(tmp / "data", *extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    rec = wait_event(process, log, "riskd_serving", timeout=30)
    return Daemon(process, rec["grpc_port"], rec["metrics_port"], log, rec.get("frontend_port", 0))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path)
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, f"riskd exited with {code}:\n{d.log.read_text()}"
