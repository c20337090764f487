"""Runs buf lint on protos/ when buf can be fetched through npx."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ["npx", "--yes", "@bufbuild/buf"]


def _buf(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUF, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def buf_available() -> None:
    if shutil.which("npx") is None:
        pytest.skip("npx not on PATH")
    try:
        # The first call downloads buf from the npm registry.
        probe = _buf("--version", timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("fetching @bufbuild/buf via npx timed out")
    if probe.returncode != 0:
        pytest.skip(f"@bufbuild/buf unavailable: {probe.stderr.strip()[:200]}")


@pytest.mark.usefixtures("buf_available")
def test_buf_lint() -> None:
    result = _buf("lint", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.usefixtures("buf_available")
def test_buf_format() -> None:
    result = _buf("format", "--diff", "--exit-code", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
