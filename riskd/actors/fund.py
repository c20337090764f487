"""The insurance-fund actor of one settlement asset: every fund decision, in order.

Markets send it their fund effects (credits, claims, settlements) in the order
they produced them, as one message per batch; it answers claims with
decisions.  It never sends to a market, so market → fund calls cannot
deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from riskd.actors.actor import Actor
from riskd.core.events import Effect, FundDecision, FundInjection
from riskd.core.insurance_fund import FundEffect, InsuranceFund

__all__ = ["FundActor"]


class FundActor(Actor):
    def __init__(
        self,
        fund: InsuranceFund,
        publish: Callable[[list[Effect]], None],
        capacity: int,
        on_change: Callable[[InsuranceFund], None] | None = None,
    ) -> None:
        super().__init__(f"fund:{fund.asset}", capacity)
        self.fund = fund
        self._publish = publish
        self._on_change = on_change

    def process(self, effects: Sequence[FundEffect]) -> list[FundDecision]:
        decisions = self.fund.process(effects)
        self._flush()
        return decisions

    def inject(self, i: FundInjection) -> int:
        self.fund.inject(i.amount, i.cause, i.ts)
        self._flush()
        return self.fund.balance

    def _flush(self) -> None:
        flows = self.fund.take_flows()
        if flows:
            self._publish(list(flows))
        if self._on_change is not None:
            self._on_change(self.fund)
