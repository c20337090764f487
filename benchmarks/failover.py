"""Clustered riskd under kill -9 and SIGSTOP: time to serve again, nothing lost or twice.

``python -m benchmarks.failover [--kills 20] [--fencing 20] [--ttl 2] [--snapshot-seconds 1]
[--json PATH]``

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
  after it (``takeover_replayed_records``).
* **Fencing** (``--fencing``): SIGSTOP the owner; once the standby owns the
  shard (a higher epoch), SIGCONT the old owner: it must exit 4 having added no
  journal row under its epoch after the takeover.
* **Ingest**: deposits/s through one node with the journal in PostgreSQL and
  with the SQLite journal (same client, batches of 256).
* **Two assets** (``--scale-updates``): two gateways, one per settlement asset,
  against one node serving both and against two nodes (one shard each), all
  journaling to PostgreSQL.

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

from benchmarks.harness import log_records
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
    def __init__(self, base: Path, name: str, extra: list[str], port: int) -> None:
        self.name = name
        self.address = f"127.0.0.1:{port}"
        self.log = base / f"{name}.log"
        self.data = base / name
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self._from = 0  # where this process's lines begin in the shared log

    def start(self) -> None:
        self._from = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "riskd.cli", "serve", "--grpc-listen", self.address,
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
    load = Load([n.address for n in nodes])
    task = asyncio.create_task(load.run())
    stalls: list[float] = []
    serving_after: list[float] = []  # kill -> the new owner's riskd_serving line
    lost_before: list[int] = []
    replayed: list[int] = []  # journal records the new owner replayed after its snapshot
    restored: list[int] = []  # records its snapshot covered
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
        "final_acked": load.gw.acked_sequence,
        "sent": load.sent,
        "redirects": load.gw.redirects,
        "stalls_detected": load.gw.stalls,
        "rejections": len(load.gw.rejections),
    }


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


async def _scale(base: Path, dsn: str, free_port: Any, updates: int) -> dict[str, Any]:
    """Two assets: one node serving both, against two nodes with one each."""

    async def both(targets: list[Node]) -> float:
        t = time.perf_counter()
        await asyncio.gather(
            *(_ingest(n, updates, a) for n, a in zip(targets, ("USDT", "BTC"), strict=True))
        )
        return 2 * updates / (time.perf_counter() - t)

    one = Node(base, "scale-one", ["--storage", dsn, "--shard", "scale-one"], free_port())
    pair = [
        Node(base, f"scale-{a}", ["--config", str(_config_of(a, base)), "--storage", dsn,
                                  "--shard", f"scale-{a}"], free_port())
        for a in ("USDT", "BTC")
    ]  # fmt: skip
    rates = {}
    for label, nodes, targets in (("one_node", [one], [one, one]), ("two_nodes", pair, pair)):
        for n in nodes:
            n.start()
        for n in nodes:
            await asyncio.to_thread(_wait, lambda n=n: n.count("riskd_serving") > 0, n.name)
        rates[label] = round(await both(targets))
        for n in nodes:
            assert n.process is not None
            n.process.terminate()
            await asyncio.to_thread(n.process.wait, 60)
    return {"updates_per_s": rates, "ratio": round(rates["two_nodes"] / rates["one_node"], 2)}


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
        "--snapshot-seconds",
        type=float,
        default=1.0,
        help="the cluster nodes' snapshot interval: what a takeover replays is at most this"
        " much of the journal; shorter than an owner lives between kills (a few seconds)"
        " (default 1)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    services = _services()
    out: dict[str, Any] = {
        "ttl_s": args.ttl,
        "snapshot_seconds": args.snapshot_seconds,
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
            nodes = [Node(base, name, cluster, services.free_port()) for name in ("a", "b")]
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
                    base, pg.dsn, services.free_port, args.scale_updates
                )
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
