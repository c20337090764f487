"""Where riskd's CPU per ingested update goes, stage by stage, in one process.

``python -m benchmarks.ingest_stages [--batch 256] [--messages 200] [--checks]``
takes ``benchmarks.ingest``'s workload (after its set-up stream; ``--checks``:
``benchmarks.gate``'s accepted ``check_order`` updates instead) and times each
stage an ingest message passes through outside the transport, on the
daemon's own code in one thread, timed by that thread's CPU clock
(``time.thread_time``: on a shared machine, wall time also counts other
processes' turns, which once made the core's share look 3.6× its cost):

* ``parse``: ``IngestRequest.FromString`` (grpc.aio does it before the handler);
* ``check+decode``: the stream reader's checks and decoding into core inputs
  (``IngestServicer._checked``);
* ``sequencer turn``: ``Sequencer.ingest_group`` of the message with the
  daemon's actors running in trio and an in-memory journal: sequencing, the
  market actor, the core, the journal record's encoding, the metrics;
* ``core``: the same inputs through a twin ``riskd.core.Engine.apply`` (the
  engine's own share of the turn); ``turn less core``: the median of the two's
  difference per message (the machine's load moves both alike);
* ``journal encode``: ``codec.encode`` of the message's record alone (inside
  the turn);
* ``journal append``: ``SqliteJournal.append`` of that record (fsync waits
  excluded: the clock is the thread's CPU);
* ``ack``: the response built from the batch's result.

What it leaves out: the transport (what the bare server of
``benchmarks.ingest`` measures), the hops between the gRPC thread, trio and
the journal's thread, and waiting for the GIL.  Medians per message, then
per update.  Not part of ``make bench`` (no target; a profile, not a figure).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from benchmarks import ingest as bench


def _percall(samples: list[float], batch: int) -> tuple[float, float]:
    med = statistics.median(samples)
    return med * 1e6, med * 1e6 / batch


async def _run(batch: int, messages: int, checks: bool) -> dict[str, tuple[float, float]]:
    from riskd.access import Grant, Role
    from riskd.actors.journal import Durable
    from riskd.api.ingest import IngestServicer, _response
    from riskd.config import default_toml, parse
    from riskd.core import Engine, Rejected
    from riskd.daemon import Daemon
    from riskd.metrics import Metrics
    from riskd.storage import codec
    from riskd.storage.journal import SqliteJournal
    from riskd.storage.records import IngestBatch
    from riskd.v1 import ingest_pb2

    cfg = parse(default_toml())
    daemon = Daemon(cfg, Metrics())
    seq = daemon.sequencer
    twin = Engine(cfg.markets, cfg.funds)
    grant = Grant("bench", frozenset({Role.GATEWAY}))
    servicer = IngestServicer.__new__(IngestServicer)  # only its decoding is used
    servicer.max_ahead_ms = int(cfg.server.max_clock_skew_seconds * 1000)
    servicer.max_age_ms = int(cfg.server.max_update_age_seconds * 1000)
    servicer.require_mark_ts = cfg.server.require_mark_timestamps

    class Memory:
        written = 0

        async def submit_many(self, items: list[tuple[Any, Any, Any]]) -> list[Durable[Any]]:
            out = []
            for _record, value, on_durable in items:
                if on_durable is not None:
                    on_durable()
                out.append(Durable.ready(value))
            return out

    def check(request: Any) -> Any:
        # Before the reader's checks were one pass (``_checked``): its two passes.
        if hasattr(servicer, "_checked"):
            return servicer._checked(request, grant)[0]
        assert not any(u.sequence == 0 for u in request.updates)
        return servicer._decode(request, grant)[0]

    seq.journal = Memory()  # type: ignore[assignment]
    tmp = Path(tempfile.mkdtemp(prefix="riskd-stages-"))
    journal = SqliteJournal(tmp / "journal.sqlite3")
    Parse = ingest_pb2.IngestRequest.FromString
    clock = time.thread_time
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "parse",
            "check+decode",
            "sequencer turn",
            "core",
            "turn less core",
            "journal encode",
            "journal append",
            "ack",
        )
    }
    async with trio.open_nursery() as nursery:
        for actor in daemon.actors():
            await nursery.start(actor.run)

        async def feed(gateway: str, raw: bytes, timed: bool) -> None:
            t0 = clock()
            request = Parse(raw)
            t1 = clock()
            updates = check(request)
            t2 = clock()
            (done,) = await seq.ingest_group([(gateway, 1, updates, None, "other")])
            t3 = clock()
            for _s, x in updates:
                if not isinstance(x, Rejected):
                    with contextlib.suppress(Rejected):
                        twin.apply(x)
            t4 = clock()
            record = codec.encode(IngestBatch(gateway, 1, tuple(updates), 0))
            t5 = clock()
            c0 = clock()
            journal.append([record])
            c1 = clock()
            t6 = clock()
            result = done.value
            assert not isinstance(result, BaseException), result
            assert not result.rejections, result.rejections[:3]
            _response(request, result)
            t7 = clock()
            if timed:
                rows["parse"].append(t1 - t0)
                rows["check+decode"].append(t2 - t1)
                rows["sequencer turn"].append(t3 - t2)
                rows["core"].append(t4 - t3)
                rows["turn less core"].append((t3 - t2) - (t4 - t3))
                rows["journal encode"].append(t5 - t4)
                rows["journal append"].append(c1 - c0)
                rows["ack"].append(t7 - t6)

        for raw in bench.build_setup():
            await feed("setup", raw, False)
        if checks:
            from benchmarks.gate import build_checks

            workload = build_checks(batch, batch * messages)
        else:
            workload = bench.build_workload(batch, batch * messages)
        for raw in workload:
            await feed("measured", raw, True)
        nursery.cancel_scope.cancel()
    journal.close()
    return {k: _percall(v, batch) for k, v in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ingest_stages")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--checks", action="store_true", help="benchmarks.gate's check_order updates")
    ns = p.parse_args()
    out = trio.run(_run, ns.batch, ns.messages, ns.checks)
    what = "check_order updates" if ns.checks else "updates"
    print(f"stages at {ns.batch} {what} per message, median of {ns.messages} messages")
    print(f"  {'stage':<16} {'µs/msg':>10} {'µs/update':>10}")
    for k, (per_msg, per_update) in out.items():
        print(f"  {k:<16} {per_msg:10.1f} {per_update:10.2f}")


if __name__ == "__main__":
    main()
