"""Wallets: each account's free balance in one settlement asset."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from riskd.core.errors import Rejected
from riskd.core.liquidation import Stage
from riskd.core.pickling import SlotsPickled
from riskd.core.position import BACKSTOP_ACCOUNT
from riskd.core.recent_ids import RecentIds, WithdrawalDecision, check_id, fingerprint
from riskd.core.units import INT64_MAX, SHORT_MAX, SUPPLY_CAP, check_positive

if TYPE_CHECKING:
    from riskd.core.market_engine import MarketEngine

__all__ = ["Wallets", "check_account", "unsettled_bad_debt", "withdrawals_paused"]


def check_account(account: int, field: str) -> int:
    if not (0 < account <= SHORT_MAX or 0 < account < BACKSTOP_ACCOUNT):  # short first: no boxing
        raise Rejected.invalid(field, f"account must be in 1..2**64-2, got {account}")
    return account


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
class Wallets(SlotsPickled):
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
        if self.deposits - self.withdrawals + amount > SUPPLY_CAP:
            raise Rejected.invalid(
                "amount", f"{self.asset} net deposits would pass the supply cap of {SUPPLY_CAP}"
            )
        self.deposit_ids.remember(deposit_id, payload)
        self.balances[account] = new
        self.deposits += amount
        return new

    def decide_withdrawal(self, account: int, amount: int) -> WithdrawalDecision:
        """Withdraw if the free balance covers it; either way, the balance after.

        Bad input (account, amount) is still raised: that is no decision.
        """
        check_account(account, "account")
        check_positive(amount, "amount")
        have = self.balance(account)
        if amount > have:
            return WithdrawalDecision(False, have, _short(account, have, amount))
        return WithdrawalDecision(True, self.withdraw(account, amount))

    def check_debit(self, account: int, amount: int) -> None:
        """Refuse, as :meth:`debit` would, without debiting."""
        check_account(account, "account")
        check_positive(amount, "amount")
        have = self.balance(account)
        if amount > have:
            raise Rejected.precondition("amount", _short(account, have, amount))

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
            raise Rejected.precondition("amount", _short(account, have, amount))
        if have == amount:
            del self.balances[account]
        else:
            self.balances[account] = have - amount

    def credit(self, account: int, amount: int) -> None:
        if amount < 0:  # credits come from the engine, never from input
            raise AssertionError(f"negative wallet credit {amount} to {account}")
        if amount:
            self.balances[account] = self.balance(account) + amount


def _short(account: int, have: int, amount: int) -> str:
    return f"wallet balance {have} of account {account} is less than {amount}"


def unsettled_bad_debt(market: MarketEngine) -> list[tuple[str, int, str]]:
    """``(market, liquidation id, stage)`` of each liquidation of ``market``
    whose loss is not settled yet: waiting for the fund, for ADL, or working a
    book order on the fund's reservation (a position cooling down after a
    partial step owes nothing)."""
    return [
        (market.symbol, liq.id, liq.stage.value)
        for liq in market.liquidations.values()
        if liq.stage not in (Stage.WORKING, Stage.COOLING) or liq.reserved > 0
    ]


def withdrawals_paused(
    asset: str, unsettled: Iterable[tuple[str, int, str]], reserved: int
) -> Rejected | None:
    """Why withdrawals of ``asset`` wait (dYdX v5), or None.

    While a bankrupt liquidation in a market settled in ``asset`` is not
    settled (``unsettled``, from :func:`unsettled_bad_debt`) or the fund has
    money reserved for one (``reserved``), the loss is not yet placed: nobody
    may take money out of the asset until it is.  Nothing needs to be done to
    resume: the next withdrawal after the last such liquidation settles goes
    through.
    """
    stuck = sorted(unsettled)
    if not stuck and reserved <= 0:
        return None
    what = ", ".join(
        f"{m} liquidation {i} ({stage.replace('_', ' ')})" for m, i, stage in stuck[:3]
    )
    if len(stuck) > 3:
        what += f" and {len(stuck) - 3} more"
    if not what:
        what = f"the insurance fund holds {reserved} quantums reserved for a liquidation"
    return Rejected.precondition(
        "asset",
        f"withdrawals of {asset} are paused while a bankrupt liquidation is not settled:"
        f" {what}; they resume by themselves once it settles",
    )
