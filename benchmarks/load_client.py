"""One gateway's deposit load, as its own process, cheap enough to leave the cores to riskd.

``python -m benchmarks.load_client TARGET GATEWAY ASSET UPDATES [--batch 256] [--window 16]
[--helper]``

Used by ``benchmarks/failover.py --scale-updates`` (two of these at once, one
per settlement asset), where the clients share the cores with the riskd nodes
and PostgreSQL, so what the client spends is taken from what is measured.

* default (**pre-encoded**): every ``IngestRequest`` (``UPDATES`` deposits in
  batches of ``--batch``, sequences from 1 in a fresh epoch) is serialized
  before the timing starts and written as bytes through a generic
  ``stream_stream`` call (no request serializer); the client only writes, keeps
  at most ``--window`` batches unacknowledged and reads the acks.
* ``--helper``: the Python gateway helper (``riskd_client.gateway.Gateway``)
  builds, numbers and serializes each update as a gateway would.

Protocol with the caller: prints ``{"event": "ready"}`` once connected (the
first response read) and everything encoded, waits for a line on stdin, then
streams; prints one JSON line at the end: ``updates``, ``seconds`` (from the
line to the last acknowledgement), ``cpu_s`` (this process's CPU meanwhile),
``rejections``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

METHOD = "/riskd.v1.IngestService/Ingest"


def encode(asset: str, updates: int, batch: int) -> list[bytes]:
    """Deposits ``1 + i % 9`` into accounts ``1 + i % 100`` (what the helper load sends)."""
    from riskd.v1 import ingest_pb2 as pb

    out = []
    for start in range(0, updates, batch):
        msg = pb.IngestRequest(epoch=0)
        for i in range(start, min(start + batch, updates)):
            msg.updates.append(
                pb.Update(
                    sequence=i + 1,
                    deposit=pb.Deposit(account=1 + i % 100, asset=asset, amount=1 + i % 9),
                )
            )
        out.append(msg.SerializeToString())
    return out


def _ready() -> None:
    print(json.dumps({"event": "ready"}), flush=True)


async def _go() -> None:
    await asyncio.to_thread(sys.stdin.readline)


async def pre_encoded(ns: argparse.Namespace) -> dict[str, Any]:
    import grpc

    from riskd.v1 import ingest_pb2

    msgs = encode(ns.asset, ns.updates, ns.batch)
    async with grpc.aio.insecure_channel(ns.target) as channel:
        call: Any = channel.stream_stream(
            METHOD,
            request_serializer=None,  # the messages are bytes already
            response_deserializer=ingest_pb2.IngestResponse.FromString,
        )(metadata=(("x-riskd-gateway", ns.gateway), ("x-riskd-epoch", "0")))
        first = await call.read()
        if first is grpc.aio.EOF or first.acked_sequence != 0:
            raise RuntimeError(f"bad first response {first!r}: the gateway id must be fresh")
        _ready()
        await _go()
        t, cpu = time.perf_counter(), time.process_time()
        credits = asyncio.Semaphore(ns.window)

        async def writer() -> None:
            for m in msgs:
                await credits.acquire()
                await call.write(m)

        task = asyncio.create_task(writer())
        acked = rejections = batches = 0
        while acked < ns.updates:
            r = await call.read()
            if r is grpc.aio.EOF:
                raise RuntimeError(f"stream ended at {acked}: {await call.code()}")
            rejections += len(r.rejections)
            # Acks are cumulative: one may cover several batches.
            done = min(-(-r.acked_sequence // ns.batch), len(msgs))
            for _ in range(done - batches):
                credits.release()
            batches, acked = done, r.acked_sequence
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        await task
        await call.done_writing()
    return {"updates": acked, "seconds": seconds, "cpu_s": cpu, "rejections": rejections}


async def helper(ns: argparse.Namespace) -> dict[str, Any]:
    from riskd_client.gateway import Gateway

    async with Gateway(ns.target, ns.gateway, batch_size=ns.batch, window=ns.window) as gw:
        await gw.wait_connected()
        _ready()
        await _go()
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(ns.updates):
            gw.deposit(1 + i % 100, ns.asset, 1 + i % 9)
            if i % ns.batch == ns.batch - 1:
                await gw.wait_for_window()
        await gw.flush(timeout=300)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
        return {
            "updates": gw.acked_sequence,
            "seconds": seconds,
            "cpu_s": cpu,
            "rejections": len(gw.rejections),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_client")
    parser.add_argument("target")
    parser.add_argument("gateway", help="a fresh gateway id (at most 32 characters)")
    parser.add_argument("asset")
    parser.add_argument("updates", type=int)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--helper", action="store_true", help="the Python gateway helper")
    ns = parser.parse_args(argv)
    out = asyncio.run(helper(ns) if ns.helper else pre_encoded(ns))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
