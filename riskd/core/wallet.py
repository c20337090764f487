"""Wallets: each account's free balance in one settlement asset."""

from __future__ import annotations

from riskd.core.errors import Rejected
from riskd.core.position import BACKSTOP_ACCOUNT
from riskd.core.recent_ids import RecentIds, check_id, fingerprint
from riskd.core.units import INT64_MAX, check_positive

__all__ = ["Wallets", "check_account"]


def check_account(account: int, field: str) -> int:
    if not 0 < account < BACKSTOP_ACCOUNT:
        raise Rejected.invalid(field, f"account must be in 1..2**64-2, got {account}")
    return account


class Wallets:
    """Balances of one asset, with the totals conservation is checked against.

    ``deposit_ids`` remembers the deposit ids applied lately (see
    :mod:`riskd.core.recent_ids`): a reused one is refused.
    """

    __slots__ = ("asset", "balances", "deposits", "withdrawals", "deposit_ids")

    def __init__(self, asset: str) -> None:
        self.asset = asset
        self.balances: dict[int, int] = {}
        self.deposits = 0
        self.withdrawals = 0
        self.deposit_ids = RecentIds()

    def balance(self, account: int) -> int:
        return self.balances.get(account, 0)

    def deposit(self, account: int, amount: int, deposit_id: int = 0) -> int:
        """Credit a deposit; a ``deposit_id`` applied lately to this asset is refused.

        Id 0 is "not given" and never checked.
        """
        check_account(account, "account")
        check_positive(amount, "amount")
        check_id(deposit_id, "deposit_id")
        payload = 0
        if deposit_id:
            payload = fingerprint(account, amount)
            self.deposit_ids.check(deposit_id, payload, "deposit_id", "deposit")
        new = self.balance(account) + amount
        if new > INT64_MAX:
            raise Rejected.invalid("amount", "wallet balance would overflow int64")
        self.deposit_ids.remember(deposit_id, payload)
        self.balances[account] = new
        self.deposits += amount
        return new

    def withdraw(self, account: int, amount: int) -> int:
        """Take ``amount`` out; only the free balance, never margin or unrealised PnL."""
        self.debit(account, amount)
        self.withdrawals += amount
        return self.balance(account)

    def debit(self, account: int, amount: int) -> None:
        check_account(account, "account")
        check_positive(amount, "amount")
        have = self.balance(account)
        if amount > have:
            raise Rejected.precondition(
                "amount", f"wallet balance {have} of account {account} is less than {amount}"
            )
        if have == amount:
            del self.balances[account]
        else:
            self.balances[account] = have - amount

    def credit(self, account: int, amount: int) -> None:
        if amount < 0:  # credits come from the engine, never from input
            raise AssertionError(f"negative wallet credit {amount} to {account}")
        if amount:
            self.balances[account] = self.balance(account) + amount
