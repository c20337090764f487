"""Turn a replay's raw results into a report: JSON, a Markdown summary, PNG plots.

Every number comes from the daemon (events, queries, CheckState); the
metrics scrape is used only to cross-check them (``crosscheck``: each entry
holds the report's value, the daemon's, and whether they agree).  Money is
in quantums of the settlement asset (``asset_decimals`` says how many per
unit); the Markdown shows whole units.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from riskd.core.stress import move_label
from riskd.effects import LIQUIDATION_OUTCOMES, liquidation_outcome
from riskd.replay import population, prices
from riskd.replay.driver import BACKSTOP, ReplayRun, mark_at, metric_delta
from riskd.v1 import events_pb2, ingest_pb2, types_pb2

__all__ = ["build", "deterministic", "write", "write_compare"]

FORMAT = 1
INFLOW = "riskd_insurance_fund_inflow_quantums_total"
OUTFLOW = "riskd_insurance_fund_outflow_quantums_total"
PPM = 1_000_000
#: Stress moves shown in summary.md's per-minute table (all are in report.json).
TABLE_MOVES = ("-20%", "-10%", "+10%", "+20%")
TABLE_ROWS = 60


REASONS = {
    events_pb2.ADL_REASON_FUND_EMPTY: "fund_empty",
    events_pb2.ADL_REASON_MARKET_CAP: "market_cap",
    events_pb2.ADL_REASON_DRAWDOWN_LIMIT: "drawdown_limit",
    events_pb2.ADL_REASON_NO_BOOK: "no_book",
    events_pb2.ADL_REASON_BACKSTOP: "backstop",
    events_pb2.ADL_REASON_UNSPECIFIED: "unspecified",
}


def _positions_over_time(raw: ReplayRun, settled: list[Any], notices: list[Any]) -> Any:
    """Every account's size through the path, rebuilt from the fills the replay sent and
    the daemon's events; returns (size changes in time order, sizes at the end, the side
    of each liquidated position by liquidation id).

    A liquidation takes ``quantity`` off the liquidated position; what ADL did not close
    (``quantity - adl_quantity``) passes to the backstop (takeover) or to the house that
    filled the order (book); each ``AdlNotice`` takes its quantity off its counterparty.
    """
    info = raw.info
    receiver = raw.house if info.liquidation_mode == 1 else BACKSTOP  # 1: book
    timeline: list[tuple[int, int, int, Any]] = []
    for seq, ts, buyer, seller, qty in raw.fills:
        timeline.append((ts, 1, seq, ("fill", buyer, seller, qty)))
    for e in settled:
        timeline.append((e.timestamp_ms, 0, e.sequence, ("liq", e.liquidation_settled)))
    for e in notices:
        timeline.append((e.timestamp_ms, 0, e.sequence, ("adl", e.adl_notice)))
    # Events before fills at one timestamp: a mark's liquidations come before the
    # fills the replay sends after it (the backstop's unwind, leavers, entrants).
    timeline.sort(key=lambda x: (x[0], x[1], x[2]))
    sizes: dict[int, int] = defaultdict(int)
    sides: dict[int, int] = {}
    changes: list[tuple[int, int]] = []  # (ts, open interest after)
    longs = 0

    closed_by: dict[int, str] = {}  # account -> what last took its position to zero

    def move(acct: int, delta: int, cause: str) -> None:
        nonlocal longs
        old = sizes[acct]
        new = old + delta
        sizes[acct] = new
        longs += max(new, 0) - max(old, 0)
        if old and not new:
            closed_by[acct] = cause

    for ts, _, _, item in timeline:
        if item[0] == "fill":
            _, buyer, seller, qty = item
            move(buyer, qty, "trader")
            move(seller, -qty, "trader")
        elif item[0] == "liq":
            st = item[1]
            side = 1 if sizes[st.account] > 0 else -1
            sides[st.liquidation_id] = side
            move(st.account, -side * st.quantity, "liquidation")
            move(receiver, side * (st.quantity - st.adl_quantity), "liquidation")
        else:
            n = item[1]
            # A counterparty of a bankrupt long is short, and is bought back.
            q = n.quantity if n.side == types_pb2.POSITION_SIDE_SHORT else -n.quantity
            move(n.account, q, "adl")
        changes.append((ts, longs))
    return changes, dict(sizes), sides, closed_by


def _headroom(series: list[list[int]], ts: int, balance: int, policy: Any) -> int | None:
    """The drawdown guard's room at ``ts``: balance above ``(1 - limit) x`` the window's peak."""
    if policy is None:
        return None
    lo = (ts - policy.window_ms) // 60_000 * 60_000
    peak = max([b for t, b in series if lo <= t <= ts] + [balance])
    floor: int = -(-peak * (PPM - policy.drawdown_limit_ppm) // PPM)
    return balance - floor


Event = events_pb2.Event


@dataclass(frozen=True, slots=True)
class _Events:
    """The replay's events, by kind (fund flows of the market's asset only)."""

    settled: list[Event]
    flows: list[Event]
    notices: list[Event]
    executed: list[Event]
    margin_calls: int

    @classmethod
    def of(cls, raw: ReplayRun) -> _Events:
        events, asset = raw.events, raw.info.asset
        return cls(
            settled=[e for e in events if e.HasField("liquidation_settled")],
            flows=[e for e in events if e.HasField("fund_flow") and e.fund_flow.asset == asset],
            notices=[e for e in events if e.HasField("adl_notice")],
            executed=[e for e in events if e.HasField("adl_executed")],
            margin_calls=sum(1 for e in events if e.HasField("margin_call")),
        )


@dataclass(slots=True)
class _Fund:
    """The fund's flows as the events tell them."""

    balance0: int
    inflow: Counter[str] = field(default_factory=Counter)
    outflow: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    #: [ts, balance after] per flow.
    series: list[list[int]] = field(default_factory=list)
    depleted_at: int | None = None

    @property
    def final(self) -> int:
        return self.series[-1][1] if self.series else self.balance0


