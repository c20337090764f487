"""The sequencer: the one place every state-changing input gets its turn.

Gateways stream batches concurrently; the sequencer takes them one at a time,
drops what a gateway already sent (its sequence numbers), refuses gaps, splits
each batch into runs of consecutive updates for the same actor and waits for
each run before sending the next.  The result is one total order of inputs,
applied exactly as :meth:`riskd.core.Engine.apply` would apply them in that
order: a restart that replays the same order rebuilds the same state, and a
test can compare the daemon's digest with the pure engine's.

Actors still own their state and run concurrently with queries; what the
sequencer removes is nondeterminism between markets that share a fund.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from riskd.actors.actor import Actor
from riskd.actors.fund import FundActor
from riskd.actors.market import MarketActor
from riskd.actors.wallet import WalletActor
from riskd.core import Engine, Rejected
from riskd.core.errors import Code
from riskd.core.events import Deposit, FundInjection, Input, Withdrawal
from riskd.core.invariants import digest, violations
from riskd.metrics import Metrics

__all__ = ["Sequencer", "SequenceError", "BatchResult", "Update"]

T = TypeVar("T")

#: One decoded update: its gateway sequence number and the input, or why it
#: could not be decoded.
Update = tuple[int, Input | Rejected]


class SequenceError(Exception):
    """A batch out of order for its gateway: the stream must be refused."""

    def __init__(self, code: Code, field: str, message: str, expected: int) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message
        self.expected = expected


@dataclass(slots=True)
class BatchResult:
    acked: int
    rejections: list[tuple[int, Rejected]] = field(default_factory=list)
    duplicates: int = 0


@dataclass(slots=True)
class _Gateway:
    epoch: int = 0
    last: int = 0


class Sequencer(Actor):
    def __init__(
        self,
        markets: dict[str, MarketActor],
        wallets: dict[str, WalletActor],
        funds: dict[str, FundActor],
        metrics: Metrics,
        capacity: int,
    ) -> None:
        super().__init__("sequencer", capacity)
        self.markets = markets
        self.wallets = wallets
        self.funds = funds
        self.metrics = metrics
        self.gateways: dict[str, _Gateway] = {}
        self._children: dict[tuple[str, str], Any] = {}

    def acked(self, gateway: str, epoch: int) -> int:
        """The last sequence applied for this gateway and epoch (0: none yet)."""
        g = self.gateways.get(gateway)
        return g.last if g is not None and g.epoch == epoch else 0

    async def ingest(self, gateway: str, epoch: int, updates: Sequence[Update]) -> BatchResult:
        started = time.perf_counter()
        g = self.gateways.get(gateway)
        if g is None:
            g = self.gateways[gateway] = _Gateway(epoch)
        elif epoch < g.epoch:
            raise SequenceError(
                Code.FAILED_PRECONDITION,
                "epoch",
                f"epoch {epoch} is older than the current epoch {g.epoch}",
                0,
            )
        elif epoch > g.epoch:
            g.epoch, g.last = epoch, 0
        fresh, duplicates = self._fresh(g, updates)
        result = BatchResult(g.last + len(fresh), duplicates=duplicates)
        outcomes: Counter[tuple[str, str]] = Counter()
        if duplicates:
            outcomes[("any", "duplicate")] += duplicates
        for actor, run in self._runs(fresh, result, outcomes):
            done = await actor.call(actor.apply, [u for _, u in run])
            for (seq, u), r in zip(run, done, strict=True):
                kind = type(u).__name__
                if r is None:
                    outcomes[(kind, "applied")] += 1
                else:
                    outcomes[(kind, "rejected")] += 1
                    result.rejections.append((seq, r))
        g.last = result.acked
        result.rejections.sort(key=lambda t: t[0])
        children = self._children
        for key, n in outcomes.items():
            child = children.get(key)
            if child is None:
                child = children[key] = self.metrics.updates.labels(*key)
            child.inc(n)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return result

    async def ingest_or_error(
        self, gateway: str, epoch: int, updates: Sequence[Update]
    ) -> BatchResult | SequenceError:
        """:meth:`ingest` for the bridge: a sequence error is a result, not a crash."""
        try:
            return await self.ingest(gateway, epoch, updates)
        except SequenceError as e:
            return e

    @staticmethod
    def _fresh(g: _Gateway, updates: Sequence[Update]) -> tuple[list[Update], int]:
        """The updates not applied yet; a gap refuses the whole batch."""
        expected = g.last + 1
        fresh: list[Update] = []
        duplicates = 0
        for seq, u in updates:
            if seq < expected and not fresh:
                duplicates += 1
                continue
            if seq != expected:
                raise SequenceError(
                    Code.FAILED_PRECONDITION,
                    "sequence",
                    f"sequence {seq} out of order: expected {expected}",
                    g.last + 1,
                )
            fresh.append((seq, u))
            expected += 1
        return fresh, duplicates

    def _runs(
        self, fresh: list[Update], result: BatchResult, outcomes: Counter[tuple[str, str]]
    ) -> list[tuple[Any, list[tuple[int, Input]]]]:
        """Consecutive updates for the same actor, in order; unroutable ones rejected."""
        runs: list[tuple[Any, list[tuple[int, Input]]]] = []
        for seq, u in fresh:
            try:
                actor = self._owner(u)
            except Rejected as r:
                result.rejections.append((seq, r))
                outcomes[(type(u).__name__, "rejected")] += 1
                continue
            if runs and runs[-1][0] is actor:
                runs[-1][1].append((seq, u))  # type: ignore[arg-type]
            else:
                runs.append((actor, [(seq, u)]))  # type: ignore[list-item]
        return runs

    def _owner(self, u: Input | Rejected) -> MarketActor | WalletActor:
        if isinstance(u, Rejected):
            raise u
        if isinstance(u, Deposit):
            wallet = self.wallets.get(u.asset)
            if wallet is None:
                raise Rejected.not_found("asset", f"unknown asset {u.asset!r}")
            return wallet
        symbol = getattr(u, "market", None)
        market = self.markets.get(symbol) if isinstance(symbol, str) else None
        if market is None:
            raise Rejected.not_found("market", f"unknown market {symbol!r}")
        return market

    # --- unary writes, sequenced like everything else ------------------------

    async def withdraw(self, w: Withdrawal) -> int:
        wallet = self.wallets.get(w.asset)
        if wallet is None:
            raise Rejected.not_found("asset", f"unknown asset {w.asset!r}")
        return await wallet.call(wallet.withdraw, w)

    async def inject(self, i: FundInjection) -> int:
        fund = self.funds.get(i.asset)
        if fund is None:
            raise Rejected.not_found("asset", f"unknown asset {i.asset!r}")
        return await fund.call(fund.inject, i)

    async def on_market(self, symbol: str, fn: Callable[..., T], *args: Any) -> T:
        market = self.markets.get(symbol)
        if market is None:
            raise Rejected.not_found("market", f"unknown market {symbol!r}")
        return await market.call(fn, market.engine, *args)

    async def barrier(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` once everything sequenced so far has fully settled.

        Markets first (their effects flow on to funds and wallets), then funds
        and wallets; nothing new is sequenced meanwhile, so ``fn`` sees one
        consistent state across all actors (digest, invariants, snapshots).
        """
        for m in self.markets.values():
            await m.call(_nothing)
        for a in (*self.funds.values(), *self.wallets.values()):
            await a.call(_nothing)
        return fn()

    def check(self) -> tuple[str, list[str]]:
        """Digest and invariant violations of the whole state (call inside :meth:`barrier`)."""
        engine = self.engine_view()
        return digest(engine), violations(engine)

    def engine_view(self) -> Engine:
        return Engine.view(
            {s: m.engine for s, m in self.markets.items()},
            {a: w.wallets for a, w in self.wallets.items()},
            {a: f.fund for a, f in self.funds.items()},
        )


def _nothing() -> None:
    return None
