"""Clustered riskd under kill -9 and SIGSTOP: time to serve again, nothing lost or twice.

``python -m benchmarks.failover [--kills 20] [--fencing 20] [--ttl 2] [--snapshot-seconds 1]
[--frontend] [--json PATH]``

Starts a PostgreSQL 15 server and a 3-member etcd cluster on loopback in a
temporary directory (the Debian packages' binaries, as tests/cluster does),
then two riskd nodes for one shard (``--storage postgresql://... --etcd ...``).

* **Failover** (``--kills``): a gateway (the Python helper, ``nodes=`` both,
  ``ack_timeout``) streams deposits without pause; every round kill -9's the
  owner once the helper has had acks from it, and measures from the kill to
  the first acknowledgement served by the other node ("time to serve again",
  target: lease TTL + 3 s).  The killed node is restarted as the standby.  At
  the end the helper flushes, and the serving node's state digest
  (AdminService/CheckState) is compared with a single SQLite-journal node fed
  the same inputs once: equal digests mean no acknowledged update lost and
  none applied twice.  The nodes write a snapshot every ``--snapshot-seconds``
  into PostgreSQL, so each takeover restores it and replays only the journal
  after it (``takeover_replayed_records``).  With ``--frontend`` both nodes
  run the ingest front end and the helper streams to the front ends' ports
  (a standby's redirects there name the owner's front end).
* **Fencing** (``--fencing``): SIGSTOP the owner; once the standby owns the
  shard (a higher epoch), SIGCONT the old owner: it must exit 4 having added no
  journal row under its epoch after the takeover.
* **Ingest**: deposits/s through one node with the journal in PostgreSQL and
  with the SQLite journal (same client, batches of 256).
* **Two assets** (``--scale-updates``, ``--scale-reps``, ``--scale-pin``): two
  gateways, one per settlement asset, against one node serving both and
  against two nodes (one shard each), all journaling to PostgreSQL.  Each
  gateway is a process of its own (``benchmarks/load_client.py``): pre-encoded
  requests through a generic stream, and the Python helper for comparison.
  Each cell reports the CPU every process tree spent meanwhile (riskd nodes,
  PostgreSQL, etcd, load clients, this harness, and other work on the
  machine, from ``/proc``) and riskd's CPU per update by thread, so the
  ratio can be read against the cores riskd actually got.

Prints one JSON document (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from benchmarks.harness import CLOCK_TICK, log_records, proc_table
from riskd.v1 import admin_pb2, admin_pb2_grpc
from riskd_client.gateway import Gateway

ROOT = Path(__file__).resolve().parent.parent


def _services() -> Any:
    spec = importlib.util.spec_from_file_location(
        "cluster_services", ROOT / "tests" / "cluster" / "services.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_services"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Node:
    def __init__(
        self, base: Path, name: str, extra: list[str], port: int, ingest_port: int = 0
    ) -> None:
        self.name = name
        self.address = f"127.0.0.1:{port}"
        #: Where gateways stream: the ingest front end (``ingest_port``), or ``address``.
        self.ingest = f"127.0.0.1:{ingest_port}" if ingest_port else self.address
        self.log = base / f"{name}.log"
        self.data = base / name
        self.extra = [*extra, "--frontend-listen", self.ingest] if ingest_port else extra
        self.process: subprocess.Popen[bytes] | None = None
        self._from = 0  # where this process's lines begin in the shared log
        self.cpu: int | None = None  # the one core every thread of the node runs on

    def start(self) -> None:
        self._from = self.log.stat().st_size if self.log.exists() else 0
        pin = [] if self.cpu is None else ["taskset", "-c", str(self.cpu)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*pin, sys.executable, "-m", "riskd.cli", "serve", "--grpc-listen", self.address,
                 "--metrics-listen", "127.0.0.1:0", "--data-dir", str(self.data), *self.extra],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip

    def events(self) -> list[dict[str, Any]]:
        """What the current process logged."""
        with self.log.open("rb") as f:
            f.seek(self._from)
            return log_records(f.read().decode(errors="replace"))

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _wait(predicate: Any, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def digest(address: str) -> str:
    with grpc.insecure_channel(address) as ch:
        stub = admin_pb2_grpc.AdminServiceStub(ch)
        return str(stub.CheckState(admin_pb2.CheckStateRequest(), timeout=60).digest)


class Load:
    """Deposits without pause through the helper; the inputs kept to replay once."""

    def __init__(self, nodes: list[str]) -> None:
        # A short reconnect backoff: during a takeover the helper bounces between
        # the dead owner and a standby still naming it, and a long backoff would
        # add up to its maximum after the new owner already serves.
        self.gw = Gateway(nodes[0], "bench-failover", batch_size=16, window=8, nodes=nodes[1:],
                          ack_timeout=1.0, max_reconnect_delay=0.2)  # fmt: skip
        self.sent: list[tuple[int, int]] = []
        self.acks: list[tuple[float, int]] = []  # (monotonic time, acked sequence) on change
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await self.gw.start()
        n = 0
        last = 0
        while not self._stop.is_set():
            if self.gw.next_sequence - self.gw.acked_sequence < 16 * 8:
                n += 1
                account = 1 + n % 50
                self.gw.deposit(account, "USDT", 1_000 + n % 7)
                self.sent.append((account, 1_000 + n % 7))
            if self.gw.acked_sequence != last:
                last = self.gw.acked_sequence
                self.acks.append((time.monotonic(), last))
            await asyncio.sleep(0 if n % 16 else 0.001)
        await self.gw.flush(timeout=120)
        self.acks.append((time.monotonic(), self.gw.acked_sequence))

    def stop(self) -> None:
        self._stop.set()

    def acked_at(self) -> int:
        return self.gw.acked_sequence


async def _failover(nodes: list[Node], kills: int) -> dict[str, Any]:
    load = Load([n.ingest for n in nodes])
    task = asyncio.create_task(load.run())
    stalls: list[float] = []
    serving_after: list[float] = []  # kill -> the new owner's riskd_serving line
    lost_before: list[int] = []
    replayed: list[int] = []  # journal records the new owner replayed after its snapshot
    restored: list[int] = []  # records its snapshot covered
    # The new owner's own work, from its log: owning -> recovered -> serving.
    recovering: list[float] = []
    starting: list[float] = []
    for _ in range(kills):
        owner = next(n for n in nodes if n.alive() and _serving(n))
        other = next(n for n in nodes if n is not owner)
        before = load.acked_at()
        # Polls the helper's counter: timing, not a wake-up, is what is measured.
        while load.acked_at() < before + 200:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert owner.process is not None
        acked_at_kill = load.acked_at()
        # Updates numbered after the kill can only be acknowledged by the new owner
        # (acks the old one sent before dying may still be in the socket).
        numbered = load.gw.next_sequence - 1
        killed = time.monotonic()
        killed_wall = time.time()
        owner.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(owner.process.wait)
        while load.acked_at() <= numbered:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        stalls.append(time.monotonic() - killed)
        lost_before.append(acked_at_kill)
        await asyncio.to_thread(_wait, lambda o=other: _serving(o), "the standby serving")
        line = [e for e in other.events() if e.get("event") == "riskd_serving"][-1]
        at = datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00"))
        serving_after.append(at.timestamp() - killed_wall)
        rec = [e for e in other.events() if e.get("event") == "riskd_recovered"][-1]
        replayed.append(int(rec["replayed"]))
        restored.append(int(rec["snapshot_records"]))
        won = [e for e in other.events() if e.get("event") == "riskd_owner"][-1]
        recovering.append(_at(rec) - _at(won))
        starting.append(at.timestamp() - _at(rec))
        owner.start()  # back as the standby
        await asyncio.to_thread(
            _wait, lambda o=owner: o.count("riskd_standby") > 0 and o.alive(), "restart as standby"
        )
    load.stop()
    await task
    return {
        "stalls": stalls,
        "serving_after": serving_after,
        "acked_before_kills": lost_before,
        "replayed": replayed,
        "restored": restored,
        "recovering": recovering,
        "starting": starting,
        "final_acked": load.gw.acked_sequence,
        "sent": load.sent,
        "redirects": load.gw.redirects,
        "stalls_detected": load.gw.stalls,
        "rejections": len(load.gw.rejections),
    }


def _at(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def _serving(n: Node) -> bool:
    return n.alive() and n.count("riskd_serving") > 0


async def _feed(address: str, sent: list[tuple[int, int]]) -> int:
    async with Gateway(address, "bench-reference", batch_size=256) as gw:
        for account, amount in sent:
            gw.deposit(account, "USDT", amount)
        await gw.flush(timeout=300)
    return gw.acked_sequence


async def _fencing(nodes: list[Node], rounds: int, dsn: str) -> dict[str, Any]:
    import psycopg

    results = []
    with psycopg.connect(dsn, autocommit=True) as db:
        for _ in range(rounds):
            owner = next(n for n in nodes if n.alive() and _serving(n))
            other = next(n for n in nodes if n is not owner)
            assert owner.process is not None
            epoch = [e for e in owner.events() if e.get("event") == "riskd_owner"][-1]["epoch"]
            had = other.count("riskd_owner")
            # Something in flight at the owner when it stops.
            await _poke(owner.address)
            owner.process.send_signal(signal.SIGSTOP)
            await asyncio.to_thread(
                _wait, lambda o=other, h=had: o.count("riskd_owner") > h, "the takeover"
            )
            rows_at_takeover = _rows(db, epoch)
            owner.process.send_signal(signal.SIGCONT)
            code = await asyncio.to_thread(owner.process.wait, 60)
            rows_after = _rows(db, epoch)
            results.append({"exit": code, "stale_rows": rows_after - rows_at_takeover})
            await asyncio.to_thread(_wait, lambda o=other: _serving(o), "the new owner serving")
            owner.start()
            await asyncio.to_thread(
                _wait, lambda o=owner: o.count("riskd_standby") > 0, "restart as standby"
            )
    return {
        "rounds": len(results),
        "stale_rows_written": sum(r["stale_rows"] for r in results),
        "exit_codes": sorted({r["exit"] for r in results}),
    }


def _rows(db: Any, epoch: int) -> int:
    """Journal rows written under ``epoch`` (every shard)."""
    row = db.execute("SELECT count(*) FROM riskd_journal WHERE epoch = %s", (epoch,)).fetchone()
    return int(row[0]) if row is not None else 0


async def _poke(address: str) -> None:
    async with Gateway(address, "bench-fencing", batch_size=4) as gw:
        for i in range(8):
            gw.deposit(60 + i, "USDT", 5)
        await gw.flush(timeout=30)


async def _ingest(node: Node, updates: int, asset: str = "USDT") -> float:
    # Gateway ids are at most 32 characters.
    async with Gateway(node.address, f"bench-{node.name}-{asset}"[:32], batch_size=256,
                       window=16) as gw:  # fmt: skip
        await gw.wait_connected()
        t = time.perf_counter()
        for i in range(updates):
            gw.deposit(1 + i % 100, asset, 1 + i % 9)
            if i % 256 == 255:
                await gw.wait_for_window()
        await gw.flush(timeout=300)
        return updates / (time.perf_counter() - t)


def _config_of(asset: str, base: Path) -> Path:
    """The default config with only ``asset`` and its markets: a shard of its own."""
    from riskd.config import default_toml, load

    keep = []
    for section in re.split(r"(?m)^(?=\[)", default_toml()):
        m = re.match(r"\[(assets|markets)\.([A-Za-z0-9-]+)", section)
        if m and m.group(1) == "assets" and m.group(2) != asset:
            continue
        if m and m.group(1) == "markets" and f'asset = "{asset}"' not in section:
            continue
        keep.append(section)
    path = base / f"riskd-{asset}.toml"
    path.write_text("".join(keep))
    assert set(load(path).assets) == {asset}
    return path


def _busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLOCK_TICK  # less idle and iowait


def _cpu_by_process(roots: dict[str, list[int]]) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of every process, with its group: that of its nearest
    listed ancestor (itself included; a root counts its exited children too), or
    "other" (work on the machine that is not this benchmark's)."""
    table = proc_table()
    group_of = {pid: g for g, pids in roots.items() for pid in pids}
    harness = os.getpid()
    out = {}
    for pid, (_, own, waited) in table.items():
        at, g = pid, "other"
        for _ in range(64):
            if at in group_of:
                g = group_of[at]
                break
            if at not in table or at <= 1:
                break
            at = table[at][0]
        root = pid in group_of and pid != harness
        out[pid] = (g, own + (waited if root else 0.0))
    return out


