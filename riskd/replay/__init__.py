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
from typing import Any

__all__ = ["add_arguments", "main", "run_one"]

COMPARE_KEYS = {"fund", "adl-policy", "fee-cap", "accounts", "leverage-mix", "seed"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from riskd.replay.population import DEFAULT_LEVERAGE_MIX

    p.add_argument("prices", nargs="?", help="kline CSV (ts_ms,open,high,low,close,...); "
                   "none: the built-in generated crash path")  # fmt: skip
    p.add_argument("--generated", action="store_true", help="use the built-in generated crash path")
    p.add_argument("--accounts", type=int, default=200, help="traders (default 200)")
    p.add_argument("--seed", type=int, default=1, help="population seed (default 1)")
    p.add_argument("--leverage-mix", default=DEFAULT_LEVERAGE_MIX,
                   help=f"LEVERAGE:WEIGHT,... (default {DEFAULT_LEVERAGE_MIX})")  # fmt: skip
    p.add_argument("--fund", default="100000",
                   help="insurance fund seed, whole settlement units (default 100000)")  # fmt: skip
    p.add_argument("--adl-policy", default="pnl_leverage",
                   choices=["pnl_leverage", "leverage_pnl", "pro_rata_risk"])  # fmt: skip
    p.add_argument("--fee-cap", default="100%",
                   help="liquidation fee cap: ppm or a percentage (default 100%%)")  # fmt: skip
    p.add_argument("--market", default="BTC-USDT", help="linear market to replay on")
    p.add_argument("--bars", type=int, default=0, help="use only the first N bars")
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


def settings_from(args: argparse.Namespace) -> Any:
    from riskd.replay.driver import Settings, parse_fee_cap

    try:
        fund = Decimal(args.fund)
    except InvalidOperation:
        raise ValueError(f"--fund {args.fund!r}: not a number") from None
    return Settings(
        accounts=args.accounts,
        seed=args.seed,
        leverage_mix=args.leverage_mix,
        fund=fund,
        adl_policy=args.adl_policy,
        fee_cap_ppm=parse_fee_cap(args.fee_cap),
        market=args.market,
    )


def variants(base: Any, compare: list[str]) -> list[Any]:
    """The cartesian product of ``--compare KEY=V1,V2`` over ``base``."""
    from riskd.replay.driver import ADL_POLICIES, parse_fee_cap

    axes: list[list[tuple[str, Any]]] = []
    for spec in compare:
        key, _, values = spec.partition("=")
        key = key.strip()
        if key not in COMPARE_KEYS or not values:
            raise ValueError(
                f"--compare {spec!r}: want KEY=V1,V2 with KEY in {sorted(COMPARE_KEYS)}"
            )
        sep = ";" if key == "leverage-mix" else ","
        axis: list[tuple[str, Any]] = []
        for v in values.split(sep):
            v = v.strip()
            if key == "fund":
                axis.append(("fund", Decimal(v)))
            elif key == "adl-policy":
                if v not in ADL_POLICIES:
                    raise ValueError(f"--compare adl-policy: unknown policy {v!r}")
                axis.append(("adl_policy", v))
            elif key == "fee-cap":
                axis.append(("fee_cap_ppm", parse_fee_cap(v)))
            elif key in ("accounts", "seed"):
                axis.append((key, int(v)))
            else:
                axis.append(("leverage_mix", v))
        axes.append(axis)
    return [replace(base, **dict(combo)) for combo in itertools.product(*axes)]


def load_path(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    from riskd.replay import prices

    if args.prices and not args.generated:
        bars = prices.read_klines(args.prices)
        source = {"name": Path(args.prices).name, "generated": False}
    else:
        bars = prices.generated_crash()
        source = {"name": "built-in generated crash path", "generated": True}
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
        with driver.spawn(settings) as daemon:
            raw = await driver.replay(
                settings, bars, daemon, progress=progress, first_account=first_account
            )
    raw["source"] = source
    return report.build(raw), raw["marks"]


def main(args: argparse.Namespace) -> int:
    import asyncio

    from riskd.replay import report

    if missing := report.plotting_missing():
        print(f"riskd replay: {missing}", file=sys.stderr)
        return 2
    try:
        base = settings_from(args)
        runs = variants(base, args.compare) if args.compare else [base]
        bars, source = load_path(args)
    except (OSError, ValueError) as e:
        print(f"riskd replay: {e}", file=sys.stderr)
        return 2
    if args.target and len(runs) > 1:
        print("riskd replay: --compare needs fresh daemons; drop --target", file=sys.stderr)
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
        sub = out if len(runs) == 1 else out / _slug(s.label())
        files = report.write(r, marks, sub)
        results.append((s.label(), r))
        if not args.quiet:
            sys.stdout.write(report.markdown(r) + "\n")
        say("riskd replay: wrote " + ", ".join(str(f) for f in files))
    if len(runs) > 1:
        files = report.write_compare(results, marks, out)
        if not args.quiet:
            sys.stdout.write((out / "compare.md").read_text() + "\n")
        say("riskd replay: wrote " + ", ".join(str(f) for f in files))
    bad = [lb for lb, r in results if not r["conservation"]["ok"] or not r["crosscheck"]["ok"]]
    if bad:
        print(f"riskd replay: conservation or cross-check failed for: {bad}", file=sys.stderr)
        return 1
    return 0


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label).strip("_")
