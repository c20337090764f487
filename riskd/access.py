"""Who may do what: identities, roles, the markets each gateway may send for.

An identity is the name in a client certificate (see :mod:`riskd.api.auth`
for how it is read from the TLS session; never from request metadata).  The
config's ``[access.<identity>]`` tables map it to a :class:`Grant`::

    [access.gateway-eu]
    roles = ["gateway"]
    markets = ["BTC-USDT", "ETH-USDT"]    # or ["*"]
    updates_per_second = 20000            # 0: unlimited
    burst = 40000

Roles are deliberately few and coarse: ``gateway`` streams updates and asks
for withdrawals (only for its markets and their settlement assets, and only
for accounts with no position or margin outside its markets: see
:meth:`Grant.withdrawal_refusal`),
``reader`` queries state and follows events, ``admin`` changes markets and
seeds funds.  An identity holds any combination.  ``markets`` also scopes
the event stream: an identity with a market list follows only those
markets' events (a gateway must list its markets; a reader or admin without
the key sees all).

Plaintext serving (local development only) has no identities: every caller
gets :data:`DEVELOPMENT`, which may do everything.

Pure: no gRPC here, so the rules are testable on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Role", "Grant", "Policy", "DEVELOPMENT", "ALL_MARKETS", "ACCESS_KEYS"]

ALL_MARKETS = "*"
#: The keys of an ``[access.<identity>]`` entry.
ACCESS_KEYS = frozenset({"roles", "markets", "updates_per_second", "burst"})


class Role(enum.Enum):
    GATEWAY = "gateway"
    READER = "reader"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one identity may do.  ``markets``/``assets`` None: all of them."""

    identity: str
    roles: frozenset[Role]
    markets: frozenset[str] | None = None
    assets: frozenset[str] | None = None
    updates_per_second: int = 0
    burst: int = 0

    def covers_market(self, market: str) -> bool:
        return self.markets is None or market in self.markets

    def covers_asset(self, asset: str) -> bool:
        return self.assets is None or asset in self.assets

    def withdrawal_refusal(self, asset: str, held: Iterable[str]) -> tuple[str, str] | None:
        """``(field, why)`` if this identity may not withdraw ``asset`` for an
        account holding a position or isolated margin in the markets ``held``
        (those settled in ``asset``); None if it may.

        The identity must serve a market settled in the asset, and every
        market where the account's money in that asset is at work: a gateway
        granted ETH-USDT cannot take the USDT an account keeps for its
        BTC-USDT positions.  A flat account's wallet is the asset's, not a
        market's: any gateway of the asset may pay it out (it could move it
        into margin in its own markets anyway).
        """
        if not self.covers_asset(asset):
            return "asset", f"{self.identity!r} serves no market settled in {asset!r}"
        outside = sorted(m for m in set(held) if not self.covers_market(m))
        if outside:
            return "account", (
                f"the account holds a position or margin in {', '.join(outside)}, which"
                f" {self.identity!r} is not granted: only an identity granted every market"
                f" where the account's {asset} is at work may withdraw it"
            )
        return None


DEVELOPMENT = Grant("development", frozenset(Role))


class Policy:
    """The ``[access]`` section: identity → :class:`Grant`."""

    def __init__(self, grants: Iterable[Grant]) -> None:
        self.grants = {g.identity: g for g in grants}

    def grant(self, identity: str) -> Grant | None:
        return self.grants.get(identity)

    @classmethod
    def parse(
        cls,
        table: Mapping[str, Any],
        market_assets: Mapping[str, str],
        default_rate: int = 0,
        default_burst: int = 0,
    ) -> Policy:
        """Build from TOML; ``market_assets`` maps each served market to its asset.

        Errors name the key (``access.<identity>.<key>``) and are raised at
        start-up: a typo in a market name must not silently grant nothing.
        """
        grants = []
        for identity, entry in table.items():
            where = f"access.{identity}"
            if not isinstance(entry, Mapping):
                raise ValueError(f"[{where}] must be a table")
            unknown = set(entry) - ACCESS_KEYS
            if unknown:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            try:
                roles = frozenset(Role(r) for r in entry.get("roles", ()))
            except ValueError as e:
                raise ValueError(f"{where}.roles: {e}; roles are gateway, reader, admin") from e
            if not roles:
                raise ValueError(f"{where}.roles: at least one role is required")
            names = list(entry.get("markets", ()))
            markets: frozenset[str] | None
            assets: frozenset[str] | None
            if names == [ALL_MARKETS] or ("markets" not in entry and Role.GATEWAY not in roles):
                markets = assets = None
            else:
                missing = [m for m in names if m not in market_assets]
                if missing:
                    raise ValueError(f"{where}.markets: unknown markets {missing}")
                if Role.GATEWAY in roles and not names:
                    raise ValueError(f'{where}.markets: a gateway needs markets (or ["*"])')
                markets = frozenset(names)
                assets = frozenset(market_assets[m] for m in names)
            rate = int(entry.get("updates_per_second", default_rate))
            burst = int(entry.get("burst", default_burst or rate))
            if rate < 0 or burst < 0:
                raise ValueError(f"{where}: updates_per_second and burst must be >= 0")
            grants.append(Grant(identity, roles, markets, assets, rate, burst))
        return cls(grants)
