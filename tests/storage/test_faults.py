"""Storage faults fail-stop, and start-up failures are one line.

Each fault runs a real ``riskd serve`` subprocess: a gateway streams deposits
until the write fails; the daemon must log one ``storage_fault`` line naming
the cause and exit 4 by itself (no signal, nothing hanging), and a restart on
a healthy disk must still hold every update acknowledged before the fault.

Faults the tests can create without special hardware:

* ``RLIMIT_FSIZE`` (``ulimit -f``): set in the child before exec;
* disk full: a small tmpfs in a private mount namespace (``unshare``; as
  root, or unprivileged where user namespaces are allowed), copied out
  after the daemon exits since it vanishes with the namespace;
* a read-only data directory: ``chmod`` while riskd runs.  Root ignores
  permission bits, so as root the daemon runs without the capabilities that
  bypass them (``CAP_DAC_OVERRIDE``...).  Files SQLite already holds open
  stay writable, so this fault surfaces at the next snapshot.  A read-only
  *remount* under a running riskd is not possible here (the kernel refuses
  it while files are open for writing, EBUSY); start-up on a read-only
  mount is tested instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from benchmarks.harness import riskd_command, wait_event
from riskd import config as config_mod
from riskd.actors.journal import JournalActor
from riskd.core.events import Deposit, Input
from riskd.dev_certs import write_dev_set
from riskd.storage import StorageFault
from riskd.storage.journal import GENESIS
from riskd_client.gateway import Gateway

from ..api.conftest import Daemon, start_daemon
from ..api.scenario import send
from ..api.test_durability import pure_digest, state

EXIT_STORAGE_FAULT = 4
EXIT_STARTUP = 2
UNSHARE = shutil.which("unshare")


# --- launching riskd under a fault ---------------------------------------------------


def _launch(tmp: Path, argv: Sequence[str]) -> Daemon:
    """Start a process whose output carries riskd's log; wait until it serves."""
    log = tmp / f"riskd-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a wrapper and its riskd are stopped together
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        rec = wait_event(process, log, "riskd_serving", timeout=60)
    except RuntimeError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        raise
    return Daemon(process, rec["grpc_port"], rec["metrics_port"], log)


def _kill(d: Daemon) -> None:
    if d.process.poll() is None:
        os.killpg(d.process.pid, signal.SIGKILL)
        d.process.wait(30)


