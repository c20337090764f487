"""Market specifications and the value of a quantity at a price.

A market is a perpetual contract, either *linear* (quote-settled: value =
quantity × price) or *inverse* (base-settled: value = contracts × contract value
/ price).  Everything the margin code needs from the contract type goes through
:meth:`MarketSpec.value`, an exact rational, and :meth:`MarketSpec.trade_value`,
its one explicit rounding.

Sign convention: the value of a signed quantity ``q`` (+ long) rises with the
price for both contract types, so unrealised PnL is always
``value(q, mark) - basis`` where ``basis`` is the sum of the trade values that
opened the position.  For inverse contracts that makes the value negative
(``-q × cv / P``); only differences of values ever mean money.
"""

from __future__ import annotations

import enum
import functools
import typing
from dataclasses import dataclass, field, fields

from riskd.core.tiers import SpecError, TierTable
from riskd.core.units import INT64_MAX, PPM, SHORT_MAX, Asset

__all__ = [
    "ContractType",
    "LiquidationMode",
    "AdlPolicy",
    "PartialLiquidation",
    "TakeoverPrice",
    "CrossLiquidation",
    "MarketSpec",
    "SpecError",
    "enum_settings",
]


class ContractType(enum.Enum):
    LINEAR = "linear"
    INVERSE = "inverse"


class LiquidationMode(enum.Enum):
    """How a liquidated position finds its counterparty.

    ``BOOK``: riskd emits a liquidation order; the gateway places it and reports
    the fills; the unfilled rest is auto-deleveraged.  ``TAKEOVER``: the position
    passes at the mark price to the fund's backstop account (BitMEX, Binance).
    """

    BOOK = "book"
    TAKEOVER = "takeover"


class AdlPolicy(enum.Enum):
    PNL_LEVERAGE = "pnl_leverage"  # BitMEX/Bybit: PnL% x effective leverage
    LEVERAGE_PNL = "leverage_pnl"  # Binance variant
    PRO_RATA_RISK = "pro_rata_risk"  # pro rata to profit x leverage (Chitra 2025)


class PartialLiquidation(enum.Enum):
    """How much of a crossed but solvent position one liquidation closes.

    ``FULL``: all of it.  ``TIER_STEP``: just enough to leave its risk tier.
    ``FRACTION`` (Hyperliquid): ``partial_fraction_ppm`` of it, then, if it is
    crossed again within ``partial_cooldown_ms``, the rest.  A bankrupt
    position is always closed whole.
    """

    FULL = "full"
    TIER_STEP = "tier_step"
    FRACTION = "fraction"


class TakeoverPrice(enum.Enum):
    """Where the backstop takes a position over: the mark (Binance) or the
    position's bankruptcy price (BitMEX: the trader loses the whole margin and
    the backstop holds the surplus as its unrealised profit)."""

    MARK = "mark"
    BANKRUPTCY = "bankruptcy"


class CrossLiquidation(enum.Enum):
    """How a liquidatable cross account is closed (riskd.core.cross_margin): every
    cross position at once (Hyperliquid), or the largest maintenance margin first,
    re-checking the account after each (Binance, Bybit)."""

    ALL_AT_ONCE = "all_at_once"
    STEP_DOWN = "step_down"


#: The largest per-account open-order limit a market may set.
MAX_OPEN_ORDERS = 100_000

