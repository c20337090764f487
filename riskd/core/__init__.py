"""riskd's pure domain core: exact margin, liquidation, insurance fund and ADL.

Deterministic and I/O-free: no clock, no threads, no trio, grpc or prometheus
(a test enforces the imports).  Feed :class:`Engine` (or one
:class:`MarketEngine` and one :class:`InsuranceFund` per asset, as the daemon's
actors do) with inputs from :mod:`riskd.core.events`; read effects back.
"""

from riskd.core.engine import Engine
from riskd.core.errors import Code, Rejected
from riskd.core.inputs import BY_NAME, KINDS, InputKind, Journal, Owner, kind_of
from riskd.core.insurance_fund import FundPolicy, InsuranceFund
from riskd.core.invariants import digest, violations
from riskd.core.market import AdlPolicy, ContractType, LiquidationMode, MarketSpec
from riskd.core.market_engine import MarketEngine, PositionView
from riskd.core.position import BACKSTOP_ACCOUNT, Position
from riskd.core.tiers import TierTable
from riskd.core.units import Asset

__all__ = [
    "Engine",
    "Code",
    "Rejected",
    "KINDS",
    "BY_NAME",
    "InputKind",
    "Journal",
    "Owner",
    "kind_of",
    "FundPolicy",
    "InsuranceFund",
    "digest",
    "violations",
    "AdlPolicy",
    "ContractType",
    "LiquidationMode",
    "MarketSpec",
    "MarketEngine",
    "PositionView",
    "BACKSTOP_ACCOUNT",
    "Position",
    "TierTable",
    "Asset",
]
