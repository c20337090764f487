"""Entry point for ``python -m benchmarks`` (``make bench``).

Runs every benchmark module (each has ``run(quick=...) -> dict`` returning
``{"figures": {name: {"value", "unit", "command", ...}}, ...}``), prints every
figure with the command that reproduces it, and writes the combined results as
JSON to ``benchmarks/results.json`` (or ``--json PATH``).  ``--quick`` uses
small sizes so a smoke test finishes in seconds.  Exits 1 if a benchmark
reported errors (a worker failed, an invariant broke); a missed target is a
figure, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import core, cross, gate, ingest, latency, restart

ROOT = Path(__file__).resolve().parent.parent

#: Every benchmark module, in the order they run.
MODULES: dict[str, Callable[..., dict[str, Any]]] = {
    "core": core.run,
    "cross": cross.run,
    "ingest": ingest.run,
    "restart": restart.run,
    "latency": latency.run,
    "gate": gate.run,
}


def _git_revision() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def _format(value: Any) -> str:
    if isinstance(value, float) and abs(value) < 10 and not value.is_integer():
        return f"{value:.3g}"  # ratios: 0.066, not 0.1
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    if isinstance(value, int | float):
        return f"{value:,.0f}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Run riskd's benchmarks.")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test in seconds")
    p.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        default=ROOT / "benchmarks" / "results.json",
        help="where to write the results (default: benchmarks/results.json)",
    )
    args = p.parse_args(argv)

    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name, run in MODULES.items():
        print(f"== {name} ==", flush=True)
        results[name] = run(quick=args.quick)

    print("\n== figures ==")
    for name, res in results.items():
        for fig_name, fig in res["figures"].items():
            target = ""
            if "target" in fig:
                target = f"  (target {fig['target']}: {'ok' if fig['meets_target'] else 'MISSED'})"
            print(f"{name}.{fig_name} = {_format(fig['value'])} {fig['unit']}{target}")
            print(f"    $ {fig['command']}")

    errors = [f"{name}: {e}" for name, res in results.items() for e in res.get("errors", ())]
    for e in errors:
        print(f"ERROR {e}")
    total = time.perf_counter() - started
    doc = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": _git_revision(),
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "command": " ".join(["python", "-m", "benchmarks", *(argv or sys.argv[1:])]),
            "runtime_s": round(total, 1),
        },
        **results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.json} ({total:.1f}s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
