"""What a front-end process would save the engine process per update (issue 17, "the second core").

A design that decodes and checks gateway updates in a front-end process hands
the engine process something it still has to turn into core inputs.  This
measures, in one process and interleaved, per update of a 256-fill message:

* ``decode``: what the engine process does today, ``IngestRequest.FromString``
  and :func:`riskd.api.convert.decode_update` per update;
* ``unpickle``: ``pickle.loads`` of the decoded ``(sequence, Fill)`` list (a
  front end that pickles what it decoded);
* ``unmarshal``: ``marshal.loads`` of plain tuples and ``Fill(*t)`` per update
  (the cheapest hand-off that still yields core inputs);
* ``construct``: ``Fill(*t)`` alone, from tuples already in memory: the floor
  of any hand-off, and most of ``decode`` itself;

and prints each as a fraction of ``decode``: the share of the decoding the
engine process would be spared.  Not part of ``make bench``:
``python -m benchmarks.handoff``.
"""

from __future__ import annotations

import argparse
import json
import marshal
import pickle
import statistics
import timeit
from collections.abc import Callable, Sequence

from riskd.api import convert
from riskd.core.events import Fill
from riskd.v1 import ingest_pb2

__all__ = ["measure"]


def _request(n: int) -> ingest_pb2.IngestRequest:
    return ingest_pb2.IngestRequest(
        updates=[
            ingest_pb2.Update(
                sequence=i + 1,
                timestamp_ms=1_765_000_000_000,
                fill=ingest_pb2.Fill(
                    market="BTC-USDT",
                    trade_id=i + 1,
                    buyer_account=1 + i % 1000,
                    seller_account=2 + i % 997,
                    price=5_000_000 + 10 * (i % 50),
                    quantity=1 + i % 10,
                ),
            )
            for i in range(n)
        ]
    )


def measure(n: int = 256, reps: int = 7) -> dict[str, float]:
    """Median µs per update of each way, and each as a fraction of ``decode``."""
    raw = _request(n).SerializeToString()

    def decode() -> object:
        r = ingest_pb2.IngestRequest.FromString(raw)
        return [(u.sequence, convert.decode_update(u, i)) for i, u in enumerate(r.updates)]

    decoded = decode()
    pickled = pickle.dumps(decoded, protocol=pickle.HIGHEST_PROTOCOL)
    rows = [
        (s, x.market, x.trade_id, x.buyer, x.seller, x.price, x.quantity, x.buyer_fee,
         x.seller_fee, x.ts)
        for s, x in decoded  # type: ignore[attr-defined]
    ]  # fmt: skip
    marshalled = marshal.dumps(rows)

    def unpickle() -> object:
        return pickle.loads(pickled)

    def unmarshal() -> object:
        return [(t[0], Fill(*t[1:])) for t in marshal.loads(marshalled)]

    def construct() -> object:
        return [(t[0], Fill(*t[1:])) for t in rows]

    ways: dict[str, Callable[[], object]] = {
        "decode": decode,
        "unpickle": unpickle,
        "unmarshal": unmarshal,
        "construct": construct,
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):  # interleaved: drift hits every way alike
        for name, fn in ways.items():
            best = min(timeit.repeat(fn, number=20, repeat=3)) / 20
            times[name].append(best / n * 1e6)
    out = {f"{k}_us_per_update": statistics.median(v) for k, v in times.items()}
    for k in ("unpickle", "unmarshal", "construct"):
        out[f"{k}_vs_decode"] = out[f"{k}_us_per_update"] / out["decode_us_per_update"]
    out["bytes_per_update_protobuf"] = len(raw) / n
    out["bytes_per_update_pickle"] = len(pickled) / n
    out["bytes_per_update_marshal"] = len(marshalled) / n
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.handoff")
    p.add_argument("--updates", type=int, default=256)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args(argv)
    r = measure(a.updates, a.reps)
    print(
        f"per update of a {a.updates}-fill message: decode {r['decode_us_per_update']:.2f} µs;"
        f" a front end's hand-off still costs the engine process"
        f" {r['unpickle_us_per_update']:.2f} µs unpickled"
        f" ({r['unpickle_vs_decode']:.2f} of decode),"
        f" {r['unmarshal_us_per_update']:.2f} µs as marshalled tuples"
        f" ({r['unmarshal_vs_decode']:.2f}); of which building the core's Fill from"
        f" its values {r['construct_us_per_update']:.2f} µs ({r['construct_vs_decode']:.2f})"
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
