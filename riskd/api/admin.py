"""Operator actions: change a market's risk settings, set it reduce-only, seed a fund.

Every change is sequenced with the gateway updates, so it takes effect
between two inputs and is logged as one line.
"""

from __future__ import annotations

import dataclasses
import enum

import grpc
import structlog
from google.protobuf.descriptor import FieldDescriptor

from riskd.actors.sequencer import Sequencer
from riskd.api import convert
from riskd.api.bridge import Portal
from riskd.api.status import abort, abort_rejected
from riskd.core import MarketEngine, MarketSpec, Rejected, TierTable
from riskd.core.events import FundInjection
from riskd.core.market import enum_settings
from riskd.core.tiers import SpecError
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
            convert.check_symbol(m.symbol, "market.symbol")
            actor = self.sequencer.markets.get(m.symbol)
            if actor is None:
                raise Rejected.not_found("market.symbol", f"unknown market {m.symbol!r}")
            # The fixed fields are checked against the spec in force; the values
            # where the sequencer applies them (a bad one: Rejected naming it).
            current = await self.portal.query(actor, _spec)
            changes = _changes(request, current)
            spec = await self.portal.write(
                self.sequencer, self.sequencer.update_spec, m.symbol, changes
            )
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("market_updated", market=m.symbol, fields=sorted(changes))
        return admin_pb2.UpdateMarketResponse(market=convert.market(spec, None))

    async def SetReduceOnly(
        self, request: admin_pb2.SetReduceOnlyRequest, context: Ctx
    ) -> admin_pb2.SetReduceOnlyResponse:
        try:
            await self.portal.write(
                self.sequencer,
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
            balance = await self.portal.write(self.sequencer, self.sequencer.inject, i)
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("fund_injected", asset=request.asset, amount=request.amount, cause=i.cause)
        return admin_pb2.InjectFundResponse(balance_after=balance)

    async def CheckState(
        self, request: admin_pb2.CheckStateRequest, context: Ctx
    ) -> admin_pb2.CheckStateResponse:
        digest, violations = await self.portal.call(
            self.sequencer, self.sequencer.barrier, self.sequencer.check
        )
        if violations:
            # The texts may name accounts: they go to the admin caller, not the log.
            log.error("invariants_violated", count=len(violations), digest=digest)
        return admin_pb2.CheckStateResponse(digest=digest, violations=violations)


#: What positions are measured in: an UpdateMarket may repeat these, not change them.
_FIXED = ("contract_type", "settle_asset", "price_decimals", "quantity_decimals", "contract_value")
#: Presence-tracked Market fields read another way than "the value is the setting".
_SPECIAL = frozenset({"liquidation_mode", "adl_policy", "fund_loss_cap"})


def _has(m: types_pb2.Market, name: str) -> bool:
    """Whether a presence-tracked field is set (the stubs type only literal names)."""
    return m.HasField(name)  # type: ignore[arg-type]


def _enum(f: FieldDescriptor, value: int, kind: type[enum.Enum]) -> enum.Enum:
    """A wire enum value as the core's: ``PARTIAL_POLICY_TIER_STEP`` is ``"tier_step"``."""
    wire = f.enum_type.values_by_number.get(value) if f.enum_type is not None else None
    for member in kind:
        if wire is not None and wire.name.endswith("_" + str(member.value).upper()):
            return member
    raise Rejected.invalid(f"market.{f.name}", f"unknown value {value}")


def _spec(engine: MarketEngine) -> MarketSpec:
    return engine.spec


def _changes(request: admin_pb2.UpdateMarketRequest, current: MarketSpec) -> dict[str, object]:
    """The settings an UpdateMarket changes, validated: a field that is set (even to
    0 or false) changes, one not set keeps its value."""
    m = request.market
    now = convert.market(current, None)
    for name in _FIXED:
        given, fixed = getattr(m, name), getattr(now, name)
        if given and given != fixed:
            raise Rejected.invalid(f"market.{name}", f"cannot change on a live market (is {fixed})")
    changes: dict[str, object] = {}
    if m.tiers:
        try:
            changes["tiers"] = TierTable(
                (t.notional_floor, t.max_leverage, t.maintenance_margin_rate_ppm) for t in m.tiers
            )
        except SpecError as e:
            raise Rejected.invalid(f"market.{e.field}", e.reason) from e
    settable = {f.name for f in dataclasses.fields(MarketSpec)}
    enums = dict(enum_settings())
    # Every optional field named like a spec field is that setting (so a new one in
    # types.proto and MarketSpec needs nothing here).
    for f in m.DESCRIPTOR.fields:
        if f.has_presence and f.name in settable and f.name not in _SPECIAL and _has(m, f.name):
            value = getattr(m, f.name)
            changes[f.name] = _enum(f, value, enums[f.name]) if f.name in enums else value
    for name, table in (
        ("liquidation_mode", convert.MODE_FROM_WIRE),
        ("adl_policy", convert.ADL_FROM_WIRE),
    ):
        if _has(m, name):
            value = getattr(m, name)
            if value not in table:
                raise Rejected.invalid(f"market.{name}", f"unknown value {value}")
            changes[name] = table[value]
    if request.clear_fund_loss_cap:
        if m.HasField("fund_loss_cap"):
            raise Rejected.invalid(
                "clear_fund_loss_cap", "set either clear_fund_loss_cap or market.fund_loss_cap"
            )
        changes["fund_loss_cap"] = None
    elif m.HasField("fund_loss_cap"):
        changes["fund_loss_cap"] = m.fund_loss_cap
    if not changes:
        raise Rejected.invalid(
            "market", "nothing to change: set a field (tiers, an optional setting) to its new value"
        )
    return changes  # MarketSpec checks the values where the sequencer applies them