def build(raw: ReplayRun) -> dict[str, Any]:
    """The report of one replay (report.json): each section from its own step."""
    ev = _Events.of(raw)
    changes, sizes_end, sides, closed_by = _positions_over_time(raw, ev.settled, ev.notices)
    adl_events, adl_by_lid = _adl_executions(raw, ev, sides)
    liq, outcomes = _liquidations(raw, ev, adl_by_lid)
    sampled, stress = _stress(raw)
    liq["per_minute"] = _per_minute(liq.pop("_per_minute"), sampled)
    fund = _fund_flows(raw, ev)
    positions, rebuilt_ok = _positions(raw, ev, sizes_end, closed_by)
    adl_total, by_reason = _adl_total(adl_events, ev)
    leverage = {t.account: t.leverage for t in raw.traders}
    minutes = _minutes(raw, ev.settled, ev.flows, adl_events, changes, sampled, leverage, sides)
    checks = _crosscheck(raw, ev, fund, outcomes, adl_events, adl_total, by_reason, rebuilt_ok)
    return {
        "format": FORMAT,
        "source": raw.source,
        "path": prices.describe(raw.bars),
        "settings": raw.settings.as_json(),
        "market": _market(raw),
        "inputs": _inputs(raw),
        "liquidations": liq,
        "fund": _fund_section(raw, fund, minutes),
        "shortfalls": {
            "count": fund.counts.get("shortfall", 0),
            "absorbed": fund.outflow.get("shortfall", 0),
        },
        "clawback": {
            "count": fund.counts.get("liquidation_fee", 0),
            "collected": fund.inflow.get("liquidation_fee", 0),
        },
        "adl": adl_total,
        "funding": raw.funding,
        "margin_calls": ev.margin_calls,
        "stress": stress,
        "positions": positions,
        "minutes": minutes,
        "conservation": _conservation(raw, ev, fund),
        "crosscheck": {"ok": all(c["ok"] for c in checks.values()), "checks": checks},
        "run": {**dataclasses.asdict(raw.wall), "target": raw.target},
    }


def _market(raw: ReplayRun) -> dict[str, Any]:
    info = raw.info
    return {
        "symbol": info.symbol,
        "asset": info.asset,
        "asset_decimals": info.asset_decimals,
        "price_decimals": info.price_decimals,
        "quantity_decimals": info.quantity_decimals,
        "contract_type": "inverse" if info.inverse else "linear",
        "contract_value": info.contract_value,
        "liquidation_mode": "book" if info.liquidation_mode == 1 else "takeover",
    }


def _inputs(raw: ReplayRun) -> dict[str, Any]:
    """What was sent, and what riskd refused of it (by code and field)."""
    rejections = Counter(
        f"{ingest_pb2.RejectionCode.Name(r.code)} {r.field.split('.', 1)[-1]}"
        for r in raw.rejections
    )
    return {
        "marks": raw.sent["mark"],
        "fills": raw.sent["fill"],
        "deposits": raw.sent["deposit"],
        "margin_transfers": raw.sent["margin_transfer"],
        "funding_rates": raw.sent.get("funding_rate", 0),
        "liquidation_fills": raw.sent.get("liquidation_fill", 0),
        "book_orders": raw.book,
        "rejected": len(raw.rejections),
        "rejections": dict(sorted(rejections.items())),
    }


def _adl_executions(
    raw: ReplayRun, ev: _Events, sides: dict[int, int]
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], dict[str, Any]]]:
    """ADL executions: the daemon's own numbers (AdlExecuted), their notices' accounts."""
    hit: dict[tuple[str, int], list[int]] = defaultdict(list)
    for e in ev.notices:
        hit[(e.adl_notice.market, e.adl_notice.liquidation_id)].append(e.adl_notice.account)
    adl_by_lid: dict[tuple[str, int], dict[str, Any]] = {}
    adl_events: list[dict[str, Any]] = []  # as they appear in the report
    for e in ev.executed:
        x = e.adl_executed
        side = sides.get(x.liquidation_id, 0)
        entry = {
            "ts_ms": e.timestamp_ms,
            "liquidation_id": x.liquidation_id,
            "bankrupt_side": "long" if side > 0 else "short" if side < 0 else "?",
            "quantity": x.quantity,
            "price": x.price,
            "mark": mark_at(raw.marks, e.timestamp_ms),
            "notional": x.closed_notional,
            "deficit": x.deficit,
            "fund_paid": x.fund_paid,
            "counterparties": x.counterparties,
            "accounts": sorted(set(hit.get((x.market, x.liquidation_id), []))),
            "haircut": x.haircut,
            # The event's own figure: the daemon computed it, the report never does.
            "overshoot": x.overshoot,
            "reason": REASONS.get(x.reason, str(x.reason)),
        }
        adl_by_lid[(x.market, x.liquidation_id)] = entry
        adl_events.append(entry)
    return adl_events, adl_by_lid


