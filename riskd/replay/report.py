"""Turn a replay's raw results into a report: JSON, a Markdown summary, PNG plots.

Every number comes from the daemon (events, queries, CheckState); the
metrics scrape is used only to cross-check them (``crosscheck``: each entry
holds the report's value, the daemon's, and whether they agree).  Money is
in quantums of the settlement asset (``asset_decimals`` says how many per
unit); the Markdown shows whole units.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from riskd.core.stress import move_label
from riskd.replay import prices
from riskd.replay.driver import BACKSTOP, mark_at, metric_delta
from riskd.v1 import ingest_pb2, types_pb2

__all__ = ["build", "deterministic", "write", "write_compare"]

FORMAT = 1
INFLOW = "riskd_insurance_fund_inflow_quantums_total"
OUTFLOW = "riskd_insurance_fund_outflow_quantums_total"
PPM = 1_000_000
#: Stress moves shown in summary.md's per-minute table (all are in report.json).
TABLE_MOVES = ("-20%", "-10%", "+10%", "+20%")
TABLE_ROWS = 60


def build(raw: dict[str, Any]) -> dict[str, Any]:
    info = raw["info"]
    k = info.unit_value
    asset = info.asset
    events = raw["events"]
    settled = [e for e in events if e.HasField("liquidation_settled")]
    flows = [e for e in events if e.HasField("fund_flow") and e.fund_flow.asset == asset]
    notices = [e for e in events if e.HasField("adl_notice")]
    calls = sum(1 for e in events if e.HasField("margin_call"))

    # Liquidations, per minute.
    per_minute: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    outcomes = Counter[str]()
    liq_notional = 0
    settlement = {}
    for e in settled:
        s = e.liquidation_settled
        settlement[(s.market, s.liquidation_id)] = s
        n = s.quantity * s.price * k
        liq_notional += n
        bucket = per_minute[e.timestamp_ms // 60_000 * 60_000]
        bucket[0] += 1
        bucket[1] += n
        outcomes["adl" if s.adl_quantity else "absorbed" if s.fund_delta < 0 else "surplus"] += 1

    # Stress coverage sampled at each bar's open: per minute the last sample.
    sampled: dict[int, dict[str, Any]] = {}
    for smp in raw.get("stress", []):
        sampled[smp["ts_ms"] // 60_000 * 60_000] = {
            move_label(move): {"positions": n, "shortfall": q, "payable": p, "coverage_ppm": c}
            for move, n, q, p, c in smp["rows"]
        }
    moves = sorted({row[0] for smp in raw.get("stress", []) for row in smp["rows"]})
    labels = [move_label(m) for m in moves]
    stress = {
        "moves": labels,
        "samples": len(raw.get("stress", [])),
        "max_shortfall": {
            lb: max((x[lb]["shortfall"] for x in sampled.values() if lb in x), default=0)
            for lb in labels
        },
        "min_coverage_ppm": {
            lb: min((x[lb]["coverage_ppm"] for x in sampled.values() if lb in x), default=PPM)
            for lb in labels
        },
    }

    # Fund.
    inflow = Counter[str]()
    outflow = Counter[str]()
    counts = Counter[str]()
    balance0 = raw["fund_before"].balance
    series = []
    first_ts = raw["bars"][0].ts_ms
    for e in flows:
        f = e.fund_flow
        (inflow if f.amount > 0 else outflow)[f.kind] += abs(f.amount)
        counts[f.kind] += 1
        series.append([max(e.timestamp_ms, first_ts), f.balance_after])
    final_balance = series[-1][1] if series else balance0

    # ADL executions: one per bankrupt liquidation, its notices in order.
    groups: dict[tuple[str, int], list[Any]] = {}
    for e in notices:
        groups.setdefault((e.adl_notice.market, e.adl_notice.liquidation_id), []).append(e)
    adl_events = []
    for (market, lid), es in groups.items():
        ns = [e.adl_notice for e in es]
        qty = sum(n.quantity for n in ns)
        price = ns[0].price
        # Counterparties are short when the bankrupt position is long.
        s = 1 if ns[0].side == types_pb2.POSITION_SIDE_SHORT else -1
        mark = mark_at(raw["marks"], es[0].timestamp_ms)
        haircut = s * qty * k * (price - mark)
        st = settlement.get((market, lid))
        residue = st.fund_delta + st.returned_to_trader if st is not None else 0
        adl_events.append(
            {
                "ts_ms": es[0].timestamp_ms,
                "liquidation_id": lid,
                "bankrupt_side": "long" if s > 0 else "short",
                "quantity": qty,
                "price": price,
                "mark": mark,
                "notional": qty * price * k,
                "counterparties": len(ns),
                "haircut": haircut,
                "overshoot": max(min(haircut, residue), 0),
            }
        )

    # Positions.
    traders = raw["traders"]
    accounts = raw["accounts"]
    liquidated = {s.liquidation_settled.account for s in settled}
    deleveraged = {e.adl_notice.account for e in notices}
    open_at_end = {a for a, r in accounts.items() if any(p.size for p in r.positions)}
    opened = {t.account for t in traders}
    positions = {
        "opened": len(opened),
        "liquidated": len(opened & liquidated),
        "deleveraged": len(opened & deleveraged),
        "closed_by_liquidation": len((opened & liquidated) - open_at_end),
        "closed_by_adl": len(((opened & deleveraged) - liquidated) - open_at_end),
        "open_at_end": len(opened & open_at_end),
        "house_size_at_end": sum(p.size for p in accounts[raw["house"]].positions),
        "backstop_size_at_end": sum(p.size for p in accounts[BACKSTOP].positions),
        "backstop_unwinds": raw["unwinds"],
    }

    # Conservation: the daemon's own check, and the identity recomputed from queries.
    fund_after = raw["fund_after"]
    holdings = sum(
        r.wallet_balance + sum(p.margin_balance for p in r.positions) for r in accounts.values()
    )
    fee_pool = raw["fees"] - inflow.get("trading_fee", 0)
    injected = inflow.get("injection", 0)
    lhs = holdings + fund_after.balance + fee_pool
    rhs = sum(raw["deposits"].values()) + injected + balance0
    state = raw["state"]
    # The recomputation covers only this replay's accounts: it is the whole
    # identity only on a daemon that was fresh when the replay started.
    complete = bool(raw.get("fresh", True))
    conservation = {
        "digest": state.digest,
        "violations": list(state.violations),
        "ok": not state.violations and (lhs == rhs or not complete),
        "recomputed": {
            "complete": complete,
            "accounts": holdings,
            "fund": fund_after.balance,
            "fee_pool": fee_pool,
            "deposits": sum(raw["deposits"].values()),
            "injections": injected,
            "fund_before": balance0,
            "difference": lhs - rhs,
        },
    }

    adl_total = {
        "executions": len(adl_events),
        "notices": len(notices),
        "deleveraged_quantity": sum(a["quantity"] for a in adl_events),
        "deleveraged_notional": sum(a["notional"] for a in adl_events),
        "haircut": sum(a["haircut"] for a in adl_events),
        "overshoot": sum(a["overshoot"] for a in adl_events),
        "events": adl_events,
    }
    liq = {
        "count": len(settled),
        "notional": liq_notional,
        "by_outcome": dict(sorted(outcomes.items())),
        # Every minute with a liquidation or a stress sample; ``stress`` is
        # GetStressCoverage at the bar's open, by move (None: not sampled).
        "per_minute": [
            {
                "minute_ts_ms": m,
                "count": per_minute[m][0] if m in per_minute else 0,
                "notional": per_minute[m][1] if m in per_minute else 0,
                "stress": sampled.get(m),
            }
            for m in sorted(set(per_minute) | set(sampled))
        ],
    }
    fund = {
        "initial": balance0,
        "seeded": raw["fund_seed"],
        "final": final_balance,
        "min": min((b for _, b in series), default=balance0),
        "inflow_by_kind": dict(sorted(inflow.items())),
        "outflow_by_kind": dict(sorted(outflow.items())),
        "entries_by_kind": dict(sorted(counts.items())),
        "series": series,
    }

    # Cross-check against the daemon's own numbers: queries and metrics.
    mb, ma = raw["metrics_before"], raw["metrics_after"]
    m = info.symbol
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, ours: int, theirs: int) -> None:
        checks[name] = {"report": ours, "daemon": theirs, "ok": ours == theirs}

    check("fund_balance (GetInsuranceFund)", final_balance, fund_after.balance)
    check(
        "fund_inflow (GetInsuranceFund)",
        sum(inflow.values()),
        fund_after.total_inflow - raw["fund_before"].total_inflow,
    )
    check(
        "fund_outflow (GetInsuranceFund)",
        sum(outflow.values()),
        fund_after.total_outflow - raw["fund_before"].total_outflow,
    )
    if ma:
        bal = [v for (n, ls), v in ma.items()
               if n == "riskd_insurance_fund_balance_quantums"
               and ("asset", asset) in ls]  # fmt: skip
        if bal:
            check("fund_balance (metric)", final_balance, round(bal[0]))
        for o in ("surplus", "absorbed", "adl"):
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
        sent = raw["sent"]
        check(
            "updates applied (metric)",
            sum(sent.values()) - len(raw["rejections"]),
            metric_delta(mb, ma, "riskd_updates_total", outcome="applied"),
        )

    rejections = Counter(
        f"{ingest_pb2.RejectionCode.Name(r.code)} {r.field.split('.', 1)[-1]}"
        for r in raw["rejections"]
    )
    return {
        "format": FORMAT,
        "source": raw.get("source", {}),
        "path": prices.describe(raw["bars"]),
        "settings": raw["settings"].as_json(),
        "market": {
            "symbol": info.symbol,
            "asset": asset,
            "asset_decimals": info.asset_decimals,
            "price_decimals": info.price_decimals,
            "quantity_decimals": info.quantity_decimals,
        },
        "inputs": {
            "marks": raw["sent"]["mark"],
            "fills": raw["sent"]["fill"],
            "deposits": raw["sent"]["deposit"],
            "margin_transfers": raw["sent"]["margin_transfer"],
            "rejected": len(raw["rejections"]),
            "rejections": dict(sorted(rejections.items())),
        },
        "liquidations": liq,
        "fund": fund,
        "shortfalls": {
            "count": counts.get("shortfall", 0),
            "absorbed": outflow.get("shortfall", 0),
        },
        "clawback": {
            "count": counts.get("liquidation_fee", 0),
            "collected": inflow.get("liquidation_fee", 0),
        },
        "adl": adl_total,
        "margin_calls": calls,
        "stress": stress,
        "positions": positions,
        "conservation": conservation,
        "crosscheck": {"ok": all(c["ok"] for c in checks.values()), "checks": checks},
        "run": {**raw["wall"], "target": raw["target"]},
    }


def deterministic(report: dict[str, Any]) -> dict[str, Any]:
    """The report without wall-clock and address fields (same seed → equal)."""
    return {k: v for k, v in report.items() if k != "run"}


# --- output ----------------------------------------------------------------------------


def units(quantums: int, decimals: int, places: int = 2) -> str:
    v = Decimal(quantums).scaleb(-decimals)
    return f"{v:,.{places}f}"


def _price(p: int, decimals: int) -> str:
    return f"{Decimal(p).scaleb(-decimals):,.{decimals}f}"


def _headline(r: dict[str, Any]) -> list[tuple[str, str]]:
    d = r["market"]["asset_decimals"]
    a = r["market"]["asset"]
    liq = r["liquidations"]
    adl = r["adl"]
    pos = r["positions"]
    sf, cb = r["shortfalls"], r["clawback"]
    return [
        ("liquidations", f"{liq['count']} ({units(liq['notional'], d)} {a} notional)"),
        ("by outcome", ", ".join(f"{k} {v}" for k, v in liq["by_outcome"].items()) or "none"),
        ("fund", f"{units(r['fund']['initial'] + r['fund']['seeded'], d)} → "
                 f"{units(r['fund']['final'], d)} {a} (low {units(r['fund']['min'], d)})"),
        ("shortfalls absorbed", f"{sf['count']} ({units(sf['absorbed'], d)} {a})"),
        ("clawback collected", f"{cb['count']} ({units(cb['collected'], d)} {a})"),
        ("ADL", f"{adl['executions']} executions, {adl['notices']} notices, "
                f"{units(adl['deleveraged_notional'], d)} {a} deleveraged, "
                f"overshoot {units(adl['overshoot'], d, 6)} {a}"),
        ("positions", f"{pos['opened']} opened, "
                      f"{pos['closed_by_liquidation']} closed by liquidation, "
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
    src = r.get("source", {})
    lines = [
        f"# riskd replay: {src.get('name', 'price path')}",
        "",
        f"{p['bars']} bars of {p['interval_ms'] // 1000} s, {r['inputs']['marks']} marks on "
        f"{r['market']['symbol']}: open {p['open']}, low {p['low']}, high {p['high']}, "
        f"close {p['close']}.",
        f"{s['accounts']} accounts (seed {s['seed']}, leverage mix `{s['leverage_mix']}`), "
        f"fund {s['fund']} {r['market']['asset']}, ADL policy `{s['adl_policy']}`, "
        f"liquidation fee cap {s['fee_cap_ppm'] / 10_000:g} %.",
    ]
    if src.get("generated"):
        lines += ["", "**The price path is generated (synthetic), not market data.**"]
    lines += ["", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _headline(r)]
    lines += [
        "",
        f"Inputs: {r['inputs']['fills']} fills, {r['inputs']['deposits']} deposits, "
        f"{r['inputs']['margin_transfers']} margin transfers; {r['inputs']['rejected']} rejected. "
        f"Margin calls: {r['margin_calls']}.",
        "",
        "Files: `report.json` (all numbers, in quantums), `replay.png`.",
        "",
    ]
    lines += _per_minute_table(r)
    return "\n".join(lines)


def _per_minute_table(r: dict[str, Any]) -> list[str]:
    """Minutes with liquidations or a fund that could not cover a stress move.

    Each stress cell is the shortfall a move from that minute's opening mark
    would have caused, and (in brackets) how much of it the fund could have paid.
    """
    from datetime import UTC, datetime

    d = r["market"]["asset_decimals"]
    a = r["market"]["asset"]
    moves = [m for m in TABLE_MOVES if m in r.get("stress", {}).get("moves", [])]

    def cell(x: dict[str, Any] | None, move: str) -> str:
        if not x or move not in x:
            return ""
        s = x[move]
        return f"{units(s['shortfall'], d, 0)} ({s['coverage_ppm'] / 10_000:.1f} %)"

    def notable(row: dict[str, Any]) -> bool:
        st = row.get("stress") or {}
        return bool(row["count"]) or any(v["coverage_ppm"] < PPM for v in st.values())

    rows = [x for x in r["liquidations"]["per_minute"] if notable(x)]
    if not rows:
        return []
    head = ["minute (UTC)", "liquidations", f"notional ({a})"]
    head += [f"stress {m} ({a}, covered)" for m in moves]
    out = [
        "## Per minute",
        "",
        "Liquidations, and the fund's stress coverage at the minute's open: the shortfall",
        "a move of the mark by each step would have caused, and the share of it the fund",
        "could have paid (`QueryService.GetStressCoverage`). Minutes with neither a",
        "liquidation nor a shortfall the fund could not cover are left out.",
        "",
        "| " + " | ".join(head) + " |",
        "|---" * len(head) + "|",
    ]
    for x in rows[:TABLE_ROWS]:
        when = datetime.fromtimestamp(x["minute_ts_ms"] / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
        cells = [when, str(x["count"]), units(x["notional"], d, 0)]
        cells += [cell(x.get("stress"), m) for m in moves]
        out.append("| " + " | ".join(cells) + " |")
    if len(rows) > TABLE_ROWS:
        out.append(f"| … {len(rows) - TABLE_ROWS} more in `report.json` |" + " |" * (len(head) - 1))
    out.append("")
    return out


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


def plot(r: dict[str, Any], raw_marks: tuple[list[int], list[int]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from datetime import UTC, datetime

    d = r["market"]["asset_decimals"]
    pd = r["market"]["price_decimals"]

    def t(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ts, px = raw_marks
    a1.plot([t(x) for x in ts], [p / 10**pd for p in px], lw=0.8, color="black")
    for e in r["adl"]["events"]:
        a1.axvline(t(e["ts_ms"]), color="red", alpha=0.3, lw=0.8)
    a1.set_ylabel("mark")
    a1.set_title(f"{r.get('source', {}).get('name', 'replay')} — ADL executions in red")
    pm = r["liquidations"]["per_minute"]
    a2.bar([t(x["minute_ts_ms"]) for x in pm], [x["notional"] / 10**d for x in pm],
           width=1 / 1440, color="tab:orange")  # fmt: skip
    a2.set_ylabel(f"liquidated notional / min ({r['market']['asset']})")
    series = r["fund"]["series"]
    if series:
        xs = [t(x) for x, _ in series] + [t(ts[-1])]
        ys = [b / 10**d for _, b in series] + [series[-1][1] / 10**d]
        a3.step(xs, ys, where="post", color="tab:blue")
    a3.set_ylabel(f"insurance fund ({r['market']['asset']})")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(r: dict[str, Any], raw_marks: tuple[list[int], list[int]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "summary.md"]
    files[0].write_text(json.dumps(r, indent=1) + "\n")
    files[1].write_text(markdown(r))
    if plot(r, raw_marks, out / "replay.png"):
        files.append(out / "replay.png")
    return files


def write_compare(
    runs: list[tuple[str, dict[str, Any]]], raw_marks: tuple[list[int], list[int]], out: Path
) -> list[Path]:
    """Side by side: one table (compare.md), one plot (compare.png), compare.json."""
    out.mkdir(parents=True, exist_ok=True)
    d = runs[0][1]["market"]["asset_decimals"]
    a = runs[0][1]["market"]["asset"]
    cols: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("liquidations", lambda r: str(r["liquidations"]["count"])),
        ("absorbed", lambda r: str(r["liquidations"]["by_outcome"].get("absorbed", 0))),
        ("to ADL", lambda r: str(r["liquidations"]["by_outcome"].get("adl", 0))),
        (f"fund start ({a})", lambda r: units(r["fund"]["initial"] + r["fund"]["seeded"], d, 0)),
        (f"fund end ({a})", lambda r: units(r["fund"]["final"], d, 0)),
        (f"shortfalls ({a})", lambda r: units(r["shortfalls"]["absorbed"], d, 0)),
        (f"clawback ({a})", lambda r: units(r["clawback"]["collected"], d, 0)),
        ("ADL executions", lambda r: str(r["adl"]["executions"])),
        (f"ADL notional ({a})", lambda r: units(r["adl"]["deleveraged_notional"], d, 0)),
        (f"overshoot ({a})", lambda r: units(r["adl"]["overshoot"], d, 6)),
        ("accounts hit by ADL", lambda r: str(r["positions"]["deleveraged"])),
        ("closed by ADL", lambda r: str(r["positions"]["closed_by_adl"])),
        ("ADL counterparty closes", lambda r: str(r["adl"]["notices"])),
        (
            "lowest stress coverage -10 %",
            lambda r: f"{r['stress']['min_coverage_ppm'].get('-10%', PPM) / 10_000:.1f} %",
        ),
        ("conservation", lambda r: "ok" if r["conservation"]["ok"] else "VIOLATED"),
    ]
    lines = ["# riskd replay: comparison", ""]
    src = runs[0][1].get("source", {})
    first = runs[0][1]
    lines.append(
        f"Path: {src.get('name', '?')}, {first['path']['bars']} bars; "
        f"{first['settings']['accounts']} accounts, seed {first['settings']['seed']}."
    )
    lines += ["", "| setting | " + " | ".join(c for c, _ in cols) + " |"]
    lines.append("|---" * (len(cols) + 1) + "|")
    for label, r in runs:
        lines.append(f"| {label} | " + " | ".join(f(r) for _, f in cols) + " |")
    lines.append("")
    files = [out / "compare.json", out / "compare.md"]
    files[0].write_text(
        json.dumps([{"label": lb, "report": deterministic(r)} for lb, r in runs], indent=1) + "\n"
    )
    files[1].write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return files
    from datetime import UTC, datetime

    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ts, px = raw_marks
    pd = runs[0][1]["market"]["price_decimals"]

    def t(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    a1.plot([t(x) for x in ts], [p / 10**pd for p in px], lw=0.8, color="black")
    a1.set_ylabel("mark")
    end = t(ts[-1])
    for label, r in runs:
        # The fund's change since the replay seeded it, so different seeds share a scale.
        start = r["fund"]["initial"] + r["fund"]["seeded"]
        series = [(x, b) for x, b in r["fund"]["series"] if b is not None]
        xs = [t(x) for x, _ in series] + [end]
        ys = [(b - start) / 10**d for _, b in series]
        ys.append(ys[-1] if ys else 0.0)
        if not series:
            xs, ys = [t(ts[0]), end], [0.0, 0.0]
        a2.step(xs, ys, where="post", label=label)
        cum, xs3, ys3 = 0, [t(ts[0])], [0.0]
        for e in r["adl"]["events"]:
            cum += e["notional"]
            xs3.append(t(e["ts_ms"]))
            ys3.append(cum / 10**d)
        xs3.append(end)
        ys3.append(cum / 10**d)
        a3.step(xs3, ys3, where="post", label=label)
    a2.set_ylabel(f"fund change since seed ({a})")
    a3.set_ylabel(f"cumulative ADL notional ({a})")
    a3.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=100)
    plt.close(fig)
    files.append(out / "compare.png")
    return files
