"""What flows into the engine (inputs) and out of its pure parts (effects).

Inputs are the updates gateways stream in.  Effects are what a market's state
machine asks of the rest of the system: credits and claims for its settlement
asset's insurance fund, credits for wallets, and events for subscribers.  The
synchronous :class:`riskd.core.engine.Engine` routes them in-process; the
daemon's actors route them over channels.  Timestamps are Unix milliseconds
from the gateway: the core never reads a clock.  Effects are keyword-only:
most are runs of integers, and a swapped pair would still type-check.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from riskd.core.pickling import fields_state, restore

__all__ = [
    "Fill",
    "MarkPrice",
    "Deposit",
    "Withdrawal",
    "MarginTransfer",
    "FundingRate",
    "LiquidationFill",
    "LiquidationDone",
    "FundInjection",
    "SetMarginMode",
    "Input",
    "FundKind",
    "FundCredit",
    "TakeoverClaim",
    "ReserveClaim",
    "ReserveSettle",
    "FundDecision",
    "WalletCredit",
    "LiquidationOrder",
    "LiquidationSettled",
    "AdlNotice",
    "AdlReason",
    "AdlEvent",
    "MarginCall",
    "AccountLiquidation",
    "FundFlow",
    "Effect",
]


# --- inputs -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fill:
    """Both sides of a trade; fees are >= 0 and come out of position margin."""

    market: str
    trade_id: int
    buyer: int
    seller: int
    price: int
    quantity: int
    buyer_fee: int = 0
    seller_fee: int = 0
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class MarkPrice:
    market: str
    price: int
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class Deposit:
    """``deposit_id`` is the exchange's id (0: not given); it comes last so that
    journal records written before it existed still decode."""

    account: int
    asset: str
    amount: int
    ts: int = 0
    deposit_id: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    account: int
    asset: str
    amount: int
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class MarginTransfer:
    """``amount > 0`` moves wallet → isolated margin, ``< 0`` moves it back."""

    account: int
    market: str
    amount: int
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class FundingRate:
    """A funding payment at the current mark; ``rate_e8 > 0``: longs pay shorts."""

    market: str
    rate_e8: int
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class LiquidationFill:
    """A fill of a liquidation order, reported back by the gateway."""

    market: str
    liquidation_id: int
    counterparty: int
    price: int
    quantity: int
    counterparty_fee: int = 0
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class LiquidationDone:
    """The book will fill no more of a liquidation order: the rest goes to ADL."""

    market: str
    liquidation_id: int
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class FundInjection:
    """Seed capital an operator puts into an asset's insurance fund."""

    asset: str
    amount: int
    cause: str = "seed"
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True)
class SetMarginMode:
    """The account's margin mode in a market: cross (shares its wallet) or isolated."""

    market: str
    account: int
    cross: bool
    ts: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


Input = (
    Fill
    | MarkPrice
    | Deposit
    | Withdrawal
    | MarginTransfer
    | FundingRate
    | LiquidationFill
    | LiquidationDone
    | FundInjection
    | SetMarginMode
)


# --- effects ----------------------------------------------------------------


class FundKind(enum.Enum):
    """Ledger entry kinds: every unit into or out of a fund is one of these."""

    INJECTION = "injection"
    TRADING_FEE = "trading_fee"
    LIQUIDATION_FEE = "liquidation_fee"
    SHORTFALL = "shortfall"
    BACKSTOP_MARGIN = "backstop_margin"
    BACKSTOP_RETURN = "backstop_return"


@dataclass(frozen=True, slots=True, kw_only=True)
class FundCredit:
    """Units a market hands to its fund; never refused."""

    asset: str
    market: str
    kind: FundKind
    amount: int
    cause: str
    ts: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class TakeoverClaim:
    """Takeover-mode settlement: fee in, shortfall out, and backstop margin wanted.

    The fund answers with a :class:`FundDecision`: ``absorbed`` says whether it
    covers the whole ``shortfall``, then ``granted`` is the backstop margin it
    moves to the market; otherwise ``granted`` is the part it pays and the rest
    is deleveraged.  ``loss_cap`` is the market's cap on what the fund may pay
    out for it over the rolling window (None: no cap).
    """

    asset: str
    market: str
    liquidation_id: int
    ts: int
    notional: int
    fee: int
    shortfall: int
    margin_wanted: int
    loss_cap: int | None = None

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveClaim:
    """Book mode: earmark up to ``wanted`` for a liquidation order's slippage."""

    asset: str
    market: str
    liquidation_id: int
    ts: int
    notional: int
    wanted: int
    loss_cap: int | None = None

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReserveSettle:
    """Book mode, final: release ``reserved``, pay ``shortfall`` (<= it), take ``fee``."""

    asset: str
    market: str
    liquidation_id: int
    ts: int
    reserved: int
    shortfall: int
    fee: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