def _liquidations(
    raw: ReplayRun, ev: _Events, adl_by_lid: dict[tuple[str, int], dict[str, Any]]
) -> tuple[dict[str, Any], Counter[str]]:
    """Liquidations by outcome (:func:`riskd.effects.liquidation_outcome`) and
    solvency, and per minute (the section, and its outcomes for the cross-check)."""
    per_minute: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    outcomes = Counter[str]()
    solvency = Counter[str]()
    liq_notional = 0
    for e in ev.settled:
        s = e.liquidation_settled
        n = raw.info.notional(s.quantity, s.price)
        liq_notional += n
        bucket = per_minute[e.timestamp_ms // 60_000 * 60_000]
        bucket[0] += 1
        bucket[1] += n
        outcomes[liquidation_outcome(s.adl_quantity, s.fund_delta)] += 1
        adl = adl_by_lid.get((s.market, s.liquidation_id))
        bankrupt = s.fund_delta < 0 or (adl is not None and adl["deficit"] > 0)
        solvency["bankrupt" if bankrupt else "solvent"] += 1
        if s.adl_quantity and not bankrupt:
            solvency["solvent_closed_by_adl"] += 1
    section = {
        "count": len(ev.settled),
        "notional": liq_notional,
        "by_outcome": dict(sorted(outcomes.items())),
        "by_solvency": dict(sorted(solvency.items())),
        "_per_minute": per_minute,  # joined with the stress samples by build
    }
    return section, outcomes


def _per_minute(
    per_minute: dict[int, list[int]], sampled: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every minute with a liquidation or a stress sample; ``stress`` is
    GetStressCoverage at the bar's open, by move (None: not sampled)."""
    return [
        {
            "minute_ts_ms": m,
            "count": per_minute[m][0] if m in per_minute else 0,
            "notional": per_minute[m][1] if m in per_minute else 0,
            "stress": sampled.get(m),
        }
        for m in sorted(set(per_minute) | set(sampled))
    ]


def _stress(raw: ReplayRun) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Stress coverage sampled at each bar's open: per minute the last sample, and
    the worst of each move."""
    sampled: dict[int, dict[str, Any]] = {}
    for smp in raw.stress:
        sampled[smp["ts_ms"] // 60_000 * 60_000] = {
            move_label(move): {"positions": n, "shortfall": q, "payable": p, "coverage_ppm": c}
            for move, n, q, p, c in smp["rows"]
        }
    moves = sorted({row[0] for smp in raw.stress for row in smp["rows"]})
    labels = [move_label(m) for m in moves]
    stress = {
        "moves": labels,
        "samples": len(raw.stress),
        "max_shortfall": {
            lb: max((x[lb]["shortfall"] for x in sampled.values() if lb in x), default=0)
            for lb in labels
        },
        "min_coverage_ppm": {
            lb: min((x[lb]["coverage_ppm"] for x in sampled.values() if lb in x), default=PPM)
            for lb in labels
        },
    }
    return sampled, stress


def _fund_flows(raw: ReplayRun, ev: _Events) -> _Fund:
    fund = _Fund(raw.fund_before.balance)
    first_ts = raw.bars[0].ts_ms
    for e in ev.flows:
        f = e.fund_flow
        (fund.inflow if f.amount > 0 else fund.outflow)[f.kind] += abs(f.amount)
        fund.counts[f.kind] += 1
        fund.series.append([max(e.timestamp_ms, first_ts), f.balance_after])
        if fund.depleted_at is None and f.amount < 0 and f.balance_after == 0:
            fund.depleted_at = e.timestamp_ms
    return fund


def _fund_section(raw: ReplayRun, fund: _Fund, minutes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "initial": fund.balance0,
        "seeded": raw.fund_seed,
        "final": fund.final,
        "min": min((b for _, b in fund.series), default=fund.balance0),
        "inflow_by_kind": dict(sorted(fund.inflow.items())),
        "outflow_by_kind": dict(sorted(fund.outflow.items())),
        "entries_by_kind": dict(sorted(fund.counts.items())),
        "depleted_ts_ms": fund.depleted_at,
        "series": fund.series,
        "equity_min": min((m["fund_equity"] for m in minutes), default=fund.final),
    }


def _positions(
    raw: ReplayRun, ev: _Events, sizes_end: dict[int, int], closed_by: dict[int, str]
) -> tuple[dict[str, Any], bool]:
    """What became of the traders' positions; and whether the open interest rebuilt
    from fills and events ends where the daemon's positions are."""
    accounts = raw.accounts
    liquidated = {s.liquidation_settled.account for s in ev.settled}
    deleveraged = {e.adl_notice.account for e in ev.notices}
    open_at_end = {a for a, r in accounts.items() if any(p.size for p in r.positions)}
    opened = {t.account for t in raw.traders}
    queried = {a: sum(p.size for p in r.positions if p.market == raw.info.symbol)
               for a, r in accounts.items()}  # fmt: skip
    rebuilt_ok = all(sizes_end.get(a, 0) == q for a, q in queried.items())
    positions = {
        "opened": len(opened),
        "liquidated": len(opened & liquidated),
        "deleveraged": len(opened & deleveraged),
        # What took each trader's position to zero, last (a trader opens once).
        "closed_by_liquidation": sum(closed_by.get(a) == "liquidation" for a in opened),
        "closed_by_adl": sum(closed_by.get(a) == "adl" for a in opened),
        "open_at_end": len(opened & open_at_end),
        "left_by_choice": sum(closed_by.get(a) == "trader" for a in opened),
        "exits": raw.exits,
        "house_size_at_end": sum(p.size for p in accounts[raw.house].positions),
        "backstop_size_at_end": sum(p.size for p in accounts[BACKSTOP].positions),
        "backstop_unwinds": raw.unwinds,
        "open_interest_at_end": sum(max(q, 0) for q in queried.values()),
        # The per-minute open interest is rebuilt from fills and events; it must end
        # where the daemon's positions are.
        "rebuilt_matches_daemon": rebuilt_ok,
    }
    return positions, rebuilt_ok


def _conservation(raw: ReplayRun, ev: _Events, fund: _Fund) -> dict[str, Any]:
    """The daemon's own check, and the identity recomputed from queries."""
    accounts, fund_after = raw.accounts, raw.fund_after
    # A cross account's positions show no margin of their own: its cross equity
    # (wallet, bands included, plus their unrealised PnL) stands for them.
    holdings = sum(
        r.wallet_balance
        + sum(p.margin_balance for p in r.positions)
        + (r.cross.equity - r.wallet_balance if r.HasField("cross") else 0)
        for r in accounts.values()
    )
    fee_pool = raw.fees - fund.inflow.get("trading_fee", 0)
    injected = fund.inflow.get("injection", 0)
    lhs = holdings + fund_after.balance + fee_pool
    rhs = sum(raw.deposits.values()) + injected + fund.balance0
    state = raw.state
    # The recomputation covers only this replay's accounts: it is the whole
    # identity only on a daemon that was fresh when the replay started.  Linear
    # fills without funding are exact; inverse values and funding leave rounding
    # residues (at most a quantum per fill, open position or funding receiver)
    # in the fee pool, which no query shows: the daemon's CheckState checks those.
    complete = bool(raw.fresh)
    slack = 0
    if raw.info.inverse or raw.funding:
        slack = len(raw.fills) + len(ev.settled) + len(ev.notices)
        slack += len(accounts) * (1 + len(raw.funding))
    identity_ok = -slack <= lhs - rhs <= 0 if slack else lhs == rhs
    return {
        "digest": state.digest,
        "violations": list(state.violations),
        "ok": not state.violations and (identity_ok or not complete),
        "recomputed": {
            "complete": complete,
            "accounts": holdings,
            "fund": fund_after.balance,
            "fee_pool": fee_pool,
            "deposits": sum(raw.deposits.values()),
            "injections": injected,
            "fund_before": fund.balance0,
            "difference": lhs - rhs,
            "rounding_allowance": slack,
        },
    }


def _adl_total(
    adl_events: list[dict[str, Any]], ev: _Events
) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """The ADL section, and its executions, notional and overshoot by reason."""
    by_reason: dict[str, dict[str, int]] = {}
    for a in adl_events:
        agg = by_reason.setdefault(a["reason"], {"executions": 0, "notional": 0, "overshoot": 0})
        agg["executions"] += 1
        agg["notional"] += a["notional"]
        agg["overshoot"] += a["overshoot"]
    adl_total: dict[str, Any] = {
        "executions": len(adl_events),
        "notices": len(ev.notices),
        "deleveraged_quantity": sum(a["quantity"] for a in adl_events),
        "deleveraged_notional": sum(a["notional"] for a in adl_events),
        "deficit": sum(a["deficit"] for a in adl_events),
        "fund_paid": sum(a["fund_paid"] for a in adl_events),
        "haircut": sum(a["haircut"] for a in adl_events),
        "overshoot": sum(a["overshoot"] for a in adl_events),
        "by_reason": dict(sorted(by_reason.items())),
        "accounts": sorted({x for a in adl_events for x in a["accounts"]}),
        "first_ts_ms": adl_events[0]["ts_ms"] if adl_events else None,
        "events": adl_events,
    }
    return adl_total, by_reason


def _crosscheck(
    raw: ReplayRun,
    ev: _Events,
    fund: _Fund,
    outcomes: Counter[str],
    adl_events: list[dict[str, Any]],
    adl_total: dict[str, Any],
    by_reason: dict[str, dict[str, int]],
    rebuilt_ok: bool,
) -> dict[str, dict[str, Any]]:
    """The report's figures against the daemon's own numbers: queries and metrics."""
    mb, ma = raw.metrics_before, raw.metrics_after
    m, asset = raw.info.symbol, raw.info.asset
    fund_after = raw.fund_after
    inflow, outflow = fund.inflow, fund.outflow
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ours: int, theirs: int) -> None:
        checks[name] = {"report": ours, "daemon": theirs, "ok": ours == theirs}

    check("fund_balance (GetInsuranceFund)", fund.final, fund_after.balance)
    check(
        "fund_inflow (GetInsuranceFund)",
        sum(inflow.values()),
        fund_after.total_inflow - raw.fund_before.total_inflow,
    )
    check(
        "fund_outflow (GetInsuranceFund)",
        sum(outflow.values()),
        fund_after.total_outflow - raw.fund_before.total_outflow,
    )
    check("open interest rebuilt (GetAccount)", int(rebuilt_ok), 1)
    check(
        "ADL counterparties (AdlExecuted = AdlNotice)",
        sum(a["counterparties"] for a in adl_events),
        len(ev.notices),
    )
    if not ma:
        return checks
    bal = [v for (n, ls), v in ma.items()
           if n == "riskd_insurance_fund_balance_quantums"
           and ("asset", asset) in ls]  # fmt: skip
    if bal:
        check("fund_balance (metric)", fund.final, round(bal[0]))
    for o in LIQUIDATION_OUTCOMES:
        check(
            f"liquidations {o} (metric)",
            outcomes.get(o, 0),
            metric_delta(mb, ma, "riskd_liquidations_total", market=m, outcome=o),
        )
    check(
        "adl_executions (metric)",
        len(adl_events),
        metric_delta(mb, ma, "riskd_adl_events_total", market=m),
    )
    check(
        "adl_notional (metric)",
        adl_total["deleveraged_notional"],
        metric_delta(mb, ma, "riskd_adl_closed_notional_quantums_total", market=m),
    )
    check(
        "adl_overshoot (metric)",
        adl_total["overshoot"],
        metric_delta(mb, ma, "riskd_adl_overshoot_quantums_total", market=m),
    )
    for reason, agg in by_reason.items():
        check(
            f"adl_executions {reason} (metric)",
            agg["executions"],
            metric_delta(mb, ma, "riskd_adl_events_total", market=m, reason=reason),
        )
    for kind in sorted(set(inflow) | {"liquidation_fee"}):
        check(
            f"fund inflow {kind} (metric)",
            inflow.get(kind, 0),
            metric_delta(mb, ma, INFLOW, asset=asset, kind=kind),
        )  # fmt: skip
    for kind in sorted(set(outflow) | {"shortfall"}):
        check(
            f"fund outflow {kind} (metric)",
            outflow.get(kind, 0),
            metric_delta(mb, ma, OUTFLOW, asset=asset, kind=kind),
        )  # fmt: skip
    check(
        "updates applied (metric)",
        sum(raw.sent.values()) - len(raw.rejections),
        metric_delta(mb, ma, "riskd_updates_total", outcome="applied"),
    )
    return checks


def _minutes(
    raw: ReplayRun,
    settled: list[Any],
    flows: list[Any],
    adl_events: list[dict[str, Any]],
    changes: list[tuple[int, int]],
    sampled: dict[int, dict[str, Any]],
    leverage: dict[int, int],
    sides: dict[int, int],
) -> list[dict[str, Any]]:
    """The analyst's table: one row per bar (a minute on 1-minute paths), state at its close."""
    bars = raw.bars
    bar_ts = [b.ts_ms for b in bars]
    n = len(bars)

    def bar_of(ts: int) -> int:
        return min(max(bisect.bisect_right(bar_ts, ts) - 1, 0), n - 1)

    def blank() -> dict[str, Any]:
        return {
            "liq_long": 0, "liq_short": 0, "liq_notional": 0,
            "liq_by_leverage": Counter[str](), "shortfalls_paid": 0,
            "adl_notional": Counter[str](), "haircut": 0, "overshoot": 0,
            "accounts_hit": set(),
        }  # fmt: skip

    rows = [blank() for _ in range(n)]
    info = raw.info
    for e in settled:
        s = e.liquidation_settled
        r = rows[bar_of(e.timestamp_ms)]
        side = sides.get(s.liquidation_id, 0)
        r["liq_long" if side > 0 else "liq_short"] += 1
        r["liq_notional"] += info.notional(s.quantity, s.price)
        lev = leverage.get(s.account)
        name = (
            population.leverage_bucket(lev) if lev else
            "backstop" if s.account == BACKSTOP else "house"
        )  # fmt: skip
        r["liq_by_leverage"][name] += 1
    for e in flows:
        if e.fund_flow.kind == "shortfall":
            rows[bar_of(e.timestamp_ms)]["shortfalls_paid"] += -e.fund_flow.amount
    for a in adl_events:
        r = rows[bar_of(a["ts_ms"])]
        r["adl_notional"][a["reason"]] += a["notional"]
        r["haircut"] += a["haircut"]
        r["overshoot"] += a["overshoot"]
        r["accounts_hit"].update(a["accounts"])
    # State at each bar's close: open interest and fund balance after its last
    # change, the backstop's margin balance from the sample at the next open.
    series = [(e.timestamp_ms, e.fund_flow.balance_after) for e in flows]
    ledger = [[max(t, bar_ts[0]), b] for t, b in series]
    samples = raw.samples
    sample_ts = [x["ts_ms"] for x in samples]
    change_ts = [t for t, _ in changes]
    flow_ts = [t for t, _ in series]
    policy = raw.fund_policy
    balance0 = raw.fund_before.balance + 0
    out = []
    ends = [*bar_ts[1:], None]
    for i, (b, r) in enumerate(zip(bars, rows, strict=True)):
        end = ends[i]
        last = (end - 1) if end is not None else raw.marks[0][-1]
        j = bisect.bisect_right(change_ts, last) - 1
        oi = changes[j][1] if j >= 0 else 0
        k = bisect.bisect_right(flow_ts, last) - 1
        balance = series[k][1] if k >= 0 else balance0
        at = bisect.bisect_left(sample_ts, end) if end is not None else len(samples) - 1
        smp = samples[min(at, len(samples) - 1)] if samples else None
        backstop = smp["backstop_margin_balance"] if smp else 0
        minute = b.ts_ms // 60_000 * 60_000
        st = sampled.get(minute) or {}
        out.append(
            {
                "ts_ms": b.ts_ms,
                "mark": mark_at(raw.marks, last),
                "open_interest": oi,
                "fund_balance": balance,
                "fund_equity": balance + backstop,
                "drawdown_headroom": _headroom(ledger, last, balance, policy),
                "liquidations_long": r["liq_long"],
                "liquidations_short": r["liq_short"],
                "liquidated_notional": r["liq_notional"],
                "liquidations_by_leverage": dict(sorted(r["liq_by_leverage"].items())),
                "shortfalls_paid": r["shortfalls_paid"],
                "adl_notional": sum(r["adl_notional"].values()),
                "adl_notional_by_reason": dict(sorted(r["adl_notional"].items())),
                "haircut": r["haircut"],
                "overshoot": r["overshoot"],
                "accounts_hit": len(r["accounts_hit"]),
                "stress_coverage_ppm": {k2: v["coverage_ppm"] for k2, v in st.items()},
            }
        )
    return out


def deterministic(report: dict[str, Any]) -> dict[str, Any]:
    """The report without wall-clock and address fields (same seed → equal)."""
    return {k: v for k, v in report.items() if k != "run"}


# --- output ----------------------------------------------------------------------------


def units(quantums: int, decimals: int, places: int = 2) -> str:
    if decimals > 6:  # a coin (BTC): whole units or cents say nothing
        places = max(places, 4)
    v = Decimal(quantums).scaleb(-decimals)
    return f"{v:,.{places}f}"


def _price(p: int, decimals: int) -> str:
    return f"{Decimal(p).scaleb(-decimals):,.{decimals}f}"


def _when(ts: int | None) -> str:
    return prices.iso(ts) if ts is not None else "never"


def _headline(r: dict[str, Any]) -> list[tuple[str, str]]:
    d = r["market"]["asset_decimals"]
    a = r["market"]["asset"]
    liq = r["liquidations"]
    adl = r["adl"]
    pos = r["positions"]
    sf, cb = r["shortfalls"], r["clawback"]
    f = r["fund"]
    flows = [f"+{units(v, d)} {k}" for k, v in f["inflow_by_kind"].items()]
    flows += [f"−{units(v, d)} {k}" for k, v in f["outflow_by_kind"].items()]
    reasons = ", ".join(
        f"{k} {x['executions']} ({units(x['notional'], d, 0)} {a})"
        for k, x in adl["by_reason"].items()
    )
    return [
        ("liquidations", f"{liq['count']} ({units(liq['notional'], d)} {a} notional)"),
        ("by outcome", ", ".join(f"{k} {v}" for k, v in liq["by_outcome"].items()) or "none"),
        ("solvent / bankrupt", f"{liq['by_solvency'].get('solvent', 0)} solvent "
                               f"({liq['by_solvency'].get('solvent_closed_by_adl', 0)} of them "
                               f"closed by ADL at the mark), "
                               f"{liq['by_solvency'].get('bankrupt', 0)} bankrupt"),
        ("fund", f"{units(f['initial'], d)} → {units(f['final'], d)} {a}: "
                 + (" ".join(flows) or "no flows")),
        ("fund low", f"balance {units(f['min'], d)} {a}; equity (balance + the backstop's "
                     f"positions at the mark) {units(f['equity_min'], d)} {a}"),
        ("fund depleted", _when(f["depleted_ts_ms"])),
        ("shortfalls absorbed", f"{sf['count']} ({units(sf['absorbed'], d)} {a})"),
        ("clawback collected", f"{cb['count']} ({units(cb['collected'], d)} {a})"),
        ("ADL", f"{adl['executions']} executions, {adl['notices']} notices, "
                f"{units(adl['deleveraged_notional'], d)} {a} deleveraged, "
                f"haircut {units(adl['haircut'], d)} {a}, "
                f"overshoot {units(adl['overshoot'], d, 6)} {a}"),
        ("ADL by reason", reasons or "none"),
        ("first ADL", _when(adl["first_ts_ms"])),
        ("positions", f"{pos['opened']} opened, {pos['left_by_choice']} closed by their "
                      f"trader, {pos['closed_by_liquidation']} by liquidation, "
                      f"{pos['closed_by_adl']} by ADL, {pos['open_at_end']} open at the end"),
        ("stress coverage", ", ".join(
            f"{m}: lowest {r['stress']['min_coverage_ppm'][m] / 10_000:.1f} % of up to "
            f"{units(r['stress']['max_shortfall'][m], d)} {a}"
            for m in TABLE_MOVES if m in r["stress"]["moves"]) or "not sampled"),
        ("conservation", ("ok" if r["conservation"]["ok"] else "VIOLATED")
                         + f" (digest {r['conservation']['digest'][:16]}…)"),
        ("cross-check", "all agree" if r["crosscheck"]["ok"] else "MISMATCH: " + ", ".join(
            n for n, c in r["crosscheck"]["checks"].items() if not c["ok"])),
    ]  # fmt: skip


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    p = r["path"]
    mk = r["market"]
    src = r.get("source", {})
    lines = [
        f"# riskd replay: {src.get('name', 'price path')}",
        "",
        f"{p['bars']} bars of {p['interval_ms'] // 1000} s from {prices.iso(p['first_ts_ms'])} "
        f"UTC, {r['inputs']['marks']} marks on {mk['symbol']} ({mk['contract_type']}, "
        f"{mk['liquidation_mode']} mode): open {p['open']}, low {p['low']}, high {p['high']}, "
        f"close {p['close']}.",
        f"{s['accounts']} traders ({s['population']} population, seed {s['seed']}, leverage mix "
        f"`{s['leverage_mix']}`), fund {s['fund']} {mk['asset']}, ADL policy "
        f"`{s['adl_policy']}`, liquidation fee cap {s['fee_cap_ppm'] / 10_000:g} %"
        + (f", fund loss cap {s['fund_cap']} {mk['asset']}" if s.get("fund_cap") else "")
        + (f", partial `{s['partial']}`" if s.get("partial") else "")
        + f", {len(r.get('funding', []))} funding payments.",
    ]
    if src.get("generated"):
        lines += ["", "**The price path is generated (synthetic), not market data.**"]
    lines += ["", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _headline(r)]
    lines += [
        "",
        f"Inputs: {r['inputs']['fills']} fills, {r['inputs']['deposits']} deposits, "
        f"{r['inputs']['margin_transfers']} margin transfers, "
        f"{r['inputs']['funding_rates']} funding rates; {r['inputs']['rejected']} rejected. "
        f"Margin calls: {r['margin_calls']}.",
        "",
        "Files: `report.json` (all numbers, in quantums), `minutes.csv` (every bar), `replay.png`.",
        "",
    ]
    lines += _per_minute_table(r)
    return "\n".join(lines)


def _q(quantity: int, decimals: int) -> str:
    return f"{Decimal(quantity).scaleb(-decimals):,.{decimals}f}"


def _per_minute_table(r: dict[str, Any]) -> list[str]:
    """Minutes with liquidations, ADL, a shortfall or a fund that could not cover a stress move."""
    d = r["market"]["asset_decimals"]
    pd = r["market"]["price_decimals"]
    qd = r["market"]["quantity_decimals"]
    a = r["market"]["asset"]
    moves = [m for m in ("-10%", "+10%") if m in r.get("stress", {}).get("moves", [])]

    def notable(row: dict[str, Any]) -> bool:
        cov = row["stress_coverage_ppm"]
        return bool(
            row["liquidations_long"] + row["liquidations_short"]
            or row["adl_notional"]
            or row["shortfalls_paid"]
            or any(v < PPM for v in cov.values())
        )

    rows = [x for x in r.get("minutes", []) if notable(x)]
    if not rows:
        return []
    oi_unit = "contracts" if r["market"]["contract_type"] == "inverse" else "base"
    head = ["minute (UTC)", "mark", f"open interest ({oi_unit})", f"fund ({a})",
            f"fund equity ({a})", f"guard headroom ({a})", "liquidated long/short",
            "by leverage", f"liquidated notional ({a})", f"shortfalls paid ({a})",
            f"ADL notional ({a}, reason)", f"haircut ({a})", f"overshoot ({a})",
            "accounts hit"]  # fmt: skip
    head += [f"covered {m}" for m in moves]
    out = [
        "## Per minute",
        "",
        "State at the minute's close: mark, open interest, the fund's balance and its",
        "equity (balance plus the backstop's taken-over positions at the mark), and the",
        "drawdown guard's headroom (how much more the fund may pay before its guard",
        "sends losses to ADL). Then what happened in the minute: liquidations by side and",
        "trader leverage, shortfalls the fund paid, ADL notional by the reason the",
        "daemon gave, the counterparties' haircut and the overshoot (both from the",
        "daemon's `AdlExecuted`), accounts hit by ADL, and the share of a ±10 % move's",
        "shortfall the fund could have paid at the minute's open (`GetStressCoverage`).",
        "Only minutes where something happened; `minutes.csv` has every one.",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for x in rows[:TABLE_ROWS]:
        adl = ", ".join(f"{units(v, d, 0)} {k}" for k, v in x["adl_notional_by_reason"].items())
        lev = ", ".join(f"{k} {v}" for k, v in x["liquidations_by_leverage"].items())
        room = x["drawdown_headroom"]
        cells = [
            prices.iso(x["ts_ms"]), _price(x["mark"], pd), _q(x["open_interest"], qd),
            units(x["fund_balance"], d, 0), units(x["fund_equity"], d, 0),
            "" if room is None else units(room, d, 0),
            f"{x['liquidations_long']} / {x['liquidations_short']}", lev,
            units(x["liquidated_notional"], d, 0), units(x["shortfalls_paid"], d, 0),
            adl, units(x["haircut"], d, 2), units(x["overshoot"], d, 6),
            str(x["accounts_hit"]),
        ]  # fmt: skip
        cells += [
            f"{x['stress_coverage_ppm'][m] / 10_000:.1f} %" if m in x["stress_coverage_ppm"]
            else "" for m in moves
        ]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    if len(rows) > TABLE_ROWS:
        out.append(f"| … {len(rows) - TABLE_ROWS} more in `minutes.csv` |" + " |" * (len(head) - 1))
    out.append("")
    return out


def minutes_csv(r: dict[str, Any]) -> str:
    """Every bar of the analyst's table: money in asset units, prices in the quote."""
    d = r["market"]["asset_decimals"]
    pd = r["market"]["price_decimals"]
    qd = r["market"]["quantity_decimals"]
    rows = r.get("minutes", [])
    order = [name for _, name in population.LEVERAGE_BUCKETS] + ["backstop", "house"]
    buckets = [b for b in order if any(b in x["liquidations_by_leverage"] for x in rows)]
    reasons = sorted({k for x in rows for k in x["adl_notional_by_reason"]})
    moves = r.get("stress", {}).get("moves", [])

    def money(v: int | None) -> str:
        return "" if v is None else str(Decimal(v).scaleb(-d))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["ts_ms", "time_utc", "mark", "open_interest", "fund_balance", "fund_equity",
         "drawdown_headroom", "liquidations_long", "liquidations_short"]
        + [f"liquidations_{b}" for b in buckets]
        + ["liquidated_notional", "shortfalls_paid", "adl_notional"]
        + [f"adl_{x}" for x in reasons]
        + ["haircut", "overshoot", "accounts_hit"]
        + [f"coverage_{m}" for m in moves]
    )  # fmt: skip
    for x in rows:
        w.writerow(
            [x["ts_ms"], prices.iso(x["ts_ms"]), Decimal(x["mark"]).scaleb(-pd),
             Decimal(x["open_interest"]).scaleb(-qd), money(x["fund_balance"]),
             money(x["fund_equity"]), money(x["drawdown_headroom"]),
             x["liquidations_long"], x["liquidations_short"]]
            + [x["liquidations_by_leverage"].get(b, 0) for b in buckets]
            + [money(x["liquidated_notional"]), money(x["shortfalls_paid"]),
               money(x["adl_notional"])]
            + [money(x["adl_notional_by_reason"].get(k, 0)) for k in reasons]
            + [money(x["haircut"]), money(x["overshoot"]), x["accounts_hit"]]
            + [
                "" if m not in x["stress_coverage_ppm"]
                else str(Decimal(x["stress_coverage_ppm"][m]).scaleb(-6))
                for m in moves
            ]
        )  # fmt: skip
    return buf.getvalue()


def read_reference(spec: str) -> dict[str, Any]:
    """``FILE[:COLUMN]``: a per-minute series to overlay (timestamps, one numeric column).

    The first column is the time (ms, s or µs, as price files); COLUMN names
    the value column (default: the second).  A header row is needed to name it.
    """
    path, _, column = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if row and "".join(row).strip()]
    except UnicodeDecodeError:
        raise ValueError(f"--reference {path}: not a text CSV file") from None
    except csv.Error as e:
        raise ValueError(f"--reference {path}: not a CSV file ({e})") from None
    if not rows:
        raise ValueError(f"--reference {path}: empty")
    header = None
    try:
        prices._ts_ms(rows[0][0])
    except (ArithmeticError, ValueError):
        header, rows = [h.strip() for h in rows[0]], rows[1:]
    if column:
        if header is None or column not in header:
            raise ValueError(f"--reference {path}: no column {column!r} (header: {header})")
        col = header.index(column)
    else:
        col = 1
        column = header[1] if header and len(header) > 1 else "value"
    points: list[tuple[int, float]] = []
    for n, row in enumerate(rows, 2 if header else 1):
        try:
            ts = prices._ts_ms(row[0])
            points.append((ts, float(Decimal(row[col].strip()))))
        except (ArithmeticError, ValueError, IndexError):
            raise ValueError(f"--reference {path}:{n}: want a time and a number in column "
                             f"{column!r}, got {row!r}") from None  # fmt: skip
    if not points:
        raise ValueError(f"--reference {path}: no rows")
    return {"name": f"{Path(path).name}:{column}", "points": sorted(points)}


