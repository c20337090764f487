"""Journal records: one typed class per kind, and the one way to apply them.

Each record is exactly what the sequencer decided, in the order it decided
it; :func:`apply` replays one through a :class:`Target`.  The daemon's
sequencer is one target (its actors, ``riskd.actors.sequencer``), the pure
engine another (:class:`EngineTarget`, used by ``riskd audit`` and the
upgrade tests), so both follow the same rules, stated once here:

* an ingest batch's updates are applied in order; a row that did not decode
  when it arrived (a :class:`~riskd.core.Rejected`) is skipped, and so is an
  update the engine refuses again (it was refused the first time);
* a journaled withdrawal goes straight to the wallet: it passed the
  bad-debt pause when it was decided (or was decided before that check
  existed, and its money has left), so replay never re-asks the pause;
* a market change is applied as ``UpdateMarket`` applied it;
* a settings record installs the recorded settings of the markets it
  creates: replay uses the settings a market was recorded under, not the
  ones the config file holds today;
* an admin input (a market's status, its mark guard, its settlement) is
  applied like a streamed one, and skipped if the engine refuses it again;
* a market added at runtime begins with its recorded settings;
* an asset added at runtime begins (empty wallets and fund, its recorded
  fund policy) unless it exists already (the config file declares it since).

How records are written as text: :mod:`riskd.storage.codec`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from riskd.core import (
    Asset,
    Effect,
    Engine,
    FundInjection,
    FundPolicy,
    Input,
    InsuranceFund,
    MarketEngine,
    MarketSpec,
    Rejected,
    Wallets,
    Withdrawal,
)

__all__ = [
    "IngestBatch",
    "WithdrawalDecided",
    "FundInjected",
    "MarketUpdated",
    "EpochAssigned",
    "MarketSettings",
    "AdminInput",
    "MarketAdded",
    "AssetAdded",
    "Record",
    "Target",
    "apply",
    "EngineTarget",
]


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """A gateway batch's fresh updates (duplicates already dropped).

    ``offset``: where ``updates`` began in the gateway's request, i.e. how many
    duplicates were dropped before it (kept so a replay files rejections under
    the index the gateway saw).
    """

    gateway: str
    epoch: int
    updates: tuple[tuple[int, Input | Rejected], ...]
    offset: int = 0


@dataclass(frozen=True, slots=True)
class WithdrawalDecided:
    """A withdrawal request that got a decision (approved or refused by the wallet)."""

    withdrawal_id: int
    withdrawal: Withdrawal


@dataclass(frozen=True, slots=True)
class FundInjected:
    injection: FundInjection


@dataclass(frozen=True, slots=True)
class MarketUpdated:
    """``UpdateMarket``, or a start applying an edited config file: the settings changed."""

    market: str
    changes: Mapping[str, Any]
    ts: int = 0


@dataclass(frozen=True, slots=True)
class EpochAssigned:
    """A gateway session was handed a fresh epoch (no state of the engine's)."""

    gateway: str
    epoch: int


@dataclass(frozen=True, slots=True)
class MarketSettings:
    """The config file's market settings as a start found them.

    Written as a new journal's first record, and at a start whose config file
    changed a market's settings or added a market (after the
    :class:`MarketUpdated` records applying the change).  ``created``: the
    markets that begin here, with these settings; the others already existed
    and only the record of what the file said moves on (it is what the next
    start compares the file with).
    """

    markets: Mapping[str, MarketSpec]
    created: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdminInput:
    """An operator's change to a market (an input of ``Journal.ADMIN``: its
    status, its mark guard, its final settlement)."""

    input: Input


@dataclass(frozen=True, slots=True)
class MarketAdded:
    """``AdminService.AddMarket``: a market begins here with these settings
    (``ts``: when the sequencer took it; 0 in format 3 records)."""

    spec: MarketSpec
    ts: int = 0


@dataclass(frozen=True, slots=True)
class AssetAdded:
    """``AdminService.AddAsset``: a settlement asset begins here, its fund under ``fund``."""

    asset: Asset
    fund: FundPolicy
    ts: int = 0


Record = (
    IngestBatch
    | WithdrawalDecided
    | FundInjected
    | MarketUpdated
    | EpochAssigned
    | MarketSettings
    | AdminInput
    | MarketAdded
    | AssetAdded
)

R = TypeVar("R", covariant=True)


class Target(Protocol[R]):
    """What a record is replayed into: one method per record kind."""

    def ingest(self, r: IngestBatch) -> R: ...

    def withdrawal(self, r: WithdrawalDecided) -> R: ...

    def injection(self, r: FundInjected) -> R: ...

    def market_update(self, r: MarketUpdated) -> R: ...

    def epoch(self, r: EpochAssigned) -> R: ...

    def settings(self, r: MarketSettings) -> R: ...

    def admin(self, r: AdminInput) -> R: ...

    def market_added(self, r: MarketAdded) -> R: ...

    def asset_added(self, r: AssetAdded) -> R: ...


def apply(record: Record, target: Target[R]) -> R:
    """Replay one record into ``target`` (the rules: this module's docstring)."""
    match record:
        case IngestBatch():
            return target.ingest(record)
        case WithdrawalDecided():
            return target.withdrawal(record)
        case FundInjected():
            return target.injection(record)
        case MarketUpdated():
            return target.market_update(record)
        case EpochAssigned():
            return target.epoch(record)
        case MarketSettings():
            return target.settings(record)
        case AdminInput():
            return target.admin(record)
        case MarketAdded():
            return target.market_added(record)
        case AssetAdded():
            return target.asset_added(record)
    raise TypeError(f"not a journal record: {type(record).__name__}")


class EngineTarget:
    """Replays records into a pure :class:`~riskd.core.Engine`; each call returns the effects."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ingest(self, r: IngestBatch) -> list[Effect]:
        out: list[Effect] = []
        for _, x in r.updates:
            if not isinstance(x, Rejected):
                with contextlib.suppress(Rejected):
                    out += self.engine.apply(x)
        return out

    def withdrawal(self, r: WithdrawalDecided) -> list[Effect]:
        w = r.withdrawal
        wallets = self.engine.wallets.get(w.asset)
        if wallets is not None:
            with contextlib.suppress(Rejected):  # bad input then was refused then
                self.engine.decide_withdrawal(w)  # as the daemon's sequencer and wallet
        return []

    def injection(self, r: FundInjected) -> list[Effect]:
        with contextlib.suppress(Rejected):
            return self.engine.apply(r.injection)
        return []

    def market_update(self, r: MarketUpdated) -> list[Effect]:
        market = self.engine.markets.get(r.market)
        if market is None:
            return []  # refused when it was asked (unknown market): not journaled since
        with contextlib.suppress(Rejected, TypeError, ValueError):
            market.update_spec(dataclasses.replace(market.spec, **r.changes), r.ts)
        self.engine._route()
        out, self.engine.outbox = self.engine.outbox, []
        return out

    def epoch(self, r: EpochAssigned) -> list[Effect]:
        return []

    def settings(self, r: MarketSettings) -> list[Effect]:
        engine = self.engine
        for symbol in r.created:
            spec = r.markets[symbol]
            asset = spec.asset.symbol
            if asset not in engine.assets:
                # A market the config no longer declares: the journal still says
                # what it was, so the offline replay can rebuild it.
                engine.assets[asset] = spec.asset
                engine.wallets[asset] = Wallets(asset)
                engine.funds[asset] = InsuranceFund(asset)
            engine.markets[symbol] = MarketEngine(spec)
        return []

    def admin(self, r: AdminInput) -> list[Effect]:
        with contextlib.suppress(Rejected):
            return self.engine.apply(r.input)
        return []

    def market_added(self, r: MarketAdded) -> list[Effect]:
        with contextlib.suppress(Rejected):
            self.engine.add_market(r.spec)
        return []

    def asset_added(self, r: AssetAdded) -> list[Effect]:
        if r.asset.symbol not in self.engine.assets:  # else the config declares it since
            self.engine.add_asset(r.asset, r.fund)
        return []