class AdlReason(enum.Enum):
    """Why a liquidation was deleveraged instead of paid for by the fund.

    The first three name the limit that bounded the fund's payment (balance,
    the market's loss cap, the drawdown guard); ``NO_BOOK``: a book-mode order
    the book gave up on; ``BACKSTOP``: the backstop's own inventory (or a
    takeover it could not accept) went past the margin the fund gave it.
    """

    FUND_EMPTY = "fund_empty"
    MARKET_CAP = "market_cap"
    DRAWDOWN_LIMIT = "drawdown_limit"
    NO_BOOK = "no_book"
    BACKSTOP = "backstop"


@dataclass(frozen=True, slots=True, kw_only=True)
class FundDecision:
    """The fund's answer to a claim.

    Takeover: ``absorbed`` when it pays the whole shortfall, then ``granted`` is
    the backstop margin it moves to the market.  Otherwise ``granted`` is the
    part of the shortfall it pays (reserved for the liquidation until the ADL of
    the rest settles it) and ``reason`` the limit that stopped it.  Book mode:
    ``granted`` is the slippage reservation.
    """

    market: str
    liquidation_id: int
    absorbed: bool
    granted: int
    reason: AdlReason | None = None

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class WalletCredit:
    account: int
    asset: str
    amount: int
    cause: str

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiquidationOrder:
    """Book mode: place this order; ``side`` is +1 buy / -1 sell."""

    market: str
    liquidation_id: int
    account: int
    side: int
    quantity: int
    worst_price: int
    ts: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiquidationSettled:
    market: str
    liquidation_id: int
    account: int
    quantity: int
    price: int
    fund_delta: int
    returned_to_trader: int
    adl_quantity: int
    ts: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountLiquidation:
    """A cross account found liquidatable: ``markets`` start closing its positions
    (``policy``: all_at_once, step_down, or bankrupt: closed whole)."""

    asset: str
    account: int
    equity: int
    maintenance_margin: int
    markets: tuple[str, ...]
    policy: str
    ts: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdlNotice:
    """To a deleveraged account: ``quantity`` of its position closed at ``price``."""

    market: str
    liquidation_id: int
    account: int
    side: int
    quantity: int
    price: int
    realised: int
    ts: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdlEvent:
    """One ADL execution, for metrics and reports.

    ``deficit`` is what the bankrupt position lacked at the mark; ``fund_paid``
    the part of it the insurance fund paid (up to its limit); ``haircut`` the
    profit the counterparties gave up by closing at the fund-adjusted
    bankruptcy price instead of the mark; ``overshoot = haircut + fund_paid -
    deficit`` (tick rounding, which the fund keeps: a liquidation fee or a
    smaller payment).  ``reason`` says why the fund did not pay it all.
    """

    market: str
    asset: str
    liquidation_id: int
    quantity: int
    price: int
    closed_notional: int
    deficit: int
    haircut: int
    overshoot: int
    counterparties: int
    ts: int
    reason: AdlReason = AdlReason.FUND_EMPTY
    fund_paid: int = 0

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class MarginCall:
    """A position's mark came within the market's margin-call distance of its LP."""

    market: str
    account: int
    margin_balance: int
    maintenance_margin: int
    liquidation_price: int
    ts: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


@dataclass(frozen=True, slots=True, kw_only=True)
class FundFlow:
    """A fund ledger entry, as published."""

    asset: str
    market: str
    kind: FundKind
    amount: int
    balance_after: int
    cause: str
    ts: int

    def __getstate__(self) -> list[object]:
        return fields_state(self)

    def __setstate__(self, state: object) -> None:
        restore(self, state)


Effect = (
    FundCredit
    | TakeoverClaim
    | ReserveClaim
    | ReserveSettle
    | FundDecision
    | WalletCredit
    | LiquidationOrder
    | LiquidationSettled
    | AdlNotice
    | AdlEvent
    | MarginCall
    | AccountLiquidation
    | FundFlow
)
