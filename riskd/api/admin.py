"""Operator actions: change a market's risk settings, set it reduce-only, seed a fund,
add an asset, add, halt, close or settle a market, override its mark guard.

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
from riskd.config import (
    DEFAULT_DRAWDOWN_LIMIT_PPM,
    DEFAULT_FILL_PRICE_BAND_PPM,
    DEFAULT_FUND_WINDOW_SECONDS,
    MAX_FUND_WINDOW_SECONDS,
)
from riskd.core import Asset, FundPolicy, MarketEngine, MarketSpec, Rejected, TierTable
from riskd.core.events import (
    FundInjection,
    MarketStatusChange,
    MarkGuardOverride,
    SettleMarket,
)
from riskd.core.market import enum_settings
from riskd.core.market_status import MarketStatus
from riskd.core.tiers import SpecError
from riskd.core.units import PPM
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
            await self.portal.write(self.sequencer, self.sequencer.update_spec, m.symbol, changes)
            # As queries show it (status, mark guard), not just the settings.
            shown = await self.portal.query(actor, convert.market_of)
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("market_updated", market=m.symbol, fields=sorted(changes))
        return admin_pb2.UpdateMarketResponse(market=shown)

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

    async def AddMarket(
        self, request: admin_pb2.AddMarketRequest, context: Ctx
    ) -> admin_pb2.AddMarketResponse:
        try:
            spec = _new_spec(request.market, self.sequencer.assets)
            await self.portal.write(self.sequencer, self.sequencer.add_market, spec)
            market = await self._market(spec.symbol)
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("market_added", market=spec.symbol, asset=spec.asset.symbol)
        return admin_pb2.AddMarketResponse(market=market)

    async def AddAsset(
        self, request: admin_pb2.AddAssetRequest, context: Ctx
    ) -> admin_pb2.AddAssetResponse:
        try:
            asset, policy = _new_asset(request)
            await self.portal.write(self.sequencer, self.sequencer.add_asset, asset, policy)
        except Rejected as r:
            await abort_rejected(context, r)
        log.info(
            "asset_added",
            asset=asset.symbol,
            decimals=asset.decimals,
            drawdown_limit_ppm=policy.drawdown_limit_ppm,
            window_seconds=policy.window_ms // 1000,
        )
        return admin_pb2.AddAssetResponse(
            asset=types_pb2.Asset(symbol=asset.symbol, decimals=asset.decimals)
        )

    async def SetMarketStatus(
        self, request: admin_pb2.SetMarketStatusRequest, context: Ctx
    ) -> admin_pb2.SetMarketStatusResponse:
        try:
            status = _STATUS_FROM_WIRE.get(request.status)
            if status is None:
                raise Rejected.invalid(
                    "status", "must be MARKET_STATUS_OPEN, _HALTED or _CLOSE_ONLY"
                )
            change = MarketStatusChange(request.market, status.value)
            await self.portal.write(self.sequencer, self.sequencer.admin_input, change)
            market = await self._market(request.market)
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("market_status_set", market=request.market, status=status.value)
        return admin_pb2.SetMarketStatusResponse(market=market)

    async def OverrideMarkGuard(
        self, request: admin_pb2.OverrideMarkGuardRequest, context: Ctx
    ) -> admin_pb2.OverrideMarkGuardResponse:
        try:
            override = MarkGuardOverride(request.market, request.hold)
            await self.portal.write(self.sequencer, self.sequencer.admin_input, override)
            market = await self._market(request.market)
        except Rejected as r:
            await abort_rejected(context, r)
        log.info("mark_guard_overridden", market=request.market, hold=request.hold)
        return admin_pb2.OverrideMarkGuardResponse(market=market)

    async def SettleMarket(
        self, request: admin_pb2.SettleMarketRequest, context: Ctx
    ) -> admin_pb2.SettleMarketResponse:
        try:
            settle = SettleMarket(request.market, request.price)
            count = await self.portal.write(self.sequencer, self.sequencer.admin_input, settle)
        except Rejected as r:
            await abort_rejected(context, r)
        # What was paid out is in the market_settled event and log line.
        log.info("market_settle_requested", market=request.market, price=request.price)
        return admin_pb2.SettleMarketResponse(positions=count)

    async def _market(self, symbol: str) -> types_pb2.Market:
        actor = self.sequencer.markets.get(symbol)
        if actor is None:
            raise Rejected.not_found("market", f"unknown market {symbol!r}")
        return await self.portal.query(actor, convert.market_of)

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


_STATUS_FROM_WIRE = {
    types_pb2.MARKET_STATUS_OPEN: MarketStatus.OPEN,
    types_pb2.MARKET_STATUS_HALTED: MarketStatus.HALTED,
    types_pb2.MARKET_STATUS_CLOSE_ONLY: MarketStatus.CLOSE_ONLY,
}


def _new_spec(m: types_pb2.Market, assets: dict[str, Asset]) -> MarketSpec:
    """A whole new market from the wire: the fixed fields, tiers and any optional setting."""
    convert.check_symbol(m.symbol, "market.symbol")
    asset = assets.get(m.settle_asset)
    if asset is None:
        raise Rejected.precondition(
            "market.settle_asset",
            f"asset {m.settle_asset!r} is not declared (AddAsset or the configuration adds it)",
        )
    contract = convert.CONTRACT_FROM_WIRE.get(m.contract_type)
    if contract is None:
        raise Rejected.invalid("market.contract_type", "must be LINEAR or INVERSE")
    if not m.tiers:
        raise Rejected.invalid("market.tiers", "at least one risk tier")
    values: dict[str, object] = {
        "symbol": m.symbol,
        "contract_type": contract,
        "asset": asset,
        "price_decimals": m.price_decimals,
        "tick_size": m.tick_size if m.HasField("tick_size") else 1,
        "quantity_decimals": m.quantity_decimals,
        "step_size": m.step_size if m.HasField("step_size") else 1,
        "contract_value": m.contract_value,
        # Fill sanity on unless the request turns it off, as for the file's markets.
        "fill_price_band_ppm": DEFAULT_FILL_PRICE_BAND_PPM,
    }
    # The same reading of tiers and optional settings as UpdateMarket's.
    values.update(_settings(m))
    if m.HasField("fund_loss_cap"):
        values["fund_loss_cap"] = m.fund_loss_cap
    try:
        return MarketSpec(**values)  # type: ignore[arg-type]
    except SpecError as e:
        raise Rejected.invalid(f"market.{e.field}", e.reason) from e


def _new_asset(r: admin_pb2.AddAssetRequest) -> tuple[Asset, FundPolicy]:
    """The asset and fund policy an AddAsset asks for, as [assets.SYMBOL] reads them."""
    convert.check_symbol(r.symbol, "symbol")
    if not r.HasField("decimals"):
        raise Rejected.invalid("decimals", "is required (0..18)")
    if r.decimals > 18:
        raise Rejected.invalid("decimals", f"must be in 0..18, got {r.decimals}")
    limit = DEFAULT_DRAWDOWN_LIMIT_PPM
    if r.HasField("fund_drawdown_limit_ppm"):
        limit = r.fund_drawdown_limit_ppm
        if not 1 <= limit <= PPM:
            raise Rejected.invalid("fund_drawdown_limit_ppm", f"must be in 1..{PPM}, got {limit}")
    window = DEFAULT_FUND_WINDOW_SECONDS
    if r.HasField("fund_window_seconds"):
        window = r.fund_window_seconds
        if not 60 <= window <= MAX_FUND_WINDOW_SECONDS:
            raise Rejected.invalid(
                "fund_window_seconds", f"must be in 60..{MAX_FUND_WINDOW_SECONDS}, got {window}"
            )
    return Asset(r.symbol, r.decimals), FundPolicy(limit, window * 1000)


def _changes(request: admin_pb2.UpdateMarketRequest, current: MarketSpec) -> dict[str, object]:
    """The settings an UpdateMarket changes, validated: a field that is set (even to
    0 or false) changes, one not set keeps its value."""
    m = request.market
    now = convert.market(current, None)
    for name in _FIXED:
        given, fixed = getattr(m, name), getattr(now, name)
        if given and given != fixed:
            raise Rejected.invalid(f"market.{name}", f"cannot change on a live market (is {fixed})")
    changes = _settings(m)
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


def _settings(m: types_pb2.Market) -> dict[str, object]:
    """The tiers (when given) and the optional settings a Market sets, read by name."""
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
    return changes
