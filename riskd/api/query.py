"""Read-only queries: accounts, positions, the insurance fund, stress coverage, markets, assets.

Each query runs inside the actor that owns the state (so it sees a state
between two inputs, never half of one) and is translated to protobuf here, on
the gRPC thread.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NoReturn

import grpc

from riskd.access import Grant
from riskd.actors.fund import FundActor
from riskd.actors.market import MarketActor
from riskd.actors.sequencer import Sequencer
from riskd.actors.wallet import WalletActor
from riskd.api import convert
from riskd.api.auth import Authenticator
from riskd.api.bridge import Portal
from riskd.api.status import abort
from riskd.core import BACKSTOP_ACCOUNT, MarketEngine, PositionView, Stage, stress
from riskd.core.insurance_fund import DailyReport, InsuranceFund, LedgerEntry
from riskd.core.market_status import MarketStatus
from riskd.core.units import INT64_MAX, Asset
from riskd.storage import ledger
from riskd.v1 import events_pb2, query_pb2, query_pb2_grpc, types_pb2

__all__ = ["QueryServicer", "MAX_PAGE"]

MAX_PAGE = 1000
Ctx = grpc.aio.ServicerContext[object, object]


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(
        self,
        portal: Portal,
        markets: dict[str, MarketActor],
        funds: dict[str, FundActor],
        wallets: dict[str, WalletActor],
        assets: dict[str, Asset],
        auth: Authenticator,
        stress_moves: tuple[int, ...] = stress.DEFAULT_MOVES_PPM,
        sequencer: Sequencer | None = None,
    ) -> None:
        # Cross accounts are read inside the sequencer: all their markets between two inputs.
        self.sequencer = sequencer
        self.portal = portal
        self.stress_moves = stress_moves  # GetStressCoverage's default ([server] stress_moves_ppm)
        self.auth = auth
        self.markets = markets
        self.funds = funds
        self.wallets = wallets
        self.assets = assets

    async def GetAccount(
        self, request: query_pb2.GetAccountRequest, context: Ctx
    ) -> query_pb2.GetAccountResponse:
        wallet = self.wallets.get(request.asset)
        if wallet is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, "asset", f"unknown asset {request.asset!r}"
            )
        grant = await self._asset_grant(request.asset, context)
        balance = await self.portal.call(wallet, wallet.balance, request.account)
        cross = None
        if self.sequencer is not None:
            s = self.sequencer
            cross = await self.portal.call(s, s.cross.view, request.asset, request.account)
        legs = {p.market: p for p in cross.positions} if cross is not None else {}
        positions = []
        # A copy: AddMarket may add one meanwhile (the dict is the sequencer's).
        for symbol, market in list(self.markets.items()):
            if market.engine.asset != request.asset or not grant.covers_market(symbol):
                continue
            view = await self._view(market, request.account)
            if view is not None:
                positions.append(convert.position(view, legs.get(symbol)))
        return query_pb2.GetAccountResponse(
            wallet_balance=balance,
            positions=positions,
            cross=convert.cross_account(cross) if cross is not None and cross.positions else None,
        )

    async def GetPosition(
        self, request: query_pb2.GetPositionRequest, context: Ctx
    ) -> query_pb2.GetPositionResponse:
        market = await self._granted_market(request.market, context)
        view = await self._view(market, request.account)
        if view is None:  # no position: the proto promises a flat one, not an error
            return query_pb2.GetPositionResponse(
                position=query_pb2.Position(account=request.account, market=request.market)
            )
        cross = None
        if view.cross and self.sequencer is not None:
            # The account's view, as GetAccount shows it: the estimate needs every leg.
            s = self.sequencer
            account = await self.portal.call(s, s.cross.view, market.engine.asset, request.account)
            cross = next((p for p in account.positions if p.market == request.market), None)
        return query_pb2.GetPositionResponse(position=convert.position(view, cross))

    async def GetInsuranceFund(
        self, request: query_pb2.GetInsuranceFundRequest, context: Ctx
    ) -> query_pb2.GetInsuranceFundResponse:
        actor = await self._fund(request.asset, context)
        backstop = 0
        for market in self.markets.values():
            if market.engine.asset == request.asset:
                backstop += await self.portal.query(market, _backstop_margin)
        pb = await self.portal.call(actor, convert.fund, actor.fund, backstop)
        return query_pb2.GetInsuranceFundResponse(fund=pb)

    async def ListFundLedger(
        self, request: query_pb2.ListFundLedgerRequest, context: Ctx
    ) -> query_pb2.ListFundLedgerResponse:
        actor = await self._fund(request.asset, context)
        size = request.page_size or 100
        if size > MAX_PAGE:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "page_size", f"at most {MAX_PAGE}"
            )
        start = max(request.page_token, 1)
        entries, first, total = await self.portal.call(actor, _ledger_page, actor.fund, start, size)
        if start < first:  # older than memory holds: from ledger.sqlite3
            path = actor.ledger_path
            if path is None:
                await abort(
                    context, grpc.StatusCode.OUT_OF_RANGE, "page_token",
                    f"entries before {first} are not kept",
                )  # fmt: skip
            want = min(size, first - start)
            older = await asyncio.to_thread(
                ledger.read_page, Path(path), request.asset, start, want
            )
            # Short when the writer is still behind: the next page starts there.
            entries = older + entries if len(older) == want else older
        token = start + len(entries) if start + len(entries) <= total else 0
        return query_pb2.ListFundLedgerResponse(
            entries=[convert.ledger_entry(e) for e in entries], next_page_token=token
        )

    async def GetFundDailyReport(
        self, request: query_pb2.GetFundDailyReportRequest, context: Ctx
    ) -> query_pb2.GetFundDailyReportResponse:
        actor = await self._fund(request.asset, context)
        try:
            day = date.fromisoformat(request.day) if request.day else datetime.now(UTC).date()
        except ValueError:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "day", "must be YYYY-MM-DD")
        index = (day - date(1970, 1, 1)).days
        report = await self.portal.call(actor, _report, actor.fund, index)
        return query_pb2.GetFundDailyReportResponse(
            report=convert.daily_report(request.asset, day.isoformat(), report)
        )

    async def ListMarkets(
        self, request: query_pb2.ListMarketsRequest, context: Ctx
    ) -> query_pb2.ListMarketsResponse:
        out = []
        for m in list(self.markets.values()):  # a copy: AddMarket may add one meanwhile
            market = await self.portal.query(m, _listed)
            if market is not None:
                out.append(market)
        return query_pb2.ListMarketsResponse(markets=out)

    async def ListAssets(
        self, request: query_pb2.ListAssetsRequest, context: Ctx
    ) -> query_pb2.ListAssetsResponse:
        # A copy (one step under the GIL): AddAsset may add one meanwhile.
        assets = sorted(self.assets.items())
        return query_pb2.ListAssetsResponse(
            assets=[types_pb2.Asset(symbol=a.symbol, decimals=a.decimals) for _, a in assets]
        )

    async def GetStressCoverage(
        self, request: query_pb2.GetStressCoverageRequest, context: Ctx
    ) -> query_pb2.GetStressCoverageResponse:
        actor = await self._fund(request.asset, context)
        grant = await self._asset_grant(request.asset, context)
        moves = tuple(request.moves_ppm) or self.stress_moves
        why = stress.check_moves(moves)
        if why:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "moves_ppm", why)
        rows = []
        for symbol in sorted(self.markets):
            market = self.markets[symbol]
            if (
                market.engine.asset != request.asset
                or not grant.covers_market(symbol)
                or market.engine.status is MarketStatus.SETTLED
            ):
                continue
            # The budget is read in the fund actor and the positions in the market's,
            # each between two inputs (as GetInsuranceFund's backstop margin is).
            now, cap = await self.portal.query(market, _now_and_cap)
            budget = await self.portal.call(actor, stress.fund_budget, actor.fund, symbol, now, cap)
            found = await self.portal.call(market, stress.coverage, market.engine, budget, moves)
            rows += [convert_stress(r) for r in found]
        return query_pb2.GetStressCoverageResponse(asset=request.asset, rows=rows)

    async def ListLiquidationOrders(
        self, request: query_pb2.ListLiquidationOrdersRequest, context: Ctx
    ) -> query_pb2.ListLiquidationOrdersResponse:
        market = await self._granted_market(request.market, context)
        orders = await self.portal.query(market, _open_orders)
        return query_pb2.ListLiquidationOrdersResponse(orders=orders)

    async def _view(self, market: MarketActor, account: int) -> PositionView | None:
        return await self.portal.query(market, lambda e: e.view(account))

    async def _granted_market(self, symbol: str, context: Ctx) -> MarketActor:
        """The market, or NOT_FOUND; PERMISSION_DENIED unless the caller is granted it."""
        market = self.markets.get(symbol)
        if market is None or market.engine.status is MarketStatus.SETTLED:
            await abort(context, grpc.StatusCode.NOT_FOUND, "market", f"unknown market {symbol!r}")
        grant = self.auth.identify(context)
        if not grant.covers_market(symbol):
            await _denied(context, "market", f"not granted to {grant.identity!r}")
        return market

    async def _asset_grant(self, asset: str, context: Ctx) -> Grant:
        """The caller's grant; PERMISSION_DENIED unless it serves a market in ``asset``."""
        grant = self.auth.identify(context)
        if not grant.covers_asset(asset):
            await _denied(context, "asset", f"{grant.identity!r} serves no market in it")
        return grant

    async def _fund(self, asset: str, context: Ctx) -> FundActor:
        actor = self.funds.get(asset)
        if actor is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "asset", f"unknown asset {asset!r}")
        return actor


