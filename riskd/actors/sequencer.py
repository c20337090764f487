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

import contextlib
import dataclasses
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from riskd.actors.actor import Actor
from riskd.actors.fund import FundActor
from riskd.actors.journal import JournalActor, Pending
from riskd.actors.market import MarketActor
from riskd.actors.wallet import WalletActor
from riskd.core import Engine, MarketEngine, MarketSpec, Rejected
from riskd.core.errors import Code
from riskd.core.events import Deposit, FundInjection, Input, Withdrawal
from riskd.core.invariants import digest, violations
from riskd.metrics import Metrics
from riskd.storage import codec, snapshot

__all__ = ["Sequencer", "SequenceError", "BatchResult", "Update"]

T = TypeVar("T")
MAX_REMEMBERED_WITHDRAWALS = 100_000

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
    last: int = 0  # applied
    durable: int = 0  # applied and in the journal: what a reconnecting gateway is told


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
        # Remembered withdrawal ids make retries safe; rebuilt by replay.
        self.withdrawals: OrderedDict[tuple[str, int], tuple[tuple[int, int], int | Rejected]] = (
            OrderedDict()
        )
        #: Where sequenced inputs go before they are acknowledged; None while
        #: replaying (or when running without durability, as some tests do).
        self.journal: JournalActor | None = None

    def acked(self, gateway: str, epoch: int) -> int:
        """The last sequence durably applied for this gateway and epoch (0: none yet)."""
        g = self.gateways.get(gateway)
        return g.durable if g is not None and g.epoch == epoch else 0

    async def flushed(self) -> Pending[None] | None:
        """Released once everything sequenced before it is durable (a stream's end)."""
        return await self._durable(None, None)

    async def _durable(self, record: dict[str, Any] | None, value: T) -> T | Pending[T]:
        """Journal ``record`` (None: nothing new) and release ``value`` once durable."""
        if self.journal is None:
            return value
        return await self.journal.submit(None if record is None else codec.encode(record), value)

    async def ingest(
        self, gateway: str, epoch: int, updates: Sequence[Update]
    ) -> BatchResult | Pending[BatchResult]:
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
            g.epoch, g.last, g.durable = epoch, 0, 0
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
        record = None
        if fresh:
            record = {
                "k": "ingest",
                "g": gateway,
                "e": epoch,
                "u": [[seq, codec.encode_input(u)] for seq, u in fresh],
            }
        children = self._children
        for key, n in outcomes.items():
            child = children.get(key)
            if child is None:
                child = children[key] = self.metrics.updates.labels(*key)
            child.inc(n)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if self.journal is None:
            g.durable = g.last
            return result
        acked = g.last

        def durable() -> None:
            if g.epoch == epoch:
                g.durable = max(g.durable, acked)

        return await self.journal.submit(
            None if record is None else codec.encode(record), result, durable
        )

    async def ingest_or_error(
        self,
        gateway: str,
        epoch: int,
        updates: Sequence[Update],
        received: float | None = None,
        lane: str = "other",
    ) -> BatchResult | Pending[BatchResult] | SequenceError:
        """:meth:`ingest` for the bridge: a sequence error is a result, not a crash.

        ``received`` (``time.perf_counter()`` when the batch was read) measures
        how long it waited for its turn, per ``lane`` (``liquidation_path`` for
        the urgent lane, ``other``).
        """
        if received is not None:
            child = self._children.get(("queue", lane))
            if child is None:
                child = self._children["queue", lane] = self.metrics.queue_seconds.labels(lane)
            child.observe(time.perf_counter() - received)
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

    async def withdraw(self, w: Withdrawal, withdrawal_id: int) -> int | Pending[int]:
        """Approve (new balance) or refuse (Rejected) a withdrawal, once per id.

        The same id with the same request gets the same answer without moving
        money twice; with a different request it is refused.
        """
        key = (w.asset, withdrawal_id)
        seen = self.withdrawals.get(key)
        if seen is not None:
            if seen[0] != (w.account, w.amount):
                raise Rejected.precondition(
                    "withdrawal_id", f"{withdrawal_id} was already used for a different withdrawal"
                )
            if isinstance(seen[1], Rejected):
                raise seen[1]
            return seen[1]
        wallet = self.wallets.get(w.asset)
        if wallet is None:
            raise Rejected.not_found("asset", f"unknown asset {w.asset!r}")
        try:
            outcome: int | Rejected = await wallet.call(wallet.withdraw, w)
        except Rejected as r:
            if r.code is not Code.FAILED_PRECONDITION:
                raise  # bad input: nothing happened, nothing to remember
            outcome = r
        self.withdrawals[key] = ((w.account, w.amount), outcome)
        if len(self.withdrawals) > MAX_REMEMBERED_WITHDRAWALS:
            self.withdrawals.popitem(last=False)
        record = {"k": "withdraw", "id": withdrawal_id, "w": codec.encode_input(w)}
        done = await self._durable(record, outcome)
        if isinstance(outcome, Rejected):
            if isinstance(done, Pending):
                await done.wait()
            raise outcome
        return done  # type: ignore[return-value]

    async def inject(self, i: FundInjection) -> int | Pending[int]:
        fund = self.funds.get(i.asset)
        if fund is None:
            raise Rejected.not_found("asset", f"unknown asset {i.asset!r}")
        balance = await fund.call(fund.inject, i)
        return await self._durable({"k": "inject", "i": codec.encode_input(i)}, balance)

    async def update_spec(
        self, symbol: str, changes: dict[str, Any], ts: int = 0
    ) -> MarketSpec | Pending[MarketSpec]:
        """Change a market's settings (see MarketEngine.update_spec); journaled."""
        market = self.markets.get(symbol)
        if market is None:
            raise Rejected.not_found("market", f"unknown market {symbol!r}")
        spec = await market.call(_update_spec, market.engine, changes, ts)
        record = {"k": "spec", "m": symbol, "c": codec.encode_spec(changes), "t": ts}
        return await self._durable(record, spec)

    async def replay(self, text: str) -> str:
        """Apply one journal record, exactly as when it was first sequenced; its kind."""
        assert self.journal is None, "replay runs before the journal is attached"
        r = codec.decode(text)
        match r["k"]:
            case "ingest":
                updates = [(seq, codec.decode_input(row)) for seq, row in r["u"]]
                await self.ingest(r["g"], r["e"], updates)
            case "withdraw":
                w = codec.decode_input(r["w"])
                assert isinstance(w, Withdrawal)
                with contextlib.suppress(Rejected):
                    await self.withdraw(w, r["id"])
            case "inject":
                i = codec.decode_input(r["i"])
                assert isinstance(i, FundInjection)
                await self.inject(i)
            case "spec":
                await self.update_spec(r["m"], codec.decode_spec(r["c"]), r["t"])
            case kind:
                raise ValueError(f"unknown journal record kind {kind!r}")
        return str(r["k"])

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

    async def snapshot(self, directory: Path) -> tuple[int, int]:
        """Settle everything, wait until the journal holds it, fork a snapshot writer.

        Returns the number of journal records the state covers and the pid
        of the child writing it (:func:`riskd.storage.snapshot.write_in_child`):
        the state is captured at exactly this point, and the sequencer goes on
        as soon as the fork returns.
        """
        await self.barrier(_nothing)
        pending = await self.flushed()
        if isinstance(pending, Pending):
            await pending.wait()
        written = self.journal.written if self.journal is not None else 0
        return written, snapshot.write_in_child(directory, written, self.state())

    def state(self) -> dict[str, Any]:
        return {
            "markets": {s: m.engine for s, m in self.markets.items()},
            "wallets": {a: w.wallets for a, w in self.wallets.items()},
            "funds": {a: f.fund for a, f in self.funds.items()},
            "gateways": self.gateways,
            "withdrawals": self.withdrawals,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Install a snapshot's state into the actors (before anything runs)."""
        for sym, engine in state["markets"].items():
            if sym in self.markets:
                self.markets[sym].engine = engine
        for asset, wallets in state["wallets"].items():
            if asset in self.wallets:
                self.wallets[asset].wallets = wallets
        for asset, fund in state["funds"].items():
            if asset in self.funds:
                self.funds[asset].fund = fund
        self.gateways = state["gateways"]
        self.withdrawals = state["withdrawals"]

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


def _update_spec(engine: MarketEngine, changes: dict[str, Any], ts: int) -> MarketSpec:
    try:
        spec = dataclasses.replace(engine.spec, **changes)
    except (TypeError, ValueError) as e:
        raise Rejected.invalid("market", str(e)) from e
    engine.update_spec(spec, ts)
    return spec
