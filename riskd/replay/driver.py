"""Drive a real riskd daemon through a price path over gRPC, then read back what it did.

Nothing goes around the API: the fund is seeded with ``AdminService.InjectFund``,
every deposit, margin transfer, fill, funding rate, mark and (book mode)
liquidation fill goes through the gateway helper (``riskd_client.gateway.Gateway``),
and the report is built from ``EventService.Subscribe``, ``QueryService`` and
``AdminService.CheckState``, cross-checked against a Prometheus scrape.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc

from riskd.core import FundPolicy
from riskd.replay import population, prices
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    ingest_pb2,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)
from riskd_client.gateway import Gateway  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Daemon", "ReplayRun", "Settings", "Wall", "check", "replay", "spawn"]

BACKSTOP = 2**64 - 1
TAKER_FEE_PPM = 500  # 0.05 %
MAKER_FEE_PPM = 200  # 0.02 %
ADL_POLICIES = {
    "pnl_leverage": types_pb2.ADL_POLICY_PNL_LEVERAGE,
    "leverage_pnl": types_pb2.ADL_POLICY_LEVERAGE_PNL,
    "pro_rata_risk": types_pb2.ADL_POLICY_PRO_RATA_RISK,
}
LIQUIDATION_MODES = {
    "takeover": types_pb2.LIQUIDATION_MODE_TAKEOVER,
    "book": types_pb2.LIQUIDATION_MODE_BOOK,
}
PARTIAL_POLICIES = {
    "full": types_pb2.PARTIAL_LIQUIDATION_POLICY_FULL,
    "tier_step": types_pb2.PARTIAL_LIQUIDATION_POLICY_TIER_STEP,
    "fraction": types_pb2.PARTIAL_LIQUIDATION_POLICY_FRACTION,
}
POPULATIONS = ("living", "static")
#: Margin modes a replay can open positions in: an isolated trader moves margin
#: into its position after the deposit; a cross trader switches the market to
#: cross margin first and keeps its whole deposit in the wallet as collateral.
#: ``--margin-mode cross`` is ``--cross-share 100``.
MARGIN_MODES = ("isolated", "cross")


def is_cross(account: int, share_pct: int) -> bool:
    """Whether a trader trades in cross margin: ``share_pct`` % of accounts, chosen
    by a fixed hash of the account id (the same traders in every run)."""
    return (account * 2_654_435_761) % 2**32 * 100 >> 32 < share_pct


@dataclass(frozen=True)
class Settings:
    """One replay's population and policy."""

    accounts: int = 200
    seed: int = 1
    leverage_mix: str = population.DEFAULT_LEVERAGE_MIX
    fund: Decimal = Decimal("100000")  # whole settlement units seeded into the fund
    adl_policy: str = "pnl_leverage"
    fee_cap_ppm: int = 1_000_000
    market: str = "BTC-USDT"
    #: None: as the config says (the embedded default: takeover, full, no cap).
    liquidation_mode: str | None = None
    partial: str | None = None
    fund_cap: Decimal | None = None  # whole settlement units over the fund's window
    population: str = "living"
    hold_minutes: int = 240  # mean time a living trader stays
    funding_rate_e8: int = 10_000  # per interval: 0.01 %, longs pay shorts
    funding_interval_s: int = 28_800  # 8 h, at 00:00, 08:00, 16:00 UTC
    margin_mode: str = "isolated"
    #: Percent of traders in cross margin (``--cross-share``; 100 with --margin-mode cross).
    cross_share: int = 0
    config: str | None = None  # a riskd config file (default: the embedded one)
    #: Settings a --compare varies, named in the label (so each run has its own).
    compared: tuple[str, ...] = ()

    def label(self) -> str:
        out = f"fund={self.fund} adl={self.adl_policy} fee_cap={self.fee_cap_ppm / 10_000:g}%"
        for name in ("accounts", "seed", "population", "leverage_mix"):
            if name in self.compared:
                out += f" {name}={getattr(self, name)}"
        if self.liquidation_mode:
            out += f" mode={self.liquidation_mode}"
        if self.partial:
            out += f" partial={self.partial}"
        if self.fund_cap is not None:
            out += f" fund_cap={self.fund_cap}"
        if self.cross_share:
            out += f" cross={self.cross_share}%"
        return out

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fund"] = str(self.fund)
        d["fund_cap"] = None if self.fund_cap is None else str(self.fund_cap)
        return d


def parse_fee_cap(text: str) -> int:
    """``"100%"``, ``"0.5%"`` or a ppm integer → ppm."""
    t = text.strip()
    try:
        v = Decimal(t[:-1]) * 10_000 if t.endswith("%") else Decimal(t)
    except ArithmeticError:
        raise ValueError(f"fee cap {text!r}: want 0..1000000 ppm or a percentage") from None
    if not v.is_finite() or v != v.to_integral_value() or not 0 <= v <= 1_000_000:
        raise ValueError(f"fee cap {text!r}: want 0..1000000 ppm or a percentage")
    return int(v)


