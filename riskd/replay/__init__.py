"""riskd replay: drive a real daemon through a price path with a seeded population.

``riskd replay PRICES.csv`` reads a kline CSV (``riskd.replay.prices``), builds
a seeded population (``riskd.replay.population``), drives it through a daemon
over gRPC with the gateway helper (``riskd.replay.driver``; one is spawned
unless ``--target`` names one) and writes a report (``riskd.replay.report``).
See ``docs/replay.md``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["add_arguments", "main", "run_one"]

COMPARE_KEYS = {
    "fund",
    "adl-policy",
    "fee-cap",
    "accounts",
    "leverage-mix",
    "seed",
    "liquidation-mode",
    "partial",
    "fund-cap",
    "population",
    "cross-share",
}


def _one_line_error(message: str) -> NoReturn:
    """argparse's own refusals (a bad choice, a non-integer) in the replay's one-line form."""
    print(f"riskd replay: {message}", file=sys.stderr)
    sys.exit(2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from riskd.replay.population import DEFAULT_LEVERAGE_MIX

    p.error = _one_line_error  # type: ignore[method-assign]

    p.add_argument("prices", nargs="?", help="kline CSV (ts_ms,open,high,low,close,...); "
                   "none: the built-in generated crash path")  # fmt: skip
    p.add_argument("--generated", action="store_true", help="use the built-in generated crash path")
    p.add_argument("--accounts", type=int, default=200, help="traders (default 200)")
    p.add_argument("--seed", type=int, default=1, help="population seed (default 1)")
    p.add_argument("--leverage-mix", default=DEFAULT_LEVERAGE_MIX,
                   help="venue (by size, docs/replay.md) or LEVERAGE:WEIGHT,... "
                   f"(default {DEFAULT_LEVERAGE_MIX})")  # fmt: skip
    p.add_argument("--population", default="living", choices=["living", "static"],
                   help="living: traders arrive and leave over the path (default); "
                   "static: all open early and stay")  # fmt: skip
    p.add_argument("--hold", type=int, default=240, metavar="MINUTES",
                   help="mean time a living trader stays (default 240)")  # fmt: skip
    p.add_argument("--funding-rate", default="0.01%",
                   help="funding rate per interval, longs pay shorts "
                   "(default 0.01%%; 0: none)")  # fmt: skip
    p.add_argument("--funding-interval", type=int, default=28_800, metavar="SECONDS",
                   help="funding interval (default 28800: 00:00, 08:00, 16:00 UTC)")  # fmt: skip
    p.add_argument("--fund", default="100000",
                   help="insurance fund seed, whole settlement units (default 100000)")  # fmt: skip
    p.add_argument("--adl-policy", default="pnl_leverage",
                   choices=["pnl_leverage", "leverage_pnl", "pro_rata_risk"])  # fmt: skip
    p.add_argument("--fee-cap", default="100%",
                   help="liquidation fee cap: ppm or a percentage (default 100%%)")  # fmt: skip
    p.add_argument("--liquidation-mode", choices=["takeover", "book"],
                   help="the market's liquidation mode (default: as configured)")  # fmt: skip
    p.add_argument("--partial", choices=["full", "tier_step", "fraction"],
                   help="partial liquidation policy (default: as configured; "
                   "partial needs --fee-cap below 100%%)")  # fmt: skip
    p.add_argument("--fund-cap", metavar="UNITS",
                   help="the market's fund loss cap, whole settlement units "
                   "(default: none)")  # fmt: skip
    p.add_argument("--market", default="BTC-USDT",
                   help="market to replay on, linear or inverse (default BTC-USDT)")  # fmt: skip
    p.add_argument("--config", help="riskd config file with the market (default: the embedded "
                   "one, `riskd config`)")  # fmt: skip
    p.add_argument("--margin-mode", default="isolated", help=argparse.SUPPRESS)
    p.add_argument("--cross-share", type=int, default=0, metavar="PCT",
                   help="percent of traders in cross margin (their whole deposit backs "
                   "their position; default 0)")  # fmt: skip
    p.add_argument("--bars", type=int, default=0, help="use only the first N bars (after --start)")
    p.add_argument("--start", help="first bar: ISO time (UTC) or ms since the epoch")
    p.add_argument("--end", help="last bar (inclusive): ISO time (UTC) or ms since the epoch")
    p.add_argument("--reference", metavar="CSV[:COLUMN]",
                   help="overlay a per-minute series (ts, value) on the plots, e.g. a "
                   "venue's published ADL totals")  # fmt: skip
    p.add_argument("--target", help="an existing daemon's gRPC host:port (default: spawn one)")
    p.add_argument("--metrics", help="its metrics URL, for the cross-check (with --target)")
    p.add_argument("--first-account", type=int, default=1001,
                   help="first trader account id; the house market maker is the one below "
                   "(default 1001)")  # fmt: skip
    keys = ", ".join(sorted(COMPARE_KEYS))
    p.add_argument("--compare", action="append", default=[], metavar="KEY=V1,V2",
                   help=f"run once per combination (repeatable); keys: {keys}")  # fmt: skip
    p.add_argument("--out", default="replay-out", help="output directory (default replay-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def _decimal(flag: str, text: str) -> Decimal:
    try:
        v = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{flag} {text!r}: not a number") from None
    if not v.is_finite():
        raise ValueError(f"{flag} {text!r}: not a number")
    return v


def settings_from(args: argparse.Namespace) -> Any:
    from riskd.replay.driver import Settings, parse_fee_cap, parse_rate_e8

    return Settings(
        accounts=args.accounts,
        seed=args.seed,
        leverage_mix=args.leverage_mix,
        fund=_decimal("--fund", args.fund),
        adl_policy=args.adl_policy,
        fee_cap_ppm=parse_fee_cap(args.fee_cap),
        market=args.market,
        liquidation_mode=args.liquidation_mode,
        partial=args.partial,
        fund_cap=None if args.fund_cap is None else _decimal("--fund-cap", args.fund_cap),
        population=args.population,
        hold_minutes=args.hold,
        funding_rate_e8=parse_rate_e8(args.funding_rate),
        funding_interval_s=args.funding_interval,
        margin_mode=args.margin_mode,
        cross_share=args.cross_share,
        config=args.config,
    )


def variants(base: Any, compare: list[str]) -> list[Any]:
    """The cartesian product of ``--compare KEY=V1,V2`` over ``base``."""
    from riskd.replay.driver import ADL_POLICIES, parse_fee_cap

    axes: list[list[tuple[str, Any]]] = []
    seen: set[str] = set()
    for spec in compare:
        key, _, values = spec.partition("=")
        key = key.strip()
        if key not in COMPARE_KEYS or not values.strip():
            raise ValueError(
                f"--compare {spec!r}: want KEY=V1,V2 with KEY in {sorted(COMPARE_KEYS)}"
            )
        if key in seen:
            raise ValueError(f"--compare {key}: given twice (put all values in one)")
        seen.add(key)
        sep = ";" if key == "leverage-mix" else ","
        axis: list[tuple[str, Any]] = []
        for v in values.split(sep):
            v = v.strip()
            try:
                if key == "fund":
                    axis.append(("fund", _decimal("fund", v)))
                elif key == "fund-cap":
                    cap = None if v in ("none", "") else _decimal("fund-cap", v)
                    axis.append(("fund_cap", cap))
                elif key == "adl-policy":
                    if v not in ADL_POLICIES:
                        raise ValueError(f"unknown policy {v!r}")
                    axis.append(("adl_policy", v))
                elif key == "fee-cap":
                    axis.append(("fee_cap_ppm", parse_fee_cap(v)))
                elif key in ("accounts", "seed"):
                    axis.append((key, int(v)))
                elif key == "cross-share":
                    axis.append(("cross_share", int(v)))
                elif key == "liquidation-mode":
                    axis.append(("liquidation_mode", v))
                elif key == "partial":
                    axis.append(("partial", v))
                elif key == "population":
                    axis.append(("population", v))
                else:
                    axis.append(("leverage_mix", v))
            except ValueError as e:
                raise ValueError(f"--compare {key}: {e}") from None
        axes.append(axis)
    names = tuple(axis[0][0] for axis in axes)
    return [replace(base, **dict(combo), compared=names) for combo in itertools.product(*axes)]


def _when(flag: str, text: str) -> int:
    """ms since the epoch from ``1584057600000`` or ``2020-03-13T00:00`` (UTC)."""
    from datetime import UTC, datetime

    t = text.strip()
    if t.isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"{flag} {text!r}: want ISO time (UTC) or ms since the epoch") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def load_path(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    from riskd.replay import prices

    if args.prices and not args.generated:
        bars = prices.read_klines(args.prices)
        source = {"name": Path(args.prices).name, "generated": False}
    else:
        bars = prices.generated_crash()
        source = {"name": "built-in generated crash path", "generated": True}
    if args.bars < 0:
        raise ValueError(f"--bars {args.bars}: want >= 0")
    start = _when("--start", args.start) if args.start else None
    end = _when("--end", args.end) if args.end else None
    if start is not None or end is not None:
        lo, hi = start or bars[0].ts_ms, end if end is not None else bars[-1].ts_ms
        cut = [b for b in bars if lo <= b.ts_ms <= hi]
        if not cut:
            raise ValueError(
                f"--start/--end: no bar in the window (the file covers "
                f"{prices.iso(bars[0].ts_ms)} to {prices.iso(bars[-1].ts_ms)})"
            )
        bars = cut
        source["window"] = [bars[0].ts_ms, bars[-1].ts_ms]
    if args.bars:
        bars = bars[: args.bars]
    return bars, source


async def run_one(
    settings: Any,
    bars: list[Any],
    source: dict[str, Any],
    *,
    target: str | None = None,
    metrics: str | None = None,
    progress: bool | None = None,
    first_account: int = 1001,
) -> tuple[dict[str, Any], tuple[list[int], list[int]]]:
    """One replay, against ``target`` or a daemon of its own; (report, marks)."""
    from riskd.replay import driver, report

    if target:
        daemon = driver.Daemon(target, metrics)
        # A daemon we did not start may have seen this gateway: a new epoch fences it.
        raw = await driver.replay(
            settings, bars, daemon, progress=progress, epoch=int(time.time()),
            first_account=first_account,
        )  # fmt: skip
    else:
        cfg = driver.check(settings)
        spec = next(m for m in cfg.markets if m.symbol == settings.market)
        with driver.spawn(settings) as daemon:
            raw = await driver.replay(
                settings, bars, daemon, progress=progress, first_account=first_account
            )
        # The drawdown guard's settings are not in the API: known only for our own daemon.
        raw.fund_policy = cfg.funds.get(spec.asset.symbol)
    raw.source = source
    return report.build(raw), raw.marks


def main(args: argparse.Namespace) -> int:
    import asyncio

    from riskd.replay import driver, report

    if missing := report.plotting_missing():
        print(f"riskd replay: {missing}", file=sys.stderr)
        return 2
    # Everything the replay can refuse is refused here, in one line, before a daemon starts.
    try:
        base = settings_from(args)
        runs = variants(base, args.compare) if args.compare else [base]
        if args.target and len(runs) > 1:
            raise ValueError("--compare needs fresh daemons; drop --target")
        if args.target and args.config:
            raise ValueError("--config is for the daemon the replay starts; drop --target")
        if args.metrics and not args.target:
            raise ValueError("--metrics is for a --target daemon (a spawned one is scraped)")
        if args.first_account < 2 or args.first_account + max(r.accounts for r in runs) >= 2**63:
            raise ValueError(f"--first-account {args.first_account}: out of range")
        for r in runs:
            if args.target:
                driver.check_without_config(r)
            else:
                driver.check(r)
        bars, source = load_path(args)
        reference = report.read_reference(args.reference) if args.reference else None
    except (OSError, ValueError) as e:
        print(f"riskd replay: {e}", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr)

    if source["generated"]:
        say("riskd replay: no price file given: using the built-in generated crash path "
            "(synthetic, not market data)")  # fmt: skip
    out = Path(args.out)
    progress = False if args.quiet else None
    results = []
    marks: tuple[list[int], list[int]] = ([], [])
    for s in runs:
        if len(runs) > 1:
            say(f"riskd replay: {s.label()}")
        try:
            r, marks = asyncio.run(
                run_one(
                    s,
                    bars,
                    source,
                    target=args.target,
                    metrics=args.metrics,
                    progress=progress,
                    first_account=args.first_account,
                )
            )
        except ValueError as e:  # the --target daemon does not serve what was asked
            print(f"riskd replay: {e}", file=sys.stderr)
            return 2
        sub = out if len(runs) == 1 else out / _slug(s.label())
        files = report.write(r, marks, sub, reference=reference)
        results.append((s.label(), r))
        if not args.quiet:
            sys.stdout.write(report.markdown(r) + "\n")
        say("riskd replay: wrote " + ", ".join(str(f) for f in files))
    if len(runs) > 1:
        files = report.write_compare(results, marks, out, reference=reference)
        if not args.quiet:
            sys.stdout.write((out / "compare.md").read_text() + "\n")
        say("riskd replay: wrote " + ", ".join(str(f) for f in files))
    status = 0
    for lb, r in results:
        if r["inputs"]["rejected"]:
            # The synthetic traders are built to trade within the daemon's rules: a
            # refusal means the run is not the one asked for.
            why = "; ".join(f"{n} x {k}" for k, n in r["inputs"]["rejections"].items())
            print(f"riskd replay: {lb}: riskd refused {r['inputs']['rejected']} of the "
                  f"replay's inputs ({why}); the run is distorted", file=sys.stderr)  # fmt: skip
            status = 1
        if not r["conservation"]["ok"] or not r["crosscheck"]["ok"]:
            print(f"riskd replay: conservation or cross-check failed for: {lb}", file=sys.stderr)
            status = 1
    return status


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label).strip("_")
