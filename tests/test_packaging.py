"""Packaging as a user meets it: ``python -m build`` makes an sdist and a wheel;
each installs into a clean virtual environment (nothing from this checkout on
its path) and serves; ``pip install riskd`` brings the daemon without
matplotlib, and ``riskd replay`` there says in one line to install
``riskd[replay]`` (exit 2).  The wheel carries the core compiled by mypyc
(``riskd --version`` says so) and its .py sources (``RISKD_PURE=1``).

Slow-ish (~95 s of CPU: a build that compiles the core once, about a minute,
a venv, an install from pip's cache, two daemons): one test, marked slow.
Its commands run without PYTHONPATH (a worktree's tests set it to the
checkout): ``python -m build`` leaves riskd.egg-info here, and pip would take
that for riskd installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEALTH_CHECK = ROOT / "deploy" / "docker" / "grpc_health_check.py"
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(
    *args: str | Path, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=CLEAN_ENV if env is None else env,
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


def serve_once(bin_dir: Path, tmp: Path) -> None:
    """``riskd serve`` from the venv answers SERVING, then stops cleanly on SIGTERM."""
    log = tmp / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                bin_dir / "riskd",
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--data-dir",
                tmp / f"data-{time.monotonic_ns()}",
            ],
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**CLEAN_ENV, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            for line in log.read_text().splitlines():
                if '"riskd_serving"' in line:
                    port = json.loads(line)["grpc_port"]
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        assert port, log.read_text()
        # The health check runs on the venv's own grpcio.
        check = run(bin_dir / "python", HEALTH_CHECK, f"127.0.0.1:{port}", "--plaintext", cwd=tmp)
        assert check.stdout.strip() == "SERVING"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()


@pytest.mark.slow
def test_sdist_and_wheel_install_and_serve_in_a_clean_venv(tmp_path: Path) -> None:
    if not (ROOT / "riskd" / "v1" / "ingest_pb2.py").exists():
        pytest.fail("riskd/v1 is not generated: run `make gen` (make test does)")
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=tmp_path)
    (wheel,) = dist.glob("riskd-*.whl")
    (sdist,) = dist.glob("riskd-*.tar.gz")

    # The same modules in both, generated stubs and default config included.
    with zipfile.ZipFile(wheel) as z:
        in_wheel = {n for n in z.namelist() if n.startswith(("riskd/", "riskd_client/"))}
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(z.read(meta).decode())
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split("/")[0]
        in_sdist = {
            n.removeprefix(top + "/").removeprefix("clients/python/")
            for n in t.getnames()
            if n.endswith((".py", ".pyi", ".toml", "py.typed"))
        }
    assert {"riskd/v1/ingest_pb2.py", "riskd/default_config.toml", "riskd/py.typed"} <= in_wheel
    assert {"riskd_client/gateway.py"} <= in_wheel
    # The core compiled by mypyc (built from the sdist), its sources beside it (RISKD_PURE=1).
    compiled = {n for n in z.namelist() if n.endswith(".so")}
    assert any(n.startswith("riskd/core/engine.") for n in compiled), sorted(in_wheel)
    assert any(n.startswith("riskd/core/_native__mypyc.") for n in compiled), sorted(compiled)
    assert "riskd/core/engine.py" in in_wheel
    assert {n for n in in_wheel if not n.endswith(("/", ".so"))} <= in_sdist
    # The daemon needs no plotting; `riskd[replay]` does.
    requires = metadata.get_all("Requires-Dist") or []
    plotting = [r for r in requires if r.startswith("matplotlib")]
    assert plotting and all('extra == "replay"' in r for r in plotting), requires
    assert "replay" in (metadata.get_all("Provides-Extra") or [])

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    pip = (bin_dir / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check")
    run(*pip, wheel, cwd=tmp_path)
    listed = run(bin_dir / "python", "-m", "pip", "list", "--format=json", cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "riskd" in names and "matplotlib" not in names and "numpy" not in names
    version = run(bin_dir / "riskd", "--version", cwd=tmp_path).stdout
    assert version.strip().endswith(" (compiled core)"), version
    pure = run(bin_dir / "riskd", "--version", cwd=tmp_path, env={**CLEAN_ENV, "RISKD_PURE": "1"})
    assert pure.stdout.strip().endswith(" (pure core)"), pure.stdout
    serve_once(bin_dir, tmp_path)
    replay = subprocess.run(
        [bin_dir / "riskd", "replay", "--generated", "--out", tmp_path / "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=CLEAN_ENV,
    )
    assert replay.returncode == 2, replay
    assert replay.stdout == ""
    (line,) = replay.stderr.splitlines()
    assert line.startswith("riskd replay: ") and "pip install 'riskd[replay]'" in line
    assert not (tmp_path / "out").exists()

    # The sdist installs too (built again from itself), over the wheel; without
    # compiling this time (RISKD_PURE_BUILD=1): the wheel above was compiled
    # from this sdist already, and a second compile costs CI a minute.
    env = {**CLEAN_ENV, "RISKD_PURE_BUILD": "1"}
    run(*pip, "--force-reinstall", "--no-deps", sdist, cwd=tmp_path, env=env)
    version = run(bin_dir / "riskd", "--version", cwd=tmp_path).stdout
    assert version.strip().endswith(" (pure core)"), version
    serve_once(bin_dir, tmp_path)


def test_node_client_decides_every_install_script() -> None:
    """npm 11 warns about (and skips) dependency install scripts that the
    project's allowScripts does not cover; protobufjs' postinstall only checks
    its dependents' version scheme, so clients/node denies it outright."""
    node = ROOT / "clients" / "node"
    package = json.loads((node / "package.json").read_text())
    lock = json.loads((node / "package-lock.json").read_text())
    scripted = {
        path.rsplit("node_modules/", 1)[-1]
        for path, meta in lock["packages"].items()
        if path and meta.get("hasInstallScript")
    }
    allow = package.get("allowScripts", {})
    decided = {name.rsplit("@", 1)[0] if name.rfind("@") > 0 else name for name in allow}
    assert scripted and scripted <= decided, scripted - decided
    assert allow["protobufjs"] is False