def parse_rate_e8(text: str) -> int:
    """A funding rate per interval: ``"0.01%"`` or an integer in 10^-8 → 10^-8."""
    t = text.strip()
    try:
        v = Decimal(t[:-1]) * 10**6 if t.endswith("%") else Decimal(t)
    except ArithmeticError:
        raise ValueError(f"funding rate {text!r}: want a percentage or 10^-8 units") from None
    if not v.is_finite() or v != v.to_integral_value() or abs(v) > 10**8:
        raise ValueError(f"funding rate {text!r}: want -100%..100% in steps of 10^-8")
    return int(v)


# --- configuration ---------------------------------------------------------------


def base_config(settings: Settings) -> dict[str, Any]:
    from riskd.config import default_toml

    if settings.config is None:
        return tomllib.loads(default_toml())
    try:
        text = Path(settings.config).read_text()
    except OSError as e:
        raise ValueError(f"--config {settings.config}: {e.strerror or e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config {settings.config}: not TOML: {e}") from None


def config_toml(settings: Settings) -> str:
    """The config (embedded or ``--config``) with this replay's policy, for a spawned daemon.

    The replay's daemon is local and private: plaintext on loopback (any TLS and
    access tables of the file are dropped), a long event log, and no age limit
    on updates (a replay is stamped with history's clock).
    """
    doc = base_config(settings)
    markets = doc.get("markets")
    if not isinstance(markets, dict) or settings.market not in markets:
        have = sorted(markets) if isinstance(markets, dict) else []
        raise ValueError(f"--market {settings.market!r}: not in the config (it has {have})")
    m = markets[settings.market]
    if not isinstance(m, dict):
        raise ValueError(f"--config: markets.{settings.market} is not a table")
    m["adl_policy"] = settings.adl_policy
    m["liquidation_fee_cap_ppm"] = settings.fee_cap_ppm
    if settings.liquidation_mode is not None:
        m["liquidation_mode"] = settings.liquidation_mode
    if settings.partial is not None:
        m["partial_liquidation_policy"] = settings.partial
        m.pop("partial_liquidation", None)
    if settings.fund_cap is not None:
        m["fund_loss_cap"] = int(settings.fund_cap)
    server = doc.setdefault("server", {})
    server.pop("tls", None)
    doc.pop("access", None)
    server["plaintext"] = True
    server["event_retention"] = 2_000_000
    server["max_update_age_seconds"] = 0
    return _toml(doc)


def check(settings: Settings) -> Any:
    """Refuse what the replay cannot run, before any daemon starts; the parsed Config."""
    from riskd.config import parse

    check_without_config(settings)
    return parse(config_toml(settings))  # ConfigError is a ValueError naming the key


def check_without_config(settings: Settings) -> None:
    """The checks that need no config (against ``--target``, the daemon has one)."""
    if not 1 <= settings.accounts <= 1_000_000:
        raise ValueError(f"--accounts {settings.accounts}: want 1 to 1,000,000")
    # Whole units that still fit int64 quantums at up to 8 decimals (BTC).
    for flag, v in (("--fund", settings.fund), ("--fund-cap", settings.fund_cap)):
        if v is not None and v > 10**10:
            raise ValueError(f"{flag} {v}: at most 10,000,000,000 whole units")
    if settings.adl_policy not in ADL_POLICIES:
        raise ValueError(f"--adl-policy {settings.adl_policy!r}: want one of {list(ADL_POLICIES)}")
    if settings.liquidation_mode not in (None, *LIQUIDATION_MODES):
        raise ValueError(f"liquidation mode {settings.liquidation_mode!r}: want takeover or book")
    if settings.partial not in (None, *PARTIAL_POLICIES):
        raise ValueError(f"partial {settings.partial!r}: want full, tier_step or fraction")
    if settings.population not in POPULATIONS:
        raise ValueError(f"--population {settings.population!r}: want living or static")
    if settings.margin_mode not in MARGIN_MODES:
        raise ValueError(f"--margin-mode {settings.margin_mode!r}: want isolated or cross")
    if not 0 <= settings.cross_share <= 100:
        raise ValueError(f"--cross-share {settings.cross_share}: want 0 to 100 (percent)")
    if settings.hold_minutes < 1:
        raise ValueError(f"--hold {settings.hold_minutes}: want at least 1 minute")
    if settings.funding_interval_s < 60:
        raise ValueError(f"--funding-interval {settings.funding_interval_s}: want >= 60 s")
    if settings.fund < 0 or (settings.fund_cap is not None and settings.fund_cap < 0):
        raise ValueError("--fund and --fund-cap must be >= 0")
    if settings.fund_cap is not None and settings.fund_cap != int(settings.fund_cap):
        raise ValueError(f"--fund-cap {settings.fund_cap}: whole settlement units")
    population.leverage_mixes(settings.leverage_mix)


