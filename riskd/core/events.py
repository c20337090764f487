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

from mypy_extensions import mypyc_attr

from riskd.core.pickling import FieldsPickled

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
    "CheckOrder",
    "AmendOrder",
    "CancelOrder",
    "MarketStatusChange",
    "MarkGuardOverride",
    "SettleMarket",
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
    "MarkGuardChanged",
    "MarketStatusChanged",
    "MarketSettled",
    "Effect",
]


# --- inputs -----------------------------------------------------------------


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class Fill(FieldsPickled):
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
    #: The open orders (riskd.core.orders) this trade filled, 0: none named.
    buyer_order_id: int = 0
    seller_order_id: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(
        self,
        market: str,
        trade_id: int,
        buyer: int,
        seller: int,
        price: int,
        quantity: int,
        buyer_fee: int = 0,
        seller_fee: int = 0,
        ts: int = 0,
        buyer_order_id: int = 0,
        seller_order_id: int = 0,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "trade_id", trade_id)
        object.__setattr__(self, "buyer", buyer)
        object.__setattr__(self, "seller", seller)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "buyer_fee", buyer_fee)
        object.__setattr__(self, "seller_fee", seller_fee)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "buyer_order_id", buyer_order_id)
        object.__setattr__(self, "seller_order_id", seller_order_id)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class MarkPrice(FieldsPickled):
    """``index_price``: the gateway's index (spot) price, 0 when not given; the
    mark-price guard checks the mark's divergence from it."""

    market: str
    price: int
    ts: int = 0
    index_price: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, price: int, ts: int = 0, index_price: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "index_price", index_price)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class Deposit(FieldsPickled):
    """``deposit_id`` is the exchange's id (0: not given); it comes last so that
    journal records written before it existed still decode."""

    account: int
    asset: str
    amount: int
    ts: int = 0
    deposit_id: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(
        self,
        account: int,
        asset: str,
        amount: int,
        ts: int = 0,
        deposit_id: int = 0,
    ) -> None:
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "deposit_id", deposit_id)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class Withdrawal(FieldsPickled):
    account: int
    asset: str
    amount: int
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, account: int, asset: str, amount: int, ts: int = 0) -> None:
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class MarginTransfer(FieldsPickled):
    """``amount > 0`` moves wallet → isolated margin, ``< 0`` moves it back."""

    account: int
    market: str
    amount: int
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, account: int, market: str, amount: int, ts: int = 0) -> None:
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class FundingRate(FieldsPickled):
    """A funding payment at the current mark; ``rate_e8 > 0``: longs pay shorts."""

    market: str
    rate_e8: int
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, rate_e8: int, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "rate_e8", rate_e8)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class LiquidationFill(FieldsPickled):
    """A fill of a liquidation order, reported back by the gateway."""

    market: str
    liquidation_id: int
    counterparty: int
    price: int
    quantity: int
    counterparty_fee: int = 0
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(
        self,
        market: str,
        liquidation_id: int,
        counterparty: int,
        price: int,
        quantity: int,
        counterparty_fee: int = 0,
        ts: int = 0,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "counterparty", counterparty)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "counterparty_fee", counterparty_fee)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class LiquidationDone(FieldsPickled):
    """The book will fill no more of a liquidation order: the rest goes to ADL."""

    market: str
    liquidation_id: int
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, liquidation_id: int, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class FundInjection(FieldsPickled):
    """Seed capital an operator puts into an asset's insurance fund."""

    asset: str
    amount: int
    cause: str = "seed"
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, asset: str, amount: int, cause: str = "seed", ts: int = 0) -> None:
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "cause", cause)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class MarketStatusChange(FieldsPickled):
    """An operator opens, halts or sets a market close-only (``status``: a
    :class:`~riskd.core.market_status.MarketStatus` value, e.g. ``"halted"``)."""

    market: str
    status: str
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, status: str, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class MarkGuardOverride(FieldsPickled):
    """An operator clears a market's mark-price guard (``hold`` false: the newest
    mark is good) or holds it on (``hold`` true) until cleared."""

    market: str
    hold: bool
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, hold: bool, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "hold", hold)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class SettleMarket(FieldsPickled):
    """Final settlement: every position is closed at ``price``, the market delisted."""

    market: str
    price: int
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, price: int, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class CheckOrder(FieldsPickled):
    """A pre-trade check: accept the order and reserve its margin, or refuse it.

    ``side`` +1 buy / -1 sell; ``leverage`` 0: the tier's maximum.
    """

    market: str
    order_id: int
    account: int
    side: int
    price: int
    quantity: int
    reduce_only: bool = False
    post_only: bool = False
    leverage: int = 0
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(
        self,
        market: str,
        order_id: int,
        account: int,
        side: int,
        price: int,
        quantity: int,
        reduce_only: bool = False,
        post_only: bool = False,
        leverage: int = 0,
        ts: int = 0,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "order_id", order_id)
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "side", side)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "reduce_only", reduce_only)
        object.__setattr__(self, "post_only", post_only)
        object.__setattr__(self, "leverage", leverage)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class AmendOrder(FieldsPickled):
    """An open order's new price and remaining quantity, checked again."""

    market: str
    order_id: int
    price: int
    quantity: int
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, order_id: int, price: int, quantity: int, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "order_id", order_id)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class CancelOrder(FieldsPickled):
    """An open order left the book unfilled (its rest): the reservation is released."""

    market: str
    order_id: int
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, order_id: int, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "order_id", order_id)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, init=False)
class SetMarginMode(FieldsPickled):
    """The account's margin mode in a market: cross (shares its wallet) or isolated."""

    market: str
    account: int
    cross: bool
    ts: int = 0

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code, and inputs are built per update (decoding, replay).
    def __init__(self, market: str, account: int, cross: bool, ts: int = 0) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "cross", cross)
        object.__setattr__(self, "ts", ts)


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
    | CheckOrder
    | AmendOrder
    | CancelOrder
    | MarketStatusChange
    | MarkGuardOverride
    | SettleMarket
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


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class FundCredit(FieldsPickled):
    """Units a market hands to its fund; never refused."""

    asset: str
    market: str
    kind: FundKind
    amount: int
    cause: str
    ts: int

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self, *, asset: str, market: str, kind: FundKind, amount: int, cause: str, ts: int
    ) -> None:
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "cause", cause)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class TakeoverClaim(FieldsPickled):
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

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        asset: str,
        market: str,
        liquidation_id: int,
        ts: int,
        notional: int,
        fee: int,
        shortfall: int,
        margin_wanted: int,
        loss_cap: int | None = None,
    ) -> None:
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "notional", notional)
        object.__setattr__(self, "fee", fee)
        object.__setattr__(self, "shortfall", shortfall)
        object.__setattr__(self, "margin_wanted", margin_wanted)
        object.__setattr__(self, "loss_cap", loss_cap)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class ReserveClaim(FieldsPickled):
    """Book mode: earmark up to ``wanted`` for a liquidation order's slippage."""

    asset: str
    market: str
    liquidation_id: int
    ts: int
    notional: int
    wanted: int
    loss_cap: int | None = None

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        asset: str,
        market: str,
        liquidation_id: int,
        ts: int,
        notional: int,
        wanted: int,
        loss_cap: int | None = None,
    ) -> None:
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "notional", notional)
        object.__setattr__(self, "wanted", wanted)
        object.__setattr__(self, "loss_cap", loss_cap)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class ReserveSettle(FieldsPickled):
    """Book mode, final: release ``reserved``, pay ``shortfall`` (<= it), take ``fee``."""

    asset: str
    market: str
    liquidation_id: int
    ts: int
    reserved: int
    shortfall: int
    fee: int

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        asset: str,
        market: str,
        liquidation_id: int,
        ts: int,
        reserved: int,
        shortfall: int,
        fee: int,
    ) -> None:
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "reserved", reserved)
        object.__setattr__(self, "shortfall", shortfall)
        object.__setattr__(self, "fee", fee)


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


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class FundDecision(FieldsPickled):
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

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        market: str,
        liquidation_id: int,
        absorbed: bool,
        granted: int,
        reason: AdlReason | None = None,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "absorbed", absorbed)
        object.__setattr__(self, "granted", granted)
        object.__setattr__(self, "reason", reason)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class WalletCredit(FieldsPickled):
    account: int
    asset: str
    amount: int
    cause: str

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(self, *, account: int, asset: str, amount: int, cause: str) -> None:
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "cause", cause)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class LiquidationOrder(FieldsPickled):
    """Book mode: place this order; ``side`` is +1 buy / -1 sell."""

    market: str
    liquidation_id: int
    account: int
    side: int
    quantity: int
    worst_price: int
    ts: int

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        market: str,
        liquidation_id: int,
        account: int,
        side: int,
        quantity: int,
        worst_price: int,
        ts: int,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "side", side)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "worst_price", worst_price)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class LiquidationSettled(FieldsPickled):
    market: str
    liquidation_id: int
    account: int
    quantity: int
    price: int
    fund_delta: int
    returned_to_trader: int
    adl_quantity: int
    ts: int

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        market: str,
        liquidation_id: int,
        account: int,
        quantity: int,
        price: int,
        fund_delta: int,
        returned_to_trader: int,
        adl_quantity: int,
        ts: int,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "fund_delta", fund_delta)
        object.__setattr__(self, "returned_to_trader", returned_to_trader)
        object.__setattr__(self, "adl_quantity", adl_quantity)
        object.__setattr__(self, "ts", ts)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountLiquidation(FieldsPickled):
    """A cross account found liquidatable: ``markets`` start closing its positions
    (``policy``: all_at_once, step_down, or bankrupt: closed whole)."""

    asset: str
    account: int
    equity: int
    maintenance_margin: int
    markets: tuple[str, ...]
    policy: str
    ts: int


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class AdlNotice(FieldsPickled):
    """To a deleveraged account: ``quantity`` of its position closed at ``price``."""

    market: str
    liquidation_id: int
    account: int
    side: int
    quantity: int
    price: int
    realised: int
    ts: int

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        market: str,
        liquidation_id: int,
        account: int,
        side: int,
        quantity: int,
        price: int,
        realised: int,
        ts: int,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "side", side)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "realised", realised)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class AdlEvent(FieldsPickled):
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

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        market: str,
        asset: str,
        liquidation_id: int,
        quantity: int,
        price: int,
        closed_notional: int,
        deficit: int,
        haircut: int,
        overshoot: int,
        counterparties: int,
        ts: int,
        reason: AdlReason = AdlReason.FUND_EMPTY,
        fund_paid: int = 0,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "liquidation_id", liquidation_id)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "closed_notional", closed_notional)
        object.__setattr__(self, "deficit", deficit)
        object.__setattr__(self, "haircut", haircut)
        object.__setattr__(self, "overshoot", overshoot)
        object.__setattr__(self, "counterparties", counterparties)
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "fund_paid", fund_paid)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class MarginCall(FieldsPickled):
    """A position's mark came within the market's margin-call distance of its LP."""

    market: str
    account: int
    margin_balance: int
    maintenance_margin: int
    liquidation_price: int
    ts: int

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        market: str,
        account: int,
        margin_balance: int,
        maintenance_margin: int,
        liquidation_price: int,
        ts: int,
    ) -> None:
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "margin_balance", margin_balance)
        object.__setattr__(self, "maintenance_margin", maintenance_margin)
        object.__setattr__(self, "liquidation_price", liquidation_price)
        object.__setattr__(self, "ts", ts)


