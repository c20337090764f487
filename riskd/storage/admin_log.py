"""The admin audit log: who asked for which operator action, and what came of it.

One JSON object per line in ``<data_dir>/admin-audit.jsonl``, appended and
fsynced before the action runs (``requested``) and again when it has an
outcome (``completed``, with the gRPC status code), so a crash in between
still leaves the request on record.  Refused callers are recorded too
(``denied``); the ``step`` key says which.  Each line carries the SHA-256 of
the previous one (``prev``), so an edited or removed line breaks the chain:
:func:`verify` finds it.  The last line has no successor to vouch for it, so
each line's own hash also goes to the structured log (``admin_audit``), which
is shipped elsewhere.

The journal already holds *what* changed (market settings, fund injections);
this log holds *who* asked, which the journal does not need to replay.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["AdminLog", "verify", "GENESIS"]

GENESIS = "0" * 64


class AdminLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._prev = GENESIS
        if path.exists():
            lines = path.read_bytes().splitlines()
            if lines:
                self._prev = _hash(lines[-1])
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, record: dict[str, Any]) -> str:
        """Write one record durably (fsync); returns the line's hash."""
        with self._lock:
            line = {"ts_ms": time.time_ns() // 1_000_000, **record, "prev": self._prev}
            data = json.dumps(line, sort_keys=True, separators=(",", ":")).encode()
            os.write(self._fd, data + b"\n")
            os.fsync(self._fd)
            self._prev = _hash(data)
            return self._prev

    def close(self) -> None:
        os.close(self._fd)


def verify(path: Path) -> tuple[int, str | None]:
    """(lines checked, first problem or None)."""
    prev = GENESIS
    lines = path.read_bytes().splitlines() if path.exists() else []
    for n, data in enumerate(lines, 1):
        try:
            record = json.loads(data)
        except ValueError:
            return n, f"line {n}: not JSON"
        if record.get("prev") != prev:
            return n, f"line {n}: chain broken (prev does not match line {n - 1})"
        prev = _hash(data)
    return len(lines), None


def _hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()
