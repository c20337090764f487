"""The wallet actor of one settlement asset: free balances, deposits, withdrawals."""

from __future__ import annotations

from riskd.actors.actor import Actor
from riskd.core import Input, Journal, Rejected, Wallets, Withdrawal, WithdrawalDecision, kind_of

__all__ = ["WalletActor"]


class WalletActor(Actor):
    def __init__(self, wallets: Wallets, capacity: int) -> None:
        super().__init__(f"wallet:{wallets.asset}", capacity)
        self.wallets = wallets

    def apply(self, items: list[Input]) -> list[Rejected | None]:
        """Apply streamed wallet inputs in order; one result per input (None = applied)."""
        out: list[Rejected | None] = []
        for d in items:
            try:
                kind = kind_of(d)
                if kind.on_wallet is None or kind.journal is not Journal.INGEST:
                    raise Rejected.invalid("kind", f"{kind.name} does not go to a wallet here")
                kind.on_wallet(self.wallets, d)
                out.append(None)
            except Rejected as e:
                out.append(e)
        return out

    def withdraw(self, w: Withdrawal) -> WithdrawalDecision:
        return self.wallets.decide_withdrawal(w.account, w.amount)

    def check_debit(self, account: int, amount: int) -> None:
        self.wallets.check_debit(account, amount)

    def debit(self, account: int, amount: int) -> None:
        self.wallets.debit(account, amount)

    def credit(self, account: int, amount: int) -> None:
        self.wallets.credit(account, amount)

    def balance(self, account: int) -> int:
        return self.wallets.balance(account)

    def balances(self, accounts: list[int]) -> list[int]:
        return [self.wallets.balance(a) for a in accounts]