@mypyc_attr(allow_interpreted_subclasses=True, serializable=True)
@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class FundFlow(FieldsPickled):
    """A fund ledger entry, as published."""

    asset: str
    market: str
    kind: FundKind
    amount: int
    balance_after: int
    cause: str
    ts: int

    # Written out (init=False): compiled, a dataclass's generated __init__ runs as
    # interpreted code (tests/core/test_explicit_inits.py: it sets every field).
    def __init__(
        self,
        *,
        asset: str,
        market: str,
        kind: FundKind,
        amount: int,
        balance_after: int,
        cause: str,
        ts: int,
    ) -> None:
        object.__setattr__(self, "asset", asset)
        object.__setattr__(self, "market", market)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "balance_after", balance_after)
        object.__setattr__(self, "cause", cause)
        object.__setattr__(self, "ts", ts)


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkGuardChanged(FieldsPickled):
    """A market's mark-price guard went on, changed reason or cleared.

    ``reason`` is a :class:`~riskd.core.mark_guard.GuardReason` value, "" when
    cleared; ``mark`` the newest mark, ``good_mark`` the last one that passed
    (0: none yet)."""

    market: str
    reason: str
    mark: int
    good_mark: int
    index_price: int
    ts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketStatusChanged(FieldsPickled):
    """A market's lifecycle status changed (a ``MarketStatus`` value)."""

    market: str
    status: str
    previous: str
    ts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketSettled(FieldsPickled):
    """A market was settled and delisted: ``positions`` closed at ``price``;
    ``paid_out`` the margin returned to wallets, ``fee_pool`` the market's fee
    pool after (the closes' rounding went there).  ``cross_positions`` of them
    were cross: ``charged`` is what their accounts' cross wallets paid beyond
    their bands; ``deficit`` what bankrupt accounts (isolated and cross) could
    not pay, and ``haircut`` what the winners gave up for it (rounded up)."""

    market: str
    asset: str
    price: int
    positions: int
    paid_out: int
    fee_pool: int
    ts: int
    cross_positions: int = 0
    charged: int = 0
    deficit: int = 0
    haircut: int = 0


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
    | MarkGuardChanged
    | MarketStatusChanged
    | MarketSettled
)