def _toml(doc: dict[str, Any], prefix: str = "") -> str:
    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise ValueError(f"--config: cannot carry a {type(v).__name__} value ({v!r})")

    lines: list[str] = []
    tables = []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{key(k)} = {value(v)}")
    out = ""
    if lines or (prefix and not tables):
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(lines) + "\n\n"
    for k, v in tables:
        out += _toml(v, f"{prefix}.{key(k)}" if prefix else key(k))
    return out


@contextlib.contextmanager
def spawn(settings: Settings, workdir: Path | None = None) -> Iterator[Daemon]:
    """Run ``riskd serve`` on free loopback ports with this replay's config."""
    with tempfile.TemporaryDirectory(prefix="riskd-replay-") as tmp:
        base = Path(workdir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        cfg = base / "riskd-replay.toml"
        cfg.write_text(config_toml(settings))
        log = Path(tmp) / "riskd.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "riskd.cli",
                    "serve",
                    "--config",
                    str(cfg),
                    "--grpc-listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    str(Path(tmp) / "data"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        daemon = None
        try:
            deadline = time.monotonic() + 30
            while daemon is None:
                for line in log.read_text().splitlines():
                    if '"riskd_serving"' in line:
                        rec = json.loads(line)
                        daemon = Daemon(
                            f"127.0.0.1:{rec['grpc_port']}",
                            f"http://127.0.0.1:{rec['metrics_port']}/metrics",
                            process,
                            log,
                        )
                        break
                else:
                    if process.poll() is not None:
                        raise RuntimeError(f"riskd exited early:\n{log.read_text()}")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"riskd did not start:\n{log.read_text()}")
                    time.sleep(0.05)
            yield daemon
        finally:
            if daemon is not None:
                daemon.stop()
            elif process.poll() is None:
                process.kill()
                process.wait()


# --- a daemon of our own -------------------------------------------------------