#: Integer settings and their inclusive ranges, checked on every spec (config,
#: UpdateMarket, journal replay).  A new integer field belongs here.
_RANGES: tuple[tuple[str, int, int], ...] = (
    ("price_decimals", 0, 18),
    ("quantity_decimals", 0, 18),
    ("tick_size", 1, INT64_MAX),
    ("step_size", 1, INT64_MAX),
    ("contract_value", 0, INT64_MAX),
    ("liquidation_fee_cap_ppm", 0, PPM),
    ("fund_fee_share_ppm", 0, PPM),
    ("margin_call_ppm", 0, PPM - 1),
    ("fill_price_band_ppm", 0, PPM),
    ("partial_fraction_ppm", 1, PPM),
    ("partial_cooldown_ms", 0, INT64_MAX),
    ("mark_stale_after_ms", 0, INT64_MAX),
    ("mark_max_jump_ppm", 0, PPM),
    ("mark_max_divergence_ppm", 0, PPM),
    ("order_price_band_ppm", 0, PPM),
    ("open_interest_cap", 0, INT64_MAX),
    ("max_position_notional", 0, INT64_MAX),
    ("max_open_orders", 1, MAX_OPEN_ORDERS),
)
_FLAGS = ("reduce_only", "partial_liquidation")
#: MarketSpec's fields in the order snapshots of format 6 and older pickled them
#: (positionally); never edit.
_POSITIONAL_FIELDS = (
    "symbol",
    "contract_type",
    "asset",
    "price_decimals",
    "tick_size",
    "quantity_decimals",
    "step_size",
    "tiers",
    "contract_value",
    "liquidation_fee_cap_ppm",
    "fund_fee_share_ppm",
    "liquidation_mode",
    "adl_policy",
    "fund_loss_cap",
    "reduce_only",
    "partial_liquidation",
    "margin_call_ppm",
    "fill_price_band_ppm",
    "partial_liquidation_policy",
    "partial_fraction_ppm",
    "partial_cooldown_ms",
    "takeover_price",
    "_linear_k",
    "_inverse_num",
    "_inverse_den",
    "_tier_coefs",
)
#: The positional layouts by length (never edit): the one above, and the one with
#: ``cross_liquidation`` after ``takeover_price`` (cross margin, before specs were
#: pickled by name).
_POSITIONAL_LAYOUTS: dict[int, tuple[str, ...]] = {
    len(_POSITIONAL_FIELDS): _POSITIONAL_FIELDS,
    len(_POSITIONAL_FIELDS) + 1: (
        *_POSITIONAL_FIELDS[:22],
        "cross_liquidation",
        *_POSITIONAL_FIELDS[22:],
    ),
}


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """Static description of a perpetual market.

    ``contract_value`` is, for inverse markets, the quote amount one quantity
    unit is worth (e.g. 100 USD per BTCUSD contract), in whole quote currency.
    For linear markets the asset must have at least
    ``price_decimals + quantity_decimals`` decimals so that quantity × price is
    an exact number of quantums.

    ``partial_liquidation`` steps a crossed position down one risk tier (closes
    just enough that its notional leaves its bracket) instead of closing it
    whole, when it is not bankrupt: shorthand for
    ``partial_liquidation_policy = TIER_STEP`` (see :class:`PartialLiquidation`
    for ``FRACTION`` and its ``partial_fraction_ppm`` and
    ``partial_cooldown_ms``).  ``takeover_price`` is where the backstop takes
    a position over (:class:`TakeoverPrice`).  ``margin_call_ppm`` is how close (as a
    fraction of the price) the mark may come to a position's liquidation price
    before a margin call is published; 0 disables margin calls.
    ``fill_price_band_ppm`` turns on the fill sanity checks (0: off; see
    :meth:`riskd.core.market_engine.MarketEngine.fill`): a fill's price must be
    within this fraction of the mark.  ``mark_stale_after_ms``,
    ``mark_max_jump_ppm`` and ``mark_max_divergence_ppm`` are the mark-price
    guard's limits (:mod:`riskd.core.mark_guard`; 0: that check is off).
    ``order_price_band_ppm`` (of the mark), ``open_interest_cap`` (quantity
    units, longs) and ``max_position_notional`` (quantums) are the risk
    gate's limits on orders (:mod:`riskd.core.risk_gate`; 0: no limit);
    ``max_open_orders`` (1..:data:`MAX_OPEN_ORDERS`) the most orders one
    account may have open here, so a gateway that never cancels cannot grow
    the book without bound.
    """

    symbol: str
    contract_type: ContractType
    asset: Asset
    price_decimals: int
    tick_size: int
    quantity_decimals: int
    step_size: int
    tiers: TierTable
    contract_value: int = 0
    liquidation_fee_cap_ppm: int = PPM
    fund_fee_share_ppm: int = 0
    liquidation_mode: LiquidationMode = LiquidationMode.TAKEOVER
    adl_policy: AdlPolicy = AdlPolicy.PNL_LEVERAGE
    fund_loss_cap: int | None = None
    reduce_only: bool = False
    partial_liquidation: bool = False
    margin_call_ppm: int = 20_000
    fill_price_band_ppm: int = 0
    partial_liquidation_policy: PartialLiquidation = PartialLiquidation.FULL
    partial_fraction_ppm: int = 200_000
    partial_cooldown_ms: int = 30_000
    takeover_price: TakeoverPrice = TakeoverPrice.MARK
    # The mark-price guard (riskd.core.mark_guard); 0 turns each check off.
    mark_stale_after_ms: int = 0
    mark_max_jump_ppm: int = 0
    mark_max_divergence_ppm: int = 0
    # The risk gate (riskd.core.risk_gate); 0 turns each limit off.
    order_price_band_ppm: int = 0
    open_interest_cap: int = 0
    max_position_notional: int = 0
    # Nothing grows without bound: an account's open orders here (Binance's per-symbol 200).
    max_open_orders: int = 200
    cross_liquidation: CrossLiquidation = CrossLiquidation.ALL_AT_ONCE
    # Derived constants (see __post_init__); excluded from equality.
    _linear_k: int = field(default=0, compare=False, repr=False)
    _inverse_num: int = field(default=0, compare=False, repr=False)
    _inverse_den: int = field(default=1, compare=False, repr=False)
    _tier_coefs: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check()
        if self.contract_type is ContractType.LINEAR:
            exp = self.asset.decimals - self.price_decimals - self.quantity_decimals
            if exp < 0:
                need = self.price_decimals + self.quantity_decimals
                raise SpecError(
                    "price_decimals",
                    f"{self.asset.symbol} needs >= {need} decimals (price_decimals +"
                    " quantity_decimals) so quantity x price is exact",
                )
            object.__setattr__(self, "_linear_k", 10**exp)
        else:
            if self.contract_value <= 0:
                raise SpecError("contract_value", "inverse markets need contract_value > 0")
            # value(q, P) = -q * cv * 10**pd * 10**ad / (P * 10**qd)
            num = self.contract_value * 10**self.price_decimals * self.asset.scale
            object.__setattr__(self, "_inverse_num", num)
            object.__setattr__(self, "_inverse_den", 10**self.quantity_decimals)
        # Per tier: cum (scaled) and the long and short divisors of the
        # liquidation-price closed forms (see riskd.core.margin).
        k = self._linear_k or 1
        coefs = tuple(
            (t.cum_scaled, k * (PPM - t.mmr_ppm), k * (PPM + t.mmr_ppm))
            if self._linear_k
            else (t.cum_scaled, PPM + t.mmr_ppm, PPM - t.mmr_ppm)
            for t in self.tiers.tiers
        )
        object.__setattr__(self, "_tier_coefs", coefs)

    def __getstate__(self) -> dict[str, object]:
        """Pickled by field name, so a field added later reads old snapshots."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict[str, object] | list[object]) -> None:
        """Unpickle by name; a spec pickled positionally (before it was pickled by
        name) in one of the field orders it had then; settings it lacks take their
        defaults."""
        if isinstance(state, list):
            layout = _POSITIONAL_LAYOUTS.get(len(state))
            if layout is None:
                raise ValueError(f"a MarketSpec of {len(state)} values is not one riskd wrote")
            state = dict(zip(layout, state, strict=True))
        for f in fields(self):
            object.__setattr__(self, f.name, state.get(f.name, f.default))

    def _check(self) -> None:
        """Every setting in range; a :class:`SpecError` names the first that is not."""
        sym = self.symbol
        if not sym or not sym.isascii() or not sym.isprintable() or len(sym) > 32:
            raise SpecError("symbol", f"must be 1..32 printable ASCII characters: {sym!r}")
        for name, low, high in _RANGES:
            value = getattr(self, name)
            # bool is an int; a flag where a number belongs is a mistake, not 0 or 1.
            if type(value) is not int:
                raise SpecError(name, f"must be an integer, got {value!r}")
            if not low <= value <= high:
                span = f">= {low} and fit in int64" if high == INT64_MAX else f"in {low}..{high}"
                raise SpecError(name, f"must be {span}, got {value}")
        for name, kind in enum_settings():
            if not isinstance(getattr(self, name), kind):
                raise SpecError(name, f"must be a {kind.__name__}, got {getattr(self, name)!r}")
        for name in _FLAGS:
            if type(getattr(self, name)) is not bool:
                raise SpecError(name, f"must be true or false, got {getattr(self, name)!r}")
        if self.fund_loss_cap is not None and (
            type(self.fund_loss_cap) is not int or not 0 <= self.fund_loss_cap <= INT64_MAX
        ):
            raise SpecError(
                "fund_loss_cap", f"must be 0..{INT64_MAX} quantums, got {self.fund_loss_cap!r}"
            )
        if self.contract_type is ContractType.LINEAR and self.contract_value:
            raise SpecError(
                "contract_value",
                "only inverse markets have a contract value (linear: leave it out)",
            )
        if self.partial_policy is not PartialLiquidation.FULL and (
            self.liquidation_fee_cap_ppm >= PPM
        ):
            raise SpecError(
                "partial_liquidation_policy"
                if self.partial_liquidation_policy is not PartialLiquidation.FULL
                else "partial_liquidation",
                "partial liquidation needs a liquidation fee cap below 100 %"
                " (liquidation_fee_cap_ppm < 1000000)",
            )

    @property
    def partial_policy(self) -> PartialLiquidation:
        """The policy in force: ``partial_liquidation = true`` alone means tier steps."""
        if self.partial_liquidation_policy is PartialLiquidation.FULL and self.partial_liquidation:
            return PartialLiquidation.TIER_STEP
        return self.partial_liquidation_policy

    @property
    def is_linear(self) -> bool:
        return self.contract_type is ContractType.LINEAR

    def value(self, qty: int, price: int) -> tuple[int, int]:
        """Exact value of a signed quantity at a price as ``(num, den)``, den > 0."""
        if self._linear_k:
            # The price's factor first and the quantity's sign apart: both factors
            # then stay small and non-negative, which the compiled core multiplies
            # natively (see units.mul).
            unit = price * self._linear_k
            return (qty * unit if qty >= 0 else -(-qty * unit)), 1
        return -qty * self._inverse_num, price * self._inverse_den

    def trade_value(self, qty: int, price: int) -> int:
        """Value of a trade of signed ``qty`` for the side that trades it, in quantums.

        Both sides of a trade use the same number with opposite signs, so its
        rounding (down, for inverse contracts) moves nothing between accounts
        that is not booked: it becomes part of each side's cost basis.
        """
        num, den = self.value(qty, price)
        return num // den

    def side_value(self, qty: int, price: int) -> int:
        """Value of one side's signed ``qty`` in a fill, rounded against that side.

        A side's equity moves by ``value(qty, price) - side_value``, so rounding
        its value up (toward plus infinity) charges the side any fraction of a
        quantum.  The two sides of a fill each round their own value up; the
        sum of the two (1 quantum or 0) is the fill's residue, which goes to
        the market's fee pool.  Linear values are exact: no residue.
        """
        num, den = self.value(qty, price)
        return -((-num) // den)

    def notional(self, qty: int, price: int) -> tuple[int, int]:
        """Exact notional ``|value|`` as ``(num, den)``."""
        num, den = self.value(qty, price)
        return abs(num), den

    def check_price(self, price: int) -> str | None:
        """Why a price is unacceptable, or None."""
        if price <= 0:
            return f"must be > 0, got {price}"
        if price > SHORT_MAX and price > INT64_MAX:  # short first: no boxing
            return f"{price} does not fit in int64"
        if price % self.tick_size:
            return f"{price} is not a multiple of tick_size {self.tick_size}"
        return None

    def check_quantity(self, qty: int) -> str | None:
        if qty <= 0:
            return f"must be > 0, got {qty}"
        if qty > SHORT_MAX and qty > INT64_MAX:
            return f"{qty} does not fit in int64"
        if qty % self.step_size:
            return f"{qty} is not a multiple of step_size {self.step_size}"
        return None


@functools.cache
def enum_settings() -> tuple[tuple[str, type[enum.Enum]], ...]:
    """MarketSpec's enum-typed settings (a new one is checked without a change here)."""
    hints = typing.get_type_hints(MarketSpec)
    return tuple(
        (f.name, hints[f.name])
        for f in fields(MarketSpec)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], enum.Enum)
    )
