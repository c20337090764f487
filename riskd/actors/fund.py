"""The insurance-fund actor of one settlement asset: every fund decision, in order.

Markets send it their fund effects (credits, claims, settlements) in the order
they produced them, as one message per batch; it answers claims with
decisions.  It never sends to a market, so market → fund calls cannot
deadlock.

Its fund keeps only the newest ``ledger_memory`` ledger entries in memory;
every entry goes to the ledger writer (:mod:`riskd.storage.ledger`) as it is
booked.  Without a writer (the snapshot writer process, some tests) entries
beyond the newest are simply dropped from memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from riskd.actors.actor import Actor
from riskd.core import KINDS, Effect, FundDecision, FundEffect, FundInjection, InsuranceFund
from riskd.storage import ledger as ledger_store

__all__ = ["FundActor"]


class FundActor(Actor):
    def __init__(
        self,
        fund: InsuranceFund,
        publish: Callable[[list[Effect]], None],
        capacity: int,
        on_change: Callable[[InsuranceFund], None] | None = None,
        *,
        writer: ledger_store.LedgerWriter | None = None,
        ledger_memory: int = ledger_store.DEFAULT_MEMORY,
    ) -> None:
        super().__init__(f"fund:{fund.asset}", capacity)
        self.fund = fund
        self.writer = writer
        self.ledger_memory = ledger_memory
        self._publish = publish
        self._on_change = on_change
        ledger_store.bound(self, ledger_memory)

    def adopt(self, fund: InsuranceFund) -> None:
        """Take over a fund restored from a snapshot (before anything runs)."""
        self.fund = fund
        ledger_store.bound(self, self.ledger_memory)

    @property
    def ledger_path(self) -> str | None:
        """Where older entries are read from (None: nowhere, memory only)."""
        return None if self.writer is None else str(self.writer.path)

    async def process(self, effects: Sequence[FundEffect]) -> list[FundDecision]:
        decisions = self.fund.process(effects)
        await self._flush()
        return decisions

    async def inject(self, i: FundInjection) -> int:
        on_fund = KINDS[FundInjection].on_fund
        assert on_fund is not None
        on_fund(self.fund, i)
        await self._flush()
        return self.fund.balance

    async def _flush(self) -> None:
        flows = self.fund.take_flows()
        if flows:
            self._publish(list(flows))
        if self._on_change is not None:
            self._on_change(self.fund)
        entries = self.fund.ledger.take_unsaved()
        if entries and self.writer is not None:
            await self.writer.submit(self.fund.asset, entries)