@dataclass
class Daemon:
    target: str
    metrics_url: str | None
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def stop(self, timeout: float = 20.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# --- progress ------------------------------------------------------------------


class Progress:
    """A one-line stderr bar; silent unless stderr is a terminal."""

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0

    def update(self, done: int, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1 and done < self.total:
            return
        self._last = now
        width = 30
        filled = width * done // self.total
        bar = "#" * filled + "-" * (width - filled)
        pct = 100 * done // self.total
        sys.stderr.write(f"\r{self.label} [{bar}] {pct:3d}% {done}/{self.total} {note}\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --- metrics -----------------------------------------------------------------------


def scrape(url: str | None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    if not url:
        return {}
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, val = line.rpartition(" ")
        name, _, labels = name_labels.partition("{")
        out[(name, frozenset(re.findall(r'(\w+)="([^"]*)"', labels)))] = float(val)
    return out


def metric_delta(
    before: dict[Any, float], after: dict[Any, float], name: str, **labels: str
) -> int:
    want = set(labels.items())
    total = 0.0
    for (n, ls), v in after.items():
        if n == name and want <= ls:
            total += v - before.get((n, ls), 0.0)
    return round(total)


# --- the replay ----------------------------------------------------------------------


@dataclass
class MarketInfo:
    symbol: str
    asset: str
    asset_decimals: int
    price_decimals: int
    tick: int
    quantity_decimals: int
    step: int
    unit_value: int  # linear: quantums per quantity unit × price unit; inverse: 0
    tiers: list[population.Tier]
    adl_policy: int
    fee_cap_ppm: int
    inverse: bool = False
    contract_value: int = 0  # inverse: whole quote units per whole contract
    liquidation_mode: int = types_pb2.LIQUIDATION_MODE_TAKEOVER
    partial_policy: int = types_pb2.PARTIAL_LIQUIDATION_POLICY_FULL
    fund_loss_cap: int | None = None

    def value(self, qty: int, price: int) -> tuple[int, int]:
        """Exact signed value as ``(num, den)``, as ``riskd.core.market.MarketSpec.value``."""
        if not self.inverse:
            return qty * price * self.unit_value, 1
        num = self.contract_value * 10**self.price_decimals * 10**self.asset_decimals
        return -qty * num, price * 10**self.quantity_decimals

    def notional(self, qty: int, price: int) -> int:
        """``|value|`` in quantums, rounded down (display and sizing only)."""
        num, den = self.value(qty, price)
        return abs(num) // den

    def quantity_for(self, usd: int, price: int) -> int:
        """Quantity units worth about ``usd`` whole quote units at ``price``."""
        if self.inverse:
            return int(usd * 10**self.quantity_decimals // self.contract_value)
        return int(usd * 10 ** (self.price_decimals + self.quantity_decimals) // price)


async def market_info(channel: grpc.aio.Channel, symbol: str) -> MarketInfo:
    q = query_pb2_grpc.QueryServiceStub(channel)
    markets = {m.symbol: m for m in (await q.ListMarkets(query_pb2.ListMarketsRequest())).markets}
    if symbol not in markets:
        raise ValueError(f"market {symbol!r} not served (have {sorted(markets)})")
    m = markets[symbol]
    assets = {a.symbol: a for a in (await q.ListAssets(query_pb2.ListAssetsRequest())).assets}
    ad = assets[m.settle_asset].decimals
    inverse = m.contract_type == types_pb2.CONTRACT_TYPE_INVERSE
    shift = ad - m.price_decimals - m.quantity_decimals
    if not inverse and shift < 0:
        raise ValueError(f"{symbol}: asset decimals below price + quantity decimals")
    return MarketInfo(
        symbol,
        m.settle_asset,
        ad,
        m.price_decimals,
        m.tick_size,
        m.quantity_decimals,
        m.step_size,
        0 if inverse else 10**shift,
        [population.Tier(t.notional_floor, t.max_leverage) for t in m.tiers],
        m.adl_policy,
        m.liquidation_fee_cap_ppm,
        inverse,
        m.contract_value,
        m.liquidation_mode,
        m.partial_liquidation_policy,
        m.fund_loss_cap if m.HasField("fund_loss_cap") else None,
    )


async def next_event_sequence(channel: grpc.aio.Channel) -> int:
    """The sequence the daemon's next event will get (from its OUT_OF_RANGE answer)."""
    stub = events_pb2_grpc.EventServiceStub(channel)
    call = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=2**63))
    try:
        async for _ in call:
            break
    except grpc.aio.AioRpcError as e:
        found = re.search(r"next is (\d+)", e.details() or "")
        if e.code() == grpc.StatusCode.OUT_OF_RANGE and found:
            return int(found.group(1))
        raise
    finally:
        call.cancel()
    raise RuntimeError("could not learn the event stream's position")


async def read_events(channel: grpc.aio.Channel, start: int, end: int) -> list[events_pb2.Event]:
    """Events ``start`` .. ``end - 1``."""
    out: list[events_pb2.Event] = []
    if end <= start:
        return out
    stub = events_pb2_grpc.EventServiceStub(channel)
    call = stub.Subscribe(events_pb2.SubscribeRequest(from_sequence=start), timeout=120)
    try:
        async for r in call:
            out.append(r.event)
            if r.event.sequence >= end - 1:
                break
    finally:
        call.cancel()
    return out


@dataclass
class _Book:
    """Resting maker orders within one bar: (trader index, remaining quantity)."""

    bids: list[list[int]] = field(default_factory=list)
    asks: list[list[int]] = field(default_factory=list)


def _fee(notional: int, ppm: int) -> int:
    return -(-notional * ppm // 1_000_000)


async def _gather(calls: list[Callable[[], Any]], width: int = 32) -> list[Any]:
    """Make and await ``calls`` in order, ``width`` at a time (a gRPC call starts when it
    is made, and the daemon bounds the calls in flight)."""
    out: list[Any] = []
    for i in range(0, len(calls), width):
        out += await asyncio.gather(*(c() for c in calls[i : i + width]))
    return out


async def _policy_by_api(admin: Any, info: MarketInfo, settings: Settings, scale: int) -> None:
    """Policy flags against a daemon we did not configure: set them through the API."""
    want = types_pb2.Market(symbol=info.symbol)
    change = False
    if info.adl_policy != ADL_POLICIES[settings.adl_policy]:
        want.adl_policy, change = ADL_POLICIES[settings.adl_policy], True
    if info.fee_cap_ppm != settings.fee_cap_ppm:
        want.liquidation_fee_cap_ppm, change = settings.fee_cap_ppm, True
    if settings.liquidation_mode is not None:
        mode = LIQUIDATION_MODES[settings.liquidation_mode]
        if info.liquidation_mode != mode:
            want.liquidation_mode, change = mode, True
    if settings.partial is not None:
        part = PARTIAL_POLICIES[settings.partial]
        if info.partial_policy != part:
            want.partial_liquidation_policy, change = part, True
    if settings.fund_cap is not None:
        cap = int(settings.fund_cap) * scale
        if info.fund_loss_cap != cap:
            want.fund_loss_cap, change = cap, True
    if change:
        await admin.UpdateMarket(admin_pb2.UpdateMarketRequest(market=want))


#: A Prometheus scrape: (metric name, its labels) -> value.
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True, slots=True)
class Wall:
    """Where a replay's wall-clock time went."""

    started_unix: float
    seconds: float
    #: Building and sending inputs (the replay's own Python).
    replay_seconds: float
    #: Waiting for riskd: flushes and the per-bar queries.
    daemon_seconds: float


@dataclass(slots=True)
class ReplayRun:
    """What one replay sent and read back: the raw material of a report
    (:func:`riskd.replay.report.build`)."""

    settings: Settings
    bars: list[prices.Bar]
    info: MarketInfo
    traders: list[population.Trader]
    house: int
    fund_seed: int
    fund_before: query_pb2.InsuranceFund
    fund_after: query_pb2.InsuranceFund
    state: admin_pb2.CheckStateResponse
    events: list[events_pb2.Event]
    accounts: dict[int, query_pb2.GetAccountResponse]
    #: Updates sent, by kind.
    sent: Counter[str]
    #: Applied deposits: sequence -> amount.
    deposits: dict[int, int]
    #: Fees charged by the applied fills.
    fees: int
    #: Applied fills: (sequence, ts, buyer, seller, quantity).
    fills: list[tuple[int, int, int, int, int]]
    rejections: list[ingest_pb2.Rejection]
    #: Every mark sent: (timestamps, prices).
    marks: tuple[list[int], list[int]]
    unwinds: int
    exits: dict[str, int]
    #: Funding rates sent: [ts, rate_e8].
    funding: list[list[int]]
    #: Book-mode liquidation orders by what became of them (filled, given_up).
    book: dict[str, int]
    stress: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    metrics_before: Scrape
    metrics_after: Scrape
    wall: Wall
    target: str
    #: The daemon had seen nothing before this replay (a fresh data directory).
    fresh: bool
    #: Where the path came from (set by the caller: a file, an exchange, generated).
    source: dict[str, Any] = field(default_factory=dict)
    #: The fund's drawdown policy, when the replay started the daemon itself.
    fund_policy: FundPolicy | None = None


async def replay(
    settings: Settings,
    bars: list[prices.Bar],
    daemon: Daemon,
    *,
    progress: bool | None = None,
    epoch: int = 1,
    first_account: int = 1001,
    gateway_id: str = "riskd-replay",
) -> ReplayRun:
    """Run one replay against ``daemon`` and return the raw material of a report."""
    started = time.time()
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        info = await market_info(channel, settings.market)
        query = query_pb2_grpc.QueryServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        scale = 10**info.asset_decimals
        await _policy_by_api(admin, info, settings, scale)
        info = await market_info(channel, settings.market)
        before = await asyncio.to_thread(scrape, daemon.metrics_url)
        first_event = await next_event_sequence(channel)
        fund_req = query_pb2.GetInsuranceFundRequest(asset=info.asset)
        fund_before = (await query.GetInsuranceFund(fund_req)).fund
        fund_seed = int((settings.fund * scale).to_integral_value())
        if fund_seed > 0:
            await admin.InjectFund(
                admin_pb2.InjectFundRequest(asset=info.asset, amount=fund_seed, cause="replay-seed")
            )
        path = prices.marks(bars, info.price_decimals, info.tick)
        traders = _population(settings, bars, info, path[0].price, scale, first_account)
        run = _Session(settings, info, query, traders, house=first_account - 1, epoch=epoch)
        follower = None
        if info.liquidation_mode == types_pb2.LIQUIDATION_MODE_BOOK:
            follower = asyncio.create_task(run.follow_orders(channel, first_event))
        bar_progress = Progress(len(bars), "replay", progress)
        async with Gateway(daemon.target, gateway_id, epoch=epoch, batch_size=512) as gw:
            run.gw = gw
            await run.send_bars(bars, path, follower, bar_progress)
        bar_progress.update(len(bars), "settling", force=True)
        bar_progress.close()
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await follower
        rejections = list(gw.rejections)
        rejected = {r.sequence for r in rejections}

        state = await admin.CheckState(admin_pb2.CheckStateRequest())
        fund_after = (await query.GetInsuranceFund(fund_req)).fund
        events = await read_events(channel, first_event, await _settled_end(channel))
        ids = [run.house, *(t.account for t in traders), BACKSTOP]
        got_accounts = await _gather(
            [
                functools.partial(
                    query.GetAccount, query_pb2.GetAccountRequest(account=a, asset=info.asset)
                )
                for a in ids
            ]
        )
        accounts = dict(zip(ids, got_accounts, strict=True))
        after = await asyncio.to_thread(scrape, daemon.metrics_url)

    return ReplayRun(
        settings=settings,
        bars=bars,
        info=info,
        traders=traders,
        house=run.house,
        fund_seed=fund_seed,
        fund_before=fund_before,
        fund_after=fund_after,
        state=state,
        events=events,
        accounts=accounts,
        sent=run.sent,
        deposits={s: a for s, a in run.deposits.items() if s not in rejected},
        fees=sum(f for s, f in run.fees.items() if s not in rejected),
        fills=[f for f in run.fills if f[0] not in rejected],
        rejections=rejections,
        marks=(run.mark_ts, run.mark_px),
        unwinds=run.unwinds,
        exits=dict(run.exits),
        funding=run.funding,
        book=dict(run.book_done),
        stress=run.stress,
        samples=run.samples,
        metrics_before=before,
        metrics_after=after,
        wall=Wall(
            started_unix=round(started, 3),
            seconds=round(time.time() - started, 3),
            replay_seconds=round(run.clock["replay"], 3),
            daemon_seconds=round(run.clock["daemon"], 3),
        ),
        target=daemon.target,
        fresh=first_event == 1 and fund_before.total_inflow == 0,
    )


def _population(
    settings: Settings,
    bars: list[prices.Bar],
    info: MarketInfo,
    p0: int,
    scale: int,
    first_account: int,
) -> list[population.Trader]:
    return population.build(
        settings.accounts,
        settings.seed,
        bars=len(bars),
        quantity_for=lambda usd: info.quantity_for(usd, p0),
        notional_of=lambda q: info.notional(q, p0),
        scale=scale,
        # Whole units of a quote-like asset; 10^-4 of a coin (BTC) settles inverse markets.
        deposit_unit=scale // 10_000 if info.inverse else scale,
        step=info.step,
        tiers=info.tiers,
        leverage_mix=settings.leverage_mix,
        first_account=first_account,
        living=settings.population == "living",
        hold_bars=max(1, settings.hold_minutes * 60_000 // prices.interval_ms(bars)),
    )


async def _settled_end(channel: grpc.aio.Channel) -> int:
    """The next event sequence once the daemon has stopped appending events."""
    end = await next_event_sequence(channel)
    while True:  # events are appended on the server's loop: wait until it is still
        await asyncio.sleep(0.05)
        again = await next_event_sequence(channel)
        if again == end:
            return end
        end = again


class _Session:
    """One replay's sending side: what it sent (for the client-side conservation
    check) and each step of a bar, in the order the exchange would take them."""

    def __init__(
        self,
        settings: Settings,
        info: MarketInfo,
        query: Any,
        traders: list[population.Trader],
        *,
        house: int,
        epoch: int,
    ) -> None:
        self.settings = settings
        self.info = info
        self.query = query
        self.fund_req = query_pb2.GetInsuranceFundRequest(asset=info.asset)
        self.traders = traders
        self.house = house  # the house market maker
        self.ours = {house, *(t.account for t in traders)}
        self.gw: Any = None  # the Gateway, while the bars are sent
        self.clock = {"replay": 0.0, "daemon": 0.0}  # building inputs vs waiting for riskd
        self.stress: list[dict[str, Any]] = []  # GetStressCoverage at each bar's open
        self.samples: list[dict[str, Any]] = []  # the backstop and fund at each bar's open
        self.sent = Counter[str]()
        self.deposits: dict[int, int] = {}  # sequence -> amount
        self.fees: dict[int, int] = {}  # sequence -> fees charged by that fill
        self.fills: list[tuple[int, int, int, int, int]] = []  # (seq, ts, buyer, seller, qty)
        self.mark_ts: list[int] = []
        self.mark_px: list[int] = []
        # riskd refuses a reused trade id, and runs may share a daemon: a run's
        # ids start above its epoch (a gateway's next run must raise its epoch).
        self.trade_id = (epoch % 2**32) << 32
        self.unwinds = 0
        self.exits = Counter[str]()
        self.funding: list[list[int]] = []  # [ts, rate_e8]
        self.liq_fills: dict[int, tuple[int, int]] = {}  # sequence -> (liquidation id, qty)
        self.book_done = Counter[str]()
        self.orders: list[events_pb2.LiquidationOrder] = []
        self.seen_orders = 0

    # --- sending ----------------------------------------------------------------

    def mark(self, mk: prices.Mark) -> None:
        self.gw.mark_price(self.info.symbol, mk.price, ts=mk.ts_ms)
        self.mark_ts.append(mk.ts_ms)
        self.mark_px.append(mk.price)
        self.sent["mark"] += 1

    def fill(
        self, buyer: int, seller: int, price: int, qty: int, bf: int, sf: int, ts: int
    ) -> None:
        self.trade_id += 1
        s = self.gw.fill(
            self.info.symbol, buyer, seller, price, qty,
            trade_id=self.trade_id, buyer_fee=bf, seller_fee=sf, ts=ts,
        )  # fmt: skip
        self.fees[s] = bf + sf
        self.fills.append((s, ts, buyer, seller, qty))
        self.sent["fill"] += 1

    def deposit(self, account: int, amount: int, ts: int) -> None:
        self.deposits[self.gw.deposit(account, self.info.asset, amount, ts=ts)] = amount
        self.sent["deposit"] += 1

    def margin_in(self, account: int, amount: int, ts: int) -> None:
        self.gw.margin_transfer(account, self.info.symbol, amount, ts=ts)
        self.sent["margin_transfer"] += 1

    def fee(self, qty: int, price: int, ppm: int) -> int:
        return _fee(self.info.notional(qty, price), ppm)

    async def timed(self, aw: Any) -> Any:
        t = time.perf_counter()
        try:
            return await aw
        finally:
            self.clock["daemon"] += time.perf_counter() - t

    # --- reading ----------------------------------------------------------------

    async def sample(self, ts: int, price: int) -> dict[int, Any]:
        """Stress coverage, the backstop's position and the fund, read together."""
        info, query = self.info, self.query
        got, back, fund = await asyncio.gather(
            query.GetStressCoverage(query_pb2.GetStressCoverageRequest(asset=info.asset)),
            query.GetPosition(query_pb2.GetPositionRequest(account=BACKSTOP, market=info.symbol)),
            query.GetInsuranceFund(self.fund_req),
        )
        rows = [r for r in got.rows if r.market == info.symbol]
        self.stress.append(
            {
                "ts_ms": ts,
                "mark": price,
                "rows": [
                    [r.move_ppm, r.positions, r.shortfall, r.payable, r.coverage_ppm] for r in rows
                ],
            }
        )
        pos = back.position
        self.samples.append(
            {
                "ts_ms": ts,
                "mark": price,
                "backstop_size": pos.size,
                "backstop_margin_balance": pos.margin_balance if pos.size else 0,
                "fund_balance": fund.fund.balance,
                "fund_reserved": fund.fund.reserved,
            }
        )
        return {BACKSTOP: pos}

    async def follow_orders(self, channel: grpc.aio.Channel, first_event: int) -> None:
        """Book mode: collect the daemon's LiquidationOrders as they are published."""
        stub = events_pb2_grpc.EventServiceStub(channel)
        call = stub.Subscribe(
            events_pb2.SubscribeRequest(from_sequence=first_event, markets=[self.info.symbol])
        )
        async for r in call:
            if r.event.HasField("liquidation_order"):
                self.orders.append(r.event.liquidation_order)

    # --- the bars ---------------------------------------------------------------

    async def send_bars(
        self,
        bars: list[prices.Bar],
        path: list[prices.Mark],
        follower: asyncio.Task[None] | None,
        bar_progress: Progress,
    ) -> None:
        """Every bar: its open mark, the look at the open, entrants, the other marks."""
        info, traders = self.info, self.traders
        by_bar: dict[int, list[prices.Mark]] = defaultdict(list)
        for mk in path:
            by_bar[mk.bar].append(mk)
        entering: dict[int, list[int]] = defaultdict(list)
        leaving: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(traders):
            entering[t.entry_bar].append(i)
            if t.exit_bar is not None:
                leaving[t.exit_bar].append(i)
        # The house market maker: enough margin for the whole population at ~1x.
        t0, p0 = bars[0].ts_ms, path[0].price
        house_cash = max(
            2 * sum(info.notional(t.quantity, p0) for t in traders), 10**info.asset_decimals
        )
        self.deposit(self.house, house_cash, t0)
        self.margin_in(self.house, house_cash, t0)
        period = self.settings.funding_interval_s * 1000
        last_period = t0 // period
        tick_start = time.perf_counter()
        for b in range(len(bars)):
            marks_b = by_bar[b]
            open_mark = marks_b[0]
            ts, px = open_mark.ts_ms, open_mark.price
            self.mark(open_mark)
            if b:
                await self.at_open(ts, px, [traders[i] for i in leaving.get(b, ())], follower)
                if self.settings.funding_rate_e8 and ts // period > last_period:
                    # Funding at the first mark of each interval (00:00, 08:00, 16:00 UTC).
                    last_period = ts // period
                    self.gw.funding_rate(info.symbol, self.settings.funding_rate_e8, ts=ts)
                    self.funding.append([ts, self.settings.funding_rate_e8])
                    self.sent["funding_rate"] += 1
            self.enter([traders[i] for i in entering.get(b, ())], entering.get(b, []), ts, px)
            mk = open_mark
            for mk in marks_b[1:]:
                self.mark(mk)
            await self.timed(self.gw.wait_for_window())
            bar_progress.update(b + 1, f"mark {Decimal(mk.price).scaleb(-info.price_decimals)}")
        await self.timed(self.gw.flush(timeout=300))
        await self.timed(self.sample(self.mark_ts[-1], self.mark_px[-1]))
        self.clock["replay"] = time.perf_counter() - tick_start - self.clock["daemon"]

    async def at_open(
        self,
        ts: int,
        px: int,
        out: list[population.Trader],
        follower: asyncio.Task[None] | None,
    ) -> None:
        """Settle what was sent, then look: the backstop's inventory, the stress
        coverage, the fund and the positions of those leaving; act on them."""
        await self.timed(self.gw.flush(timeout=300))
        looked, *theirs = await self.timed(
            _gather(
                [
                    functools.partial(self.sample, ts, px),
                    *(
                        functools.partial(
                            self.query.GetPosition,
                            query_pb2.GetPositionRequest(
                                account=t.account, market=self.info.symbol
                            ),
                        )
                        for t in out
                    ),
                ]
            )
        )
        self.unwind_backstop(looked[BACKSTOP], ts, px)
        if follower is not None and follower.done():
            # The stream ended: the orders from here on would go unworked.
            raise RuntimeError(f"event stream for book mode ended: {follower!r}")
        self.work_orders(ts, px)
        self.close_leavers(out, theirs, ts, px)

    def unwind_backstop(self, pos: Any, ts: int, px: int) -> None:
        """The exchange works the fund's inventory off against the house at the open
        (reduce-only fills naming account 2^64-1)."""
        if not pos.size or pos.in_liquidation:
            return
        q = abs(pos.size)
        if pos.size > 0:
            self.fill(self.house, BACKSTOP, px, q, 0, 0, ts)
        else:
            self.fill(BACKSTOP, self.house, px, q, 0, 0, ts)
        self.unwinds += 1

    def work_orders(self, ts: int, px: int) -> None:
        """Book mode: the exchange's book is the house, bidding at the mark down to
        the order's worst price; past it the book gives up (ADL, reason no_book)."""
        symbol = self.info.symbol
        while self.seen_orders < len(self.orders):
            o = self.orders[self.seen_orders]
            self.seen_orders += 1
            if o.account not in self.ours:
                continue  # another gateway's trader, on a shared --target daemon
            sells = o.side == types_pb2.SIDE_SELL
            if (px >= o.worst_price) if sells else (px <= o.worst_price):
                s = self.gw.liquidation_fill(
                    symbol, o.liquidation_id, self.house, px, o.quantity, ts=ts
                )
                self.liq_fills[s] = (o.liquidation_id, o.quantity)
                self.sent["liquidation_fill"] += 1
                self.book_done["filled"] += 1
            else:
                # A whole fill settles the order; only a given-up one is done.
                self.gw.liquidation_done(symbol, o.liquidation_id, ts=ts)
                self.sent["liquidation_done"] += 1
                self.book_done["given_up"] += 1

    def close_leavers(
        self, out: list[population.Trader], theirs: list[Any], ts: int, px: int
    ) -> None:
        """Leavers close at the open against the house; one the engine is
        liquidating, or has closed, has nothing to close."""
        for t, got in zip(out, theirs, strict=True):
            p = got.position
            if not p.size:
                self.exits["already_closed"] += 1
            elif p.in_liquidation:
                self.exits["in_liquidation"] += 1
            else:
                q = abs(p.size)
                tf, mf = self.fee(q, px, TAKER_FEE_PPM), self.fee(q, px, MAKER_FEE_PPM)
                if p.size > 0:
                    self.fill(self.house, t.account, px, q, mf, tf, ts)
                else:
                    self.fill(t.account, self.house, px, q, tf, mf, ts)
                self.exits["closed"] += 1

    def enter(
        self, entrants: list[population.Trader], indices: list[int], ts: int, px: int
    ) -> None:
        """Entrants: deposit, move margin, then trade as takers against earlier
        entrants of this bar resting on the other side, the rest against the house."""
        info, traders = self.info, self.traders
        book = _Book()
        share = 100 if self.settings.margin_mode == "cross" else self.settings.cross_share
        for i, t in zip(indices, entrants, strict=True):
            if share and is_cross(t.account, share):
                # Cross: the market switched while flat; the deposit is the collateral.
                self.gw.margin_mode(info.symbol, t.account, True, ts=ts)
                self.sent["margin_mode"] += 1
                self.deposit(t.account, t.deposit, ts)
            else:
                self.deposit(t.account, t.deposit, ts)
                self.margin_in(t.account, t.margin, ts)
            left = t.quantity
            resting = book.asks if t.side > 0 else book.bids
            price = px + info.tick if t.side > 0 else px - info.tick
            while left and resting:
                m_i, m_left = resting[0]
                q = min(left, m_left)
                maker = traders[m_i].account
                tf, mf = self.fee(q, price, TAKER_FEE_PPM), self.fee(q, price, MAKER_FEE_PPM)
                if t.side > 0:
                    self.fill(t.account, maker, price, q, tf, mf, ts)
                else:
                    self.fill(maker, t.account, price, q, mf, tf, ts)
                left -= q
                resting[0][1] -= q
                if resting[0][1] == 0:
                    resting.pop(0)
            if left:
                (book.bids if t.side > 0 else book.asks).append([i, left])
        for side, orders_b in ((1, book.bids), (-1, book.asks)):
            for m_i, q in orders_b:
                acct = traders[m_i].account
                f = self.fee(q, px, MAKER_FEE_PPM)
                if side > 0:
                    self.fill(acct, self.house, px, q, f, f, ts)
                else:
                    self.fill(self.house, acct, px, q, f, f, ts)


def mark_at(marks: tuple[list[int], list[int]], ts: int) -> int:
    """The last mark sent at or before ``ts``."""
    ts_list, px = marks
    i = bisect.bisect_right(ts_list, ts) - 1
    return px[max(i, 0)]


def run_sync(fn: Callable[[], Any]) -> Any:
    return asyncio.run(fn())
