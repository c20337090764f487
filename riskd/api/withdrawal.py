"""Withdrawals: approved or refused atomically against the account's wallet.

Only the free wallet balance can leave: isolated margin belongs to positions
and unrealised profit is not in the wallet, so neither can be withdrawn.  A
withdrawal id makes retries safe: the same id with the same request gets the
same answer without moving money twice.
"""

from __future__ import annotations

from collections import OrderedDict

import grpc

from riskd.actors.sequencer import Sequencer
from riskd.api.bridge import Portal
from riskd.api.status import abort, abort_rejected
from riskd.core import Rejected
from riskd.core.errors import Code
from riskd.core.events import Withdrawal
from riskd.v1 import withdrawal_pb2, withdrawal_pb2_grpc

__all__ = ["WithdrawalServicer"]

Ctx = grpc.aio.ServicerContext[object, object]


class WithdrawalServicer(withdrawal_pb2_grpc.WithdrawalServiceServicer):
    def __init__(self, portal: Portal, sequencer: Sequencer, remember: int = 100_000) -> None:
        self.portal = portal
        self.sequencer = sequencer
        self.remember = remember
        self._seen: OrderedDict[
            tuple[str, int], tuple[tuple[int, int], withdrawal_pb2.WithdrawResponse]
        ] = OrderedDict()

    async def Withdraw(
        self, request: withdrawal_pb2.WithdrawRequest, context: Ctx
    ) -> withdrawal_pb2.WithdrawResponse:
        if request.withdrawal_id == 0:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "withdrawal_id", "is required")
        key = (request.asset, request.withdrawal_id)
        payload = (request.account, request.amount)
        seen = self._seen.get(key)
        if seen is not None:
            if seen[0] != payload:
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "withdrawal_id",
                    f"{request.withdrawal_id} was already used for a different withdrawal",
                )
            return seen[1]
        w = Withdrawal(request.account, request.asset, request.amount)
        try:
            balance = await self.portal.run(self.sequencer.call, self.sequencer.withdraw, w)
            response = withdrawal_pb2.WithdrawResponse(approved=True, wallet_balance=balance)
        except Rejected as r:
            if r.code is not Code.FAILED_PRECONDITION:
                await abort_rejected(context, r)
            response = withdrawal_pb2.WithdrawResponse(approved=False, reason=r.message)
        self._seen[key] = (payload, response)
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        return response
