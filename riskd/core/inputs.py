"""The one table of input kinds: who owns each input, how it is applied, how it is journaled.

Every place that dispatches on an input's type reads :data:`KINDS` instead of
spelling the kinds out again: :class:`riskd.core.Engine`, the market, wallet
and fund actors, the journal codec (and so ``riskd audit``), and the
sequencer and ingest API for routing.  Adding an input kind is one
:class:`InputKind` entry here, its dataclass in :mod:`riskd.core.events` and
the core logic its ``on_*`` calls (plus its wire message, if gateways stream
it).

Validation is in two places, both before anything changes: routing (the
owner named by ``key`` must exist: NOT_FOUND naming that field) and the
owner's method the entry calls, which validates completely before it
mutates (a :class:`~riskd.core.errors.Rejected` leaves the state as it was).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from riskd.core.errors import Rejected
from riskd.core.events import (
    AmendOrder,
    CancelOrder,
    CheckOrder,
    Deposit,
    Fill,
    FundingRate,
    FundInjection,
    Input,
    LiquidationDone,
    LiquidationFill,
    MarginTransfer,
    MarketStatusChange,
    MarkGuardOverride,
    MarkPrice,
    SetMarginMode,
    SettleMarket,
    Withdrawal,
)

if TYPE_CHECKING:
    from riskd.core.insurance_fund import InsuranceFund
    from riskd.core.market_engine import MarketEngine
    from riskd.core.wallet import Wallets

__all__ = ["Owner", "Journal", "InputKind", "KINDS", "BY_NAME", "kind_of"]

I = TypeVar("I", bound=Input)  # noqa: E741


class Owner(enum.Enum):
    """Which part of the state applies an input: one per market, or per settlement asset."""

    MARKET = "market"
    WALLET = "wallet"
    FUND = "fund"


class Journal(enum.Enum):
    """The journal record an input is kept in (:mod:`riskd.storage.records`)."""

    INGEST = "ingest"  # a row of an IngestBatch (streamed by gateways)
    WITHDRAWAL = "withdrawal"  # WithdrawalDecided (the Withdraw RPC)
    INJECTION = "injection"  # FundInjected (the admin InjectFund RPC)
    ADMIN = "admin"  # AdminInput (the lifecycle and mark-guard admin RPCs)


# A plain class, not a dataclass: mypyc cannot compile a generic dataclass.
class InputKind(Generic[I]):
    """One input kind.

    ``key``: the input's field naming its owner (a market symbol or an asset);
    routing refuses an unknown one with NOT_FOUND naming this field.
    ``wire``: the ``Update`` oneof name in ingest.proto (None: not streamed,
    a unary RPC carries it).  ``liquidation_path``: keeps liquidations going,
    so never charged to a gateway's rate limit.  ``wallet_leg``: the account
    and units the owning asset's wallet must pay before the market applies it
    (None: nothing; the market checks it can take them first).
    ``paused_by_bad_debt``: refused while the asset has bad debt not yet
    placed.  Exactly one of ``on_market``/``on_wallet``/``on_fund`` is set,
    the one ``owner`` names: the core method that applies it.
    """

    def __init__(
        self,
        *,
        cls: type[I],
        owner: Owner,
        key: str,
        journal: Journal,
        wire: str | None,
        liquidation_path: bool = False,
        wallet_leg: Callable[[I], tuple[int, int] | None] | None = None,
        paused_by_bad_debt: bool = False,
        on_market: Callable[[MarketEngine, I], None] | None = None,
        on_wallet: Callable[[Wallets, I], object] | None = None,
        on_fund: Callable[[InsuranceFund, I], object] | None = None,
    ) -> None:
        self.cls: Final = cls
        self.owner: Final = owner
        self.key: Final = key
        self.journal: Final = journal
        self.wire: Final = wire
        self.liquidation_path: Final = liquidation_path
        self.wallet_leg: Final = wallet_leg
        self.paused_by_bad_debt: Final = paused_by_bad_debt
        self.on_market: Final = on_market
        self.on_wallet: Final = on_wallet
        self.on_fund: Final = on_fund
        set_ = [f for f in (on_market, on_wallet, on_fund) if f is not None]
        wanted = {Owner.MARKET: on_market, Owner.WALLET: on_wallet, Owner.FUND: on_fund}[owner]
        if len(set_) != 1 or wanted is None:
            raise ValueError(f"{cls.__name__}: exactly the {owner.value} apply is set")

    def __repr__(self) -> str:
        return f"InputKind({self.name})"

    @property
    def name(self) -> str:
        """The class name: what the journal's ingest rows and metrics call it."""
        return self.cls.__name__

    def owner_of(self, x: I) -> str:
        """The symbol or asset of the market/wallet/fund that applies ``x``."""
        value: str = getattr(x, self.key)
        return value


