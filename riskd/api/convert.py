"""Protobuf ↔ core translation: the only place that knows both.

Decoding checks what the wire format cannot (a oneof left empty, an id too
long or not ASCII); ranges, ticks and steps are the core's business.  Every
problem is a :class:`~riskd.core.Rejected` naming the field as the client
wrote it (``updates[3].fill.price``).
"""

from __future__ import annotations

from riskd.core import (
    AccountView,
    AdlPolicy,
    ContractType,
    CrossPositionView,
    LiquidationMode,
    MarketEngine,
    MarketSpec,
    OrderRefused,
    PositionView,
    Refusal,
    Rejected,
)
from riskd.core.errors import Code
from riskd.core.events import (
    AmendOrder,
    CancelOrder,
    CheckOrder,
    Deposit,
    Fill,
    FundingRate,
    Input,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarkPrice,
    SetMarginMode,
)
from riskd.core.insurance_fund import DailyReport, InsuranceFund, LedgerEntry
from riskd.v1 import ingest_pb2, query_pb2, types_pb2

__all__ = [
    "MAX_ID_LENGTH",
    "decode_update",
    "decode_stamped",
    "rejection",
    "position",
    "market",
    "market_of",
    "fund",
    "ledger_entry",
    "daily_report",
    "check_symbol",
]

MAX_ID_LENGTH = 32

REJECTION_CODES = {
    Code.INVALID_ARGUMENT: ingest_pb2.REJECTION_CODE_INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION: ingest_pb2.REJECTION_CODE_FAILED_PRECONDITION,
    Code.NOT_FOUND: ingest_pb2.REJECTION_CODE_NOT_FOUND,
    Code.PERMISSION_DENIED: ingest_pb2.REJECTION_CODE_PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED: ingest_pb2.REJECTION_CODE_RESOURCE_EXHAUSTED,
}
_CONTRACT = {
    ContractType.LINEAR: types_pb2.CONTRACT_TYPE_LINEAR,
    ContractType.INVERSE: types_pb2.CONTRACT_TYPE_INVERSE,
}
_MODE = {
    LiquidationMode.BOOK: types_pb2.LIQUIDATION_MODE_BOOK,
    LiquidationMode.TAKEOVER: types_pb2.LIQUIDATION_MODE_TAKEOVER,
}
_ADL = {
    AdlPolicy.PNL_LEVERAGE: types_pb2.ADL_POLICY_PNL_LEVERAGE,
    AdlPolicy.LEVERAGE_PNL: types_pb2.ADL_POLICY_LEVERAGE_PNL,
    AdlPolicy.PRO_RATA_RISK: types_pb2.ADL_POLICY_PRO_RATA_RISK,
}
MODE_FROM_WIRE = {v: k for k, v in _MODE.items()}
CONTRACT_FROM_WIRE = {v: k for k, v in _CONTRACT.items()}
ADL_FROM_WIRE = {v: k for k, v in _ADL.items()}


def check_symbol(value: str, field: str) -> str:
    if not value:
        raise Rejected.invalid(field, "is required")
    if len(value) > MAX_ID_LENGTH or not value.isascii() or not value.isprintable():
        raise Rejected.invalid(field, f"must be 1..{MAX_ID_LENGTH} printable ASCII characters")
    return value


#: Symbols that passed :func:`check_symbol`: a market is named by nearly every
#: update, so it is checked once, not per update (bounded: a stream of made-up
#: names only stops being remembered).
_GOOD_SYMBOLS: set[str] = set()
_MAX_GOOD_SYMBOLS = 4096


def _symbol(value: str, index: int, kind: str, name: str) -> str:
    """:func:`check_symbol` of ``updates[index].kind.name``; the path is built only to refuse."""
    if value in _GOOD_SYMBOLS:
        return value
    check_symbol(value, f"updates[{index}].{kind}.{name}")
    if len(_GOOD_SYMBOLS) < _MAX_GOOD_SYMBOLS:
        _GOOD_SYMBOLS.add(value)
    return value


