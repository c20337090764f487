"""Withdrawals: approved or refused atomically against the account's wallet.

Only the free wallet balance can leave: isolated margin belongs to positions
and unrealised profit is not in the wallet, so neither can be withdrawn.  A
withdrawal id makes retries safe: the same id with the same request gets the
same decision (approved or not, and the wallet balance then) without moving
money twice, for as long as riskd remembers it; an id too old to tell is
refused with FAILED_PRECONDITION on ``withdrawal_id``, never paid again
(:mod:`riskd.core.recent_ids`).  While a bankrupt liquidation in the asset is
not settled, withdrawals of it are refused with FAILED_PRECONDITION on
``asset`` and resume by themselves (:func:`riskd.core.wallet.withdrawals_paused`).

Who may withdraw: a gateway serving a market settled in the asset, for an
account with no position or margin in that asset's markets outside its grant
(:meth:`riskd.access.Grant.withdrawal_refusal`; PERMISSION_DENIED on
``asset`` or ``account``).
"""

from __future__ import annotations

from functools import partial

import grpc

from riskd.access import Grant
from riskd.actors.sequencer import Sequencer
from riskd.api.auth import Authenticator
from riskd.api.bridge import Portal
from riskd.api.status import abort, abort_rejected
from riskd.core import Rejected
from riskd.core.events import Withdrawal
from riskd.core.market_engine import MarketEngine
from riskd.v1 import withdrawal_pb2, withdrawal_pb2_grpc

__all__ = ["WithdrawalServicer"]

Ctx = grpc.aio.ServicerContext[object, object]


class WithdrawalServicer(withdrawal_pb2_grpc.WithdrawalServiceServicer):
    def __init__(self, portal: Portal, sequencer: Sequencer, auth: Authenticator) -> None:
        self.portal = portal
        self.sequencer = sequencer
        self.auth = auth

    async def Withdraw(
        self, request: withdrawal_pb2.WithdrawRequest, context: Ctx
    ) -> withdrawal_pb2.WithdrawResponse:
        grant = self.auth.identify(context)  # the interceptor checked the role
        held = await self._held_outside(grant, request.account, request.asset)
        refusal = grant.withdrawal_refusal(request.asset, held)
        if refusal is not None:
            await abort(context, grpc.StatusCode.PERMISSION_DENIED, *refusal)
        if request.withdrawal_id == 0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "withdrawal_id", "is required")
        w = Withdrawal(request.account, request.asset, request.amount)
        try:
            decision = await self.portal.write(
                self.sequencer, self.sequencer.withdraw, w, request.withdrawal_id
            )
        except Rejected as r:
            # Bad input, a reused or expired id, or withdrawals paused by bad
            # debt: no decision was taken, the status says why.
            await abort_rejected(context, r)
        return withdrawal_pb2.WithdrawResponse(
            approved=decision.approved, wallet_balance=decision.balance, reason=decision.reason
        )

    async def _held_outside(self, grant: Grant, account: int, asset: str) -> list[str]:
        """Markets settled in ``asset`` outside the grant where ``account`` has a
        position or margin, read from their actors when the request arrives."""
        if grant.markets is None or not grant.covers_asset(asset):
            return []
        held = []
        for symbol, market in self.sequencer.markets.items():
            if market.engine.asset != asset or grant.covers_market(symbol):
                continue
            if await self.portal.query(market, partial(_holds, account)):
                held.append(symbol)
        return held


def _holds(account: int, engine: MarketEngine) -> bool:
    return account in engine.positions
