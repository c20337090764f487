"""``[server] engine_cpus`` / ``frontend_cpus``: every thread of the engine and of
its front end on the CPUs named, a CPU the host does not give refused at start."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.harness import riskd_command
from riskd import cpus
from riskd.config import ConfigError, default_toml, parse

from .api.conftest import start_daemon

pytestmark = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU pinning is Linux only"
)
HAVE = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]


def with_cpus(tmp: Path, **keys: list[int]) -> Path:
    path = tmp / "riskd.toml"
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    path.write_text(default_toml().replace("[server]\n", "[server]\n" + lines, 1))
    return path


def allowed(pid: int) -> set[str]:
    """Each thread's CPU list, as the kernel has it."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out.add(line.split(":", 1)[1].strip())
    return out


def test_engine_and_front_end_threads_run_where_configured(tmp_path: Path) -> None:
    engine, front = HAVE[0], HAVE[-1]
    config = with_cpus(tmp_path, engine_cpus=[engine], frontend_cpus=[front])
    d = start_daemon(tmp_path, "--config", str(config), "--frontend-listen", "127.0.0.1:0")
    try:
        records = [json.loads(x) for x in d.log.read_text().splitlines() if x.startswith("{")]
        (started,) = [r for r in records if r.get("event") == "frontend_started"]
        assert started["cpus"] == [front]
        assert [r["cpus"] for r in records if r.get("event") == "riskd_pinned"] == [[engine]]
        # Every thread: gRPC's, trio's, the journal writer's, the metrics server's.
        assert len(os.listdir(f"/proc/{d.process.pid}/task")) > 3
        assert allowed(d.process.pid) == {str(engine)}
        assert allowed(started["pid"]) == {str(front)}
    finally:
        assert d.stop() == 0, d.log.read_text()


def test_a_cpu_riskd_may_not_use_refuses_the_start(tmp_path: Path) -> None:
    config = with_cpus(tmp_path, engine_cpus=[HAVE[-1] + 1])
    p = subprocess.run(
        [*riskd_command(tmp_path / "data"), "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (
        f"riskd: server.engine_cpus: CPU {HAVE[-1] + 1} is not available to riskd"
        f" (it may use {cpus._ranges(HAVE)})"
    ), p.stderr


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[-1]", "server.engine_cpus[0]: "),
        ('["0"]', "server.engine_cpus[0]: "),
        ("0", "server.engine_cpus: must be an array of CPU numbers"),
        ("[1, 1]", "server.engine_cpus: names a CPU twice"),
    ],
)
def test_bad_cpu_settings_name_the_key(value: str, says: str) -> None:
    text = default_toml().replace("[server]\n", f"[server]\nengine_cpus = {value}\n", 1)
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert str(e.value).startswith(says), e.value


def test_ranges_read_as_the_kernel_writes_them() -> None:
    assert cpus._ranges([5, 0, 1, 2]) == "0-2, 5"
    assert cpus._ranges([3]) == "3"
    assert cpus.check("server.engine_cpus", []) == frozenset()  # nothing asked