def _open_orders(engine: MarketEngine) -> list[query_pb2.OpenLiquidationOrder]:
    """Book-mode liquidations whose order is working, as their events published them."""
    out = []
    for lid in sorted(engine.liquidations):
        liq = engine.liquidations[lid]
        pos = engine.positions.get(liq.account)
        if liq.stage is not Stage.WORKING or pos is None or not pos.size:
            continue
        order = events_pb2.LiquidationOrder(
            market=engine.symbol,
            liquidation_id=liq.id,
            account=liq.account,
            side=types_pb2.SIDE_SELL if pos.size > 0 else types_pb2.SIDE_BUY,
            quantity=liq.quantity,
            worst_price=liq.worst_price,
        )
        out.append(query_pb2.OpenLiquidationOrder(order=order, filled_quantity=liq.filled))
    return out


def _now_and_cap(engine: MarketEngine) -> tuple[int, int | None]:
    """The market's latest input time (the fund's window runs on it) and its loss cap."""
    return engine._now, engine.spec.fund_loss_cap


def convert_stress(row: stress.StressRow) -> query_pb2.StressCoverage:
    return query_pb2.StressCoverage(
        market=row.market,
        move_ppm=row.move_ppm,
        price=row.price,
        positions=row.positions,
        # Every position's loss fits int64; thousands of them together might not.
        shortfall=min(row.shortfall, INT64_MAX),
        payable=row.payable,
        coverage_ppm=row.coverage_ppm,
        budget=row.budget,
    )