def plotting_missing() -> str | None:
    """Why this installation cannot draw the report's charts, or None if it can.

    matplotlib is the ``replay`` extra: the daemon never plots, so a plain
    ``pip install riskd`` leaves it out, and ``riskd replay`` says so up front
    rather than after minutes of replay.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "the report's charts need matplotlib: pip install 'riskd[replay]'"
    return None


#: A plot keeps at most this many bins per series: long paths are summed into
#: wider bins (5, 15, 60 minutes...) so each bar stays visible.
MAX_BINS = 240
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "v", "D", "x")


def _bin_ms(r: dict[str, Any]) -> int:
    step = r["path"]["interval_ms"]
    span = r["path"]["last_ts_ms"] - r["path"]["first_ts_ms"] + step
    for minutes in (1, 5, 15, 30, 60, 120, 240, 480, 1440):
        if minutes * 60_000 >= step and span // (minutes * 60_000) <= MAX_BINS:
            return minutes * 60_000
    return 1440 * 60_000


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(
    r: dict[str, Any],
    raw_marks: tuple[list[int], list[int]],
    path: Path,
    reference: dict[str, Any] | None = None,
) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    from datetime import UTC, datetime

    d = r["market"]["asset_decimals"]
    pd = r["market"]["price_decimals"]
    qd = r["market"]["quantity_decimals"]
    a = r["market"]["asset"]
    quote = r["market"]["symbol"].rsplit("-", 1)[-1]

    def t(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    fig, (a1, a2, a3, a4) = plt.subplots(4, 1, figsize=(12, 12), sharex=True)
    ts, px = raw_marks
    a1.plot([t(x) for x in ts], [p / 10**pd for p in px], lw=0.8, color="black", label="mark")
    for i, e in enumerate(r["adl"]["events"]):
        a1.axvline(t(e["ts_ms"]), color="red", alpha=0.3, lw=0.8,
                   label="ADL execution" if i == 0 else None)  # fmt: skip
    if r["fund"]["depleted_ts_ms"] is not None:
        a1.axvline(t(r["fund"]["depleted_ts_ms"]), color="tab:blue", ls="--", lw=1.2,
                   label="fund depleted")  # fmt: skip
    a1.set_ylabel(f"mark ({quote})")
    a1.set_title(f"{r.get('source', {}).get('name', 'replay')} — {r['market']['symbol']}, "
                 f"{r['settings']['accounts']} traders")  # fmt: skip
    a1.legend(loc="best", fontsize=8)

    # Liquidated notional and ADL notional, summed per bin, on a log axis: a crash
    # minute is thousands of times a calm one.
    width = _bin_ms(r)
    long_n: Counter[int] = Counter()
    short_n: Counter[int] = Counter()
    adl_n: Counter[int] = Counter()
    for x in r.get("minutes", []):
        k = x["ts_ms"] // width * width
        share = x["liquidated_notional"] / 10**d
        both = x["liquidations_long"] + x["liquidations_short"]
        if both:
            long_n[k] += share * x["liquidations_long"] / both
            short_n[k] += share * x["liquidations_short"] / both
        adl_n[k] += x["adl_notional"] / 10**d
    keys = sorted(set(long_n) | set(short_n))
    w = width / 86_400_000 * 0.9
    a2.bar([t(k) for k in keys], [long_n[k] for k in keys], width=w, align="edge",
           color="tab:green", label="longs liquidated")  # fmt: skip
    a2.bar([t(k) for k in keys], [short_n[k] for k in keys], width=w, align="edge",
           bottom=[long_n[k] for k in keys], color="tab:orange",
           label="shorts liquidated")  # fmt: skip
    ak = sorted(k for k in adl_n if adl_n[k])
    if ak:
        a2.plot([t(k) for k in ak], [adl_n[k] for k in ak], "rx", label="ADL notional")
    if keys or ak:
        a2.set_yscale("log")
    a2.set_ylabel(f"{a} per {width // 60_000} min (log)")
    if reference:
        ax = a2.twinx()
        ref: Counter[int] = Counter()
        for ts_, v in reference["points"]:
            ref[ts_ // width * width] += v
        rk = sorted(ref)
        ax.step([t(k) for k in rk], [ref[k] for k in rk], where="post", color="purple",
                lw=1, label=f"reference: {reference['name']}")  # fmt: skip
        ax.set_ylabel(f"reference per {width // 60_000} min")
        ax.legend(loc="upper right", fontsize=8)
    a2.legend(loc="upper left", fontsize=8)

    mins = r.get("minutes", [])
    xs = [t(x["ts_ms"]) for x in mins]
    a3.step(xs, [x["fund_balance"] / 10**d for x in mins], where="post", color="tab:blue",
            label="fund balance")  # fmt: skip
    a3.step(xs, [x["fund_equity"] / 10**d for x in mins], where="post", color="tab:cyan",
            ls="--", label="fund equity (incl. backstop positions at the mark)")  # fmt: skip
    if mins and mins[0]["drawdown_headroom"] is not None:
        a3.step(xs, [(x["drawdown_headroom"] or 0) / 10**d for x in mins], where="post",
                color="tab:gray", ls=":", label="drawdown guard headroom")  # fmt: skip
    a3.set_ylabel(f"insurance fund ({a})")
    a3.legend(loc="best", fontsize=8)
    oi_unit = "contracts" if r["market"]["contract_type"] == "inverse" else "base units"
    a4.step(xs, [x["open_interest"] / 10**qd for x in mins], where="post", color="tab:purple",
            label="open interest")  # fmt: skip
    a4.set_ylabel(f"open interest ({oi_unit})")
    a4.set_xlabel("time (UTC)")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(
    r: dict[str, Any],
    raw_marks: tuple[list[int], list[int]],
    out: Path,
    reference: dict[str, Any] | None = None,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "summary.md", out / "minutes.csv"]
    files[0].write_text(json.dumps(r, indent=1) + "\n")
    files[1].write_text(markdown(r))
    files[2].write_text(minutes_csv(r))
    if plot(r, raw_marks, out / "replay.png", reference):
        files.append(out / "replay.png")
    return files


def overlap(a: list[int], b: list[int]) -> dict[str, Any]:
    """ADL counterparties two runs share: counts and Jaccard index (ppm)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return {
        "both": len(sa & sb),
        "only_first": len(sa - sb),
        "only_second": len(sb - sa),
        "jaccard_ppm": len(sa & sb) * PPM // len(union) if union else PPM,
    }


