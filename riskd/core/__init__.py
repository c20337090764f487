"""riskd's pure domain core: exact margin, liquidation, insurance fund and ADL.

Deterministic and I/O-free: no clock, no threads, no trio, grpc or prometheus
(a test enforces the imports).  Feed :class:`Engine` (or one
:class:`MarketEngine` and one :class:`InsuranceFund` per asset, as the daemon's
actors do) with inputs from :mod:`riskd.core.events`; read effects back.

This module is the core's public face: code outside ``riskd/core`` imports
from here, not from the submodules.  Every input kind is one entry of
:data:`KINDS` (:mod:`riskd.core.inputs`); every liquidation stage change is one
row of :mod:`riskd.core.liquidation_machine`'s table.
"""

from riskd.core import cross_margin
from riskd.core.cross_margin import AccountView, CrossPositionView
from riskd.core.engine import Engine, split_effects
from riskd.core.errors import Code, Rejected
from riskd.core.events import (
    AccountLiquidation,
    AdlEvent,
    AdlNotice,
    AdlReason,
    AmendOrder,
    CancelOrder,
    CheckOrder,
    Deposit,
    Effect,
    Fill,
    FundCredit,
    FundDecision,
    FundFlow,
    FundingRate,
    FundInjection,
    FundKind,
    Input,
    LiquidationDone,
    LiquidationFill,
    LiquidationOrder,
    LiquidationSettled,
    MarginCall,
    MarginTransfer,
    MarkPrice,
    ReserveClaim,
    ReserveSettle,
    SetMarginMode,
    TakeoverClaim,
    WalletCredit,
    Withdrawal,
)
from riskd.core.hash_chain import GENESIS, chain, line_hash, link
from riskd.core.inputs import BY_NAME, KINDS, InputKind, Journal, Owner, kind_of
from riskd.core.insurance_fund import (
    DailyReport,
    FundEffect,
    FundPolicy,
    InsuranceFund,
    LedgerEntry,
)
from riskd.core.invariants import digest, violations
from riskd.core.ledger import Ledger, NotInMemory
from riskd.core.liquidation import Liquidation, Stage
from riskd.core.liquidation_machine import IllegalTransition, LiquidationMachine
from riskd.core.market import (
    AdlPolicy,
    ContractType,
    CrossLiquidation,
    LiquidationMode,
    MarketSpec,
    enum_settings,
)
from riskd.core.market_engine import MarketEngine, PositionView
from riskd.core.orders import Order, OrderBook
from riskd.core.position import BACKSTOP_ACCOUNT, Position
from riskd.core.recent_ids import (
    DEFAULT_CAPACITY,
    WithdrawalDecision,
    WithdrawalDecisions,
    check_id,
)
from riskd.core.risk_gate import OrderRefused, Refusal
from riskd.core.stress import DEFAULT_MOVES_PPM, StressRow, check_moves, move_label
from riskd.core.tiers import SpecError, TierTable
from riskd.core.units import INT64_MAX, PPM, Asset, ceil_div, check_int64, check_positive
from riskd.core.wallet import Wallets, check_account, unsettled_bad_debt, withdrawals_paused

__all__ = [
    # the engine and its parts
    "Engine",
    "split_effects",
    "MarketEngine",
    "PositionView",
    "InsuranceFund",
    "FundPolicy",
    "FundEffect",
    "LedgerEntry",
    "DailyReport",
    "Ledger",
    "NotInMemory",
    "Wallets",
    "WithdrawalDecision",
    "WithdrawalDecisions",
    "DEFAULT_CAPACITY",
    "check_id",
    "unsettled_bad_debt",
    "withdrawals_paused",
    "check_account",
    "Position",
    "BACKSTOP_ACCOUNT",
    "Liquidation",
    "Stage",
    "LiquidationMachine",
    "IllegalTransition",
    # inputs: the table, and the kinds
    "KINDS",
    "BY_NAME",
    "InputKind",
    "Journal",
    "Owner",
    "kind_of",
    "Input",
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
    "SetMarginMode",
    # cross margin
    "cross_margin",
    "AccountView",
    "CrossPositionView",
    "CrossLiquidation",
    # effects
    "Effect",
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
    # refusals
    "Code",
    "Rejected",
    "SpecError",
    "OrderRefused",
    "Refusal",
    # open orders
    "Order",
    "OrderBook",
    # checks and the hash chain
    "digest",
    "violations",
    "GENESIS",
    "chain",
    "link",
    "line_hash",
    # stress tests
    "StressRow",
    "DEFAULT_MOVES_PPM",
    "check_moves",
    "move_label",
    # markets and units
    "MarketSpec",
    "AdlPolicy",
    "ContractType",
    "LiquidationMode",
    "enum_settings",
    "TierTable",
    "Asset",
    "INT64_MAX",
    "PPM",
    "ceil_div",
    "check_int64",
    "check_positive",
]
