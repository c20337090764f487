"""Drive a real riskd daemon through a price path over gRPC, then read back what it did.

Nothing goes around the API: the fund is seeded with ``AdminService.InjectFund``,
every deposit, margin transfer, fill and mark goes through the gateway helper
(``riskd_client.gateway.Gateway``), and the report is built from
``EventService.Subscribe``, ``QueryService`` and ``AdminService.CheckState``,
cross-checked against a Prometheus scrape.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
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

from riskd.replay import population, prices
from riskd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    query_pb2,
    query_pb2_grpc,
    types_pb2,
)
from riskd_client.gateway import Gateway  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Daemon", "Settings", "replay", "spawn"]

BACKSTOP = 2**64 - 1
TAKER_FEE_PPM = 500  # 0.05 %
MAKER_FEE_PPM = 200  # 0.02 %
ADL_POLICIES = {
    "pnl_leverage": types_pb2.ADL_POLICY_PNL_LEVERAGE,
    "leverage_pnl": types_pb2.ADL_POLICY_LEVERAGE_PNL,
    "pro_rata_risk": types_pb2.ADL_POLICY_PRO_RATA_RISK,
}


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

    def label(self) -> str:
        return f"fund={self.fund} adl={self.adl_policy} fee_cap={self.fee_cap_ppm / 10_000:g}%"

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fund"] = str(self.fund)
        return d


def parse_fee_cap(text: str) -> int:
    """``"100%"``, ``"0.5%"`` or a ppm integer → ppm."""
    t = text.strip()
    v = Decimal(t[:-1]) * 10_000 if t.endswith("%") else Decimal(t)
    if v != v.to_integral_value() or not 0 <= v <= 1_000_000:
        raise ValueError(f"fee cap {text!r}: want 0..1000000 ppm or a percentage")
    return int(v)


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


def config_toml(settings: Settings) -> str:
    """The embedded default config with this replay's market policy and a long event log."""
    from riskd.config import default_toml

    doc = tomllib.loads(default_toml())
    if settings.market not in doc["markets"]:
        raise ValueError(f"market {settings.market!r} is not in the default config")
    m = doc["markets"][settings.market]
    m["adl_policy"] = settings.adl_policy
    m["liquidation_fee_cap_ppm"] = settings.fee_cap_ppm
    doc["server"]["event_retention"] = 2_000_000
    doc["server"]["max_update_age_seconds"] = 0  # a replay is stamped with history's clock
    return _toml(doc)


def _toml(doc: dict[str, Any], prefix: str = "") -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []
    tables = []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {value(v)}")
    out = ""
    if lines:
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(lines) + "\n\n"
    for k, v in tables:
        out += _toml(v, f"{prefix}.{k}" if prefix else k)
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
    unit_value: int  # quantums per quantity unit × price unit
    tiers: list[population.Tier]
    adl_policy: int
    fee_cap_ppm: int


