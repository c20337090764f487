"""Real PostgreSQL and etcd servers on loopback, in their own data directories.

Started from the Debian packages' binaries (``.ci/run`` installs them); a test
that needs one skips, saying why, when the binaries are absent.  PostgreSQL
refuses to run as root, so as root it runs as the ``postgres`` user the
package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_tool(name: str) -> str | None:
    found = PG_BIN / name
    if found.exists():
        return str(found)
    return shutil.which(name)


@dataclass
class Postgres:
    port: int
    data: Path
    standby_port: int | None = None  # a synchronous standby, when started

    @property
    def dsn(self) -> str:
        return f"postgresql://riskd@127.0.0.1:{self.port}/riskd"


def _as_user() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run PostgreSQL as someone other than root."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


@contextlib.contextmanager
def postgres(base: Path, standby: bool = False) -> Iterator[Postgres]:
    """A PostgreSQL 15 server with fsync and synchronous commit on, trust auth on loopback.

    ``standby``: plus a streaming standby (pg_basebackup) that the primary waits
    for at every commit (``synchronous_standby_names``), as in production.
    """
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL 15 binaries not installed (apt-get install postgresql-15)")
    prefix, uid, gid = _as_user()
    base.mkdir(parents=True, exist_ok=True)
    data, sock = base / "pgdata", base / "pgsock"
    sock.mkdir(exist_ok=True)
    if uid is not None:
        for p in (base, sock):
            os.chown(p, uid, gid or -1)
        for parent in base.parents:  # pytest's tmp dirs are 0700 root's
            if parent == Path("/") or os.stat(parent).st_mode & 0o001:
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o711)
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "riskd", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    opts = (
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on"
        " -c synchronous_commit=on -c max_connections=60 -c shared_buffers=32MB"
    )
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "pg.log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *prefix,
                _pg_tool("createdb") or "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "riskd",
                "riskd",
            ],
            check=True,
            capture_output=True,
        )
        server = Postgres(port, data)
        if standby:
            server.standby_port = _start_standby(base, prefix, pg_ctl, server, str(sock))
        yield server
    finally:
        if server.standby_port is not None:
            subprocess.run(
                [*prefix, pg_ctl, "-D", str(base / "standby"), "-m", "immediate", "stop"],
                capture_output=True,
            )
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )


def _start_standby(base: Path, prefix: list[str], pg_ctl: str, primary: Postgres, sock: str) -> int:
    """A standby named standby1, then make the primary's commits wait for it."""
    import psycopg

    data = base / "standby"
    conninfo = f"host=127.0.0.1 port={primary.port} user=riskd application_name=standby1"
    done = subprocess.run(
        [*prefix, _pg_tool("pg_basebackup") or "pg_basebackup", "-d", conninfo, "-D", str(data),
         "-R", "-X", "stream", "-c", "fast"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"pg_basebackup: {done.stderr}")
    port = free_port()
    # A promoted standby must not wait for a standby of its own.
    opts = (
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=on"
        " -c synchronous_standby_names= -c max_connections=60 -c shared_buffers=32MB"
    )
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "standby.log"), "-w",
         "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    with psycopg.connect(primary.dsn, autocommit=True) as db:
        db.execute("ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (standby1)'")
        # remote_apply (stronger than production's "on"): a commit has returned
        # only once the standby shows it, which the tests read back there.
        db.execute("ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
        db.execute("SELECT pg_reload_conf()")

        def synchronous() -> bool:
            rows = db.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'"
            ).fetchall()
            return rows == [("sync",)]

        wait_for(synchronous, "the standby to become synchronous")
    return port


def wait_for(predicate: object, what: str, seconds: float = 30.0) -> None:
    """Poll until ``predicate()`` is true (a deadline against hangs, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class EtcdCluster:
    endpoints: list[str]
    processes: list[subprocess.Popen[bytes]]


@contextlib.contextmanager
def etcd_cluster(base: Path, members: int = 3) -> Iterator[EtcdCluster]:
    """A ``members``-member etcd cluster on loopback (defaults: 100 ms heartbeat, 1 s election)."""
    binary = shutil.which("etcd")
    if binary is None:
        pytest.skip("etcd not installed (apt-get install etcd-server)")
    base.mkdir(parents=True, exist_ok=True)
    names = [f"e{i}" for i in range(members)]
    client = [free_port() for _ in names]
    peer = [free_port() for _ in names]
    initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer, strict=True))
    procs = []
    for n, c, p in zip(names, client, peer, strict=True):
        log = (base / f"{n}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [binary, "--name", n, "--data-dir", str(base / n),
                 "--listen-client-urls", f"http://127.0.0.1:{c}",
                 "--advertise-client-urls", f"http://127.0.0.1:{c}",
                 "--listen-peer-urls", f"http://127.0.0.1:{p}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
    cluster = EtcdCluster([f"http://127.0.0.1:{c}" for c in client], procs)
    try:
        from riskd.cluster.etcd import Etcd, EtcdUnavailable

        etcd = Etcd(cluster.endpoints)

        def up() -> bool:
            try:
                etcd.get("/riskd/ping")
            except EtcdUnavailable:
                return False
            return True

        wait_for(up, "etcd to elect a leader")
        yield cluster
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