def _spent(a: dict[int, tuple[str, float]], z: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each group spent between two samples (a process that started
    between them: all of its CPU; one that ended: missed, left unattributed)."""
    out: dict[str, float] = {}
    for pid, (g, cpu) in z.items():
        before = a.get(pid)
        out[g] = out.get(g, 0.0) + max(cpu - (before[1] if before else 0.0), 0.0)
    return out


def _threads_cpu_s(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of the threads of ``pids`` by name, summed over the
    processes ("main": each process's first thread, where riskd runs trio, i.e.
    the engine)."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    head, _, rest = f.read().rpartition(")")
            except OSError:
                continue
            fields = rest.split()
            name = "main" if tid == str(pid) else head.split("(", 1)[1].rstrip("0123456789-_")
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    return out


def _postmaster(pg: Any) -> list[int]:
    try:
        return [int((pg.data / "postmaster.pid").read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        return []


def _load_client(
    address: str, gateway: str, asset: str, updates: int, helper: bool
) -> subprocess.Popen[str]:
    """A load client process (benchmarks/load_client.py), connected once it says ready."""
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.load_client", address, gateway, asset, str(updates),
         *(["--helper"] if helper else [])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


def _line(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    return p.stdout.readline()


async def _scale(
    base: Path,
    pg: Any,
    etcd_pids: list[int],
    free_port: Any,
    updates: int,
    reps: int,
    pin: bool = False,
) -> dict[str, Any]:
    """Two assets, one gateway each: one node serving both against two nodes with one
    each (all journaling to the same PostgreSQL), with each load client a process
    of its own (pre-encoded bytes, and the Python helper for comparison), and the
    CPU every process group spent meanwhile."""
    configs = {a: _config_of(a, base) for a in ("USDT", "BTC")}
    cells: list[dict[str, Any]] = []

    async def cell(label: str, client: str, rep: int) -> dict[str, Any]:
        tag = f"{label}-{client}-{rep}"
        if label == "one_node":
            one = Node(base, f"scale-{tag}", ["--storage", pg.dsn, "--shard", f"s-{tag}"],
                       free_port())  # fmt: skip
            nodes, targets = [one], [one, one]
        else:
            nodes = [
                Node(base, f"scale-{tag}-{a}", ["--config", str(configs[a]), "--storage", pg.dsn,
                                                 "--shard", f"s-{tag}-{a}"], free_port())
                for a in ("USDT", "BTC")
            ]  # fmt: skip
            targets = nodes
        if pin:  # a core per node: the one node gets one core, the two nodes one each
            for cpu, n in enumerate(nodes):
                n.cpu = cpu
        for n in nodes:
            n.start()
        for n in nodes:
            await asyncio.to_thread(_wait, lambda n=n: n.count("riskd_serving") > 0, n.name)
        loads = [
            _load_client(n.address, f"gw-{tag}-{a}"[:32], a, updates, client == "helper")
            for n, a in zip(targets, ("USDT", "BTC"), strict=True)
        ]
        try:
            for p in loads:
                line = await asyncio.to_thread(_line, p)
                if '"ready"' not in line:
                    raise RuntimeError(f"load client: {line!r}")
            roots = {
                "riskd": [n.process.pid for n in nodes if n.process is not None],
                "postgresql": _postmaster(pg),
                "etcd": etcd_pids,
                "load_clients": [p.pid for p in loads],
                "harness": [os.getpid()],
            }
            threads0 = _threads_cpu_s(roots["riskd"])
            cpu0, busy0, t0 = _cpu_by_process(roots), _busy_s(), time.perf_counter()
            for p in loads:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            outs = [json.loads(await asyncio.to_thread(_line, p)) for p in loads]
            seconds = time.perf_counter() - t0
            cpu1, busy1 = _cpu_by_process(roots), _busy_s()
            threads1 = _threads_cpu_s(roots["riskd"])
            for p in loads:
                await asyncio.to_thread(p.wait, 60)
        finally:
            for p in loads:
                if p.poll() is None:
                    p.kill()
            for n in nodes:
                assert n.process is not None
                n.process.terminate()
                await asyncio.to_thread(n.process.wait, 60)
        total = sum(int(o["updates"]) for o in outs)
        if total != 2 * updates or any(o["rejections"] for o in outs):
            raise RuntimeError(f"the load was not all applied: {outs}")
        spent = dict.fromkeys([*roots, "other"], 0.0) | _spent(cpu0, cpu1)
        # Busy time no listed or still-running process accounts for (short-lived
        # processes of other work, interrupts).
        spent["unattributed"] = max((busy1 - busy0) - sum(spent.values()), 0.0)
        return {
            "nodes": label,
            "client": client,
            "rep": rep,
            "pinned": pin,
            "updates_per_s": round(total / seconds),
            "seconds": round(seconds, 2),
            # Cores each group used on average over the run, and its CPU per update.
            "cores": {g: round(v / seconds, 2) for g, v in spent.items()},
            "cpu_us_per_update": {g: round(v / total * 1e6, 1) for g, v in spent.items()},
            "machine_busy_cores": round((busy1 - busy0) / seconds, 2),
            # riskd's CPU per update by thread: the busiest one bounds a node's rate
            # when cores are plenty (each node: one trio thread runs its engine).
            "riskd_thread_cpu_us_per_update": {
                k: round((v - threads0.get(k, 0.0)) / total * 1e6, 2)
                for k, v in sorted(threads1.items(), key=lambda kv: -kv[1])
                if v - threads0.get(k, 0.0) > 0
            },
            "client_cpu_s_own_count": [round(float(o["cpu_s"]), 2) for o in outs],
        }

    for rep in range(reps):
        for client in ("pre_encoded", "helper"):
            # Alternate which goes first: a burst of other work hits both alike.
            order = ("one_node", "two_nodes") if rep % 2 == 0 else ("two_nodes", "one_node")
            for label in order:
                cells.append(await cell(label, client, rep))
                _partial({"two_assets_cell": cells[-1]})

    def ratios(client: str) -> list[float]:
        out = []
        for rep in range(reps):
            r = {c["nodes"]: c["updates_per_s"] for c in cells
                 if c["client"] == client and c["rep"] == rep}  # fmt: skip
            out.append(round(r["two_nodes"] / r["one_node"], 2))
        return out

    def median_of(client: str, nodes: str, key: str, group: str) -> float:
        return statistics.median(
            c[key][group] for c in cells if c["client"] == client and c["nodes"] == nodes
        )

    summary = {}
    for client in ("pre_encoded", "helper"):
        rs = ratios(client)
        summary[client] = {
            "ratio_two_over_one": rs,
            "median": statistics.median(rs),
            # What riskd costs per update (the same in both set-ups: no work is added
            # by splitting) and how many cores it got: the ratio follows the cores.
            "riskd_cpu_us_per_update": {
                n: median_of(client, n, "cpu_us_per_update", "riskd")
                for n in ("one_node", "two_nodes")
            },
            "riskd_cores": {
                n: median_of(client, n, "cores", "riskd") for n in ("one_node", "two_nodes")
            },
            "load_client_cpu_us_per_update": median_of(
                client, "two_nodes", "cpu_us_per_update", "load_clients"
            ),
        }
    return {"updates_per_gateway": updates, "cpus": os.cpu_count(), "summary": summary,
            "cells": cells}  # fmt: skip


def _partial(out: dict[str, Any]) -> None:
    """What is measured so far, on stderr: a later part failing loses nothing."""
    print(json.dumps(out), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    # One event loop for every grpc.aio call: its poller outlives a closed loop.
    return asyncio.run(amain(argv))


async def amain(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failover")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--fencing", type=int, default=20)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--ingest-updates", type=int, default=100_000)
    parser.add_argument("--scale-updates", type=int, default=100_000)
    parser.add_argument(
        "--scale-reps",
        type=int,
        default=2,
        help="repetitions of the two-asset cells (one node, two nodes; each client kind)",
    )
    parser.add_argument(
        "--scale-pin",
        action="store_true",
        help="run each riskd node of the two-asset cells on a core of its own (taskset):"
        " the one node on core 0, the two nodes on cores 0 and 1",
    )
    parser.add_argument(
        "--snapshot-seconds",
        type=float,
        default=1.0,
        help="the cluster nodes' snapshot interval: what a takeover replays is at most this"
        " much of the journal; shorter than an owner lives between kills (a few seconds)"
        " (default 1)",
    )
    parser.add_argument(
        "--frontend",
        action="store_true",
        help="the cluster nodes run the ingest front end (--frontend-listen); the failover"
        " load streams to it",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    services = _services()
    out: dict[str, Any] = {
        "ttl_s": args.ttl,
        "snapshot_seconds": args.snapshot_seconds,
        "frontend": args.frontend,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="riskd-failover-") as tmp:
        base = Path(tmp)
        os.chmod(base, 0o755)
        with services.postgres(base / "pg") as pg, services.etcd_cluster(base / "etcd") as etcd:
            from riskd.config import default_toml

            config = base / "riskd-cluster.toml"
            config.write_text(
                default_toml().replace(
                    "snapshot_seconds = 300", f"snapshot_seconds = {args.snapshot_seconds}"
                )
            )
            cluster = ["--config", str(config), "--storage", pg.dsn,
                       "--etcd", ",".join(etcd.endpoints),
                       "--lease-ttl", str(args.ttl)]  # fmt: skip
            nodes = [
                Node(
                    base,
                    name,
                    cluster,
                    services.free_port(),
                    services.free_port() if args.frontend else 0,
                )
                for name in ("a", "b")
            ]
            try:
                nodes[0].start()
                _wait(lambda: _serving(nodes[0]), "node a serving")
                nodes[1].start()
                _wait(lambda: nodes[1].count("riskd_standby") > 0, "node b standing by")
                if args.kills:
                    f = await _failover(nodes, args.kills)
                    owner = next(n for n in nodes if _serving(n))
                    got = digest(owner.address)
                    ref = Node(base, "reference", [], services.free_port())
                    ref.start()
                    _wait(lambda: ref.count("riskd_serving") > 0, "the reference node")
                    fed = await _feed(ref.address, f["sent"])
                    want = digest(ref.address)
                    assert ref.process is not None
                    ref.process.terminate()
                    ref.process.wait(60)
                    stalls = f["stalls"]
                    out["failover"] = {
                        "kills": len(stalls),
                        "serve_again_s": {
                            "median": round(statistics.median(stalls), 2),
                            "max": round(max(stalls), 2),
                            "all": [round(s, 2) for s in stalls],
                        },
                        "new_owner_serving_s": {
                            "median": round(statistics.median(f["serving_after"]), 2),
                            "max": round(max(f["serving_after"]), 2),
                        },
                        # riskd_owner -> riskd_recovered -> riskd_serving (the
                        # ports bound, the front end started), medians.
                        "owner_to_recovered_s": round(statistics.median(f["recovering"]), 3),
                        "recovered_to_serving_s": round(statistics.median(f["starting"]), 3),
                        "takeover_replayed_records": {
                            "median": statistics.median(f["replayed"]),
                            "max": max(f["replayed"]),
                            "journal_at_last_takeover": f["restored"][-1] + f["replayed"][-1],
                        },
                        "target_s": args.ttl + 3,
                        "updates_acked": f["final_acked"],
                        "updates_sent": len(f["sent"]),
                        "acked_lost": 0 if f["final_acked"] == len(f["sent"]) == fed else "?",
                        "digest_equal_to_a_run_that_never_failed": got == want,
                        "redirects": f["redirects"],
                        "silent_node_give_ups": f["stalls_detected"],
                        "rejections": f["rejections"],
                    }
                    _partial(out)
                if args.fencing:
                    out["fencing"] = await _fencing(nodes, args.fencing, pg.dsn)
                    _partial(out)
            except Exception:
                for n in nodes:  # what the nodes said, for the failure's reader
                    tail = n.log.read_text().splitlines()[-15:]
                    print(f"--- node {n.name}:", *tail, sep="\n", file=sys.stderr)
                raise
            finally:
                for n in nodes:
                    if n.process is not None and n.process.poll() is None:
                        n.process.kill()
                        n.process.wait()
            if args.ingest_updates:
                rates = {}
                for name, extra in (
                    ("sqlite", []),
                    ("postgresql", ["--storage", pg.dsn, "--shard", "bench-ingest"]),
                ):
                    node = Node(base, f"ingest-{name}", extra, services.free_port())
                    node.start()
                    _wait(lambda n=node: n.count("riskd_serving") > 0, f"{name} node")
                    rates[name] = round(await _ingest(node, args.ingest_updates))
                    assert node.process is not None
                    node.process.terminate()
                    node.process.wait(60)
                out["ingest_updates_per_s"] = rates
                out["postgresql_over_sqlite"] = round(rates["postgresql"] / rates["sqlite"], 2)
            if args.scale_updates:
                out["two_assets"] = await _scale(
                    base,
                    pg,
                    [p.pid for p in etcd.processes],
                    services.free_port,
                    args.scale_updates,
                    args.scale_reps,
                    args.scale_pin,
                )
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
