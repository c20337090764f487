"""Draw the Grafana dashboard's panels from real data: docs/dashboard.png.

A real riskd (``riskd serve``, plaintext on loopback) goes through the built-in
synthetic crash (``riskd replay --generated --target``) while a real Prometheus
scrapes it four times a second with deploy/prometheus/riskd-alerts.yml loaded
(its recording rules put money in asset units). Then every panel of
deploy/grafana/dashboards/riskd.json is drawn from its own PromQL, evaluated by
that Prometheus over the replay, one chart per panel, and one per asset for
the panels Grafana repeats by asset.

Grafana itself is not used: no registry this project's machines reach (PyPI,
Debian, npm) packages the Grafana server. A script, not a test: it takes
about a minute.

    .venv/bin/python deploy/grafana/render_dashboard.py docs/dashboard.png

Needs ``prometheus`` on PATH (Debian's package) and matplotlib (riskd[replay]).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "riskd.json"
RULES = ROOT / "deploy" / "prometheus" / "riskd-alerts.yml"
SCRAPE = 0.25  # seconds: the replay takes seconds, not hours
RATE_WINDOW = "2s"  # stands in for Grafana's $__rate_interval at that scrape


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait(what: str, check: Any, proc: subprocess.Popen[bytes], log: Path, limit: float) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        if proc.poll() is not None:
            sys.exit(f"render_dashboard: {what}: process exited\n{log.read_text()}")
        time.sleep(0.1)
    sys.exit(f"render_dashboard: {what}: not within {limit:.0f} s\n{log.read_text()}")


def start_riskd(tmp: Path) -> tuple[subprocess.Popen[bytes], Path, int, int]:
    # The embedded default, as a replay's own daemon has it: updates stamped with
    # history's clock are not too old, and the event log holds the whole replay.
    # (So "mark price age" shows how old the replayed path's stamps are.)
    default = subprocess.run(
        [sys.executable, "-m", "riskd.cli", "config"], capture_output=True, text=True, check=True
    ).stdout
    config = re.sub(r"(?m)^max_update_age_seconds = \d+", "max_update_age_seconds = 0", default)
    config = re.sub(r"(?m)^event_retention = \d+", "event_retention = 2000000", config)
    # The stress gauges come with the periodic check: often enough for seconds.
    config = re.sub(r"(?m)^invariant_check_seconds = \d+", "invariant_check_seconds = 1", config)
    assert config.count(" = 0") > default.count(" = 0"), "riskd config changed its keys"
    (tmp / "riskd.toml").write_text(config)
    log = tmp / "riskd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "riskd.cli", "serve", "--config", str(tmp / "riskd.toml"),
             "--grpc-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--data-dir", str(tmp / "data")],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def serving() -> tuple[int, int] | None:
        for line in log.read_text().splitlines():
            if '"riskd_serving"' in line:
                rec = json.loads(line)
                return rec["grpc_port"], rec["metrics_port"]
        return None

    grpc_port, metrics_port = wait("riskd start", serving, proc, log, 60)
    return proc, log, grpc_port, metrics_port


def start_prometheus(tmp: Path, metrics_port: int) -> tuple[subprocess.Popen[bytes], str]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        sys.exit("render_dashboard: prometheus not on PATH (apt-get install prometheus)")
    port = free_port()
    cfg = tmp / "prometheus.yml"
    interval = f"{int(SCRAPE * 1000)}ms"
    cfg.write_text(json.dumps({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(RULES)],
        "scrape_configs": [{
            "job_name": "riskd",
            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
        }],
    }))  # fmt: skip
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def scraped() -> bool:
        q = urllib.parse.quote("riskd:asset_quantums_per_unit")
        return bool(get_json(f"{url}/api/v1/query?query={q}")["data"]["result"])

    wait("prometheus scraping riskd", scraped, proc, log, 60)
    return proc, url


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": SCRAPE})
    res = get_json(f"{url}/api/v1/query_range?{q}")
    assert res["status"] == "success", res
    return list(res["data"]["result"])


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def charts(dashboard: dict[str, Any], assets: list[str]) -> list[tuple[str, dict[str, Any], str]]:
    """(title, panel, asset regex) per chart, in dashboard order; rows skipped."""
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            continue
        if p.get("repeat") == "asset":
            out += [(p["title"].replace("$asset", a), p, re.escape(a)) for a in assets]
        else:
            out.append((p["title"].replace("$asset", "all assets"), p, ".*"))
    return out


def promql(expr: str, asset: str) -> str:
    return (
        expr.replace("$__rate_interval", RATE_WINDOW)
        .replace('"$asset"', f'"{asset}"')
        .replace('"$market"', '".*"')
    )


def draw(url: str, start: float, end: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    info = get_json(f"{url}/api/v1/series?match[]=riskd_asset_info")["data"]
    assets = sorted({s["asset"] for s in info})
    todo = charts(dashboard, assets)
    cols = 3
    rows = math.ceil(len(todo) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 6.2, rows * 3.1), squeeze=False)
    for ax, (title, panel, asset) in zip(axes.flat, todo, strict=False):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale = 100.0 if unit == "percentunit" else 1.0
        for target in panel["targets"]:
            for series in query_range(url, promql(target["expr"], asset), start, end):
                ts = [float(t) - start for t, _ in series["values"]]
                vs = [float(v) * scale for _, v in series["values"]]
                ax.plot(ts, vs, label=legend(target.get("legendFormat", ""), series["metric"]))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel({"percentunit": "%", "s": "seconds", "ops": "per second"}.get(unit, ""))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="best", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(todo) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the replay", fontsize=8)
    fig.suptitle(
        f"{dashboard['title']}: its panels' queries on a real Prometheus scraping riskd"
        " through `riskd replay --generated`",
        fontsize=13,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out, dpi=72)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="PNG to write (docs/dashboard.png)")
    p.add_argument("--accounts", type=int, default=200, help="replay population")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="riskd-dashboard-") as t:
        tmp = Path(t)
        riskd, riskd_log, grpc_port, metrics_port = start_riskd(tmp)
        prom = None
        try:
            prom, url = start_prometheus(tmp, metrics_port)
            start = time.time() - 2
            subprocess.run(
                [sys.executable, "-m", "riskd.cli", "replay", "--generated", "--quiet",
                 "--accounts", str(args.accounts), "--target", f"127.0.0.1:{grpc_port}",
                 "--metrics", f"http://127.0.0.1:{metrics_port}/metrics",
                 "--out", str(tmp / "replay")],
                check=True, cwd=tmp,
            )  # fmt: skip
            time.sleep(3)  # a few more scrapes and rule evaluations after the end
            end = time.time()
            draw(url, start, end, args.out)
        finally:
            if prom is not None:
                prom.terminate()
                prom.wait(30)
            riskd.send_signal(signal.SIGTERM)
            if riskd.wait(60) != 0:
                print(riskd_log.read_text(), file=sys.stderr)
    print(f"render_dashboard: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
