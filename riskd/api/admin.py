"""Operator actions: change a market's risk settings, set it reduce-only, seed a fund.

Every change is sequenced with the gateway updates, so it takes effect
between two inputs and is logged as one line.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from riskd.actors.sequencer import Sequencer
from riskd.api import convert
from riskd.api.bridge import Portal
from riskd.api.status import abort, abort_rejected
from riskd.core import Rejected, TierTable
from riskd.core.events import FundInjection
from riskd.v1 import admin_pb2, admin_pb2_grpc, types_pb2

__all__ = ["AdminServicer"]

Ctx = grpc.aio.ServicerContext[object, object]
log = structlog.get_logger("riskd.admin")


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, portal: Portal, sequencer: Sequencer) -> None:
        self.portal = portal
        self.sequencer = sequencer

    async def UpdateMarket(
        self, request: admin_pb2.UpdateMarketRequest, context: Ctx
    ) -> admin_pb2.UpdateMarketResponse:
        m = request.market
        try:
            changes = _changes(m)
            spec = await self.portal.run(
                self.sequencer.call, self.sequencer.update_spec, m.symbol, changes
            )
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("market_updated", market=m.symbol)
        return admin_pb2.UpdateMarketResponse(market=convert.market(spec, None))

    async def SetReduceOnly(
        self, request: admin_pb2.SetReduceOnlyRequest, context: Ctx
    ) -> admin_pb2.SetReduceOnlyResponse:
        try:
            await self.portal.run(
                self.sequencer.call,
                self.sequencer.update_spec,
                request.market,
                {"reduce_only": request.reduce_only},
            )
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("market_reduce_only", market=request.market, reduce_only=request.reduce_only)
        return admin_pb2.SetReduceOnlyResponse()

    async def InjectFund(
        self, request: admin_pb2.InjectFundRequest, context: Ctx
    ) -> admin_pb2.InjectFundResponse:
        if request.amount <= 0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "amount", "must be > 0")
        i = FundInjection(request.asset, request.amount, request.cause or "seed")
        try:
            balance = await self.portal.run(self.sequencer.call, self.sequencer.inject, i)
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("fund_injected", asset=request.asset, amount=request.amount, cause=i.cause)
        return admin_pb2.InjectFundResponse(balance_after=balance)

    async def CheckState(
        self, request: admin_pb2.CheckStateRequest, context: Ctx
    ) -> admin_pb2.CheckStateResponse:
        digest, violations = await self.portal.run(
            self.sequencer.call, self.sequencer.barrier, self.sequencer.check
        )
        if violations:
            # The texts may name accounts: they go to the admin caller, not the log.
            log.error("invariants_violated", count=len(violations), digest=digest)
        return admin_pb2.CheckStateResponse(digest=digest, violations=violations)


def _changes(m: types_pb2.Market) -> dict[str, Any]:
    """The changeable fields of a wire Market (zero/empty = keep), validated."""
    changes: dict[str, Any] = {}
    if m.tiers:
        try:
            changes["tiers"] = TierTable(
                (t.notional_floor, t.max_leverage, t.maintenance_margin_rate_ppm) for t in m.tiers
            )
        except ValueError as e:
            raise Rejected.invalid("market.tiers", str(e)) from e
    for name in ("tick_size", "step_size", "liquidation_fee_cap_ppm", "fund_fee_share_ppm"):
        value = getattr(m, name)
        if value:
            changes[name] = value
    if m.fund_loss_cap:
        changes["fund_loss_cap"] = m.fund_loss_cap
    if m.liquidation_mode:
        if m.liquidation_mode not in convert.MODE_FROM_WIRE:
            raise Rejected.invalid("market.liquidation_mode", f"unknown value {m.liquidation_mode}")
        changes["liquidation_mode"] = convert.MODE_FROM_WIRE[m.liquidation_mode]
    if m.adl_policy:
        if m.adl_policy not in convert.ADL_FROM_WIRE:
            raise Rejected.invalid("market.adl_policy", f"unknown value {m.adl_policy}")
        changes["adl_policy"] = convert.ADL_FROM_WIRE[m.adl_policy]
    changes["reduce_only"] = m.reduce_only
    return changes
