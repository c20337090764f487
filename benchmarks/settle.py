"""How long a final settlement with cross positions holds the sequencer.

``n`` cross accounts, each long 0.01 BTC and short 0.1 ETH against one
isolated maker (default config markets), BTC-USDT settled 4 % down: the
pure :class:`~riskd.core.Engine` and the daemon's actors (real
:class:`~riskd.daemon.Daemon` actors, an in-memory journal, no gRPC) apply
the same ``SettleMarket``; both times are printed, measured in one run.
Not part of ``make bench`` (a rare admin operation); run
``python -m benchmarks.settle --n 10000``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import trio

from riskd.actors.journal import Durable
from riskd.config import default_toml, parse
from riskd.core import Engine
from riskd.core.events import (
    Deposit,
    Fill,
    Input,
    MarginTransfer,
    MarkPrice,
    SetMarginMode,
    SettleMarket,
)
from riskd.core.invariants import digest
from riskd.daemon import Daemon
from riskd.metrics import Metrics

B, E = "BTC-USDT", "ETH-USDT"
MAKER = 10**9
T = 1_700_000_000_000


class _Memory:
    """A journal durable at once (the settlement's cost, not the disk's)."""

    written = 0

    async def submit(self, record: str | None, value: Any, on_durable: Any = None) -> Durable[Any]:
        if on_durable is not None:
            on_durable()
        return Durable.ready(value)

    async def submit_many(self, items: list[tuple[str | None, Any, Any]]) -> list[Durable[Any]]:
        return [await self.submit(*item) for item in items]


def book(n: int) -> list[Input]:
    out: list[Input] = [
        Deposit(MAKER, "USDT", 10**15, T),
        MarginTransfer(MAKER, B, 10**14, T),
        MarginTransfer(MAKER, E, 10**14, T),
        MarkPrice(B, 5_000_000, T),
        MarkPrice(E, 300_000, T),
    ]
    for a in range(1, n + 1):
        out += [
            Deposit(a, "USDT", 1_000 * 10**6, T),
            SetMarginMode(B, a, True, T),
            SetMarginMode(E, a, True, T),
            Fill(B, 2 * a, a, MAKER, 5_000_000, 10, 0, 0, T),
            Fill(E, 2 * a + 1, MAKER, a, 300_000, 100, 0, 0, T),
        ]
    return out


async def _daemon(inputs: list[Input], settle: SettleMarket) -> tuple[float, str]:
    d = Daemon(parse(default_toml()), Metrics())
    async with trio.open_nursery() as nursery:
        for actor in d.actors():
            await nursery.start(actor.run)
        s = d.sequencer
        s.journal = _Memory()  # type: ignore[assignment]
        for i in range(0, len(inputs), 500):
            chunk = list(enumerate(inputs[i : i + 500], i + 1))
            await (await s.ingest("bench", 1, chunk)).wait()
        started = time.perf_counter()
        await (await s.admin_input(settle)).wait()
        took = time.perf_counter() - started
        state = (await s.barrier(s.check))[0]
        nursery.cancel_scope.cancel()
    return took, state


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.settle")
    p.add_argument("--n", type=int, default=10_000, help="cross accounts (default 10000)")
    args = p.parse_args(argv)
    inputs, settle = book(args.n), SettleMarket(B, 4_800_000, T + 1)
    engine = Engine(parse(default_toml()).markets)
    for x in inputs:
        engine.apply(x)
    started = time.perf_counter()
    engine.apply(settle)
    pure = time.perf_counter() - started
    actors, state = trio.run(_daemon, inputs, settle)
    assert state == digest(engine), "the actors and the pure engine disagree"
    print(
        f"settle {args.n} cross accounts: engine {pure:.3f} s, actors {actors:.3f} s"
        f" ({actors / pure:.1f}x, {actors / args.n * 1e3:.3f} ms per account)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