def decode_update(u: ingest_pb2.Update, index: int) -> Input:
    """The update at ``updates[index]`` to a core input; raises Rejected naming
    ``updates[index].<...>``."""
    return decode_stamped(u, index, u.timestamp_ms)


def decode_stamped(u: ingest_pb2.Update, index: int, ts: int) -> Input:
    """:func:`decode_update` given the update's ``timestamp_ms`` (the reader has it).

    Straight into the core's input, with no string built unless it is refused
    (at 256 updates per message this runs ~10^5 times a second); a fill, most
    of the traffic, is tried first, then an order check.
    """
    kind = u.WhichOneof("kind")
    if kind == "fill":
        x = u.fill
        market = x.market
        if market not in _GOOD_SYMBOLS:
            _symbol(market, index, kind, "market")
        return Fill(
            market,
            x.trade_id,
            x.buyer_account,
            x.seller_account,
            x.price,
            x.quantity,
            x.buyer_fee,
            x.seller_fee,
            ts,
            x.buyer_order_id,
            x.seller_order_id,
        )
    if kind == "check_order":  # the gate's traffic: next after fills
        o = u.check_order
        market = o.market
        if market not in _GOOD_SYMBOLS:
            _symbol(market, index, kind, "market")
        return _order(o, ts, market, index)
    if kind is None:
        raise Rejected.invalid(f"updates[{index}].kind", "no update kind set")
    match kind:
        case "mark_price":
            m = u.mark_price
            return MarkPrice(_symbol(m.market, index, kind, "market"), m.price, ts, m.index_price)
        case "deposit":
            d = u.deposit
            return Deposit(
                d.account, _symbol(d.asset, index, kind, "asset"), d.amount, ts, d.deposit_id
            )
        case "margin_transfer":
            t = u.margin_transfer
            return MarginTransfer(t.account, _symbol(t.market, index, kind, "market"), t.amount, ts)
        case "funding_rate":
            r = u.funding_rate
            return FundingRate(_symbol(r.market, index, kind, "market"), r.rate_e8, ts)
        case "liquidation_fill":
            lf = u.liquidation_fill
            return LiquidationFill(
                _symbol(lf.market, index, kind, "market"),
                lf.liquidation_id,
                lf.counterparty_account,
                lf.price,
                lf.quantity,
                lf.counterparty_fee,
                ts,
            )
        case "amend_order":
            a = u.amend_order
            return AmendOrder(
                _symbol(a.market, index, kind, "market"), a.order_id, a.price, a.quantity, ts
            )
        case "cancel_order":
            c = u.cancel_order
            return CancelOrder(_symbol(c.market, index, kind, "market"), c.order_id, ts)
        case "margin_mode":
            mm = u.margin_mode
            if mm.mode not in (types_pb2.MARGIN_MODE_ISOLATED, types_pb2.MARGIN_MODE_CROSS):
                raise Rejected.invalid(
                    f"updates[{index}].{kind}.mode", "must be MARGIN_MODE_ISOLATED or _CROSS"
                )
            return SetMarginMode(
                _symbol(mm.market, index, kind, "market"),
                mm.account,
                mm.mode == types_pb2.MARGIN_MODE_CROSS,
                ts,
            )
        case "liquidation_done":
            ld = u.liquidation_done
            return LiquidationDone(_symbol(ld.market, index, kind, "market"), ld.liquidation_id, ts)
    raise Rejected.invalid(f"updates[{index}].kind", f"unknown update kind {kind!r}")


#: The wire's order sides as the core's signs (+1 buy, -1 sell).
_SIDES = {ingest_pb2.ORDER_SIDE_BUY: 1, ingest_pb2.ORDER_SIDE_SELL: -1}
#: Each refusal reason's wire value.
REFUSALS = {r: ingest_pb2.OrderRefusal.Value("ORDER_REFUSAL_" + r.name) for r in Refusal}


def check_order(x: ingest_pb2.CheckOrder, ts: int, field: str) -> CheckOrder:
    """The unary request's order to check (``field``: where it is in the request)."""
    return _order(x, ts, check_symbol(x.market, f"{field}.market"), field)


