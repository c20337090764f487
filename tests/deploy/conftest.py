"""Shared helpers for the deploy/ checks: paths, the real tools, a live daemon."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "riskd-alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "riskd-alerts.test.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "riskd.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
RISKD_TOML = DEPLOY / "riskd.toml"
HEALTH_CHECK = DEPLOY / "docker" / "grpc_health_check.py"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _load(name: str, path: Path) -> ModuleType:
    """Import a module by path (tests/api helpers, deploy scripts: not packages)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def api_helpers() -> tuple[ModuleType, ModuleType]:
    """tests/api/conftest.py (start_daemon) and tests/api/scenario.py."""
    conf = _load("riskd_tests_api_conftest", ROOT / "tests" / "api" / "conftest.py")
    scen = _load("riskd_tests_api_scenario", ROOT / "tests" / "api" / "scenario.py")
    return conf, scen


def health_check_module() -> ModuleType:
    """deploy/docker/grpc_health_check.py, imported (for its defaults)."""
    return _load("riskd_deploy_grpc_health_check", HEALTH_CHECK)


def tool(name: str) -> str:
    """Path of a real tool, or skip (CI installs Debian's prometheus package)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not on PATH (apt-get install prometheus)")
    return path


def run_tool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    """Run a tool; fail the test with its output unless it exits 0."""
    proc = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=60, cwd=cwd
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{out}"
    return out


def yaml_module() -> ModuleType:
    """PyYAML, or skip (it is not a riskd dependency; .ci/run installs it)."""
    return pytest.importorskip("yaml")
