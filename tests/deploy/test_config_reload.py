"""deploy/docker/config_reload.py, the Kubernetes config-reload sidecar, against a
real riskd: a ConfigMap update the way kubelet makes it (a new timestamped
directory, then an atomic swap of the ``..data`` symlink) makes riskd take a
SIGHUP; an unchanged file does not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .conftest import DEPLOY, api_helpers

SCRIPT = DEPLOY / "docker" / "config_reload.py"


def kubelet_layout(root: Path, text: str, version: int) -> None:
    """Write ``text`` as kubelet's atomic writer does for a ConfigMap volume."""
    stamp = root / f"..2026_v{version}"
    stamp.mkdir()
    (stamp / "riskd.toml").write_text(text)
    tmp = root / "..data_tmp"
    tmp.symlink_to(stamp.name)
    os.replace(tmp, root / "..data")
    link = root / "riskd.toml"
    if not link.is_symlink():
        link.symlink_to("..data/riskd.toml")


def wait_for(path: Path, needle: str, proc: subprocess.Popen[bytes], count: int = 1) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = path.read_text()
        if text.count(needle) >= count:
            return text
        assert proc.poll() is None, text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} x{count} not in {path}:\n{path.read_text()}")


def test_a_configmap_update_reaches_riskd_as_sighup(tmp_path: Path) -> None:
    conf, _ = api_helpers()
    default = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "config"], capture_output=True, text=True, check=True
    ).stdout
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    kubelet_layout(config_dir, default, 1)
    config = config_dir / "riskd.toml"
    daemon = conf.start_daemon(tmp_path, "--config", str(config))
    watch_log = tmp_path / "reload.log"
    with watch_log.open("wb") as out:
        watcher = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(config), "--interval", "0.05"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(watch_log, '"config_watch_started"', watcher)
        # Several checks of an unchanged file: no signal. (The watcher's log
        # has one line per check only when something changed.)
        kubelet_layout(config_dir, default, 2)  # same content, new directory
        kubelet_layout(config_dir, default + "# edited\n", 3)
        text = wait_for(watch_log, '"config_changed"', watcher)
        assert f'"sighup_sent_to": [{daemon.process.pid}]' in text, text
        # plaintext: riskd takes the signal and says there is no [access] to reload
        # (the reload itself, over mutual TLS, is tests/api/test_rotation.py's).
        wait_for(daemon.log, '"config_reload_skipped"', daemon.process)
        assert text.count('"config_changed"') == 1, text
        kubelet_layout(config_dir, default + "# edited again\n", 4)
        wait_for(watch_log, '"config_changed"', watcher, count=2)
        wait_for(daemon.log, '"config_reload_skipped"', daemon.process, count=2)
        assert daemon.process.poll() is None
    finally:
        watcher.terminate()
        watcher.wait(10)
        assert daemon.stop() == 0, daemon.log.read_text()