def _settle(m: MarketEngine, x: SettleMarket) -> None:
    """The market alone settles isolated positions only: Engine and the sequencer
    route a settlement themselves, with the cross accounts' deficits."""
    m.settle(x.price, x.ts)


def _transfer(m: MarketEngine, t: MarginTransfer) -> None:
    """Margin in (after the wallet leg paid it) or out; 0 moves nothing."""
    if t.amount > 0:
        m.credit_margin(t.account, t.amount, t.ts)
    elif t.amount < 0:
        m.withdraw_margin(t.account, -t.amount, t.ts)
    else:
        raise Rejected.invalid("amount", "must not be 0")


def _transfer_in(t: MarginTransfer) -> tuple[int, int] | None:
    return (t.account, t.amount) if t.amount > 0 else None


def _market(
    cls: type[I], wire: str, apply: Callable[[MarketEngine, I], None], **kw: Any
) -> InputKind[I]:
    """A kind a market applies, streamed by gateways and journaled in ingest batches."""
    return InputKind(
        cls=cls,
        owner=Owner.MARKET,
        key="market",
        journal=Journal.INGEST,
        wire=wire,
        on_market=apply,
        **kw,
    )


def _admin(cls: type[I], apply: Callable[[MarketEngine, I], None]) -> InputKind[I]:
    """A market's lifecycle or guard change an operator makes (journaled as AdminInput)."""
    return InputKind(
        cls=cls, owner=Owner.MARKET, key="market", journal=Journal.ADMIN, wire=None, on_market=apply
    )


_TABLE: tuple[InputKind[Any], ...] = (
    _market(Fill, "fill", lambda m, x: m.fill(x)),
    _market(MarkPrice, "mark_price", lambda m, x: m.mark_price(x), liquidation_path=True),
    InputKind(
        cls=Deposit,
        owner=Owner.WALLET,
        key="asset",
        journal=Journal.INGEST,
        wire="deposit",
        on_wallet=lambda w, x: w.deposit(x.account, x.amount, x.deposit_id),
    ),
    InputKind(
        cls=Withdrawal,
        owner=Owner.WALLET,
        key="asset",
        journal=Journal.WITHDRAWAL,
        wire=None,
        paused_by_bad_debt=True,
        on_wallet=lambda w, x: w.withdraw(x.account, x.amount),
    ),
    _market(MarginTransfer, "margin_transfer", _transfer, wallet_leg=_transfer_in),
    _market(FundingRate, "funding_rate", lambda m, x: m.funding(x)),
    _market(
        LiquidationFill,
        "liquidation_fill",
        lambda m, x: m.liquidation_fill(x),
        liquidation_path=True,
    ),
    _market(
        LiquidationDone,
        "liquidation_done",
        lambda m, x: m.liquidation_done(x),
        liquidation_path=True,
    ),
    _market(SetMarginMode, "margin_mode", lambda m, x: m.set_margin_mode(x)),
    InputKind(
        cls=FundInjection,
        owner=Owner.FUND,
        key="asset",
        journal=Journal.INJECTION,
        wire=None,
        on_fund=lambda f, x: f.inject(x.amount, x.cause, x.ts),
    ),
    _market(CheckOrder, "check_order", lambda m, x: m.check_order(x)),
    _market(AmendOrder, "amend_order", lambda m, x: m.amend_order(x)),
    _market(CancelOrder, "cancel_order", lambda m, x: m.cancel_order(x)),
    _admin(MarketStatusChange, lambda m, x: m.set_status(x)),
    _admin(MarkGuardOverride, lambda m, x: m.override_guard(x)),
    _admin(SettleMarket, _settle),
)

#: Every input kind by its class, in the order format 2 lists them.
KINDS: Mapping[type[Any], InputKind[Any]] = {k.cls: k for k in _TABLE}
#: The same by class name (the journal's and the metrics' name for it).
BY_NAME: Mapping[str, InputKind[Any]] = {k.name: k for k in _TABLE}


def kind_of(x: object) -> InputKind[Any]:
    """The entry of ``x``'s kind; an object that is no input is refused (field ``kind``)."""
    kind = KINDS.get(type(x))
    if kind is None:
        raise Rejected.invalid("kind", f"unknown input {type(x).__name__}")
    return kind