def _deposits(n: int) -> list[Input]:
    t = (time.time_ns() // 1_000_000 - 3_600_000) // 60_000 * 60_000
    return [Deposit(10 + i % 7, "USDT", 1_000 + i, t) for i in range(n)]


async def _stream_until_exit(d: Daemon, inputs: list[Input], gateway: str) -> int:
    """Stream ``inputs`` in small batches (many commits) until riskd exits; acked then."""
    gw = Gateway(d.target, gateway, epoch=1, batch_size=4, window=8, max_reconnect_delay=0.2)
    await gw.start()
    try:
        await gw.wait_connected()
        for x in inputs:
            send(gw, x)
        gw._seal()
        await asyncio.to_thread(d.process.wait, 120)
        return gw.acked_sequence
    finally:
        await gw.close()


def _fault_line(d: Daemon) -> dict[str, object]:
    faults = [
        json.loads(line)
        for line in d.log.read_text().splitlines()
        if '"storage_fault"' in line and line.startswith("{")
    ]
    assert len(faults) == 1, d.log.read_text()[-3000:]  # logged once
    return faults[0]


def _assert_acked_survived(
    tmp: Path, data: Path, inputs: list[Input], gateway: str, acked: int
) -> None:
    """Restart on a healthy disk: everything acknowledged before the fault is there."""
    assert acked > 0
    again = start_daemon(tmp, "--data-dir", str(data))
    try:

        async def resumed() -> int:
            async with Gateway(again.target, gateway, epoch=1) as gw:
                return await gw.wait_connected()

        durable = asyncio.run(resumed())
        assert durable >= acked  # never less than the gateway was told
        s = state(again)
        assert s.violations == [] and s.digest == pure_digest(inputs[:durable])
    finally:
        assert again.stop() == 0


# --- the faults ------------------------------------------------------------------------


def test_a_journal_write_past_rlimit_fsize_fail_stops(tmp_path: Path) -> None:
    limit = 1 << 20  # the WAL outgrows it within a few hundred commits

    data = tmp_path / "data"
    inputs = _deposits(40_000)
    d = _launch(tmp_path, _restricted("fsize", limit, riskd_command(data)))
    try:
        acked = asyncio.run(_stream_until_exit(d, inputs, "gw-fsize"))
    finally:
        _kill(d)
    assert d.process.returncode == EXIT_STORAGE_FAULT, d.log.read_text()[-3000:]
    fault = _fault_line(d)
    assert fault["what"] == "journal" and fault["path"] == str(data / "journal.sqlite3")
    assert "file size limit" in str(fault["cause"]), fault
    _assert_acked_survived(tmp_path, data, inputs, "gw-fsize", acked)


def _namespace_prefix(tmp: Path) -> list[str]:
    """``unshare`` arguments for a private mount namespace, or skip saying why."""
    if UNSHARE is None:
        pytest.skip("no unshare(1): cannot make a small tmpfs without touching the host")
    target = tmp / "probe-mount"
    target.mkdir()
    why = ""
    # As root a mount namespace is enough; otherwise a user namespace maps us to root.
    for flags in (["-m"], ["-r", "-m"]) if os.geteuid() == 0 else (["-r", "-m"],):
        probe = subprocess.run(
            [UNSHARE, *flags, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(target)],
            capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode == 0:
            return [UNSHARE, *flags]
        why = probe.stderr.strip()
    pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {why}")


def test_a_full_disk_fail_stops(tmp_path: Path) -> None:
    prefix = _namespace_prefix(tmp_path)
    mount, kept = tmp_path / "tmpfs", tmp_path / "data"
    mount.mkdir()
    kept.mkdir()
    # riskd on a 3 MiB tmpfs of its own; when it exits, its data is copied out.
    script = (
        'mount -t tmpfs -o size=3m tmpfs "$1" || exit 99; shift; "$@"; rc=$?;'
        ' cp -a "$0"/. "$KEPT"/; exit $rc'
    )
    argv = [*prefix, "env", f"KEPT={kept}", "sh", "-c", script, str(mount), str(mount)]
    inputs = _deposits(60_000)
    d = _launch(tmp_path, [*argv, *riskd_command(mount)])
    try:
        acked = asyncio.run(_stream_until_exit(d, inputs, "gw-full"))
    finally:
        _kill(d)
    assert d.process.returncode == EXIT_STORAGE_FAULT, d.log.read_text()[-3000:]
    fault = _fault_line(d)
    assert fault["what"] == "journal", fault
    assert "full" in str(fault["cause"]) and "no space left" in str(fault["cause"]), fault
    assert (kept / "journal.sqlite3").exists()
    _assert_acked_survived(tmp_path, kept, inputs, "gw-full", acked)


# The capabilities that let root ignore permission bits.
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


# Restrictions are applied by a launcher that then execs riskd, never by a
# preexec_fn: that runs Python in a fork() of this multi-threaded test process,
# whose gRPC poller, restarted in the child by gRPC's fork handler, then met the
# epoll fd subprocess's close_fds had closed and aborted the child (SIGABRT,
# "epoll_wait error: Bad file descriptor"; grpc/grpc#43055).  Without a
# preexec_fn subprocess uses vfork, which runs no fork handlers.
_LAUNCHER = """
import ctypes, os, resource, sys
what, arg, *argv = sys.argv[1:]
if what == "fsize":
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), int(arg)))
else:  # drop what lets root write where permission bits say no
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in map(int, arg.split(",")):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(argv[0], argv)
"""


def _restricted(what: str, arg: object, argv: Sequence[str]) -> list[str]:
    """``argv`` run under ``RLIMIT_FSIZE`` = ``arg`` ("fsize") or without the
    capabilities ``arg`` ("caps")."""
    return [sys.executable, "-c", _LAUNCHER, what, str(arg), *argv]


def _without_root_powers(argv: Sequence[str]) -> list[str]:
    caps = (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER)
    return _restricted("caps", ",".join(map(str, caps)), argv)


Wrap = Callable[[Sequence[str]], list[str]]


@pytest.fixture
def permissions_apply(tmp_path: Path) -> Wrap:
    """What makes a command run where chmod stops it (root: without the
    capabilities that ignore permission bits), or skip."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        (locked / "x").touch()
    except PermissionError:
        return list  # not root, or a root without the powers already
    probe = subprocess.run(
        _without_root_powers([sys.executable, "-c", f"open({str(locked / 'y')!r}, 'w')"]),
        capture_output=True,
    )  # fmt: skip
    if probe.returncode == 0 or b"prctl" in probe.stderr:  # or prctl refused (no CAP_SETPCAP)
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: chmod would not stop it")
    return _without_root_powers


def _chmod_tree(path: Path, directory: int, file: int) -> None:
    path.chmod(directory)
    for f in path.iterdir():
        f.chmod(file)


def test_a_data_directory_turned_read_only_fail_stops_at_the_next_snapshot(
    tmp_path: Path, permissions_apply: Wrap
) -> None:
    config = tmp_path / "riskd.toml"
    config.write_text(
        config_mod.default_toml().replace("snapshot_seconds = 300", "snapshot_seconds = 0.2")
    )
    data = tmp_path / "data"
    inputs = _deposits(200)
    d = _launch(tmp_path, permissions_apply(riskd_command(data, "--config", str(config))))
    try:

        async def stream() -> int:
            async with Gateway(d.target, "gw-ro", batch_size=4) as gw:
                for x in inputs:
                    send(gw, x)
                await gw.flush()
                return gw.acked_sequence

        acked = asyncio.run(stream())
        _chmod_tree(data, 0o500, 0o400)
        d.process.wait(60)
    finally:
        _kill(d)
        _chmod_tree(data, 0o700, 0o600)
    assert d.process.returncode == EXIT_STORAGE_FAULT, d.log.read_text()[-3000:]
    fault = _fault_line(d)
    assert fault["what"] == "snapshot" and "Permission denied (EACCES)" in str(fault["cause"])
    assert acked == len(inputs)
    # Still read-only: a restart refuses in one line, exit 2.
    _chmod_tree(data, 0o500, 0o400)
    try:
        refused = subprocess.run(
            permissions_apply(riskd_command(data)), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        _chmod_tree(data, 0o700, 0o600)
    assert refused.returncode == EXIT_STARTUP
    assert refused.stderr.splitlines() == [refused.stderr.strip()]
    assert refused.stderr.startswith(f"riskd: cannot write data directory {data}")
    assert "Permission denied (EACCES)" in refused.stderr
    _assert_acked_survived(tmp_path, data, inputs, "gw-ro", acked)


def test_start_on_a_read_only_mount_is_one_line_and_exit_2(tmp_path: Path) -> None:
    prefix = _namespace_prefix(tmp_path)
    data = tmp_path / "data"
    d = start_daemon(tmp_path)  # a journal to find there
    assert d.stop() == 0
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" || exit 99; exec "$@"'
    proc = subprocess.run(
        [*prefix, "sh", "-c", script, str(data), *riskd_command(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == EXIT_STARTUP, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("riskd: cannot write data directory"), lines
    assert "Read-only file system (EROFS)" in lines[0]


def test_the_journal_actor_releases_nothing_after_a_failed_write() -> None:
    """In-process: the fault handler runs once; no acknowledgement after the fault."""

    class Failing:
        epoch = 1
        path = "journal.sqlite3"
        head = GENESIS
        calls = 0

        def append(self, records: Sequence[str]) -> None:
            self.calls += 1
            if self.calls > 1:
                raise StorageFault("journal", self.path, "database or disk is full")

        def replay(self, after: int = 0) -> Iterator[str]:
            return iter(())

        def close(self) -> None:
            pass

    faults: list[StorageFault] = []
    released: list[str] = []
    raised: list[BaseException] = []

    async def main() -> None:
        journal = Failing()
        actor = JournalActor(journal, 8, on_fault=faults.append)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(actor.run)
                first = await actor.submit("a", "a")
                await first.wait()
                released.append(first.value)
                second = await actor.submit("b", "b")
                second.then(released.append)
                third = await actor.submit(None, "c")  # behind the failed one
                third.then(released.append)
        except* StorageFault as group:
            raised.extend(group.exceptions)

    trio.run(main)
    assert released == ["a"] and len(raised) == 1
    assert len(faults) == 1 and "disk is full" in str(faults[0])


# --- one-line start-up failures ----------------------------------------------------------


def _one_line_exit_2(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_STARTUP, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("riskd: "), proc.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_busy_grpc_port_is_one_line_and_exit_2(tmp_path: Path, busy_port: int) -> None:
    argv = riskd_command(tmp_path / "data")
    argv[argv.index("--grpc-listen") + 1] = f"127.0.0.1:{busy_port}"
    line = _one_line_exit_2(argv)
    assert f"server.grpc_listen 127.0.0.1:{busy_port}" in line and "in use" in line


def test_a_busy_metrics_port_is_one_line_and_exit_2(tmp_path: Path, busy_port: int) -> None:
    argv = riskd_command(tmp_path / "data")
    argv[argv.index("--metrics-listen") + 1] = f"127.0.0.1:{busy_port}"
    line = _one_line_exit_2(argv)
    assert f"server.metrics_listen 127.0.0.1:{busy_port}" in line and "in use" in line


def _tls_config(tmp: Path) -> tuple[Path, Path]:
    certs = tmp / "certs"
    write_dev_set(certs, ["gateway-1"], ["localhost", "127.0.0.1"])
    config = tmp / "riskd.toml"
    config.write_text(
        config_mod.default_toml().replace("plaintext = true", "")
        + f'\n[server.tls]\ncert = "{certs / "server.crt"}"\nkey = "{certs / "server.key"}"\n'
        f'client_ca = "{certs / "ca.crt"}"\n'
        '\n[access.gateway-1]\nroles = ["gateway"]\nmarkets = ["*"]\n'
    )
    return config, certs / "server.key"


def test_a_missing_tls_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config, key = _tls_config(tmp_path)
    key.unlink()
    line = _one_line_exit_2(riskd_command(tmp_path / "data", "--config", str(config)))
    assert str(key) in line


def test_an_unreadable_tls_file_is_one_line_and_exit_2(
    tmp_path: Path, permissions_apply: Wrap
) -> None:
    config, key = _tls_config(tmp_path)
    key.chmod(0)
    argv = riskd_command(tmp_path / "data", "--config", str(config))
    line = _one_line_exit_2(permissions_apply(argv))
    assert str(key) in line and "ermission denied" in line