def write_compare(
    runs: list[tuple[str, dict[str, Any]]],
    raw_marks: tuple[list[int], list[int]],
    out: Path,
    reference: dict[str, Any] | None = None,
) -> list[Path]:
    """Side by side: one table (compare.md), one plot (compare.png), compare.json.

    The first run is the baseline: the table shows each other run's change
    against it, and how many ADL counterparties the two runs share.
    """
    out.mkdir(parents=True, exist_ok=True)
    d = runs[0][1]["market"]["asset_decimals"]
    a = runs[0][1]["market"]["asset"]
    cols: list[tuple[str, Callable[[dict[str, Any]], int | None], int]] = [
        ("liquidations", lambda r: r["liquidations"]["count"], -1),
        ("absorbed", lambda r: r["liquidations"]["by_outcome"].get("absorbed", 0), -1),
        ("to ADL", lambda r: r["liquidations"]["by_outcome"].get("adl", 0), -1),
        ("solvent closed by ADL",
         lambda r: r["liquidations"]["by_solvency"].get("solvent_closed_by_adl", 0), -1),
        (f"fund start ({a})", lambda r: r["fund"]["initial"] + r["fund"]["seeded"], 0),
        (f"fund end ({a})", lambda r: r["fund"]["final"], 0),
        (f"fund equity low ({a})", lambda r: r["fund"]["equity_min"], 0),
        (f"shortfalls ({a})", lambda r: r["shortfalls"]["absorbed"], 0),
        (f"clawback ({a})", lambda r: r["clawback"]["collected"], 0),
        ("ADL executions", lambda r: r["adl"]["executions"], -1),
        (f"ADL notional ({a})", lambda r: r["adl"]["deleveraged_notional"], 0),
        (f"haircut ({a})", lambda r: r["adl"]["haircut"], 2),
        (f"overshoot ({a})", lambda r: r["adl"]["overshoot"], 6),
        ("accounts hit by ADL", lambda r: r["positions"]["deleveraged"], -1),
        ("closed by ADL", lambda r: r["positions"]["closed_by_adl"], -1),
        ("ADL counterparty closes", lambda r: r["adl"]["notices"], -1),
    ]  # fmt: skip

    def fmt(v: int | None, places: int) -> str:
        if v is None:
            return ""
        return str(v) if places < 0 else units(v, d, places)

    def delta(v: int, base: int, places: int) -> str:
        if v == base:
            return "="
        sign = "+" if v > base else "−"
        return sign + fmt(abs(v - base), places)

    lines = ["# riskd replay: comparison", ""]
    src = runs[0][1].get("source", {})
    first = runs[0][1]
    lines.append(
        f"Path: {src.get('name', '?')}, {first['path']['bars']} bars; "
        f"{first['settings']['accounts']} traders, seed {first['settings']['seed']}. "
        f"Baseline: the first row; the rows under it give each run's change against it."
    )
    head = ["setting", *(c for c, _, _ in cols), "first ADL", "fund depleted",
            "lowest coverage −10 %", "ADL accounts shared with baseline",
            "conservation"]  # fmt: skip
    lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    base = runs[0][1]
    comparison = []
    for i, (label, r) in enumerate(runs):
        ov = overlap(base["adl"]["accounts"], r["adl"]["accounts"])
        cells = [label] + [fmt(f(r), pl) for _, f, pl in cols]
        cells += [_when(r["adl"]["first_ts_ms"]), _when(r["fund"]["depleted_ts_ms"]),
                  f"{r['stress']['min_coverage_ppm'].get('-10%', PPM) / 10_000:.1f} %",
                  "baseline" if i == 0 else
                  f"{ov['both']} of {len(r['adl']['accounts'])} "
                  f"(Jaccard {ov['jaccard_ppm'] / 10_000:.0f} %)",
                  "ok" if r["conservation"]["ok"] else "VIOLATED"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
        if i:
            dl = [f"Δ {label}"] + [delta(f(r) or 0, f(base) or 0, pl) for _, f, pl in cols]
            lines.append("| " + " | ".join(dl + [""] * (len(head) - len(dl))) + " |")
        comparison.append({"label": label, "overlap_with_baseline": ov})
    lines += [
        "",
        "ADL accounts shared: the counterparties this run's ADL hit that the baseline's",
        "also hit (Jaccard: shared / either). Equal rows mean the setting changed",
        "nothing on this path.",
        "",
    ]
    files = [out / "compare.json", out / "compare.md"]
    files[0].write_text(
        json.dumps(
            [{"label": lb, "report": deterministic(r), **c}
             for (lb, r), c in zip(runs, comparison, strict=True)],
            indent=1,
        )
        + "\n"
    )  # fmt: skip
    files[1].write_text("\n".join(lines))
    plt = _pyplot()
    if plt is None:
        return files
    from datetime import UTC, datetime

    fig, (a1, a2, a3, a4) = plt.subplots(4, 1, figsize=(12, 13), sharex=True)
    ts, px = raw_marks
    pd = runs[0][1]["market"]["price_decimals"]
    quote = runs[0][1]["market"]["symbol"].rsplit("-", 1)[-1]

    def t(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    a1.plot([t(x) for x in ts], [p / 10**pd for p in px], lw=0.8, color="black", label="mark")
    a1.set_ylabel(f"mark ({quote})")
    a1.legend(loc="best", fontsize=8)
    end = t(ts[-1])
    drawn: list[tuple[Any, str]] = []
    for i, (label, r) in enumerate(runs):
        # Distinct styles, and a run that draws the same lines as an earlier one says
        # so in the legend, so equal results cannot hide each other.
        style = {"ls": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)],
                 "markevery": 0.1, "lw": 1.4}  # fmt: skip
        start = r["fund"]["initial"] + r["fund"]["seeded"]
        mins = r.get("minutes", [])
        eq = [(x["ts_ms"], x["fund_equity"] - start) for x in mins]
        cum, adl = 0, [(ts[0], 0)]
        for e in r["adl"]["events"]:
            cum += e["notional"]
            adl.append((e["ts_ms"], cum))
        adl.append((ts[-1], cum))
        key = (tuple(eq), tuple(adl))
        same = next((lb for k, lb in drawn if k == key), None)
        drawn.append((key, label))
        shown = label + (f" (same as {same})" if same else "")
        a2.step([t(x) for x, _ in eq] or [t(ts[0]), end], [v / 10**d for _, v in eq] or [0, 0],
                where="post", label=shown, **style)  # fmt: skip
        a3.step([t(x) for x, _ in adl], [v / 10**d for _, v in adl], where="post",
                label=shown, **style)  # fmt: skip
        seen: set[int] = set()
        hits = [(ts[0], 0)]
        for e in r["adl"]["events"]:
            seen.update(e["accounts"])
            hits.append((e["ts_ms"], len(seen)))
        hits.append((ts[-1], len(seen)))
        a4.step([t(x) for x, _ in hits], [v for _, v in hits], where="post", label=label,
                **style)  # fmt: skip
    if reference:
        ax = a3.twinx()
        acc, pts = 0.0, []
        for ts_, v in reference["points"]:
            acc += v
            pts.append((t(ts_), acc))
        ax.step([x for x, _ in pts], [v for _, v in pts], where="post", color="purple",
                lw=1, label=f"reference (cumulative): {reference['name']}")  # fmt: skip
        ax.legend(loc="lower right", fontsize=8)
    a2.set_ylabel(f"fund equity change since seed ({a})")
    a3.set_ylabel(f"cumulative ADL notional ({a})")
    a4.set_ylabel("accounts hit by ADL (cumulative)")
    a4.set_xlabel("time (UTC)")
    a2.legend(fontsize=8, loc="best")
    a3.legend(fontsize=8, loc="upper left")
    a4.legend(fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=100)
    plt.close(fig)
    files.append(out / "compare.png")
    return files