def _order(x: ingest_pb2.CheckOrder, ts: int, market: str, where: str | int) -> CheckOrder:
    """A wire order; ``where``: its field, or the index of the update carrying it."""
    side = _SIDES.get(x.side)
    if side is None:
        field = f"updates[{where}].check_order" if isinstance(where, int) else where
        raise Rejected.invalid(f"{field}.side", "must be ORDER_SIDE_BUY or ORDER_SIDE_SELL")
    return CheckOrder(
        market,
        x.order_id,
        x.account,
        side,
        x.price,
        x.quantity,
        x.reduce_only,
        x.post_only,
        x.leverage,
        ts,
    )


# Core field names differ from the wire in a few places; map them back so a
# rejection names what the client sent.
_WIRE_FIELDS = {
    "fill": {"buyer": "buyer_account", "seller": "seller_account"},
    "liquidation_fill": {"counterparty": "counterparty_account"},
    "margin_mode": {"cross": "mode"},
}


def rejection(
    sequence: int, index: int, update: ingest_pb2.Update | None, r: Rejected
) -> ingest_pb2.Rejection:
    field = r.field
    if not field.startswith("updates["):
        kind = update.WhichOneof("kind") if update is not None else None
        if kind:
            field = f"updates[{index}].{kind}.{_WIRE_FIELDS.get(kind, {}).get(field, field)}"
        else:
            field = f"updates[{index}].{field}"
    return ingest_pb2.Rejection(
        sequence=sequence,
        code=REJECTION_CODES[r.code],
        field=field,
        message=r.message,
        order_refusal=REFUSALS[r.reason]
        if isinstance(r, OrderRefused)
        else ingest_pb2.ORDER_REFUSAL_UNSPECIFIED,
    )


def position(v: PositionView, cross: CrossPositionView | None = None) -> query_pb2.Position:
    if v.cross:  # its margin is a band of the cross wallet: the account's numbers instead
        return query_pb2.Position(
            account=v.account,
            market=v.market,
            size=v.size,
            entry_price=v.entry_price,
            unrealized_pnl=v.unrealised,
            maintenance_margin=v.maintenance_margin,
            initial_margin=v.initial_margin,
            liquidation_price=cross.estimated_liquidation_price if cross else 0,
            adl_quintile=v.adl_quintile,
            in_liquidation=v.in_liquidation,
            margin_mode=types_pb2.MARGIN_MODE_CROSS,
        )
    return query_pb2.Position(
        account=v.account,
        market=v.market,
        size=v.size,
        entry_price=v.entry_price,
        isolated_margin=v.margin,
        unrealized_pnl=v.unrealised,
        margin_balance=v.margin_balance,
        maintenance_margin=v.maintenance_margin,
        initial_margin=v.initial_margin,
        liquidation_price=v.liquidation_price,
        bankruptcy_price=v.bankruptcy_price,
        adl_quintile=v.adl_quintile,
        in_liquidation=v.in_liquidation,
        margin_mode=types_pb2.MARGIN_MODE_ISOLATED,
    )


def market_of(engine: MarketEngine) -> types_pb2.Market:
    """A live market as the API shows it: settings, mark, status and mark guard."""
    out = market(engine.spec, engine.mark)
    out.status = types_pb2.MarketStatus.Value("MARKET_STATUS_" + engine.status.value.upper())
    reason = engine.guard.reason
    if reason is not None:
        out.mark_guard = types_pb2.MarkGuardReason.Value(
            "MARK_GUARD_REASON_" + reason.value.upper()
        )
    out.good_mark_price = engine.guard_mark or 0
    return out