async def market_info(channel: grpc.aio.Channel, symbol: str) -> MarketInfo:
    q = query_pb2_grpc.QueryServiceStub(channel)
    markets = {m.symbol: m for m in (await q.ListMarkets(query_pb2.ListMarketsRequest())).markets}
    if symbol not in markets:
        raise ValueError(f"market {symbol!r} not served (have {sorted(markets)})")
    m = markets[symbol]
    if m.contract_type != types_pb2.CONTRACT_TYPE_LINEAR:
        raise ValueError(f"{symbol}: replay supports linear markets only")
    assets = {a.symbol: a for a in (await q.ListAssets(query_pb2.ListAssetsRequest())).assets}
    ad = assets[m.settle_asset].decimals
    shift = ad - m.price_decimals - m.quantity_decimals
    if shift < 0:
        raise ValueError(f"{symbol}: asset decimals below price + quantity decimals")
    return MarketInfo(
        symbol,
        m.settle_asset,
        ad,
        m.price_decimals,
        m.tick_size,
        m.quantity_decimals,
        m.step_size,
        10**shift,
        [population.Tier(t.notional_floor, t.max_leverage) for t in m.tiers],
        m.adl_policy,
        m.liquidation_fee_cap_ppm,
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


async def replay(
    settings: Settings,
    bars: list[prices.Bar],
    daemon: Daemon,
    *,
    progress: bool | None = None,
    epoch: int = 1,
    first_account: int = 1001,
    gateway_id: str = "riskd-replay",
) -> dict[str, Any]:
    """Run one replay against ``daemon`` and return the raw material of a report."""
    started = time.time()
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        info = await market_info(channel, settings.market)
        query = query_pb2_grpc.QueryServiceStub(channel)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        # Policy flags against a daemon we did not configure: set them through the API.
        want_policy = ADL_POLICIES[settings.adl_policy]
        if info.adl_policy != want_policy or info.fee_cap_ppm != settings.fee_cap_ppm:
            await admin.UpdateMarket(
                admin_pb2.UpdateMarketRequest(
                    market=types_pb2.Market(
                        symbol=info.symbol,
                        adl_policy=want_policy,
                        liquidation_fee_cap_ppm=settings.fee_cap_ppm,
                    )
                )
            )
        before = await asyncio.to_thread(scrape, daemon.metrics_url)
        first_event = await next_event_sequence(channel)
        fund_req = query_pb2.GetInsuranceFundRequest(asset=info.asset)
        fund_before = (await query.GetInsuranceFund(fund_req)).fund
        scale = 10**info.asset_decimals
        fund_seed = int((settings.fund * scale).to_integral_value())
        if fund_seed > 0:
            await admin.InjectFund(
                admin_pb2.InjectFundRequest(asset=info.asset, amount=fund_seed, cause="replay-seed")
            )

        path = prices.marks(bars, info.price_decimals, info.tick)
        by_bar: dict[int, list[prices.Mark]] = defaultdict(list)
        for mk in path:
            by_bar[mk.bar].append(mk)
        traders = population.build(
            settings.accounts,
            settings.seed,
            price=path[0].price,
            bars=len(bars),
            unit_value=info.unit_value,
            scale=scale,
            step=info.step,
            tiers=info.tiers,
            leverage_mix=population.parse_leverage_mix(settings.leverage_mix),
            first_account=first_account,
        )
        stress: list[dict[str, Any]] = []  # GetStressCoverage at each bar's open

        async def sample_stress(ts: int, price: int) -> None:
            got = await query.GetStressCoverage(
                query_pb2.GetStressCoverageRequest(asset=info.asset)
            )
            rows = [r for r in got.rows if r.market == info.symbol]
            stress.append(
                {
                    "ts_ms": ts,
                    "mark": price,
                    "rows": [
                        [r.move_ppm, r.positions, r.shortfall, r.payable, r.coverage_ppm]
                        for r in rows
                    ],
                }
            )

        entering: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(traders):
            entering[t.entry_bar].append(i)

        # Ledger of what we sent, for the client-side conservation check.
        sent = Counter[str]()
        deposits: dict[int, int] = {}  # sequence -> amount
        fees: dict[int, int] = {}  # sequence -> fees charged by that fill
        mark_ts: list[int] = []
        mark_px: list[int] = []
        # riskd refuses a reused trade id, and runs may share a daemon: a run's
        # ids start above its epoch (a gateway's next run must raise its epoch).
        trade_id = (epoch % 2**32) << 32
        house = first_account - 1  # the house market maker
        unwinds = 0

        bar_progress = Progress(len(bars), "replay", progress)
        async with Gateway(daemon.target, gateway_id, epoch=epoch, batch_size=512) as gw:

            def mark(mk: prices.Mark) -> None:
                gw.mark_price(info.symbol, mk.price, ts=mk.ts_ms)
                mark_ts.append(mk.ts_ms)
                mark_px.append(mk.price)
                sent["mark"] += 1

            def fill(
                buyer: int, seller: int, price: int, qty: int, bf: int, sf: int, ts: int
            ) -> None:
                nonlocal trade_id
                trade_id += 1
                s = gw.fill(
                    info.symbol, buyer, seller, price, qty,
                    trade_id=trade_id, buyer_fee=bf, seller_fee=sf, ts=ts,
                )  # fmt: skip
                fees[s] = bf + sf
                sent["fill"] += 1

            def deposit(account: int, amount: int, ts: int) -> None:
                deposits[gw.deposit(account, info.asset, amount, ts=ts)] = amount
                sent["deposit"] += 1

            # The house market maker: enough margin for the whole population at ~1x.
            t0 = bars[0].ts_ms
            house_cash = sum(t.quantity for t in traders) * path[0].price * info.unit_value * 2
            house_cash = max(house_cash, scale)
            deposit(house, house_cash, t0)
            gw.margin_transfer(house, info.symbol, house_cash, ts=t0)
            sent["margin_transfer"] += 1

            for b in range(len(bars)):
                marks_b = by_bar[b]
                open_mark = marks_b[0]
                ts = open_mark.ts_ms
                mark(open_mark)
                px = open_mark.price
                if b:
                    # The exchange works the fund's backstop inventory off against the
                    # house at the open (reduce-only fills naming account 2^64-1).
                    await gw.flush()
                    pos = (
                        await query.GetPosition(
                            query_pb2.GetPositionRequest(account=BACKSTOP, market=info.symbol)
                        )
                    ).position
                    await sample_stress(ts, px)
                    if pos.size and not pos.in_liquidation:
                        q = abs(pos.size)
                        if pos.size > 0:
                            fill(house, BACKSTOP, px, q, 0, 0, ts)
                        else:
                            fill(BACKSTOP, house, px, q, 0, 0, ts)
                        unwinds += 1
                # Entrants: deposit, move margin, then trade as takers against earlier
                # entrants of this bar resting on the other side, the rest against the house.
                book = _Book()
                for i in entering.get(b, ()):
                    t = traders[i]
                    deposit(t.account, t.deposit, ts)
                    gw.margin_transfer(t.account, info.symbol, t.margin, ts=ts)
                    sent["margin_transfer"] += 1
                    left = t.quantity
                    resting = book.asks if t.side > 0 else book.bids
                    price = px + info.tick if t.side > 0 else px - info.tick
                    while left and resting:
                        m_i, m_left = resting[0]
                        q = min(left, m_left)
                        n = q * price * info.unit_value
                        maker = traders[m_i].account
                        if t.side > 0:
                            fill(
                                t.account,
                                maker,
                                price,
                                q,
                                _fee(n, TAKER_FEE_PPM),
                                _fee(n, MAKER_FEE_PPM),
                                ts,
                            )
                        else:
                            fill(
                                maker,
                                t.account,
                                price,
                                q,
                                _fee(n, MAKER_FEE_PPM),
                                _fee(n, TAKER_FEE_PPM),
                                ts,
                            )
                        left -= q
                        resting[0][1] -= q
                        if resting[0][1] == 0:
                            resting.pop(0)
                    if left:
                        (book.bids if t.side > 0 else book.asks).append([i, left])
                for side, orders in ((1, book.bids), (-1, book.asks)):
                    for m_i, q in orders:
                        acct = traders[m_i].account
                        n = q * px * info.unit_value
                        f = _fee(n, MAKER_FEE_PPM)
                        if side > 0:
                            fill(acct, house, px, q, f, f, ts)
                        else:
                            fill(house, acct, px, q, f, f, ts)
                for mk in marks_b[1:]:
                    mark(mk)
                await gw.wait_for_window()
                bar_progress.update(b + 1, f"mark {Decimal(mk.price).scaleb(-info.price_decimals)}")
            await gw.flush(timeout=300)
            await sample_stress(mark_ts[-1], mark_px[-1])
        bar_progress.update(len(bars), "settling", force=True)
        bar_progress.close()
        rejections = list(gw.rejections)
        rejected = {r.sequence for r in rejections}

        state = await admin.CheckState(admin_pb2.CheckStateRequest())
        fund_after = (await query.GetInsuranceFund(fund_req)).fund
        end = await next_event_sequence(channel)
        while True:  # events are appended on the server's loop: wait until it is still
            await asyncio.sleep(0.05)
            again = await next_event_sequence(channel)
            if again == end:
                break
            end = again
        events = await read_events(channel, first_event, end)
        accounts: dict[int, query_pb2.GetAccountResponse] = {}
        for acct in [house, *(t.account for t in traders), BACKSTOP]:
            accounts[acct] = await query.GetAccount(
                query_pb2.GetAccountRequest(account=acct, asset=info.asset)
            )
        after = await asyncio.to_thread(scrape, daemon.metrics_url)

    return {
        "settings": settings,
        "bars": bars,
        "info": info,
        "traders": traders,
        "house": house,
        "fund_seed": fund_seed,
        "fund_before": fund_before,
        "fund_after": fund_after,
        "state": state,
        "events": events,
        "accounts": accounts,
        "sent": sent,
        "deposits": {s: a for s, a in deposits.items() if s not in rejected},
        "fees": sum(f for s, f in fees.items() if s not in rejected),
        "rejections": rejections,
        "marks": (mark_ts, mark_px),
        "unwinds": unwinds,
        "stress": stress,
        "metrics_before": before,
        "metrics_after": after,
        "wall": {"started_unix": round(started, 3), "seconds": round(time.time() - started, 3)},
        "target": daemon.target,
        "fresh": first_event == 1 and fund_before.total_inflow == 0,
    }


def mark_at(marks: tuple[list[int], list[int]], ts: int) -> int:
    """The last mark sent at or before ``ts``."""
    ts_list, px = marks
    i = bisect.bisect_right(ts_list, ts) - 1
    return px[max(i, 0)]


def run_sync(fn: Callable[[], Any]) -> Any:
    return asyncio.run(fn())