def _backstop_margin(engine: MarketEngine) -> int:
    pos = engine.positions.get(BACKSTOP_ACCOUNT)
    return pos.margin if pos is not None else 0


def _ledger_page(fund: InsuranceFund, start: int, size: int) -> tuple[list[LedgerEntry], int, int]:
    """Entries ``start..start+size-1`` held in memory, the first one held, and the total."""
    ledger = fund.ledger
    first, total = ledger.first_in_memory, len(ledger)
    lo = max(start, first)
    return ledger[lo - 1 : start - 1 + size] if lo < start + size else [], first, total


def _report(fund: InsuranceFund, day: int) -> DailyReport:
    report = fund.reports.get(day)
    if report is None:  # a day without movements: balance as it stands
        return DailyReport(day, fund.balance, fund.balance)
    return DailyReport(
        report.day,
        report.opening_balance,
        report.closing_balance,
        report.liquidation_volume,
        dict(report.inflow_by_kind),
        dict(report.outflow_by_kind),
    )


def _listed(engine: MarketEngine) -> types_pb2.Market | None:
    """The market as listed; None once settled (delisted)."""
    if engine.status is MarketStatus.SETTLED:
        return None
    return convert.market_of(engine)


async def _denied(context: Ctx, field: str, message: str) -> NoReturn:
    await abort(context, grpc.StatusCode.PERMISSION_DENIED, field, message)