def market(spec: MarketSpec, mark: int | None) -> types_pb2.Market:
    return types_pb2.Market(
        symbol=spec.symbol,
        contract_type=_CONTRACT[spec.contract_type],
        settle_asset=spec.asset.symbol,
        price_decimals=spec.price_decimals,
        tick_size=spec.tick_size,
        quantity_decimals=spec.quantity_decimals,
        step_size=spec.step_size,
        contract_value=spec.contract_value,
        tiers=[
            types_pb2.RiskTier(
                notional_floor=t.floor,
                max_leverage=t.max_leverage,
                maintenance_margin_rate_ppm=t.mmr_ppm,
                cum=t.cum,
            )
            for t in spec.tiers.tiers
        ],
        liquidation_fee_cap_ppm=spec.liquidation_fee_cap_ppm,
        fund_fee_share_ppm=spec.fund_fee_share_ppm,
        liquidation_mode=_MODE[spec.liquidation_mode],
        adl_policy=_ADL[spec.adl_policy],
        # Not set: no per-market cap (0 is a cap: the fund pays nothing for it).
        fund_loss_cap=spec.fund_loss_cap,
        reduce_only=spec.reduce_only,
        mark_price=mark or 0,
        partial_liquidation=spec.partial_liquidation,
        margin_call_ppm=spec.margin_call_ppm,
        fill_price_band_ppm=spec.fill_price_band_ppm,
        partial_liquidation_policy=types_pb2.PartialLiquidationPolicy.Value(
            "PARTIAL_LIQUIDATION_POLICY_" + spec.partial_liquidation_policy.value.upper()
        ),
        partial_fraction_ppm=spec.partial_fraction_ppm,
        partial_cooldown_ms=spec.partial_cooldown_ms,
        takeover_price=types_pb2.TakeoverPrice.Value(
            "TAKEOVER_PRICE_" + spec.takeover_price.value.upper()
        ),
        order_price_band_ppm=spec.order_price_band_ppm,
        open_interest_cap=spec.open_interest_cap,
        max_position_notional=spec.max_position_notional,
        max_open_orders=spec.max_open_orders,
        mark_stale_after_ms=spec.mark_stale_after_ms,
        mark_max_jump_ppm=spec.mark_max_jump_ppm,
        mark_max_divergence_ppm=spec.mark_max_divergence_ppm,
        cross_liquidation=types_pb2.CrossLiquidationPolicy.Value(
            "CROSS_LIQUIDATION_POLICY_" + spec.cross_liquidation.value.upper()
        ),
    )


def cross_account(v: AccountView) -> query_pb2.CrossAccount:
    return query_pb2.CrossAccount(
        wallet=v.wallet,
        equity=v.equity,
        maintenance_margin=v.maintenance_margin,
        initial_margin=v.initial_margin,
        margin_ratio_ppm=v.margin_ratio_ppm,
        available=v.available,
        in_liquidation=v.in_liquidation,
        positions=[
            query_pb2.CrossPosition(
                market=p.market,
                size=p.size,
                unrealized_pnl=p.unrealised,
                maintenance_margin=p.maintenance_margin,
                initial_margin=p.initial_margin,
                estimated_liquidation_price=p.estimated_liquidation_price,
                adl_quintile=p.adl_quintile,
                in_liquidation=p.in_liquidation,
            )
            for p in v.positions
        ],
    )


def fund(f: InsuranceFund, backstop_margin: int) -> query_pb2.InsuranceFund:
    return query_pb2.InsuranceFund(
        asset=f.asset,
        balance=f.balance,
        reserved=f.reserved_total,
        backstop_margin=backstop_margin,
        total_inflow=f.total_inflow,
        total_outflow=f.total_outflow,
    )


def ledger_entry(e: LedgerEntry) -> query_pb2.LedgerEntry:
    return query_pb2.LedgerEntry(
        sequence=e.sequence,
        timestamp_ms=e.ts,
        kind=e.kind.value,
        market=e.market,
        cause=e.cause,
        amount=e.amount,
        balance_after=e.balance_after,
        prev_hash=e.prev,
        hash=e.hash,
    )


def daily_report(asset: str, day: str, r: DailyReport) -> query_pb2.DailyReport:
    return query_pb2.DailyReport(
        asset=asset,
        day=day,
        opening_balance=r.opening_balance,
        closing_balance=r.closing_balance,
        liquidation_volume=r.liquidation_volume,
        inflow_by_kind={k.value: v for k, v in r.inflow_by_kind.items()},
        outflow_by_kind={k.value: v for k, v in r.outflow_by_kind.items()},
    )
