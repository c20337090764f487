"""Send riskd a SIGHUP when its configuration file changes: a Kubernetes sidecar.

riskd re-reads its ``[access]`` policy on SIGHUP (docs/security.md). In
Kubernetes the file is a ConfigMap mounted as a directory (not with
``subPath``, whose copy kubelet never updates); kubelet swaps in an edited
ConfigMap within a minute or so, but nothing tells riskd. This script, run in
a second container of the same pod with ``shareProcessNamespace: true`` and
the same user, watches the file and signals the ``riskd serve`` process whose
``--config`` is that file. Standard library only; one JSON line per action.

    python config_reload.py /etc/riskd/config/riskd.toml [--interval 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def digest(path: Path) -> str | None:
    # kubelet replaces the file through a symlink swap: read it whole each time
    # rather than trusting mtimes, which follow the link target.
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def riskd_pids(config: Path) -> list[int]:
    """Processes running ``riskd serve --config CONFIG`` (only that file: on a
    shared host other riskd processes are none of this script's business)."""
    want = str(config)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        args = [a.decode(errors="replace") for a in argv]
        if "serve" in args and "--config" in args:
            i = args.index("--config")
            if i + 1 < len(args) and args[i + 1] == want:
                pids.append(int(entry.name))
    return pids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, help="the file riskd was started with (--config)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between checks")
    args = p.parse_args(argv)
    last = digest(args.config)
    say("config_watch_started", path=str(args.config), readable=last is not None)
    while True:
        time.sleep(args.interval)
        now = digest(args.config)
        if now is None or now == last:
            continue
        pids = riskd_pids(args.config)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGHUP)
            except OSError as e:
                say("config_signal_failed", pid=pid, error=str(e))
        # With riskd not running (restarting), it reads the new file at start.
        say("config_changed", path=str(args.config), sighup_sent_to=pids)
        last = now


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
