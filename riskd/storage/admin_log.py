"""The admin audit log: who asked for which operator action, and what came of it.

One JSON object per line in ``<data_dir>/admin-audit.jsonl``, appended and
fsynced before the action runs (``requested``) and again when it has an
outcome (``completed``, with the gRPC status code), so a crash in between
still leaves the request on record.  Refused callers are recorded too
(``denied``, at a bounded rate: see :mod:`riskd.api.auth`); the ``step`` key
says which.  Each line carries the SHA-256 of the previous one (``prev``), so
an edited or removed line breaks the chain: :func:`verify` finds it.  The last
line has no successor to vouch for it, so each line's own hash also goes to
the structured log (``admin_audit``), which is shipped elsewhere.

Lines are bounded: a request is recorded as its size, its SHA-256 and its
scalar fields (strings cut short), never whole (see ``riskd.api.auth``).

Every write is checked.  A line is whole on disk or not at all: a failed or
short write (disk full, ``RLIMIT_FSIZE``, a read-only filesystem) cuts the
file back to the end of the last whole line and raises :class:`AdminLogFault`
(a :class:`~riskd.storage.StorageFault`), and the daemon fail-stops (exit 4).
A line is acknowledged only once it and its newline are fsynced, so an
unterminated last line can only be a write a crash interrupted, never
acknowledged: :class:`AdminLog` cuts it off at start (with a warning) and
:func:`verify` ignores it.

The journal already holds *what* changed (market settings, fund injections);
this log holds *who* asked, which the journal does not need to replay.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from riskd.core.hash_chain import GENESIS, line_hash
from riskd.storage.faults import StorageFault

__all__ = ["AdminLog", "AdminLogFault", "verify", "GENESIS"]

_CHUNK = 1 << 16
log = structlog.get_logger("riskd.admin_log")


class AdminLogFault(StorageFault):
    """Writing the admin audit log failed; nothing after it may be acknowledged."""

    def __init__(self, path: Path, cause: BaseException | str) -> None:
        super().__init__("admin audit log", path, cause)


class AdminLog:
    """Raises :class:`AdminLogFault` when the log cannot be opened or its torn tail cut."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._failed: AdminLogFault | None = None
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            raise AdminLogFault(path, e) from e
        try:
            self._size = _cut_torn_tail(self._fd, path)
            last = _last_line(self._fd, self._size)
        except BaseException as e:
            os.close(self._fd)
            if isinstance(e, OSError):
                raise AdminLogFault(path, e) from e
            raise
        self._prev = GENESIS if last is None else line_hash(last)

    @property
    def size(self) -> int:
        """Bytes of whole lines on disk."""
        return self._size

    def append(self, record: dict[str, Any]) -> str:
        """Write one record durably (fsync); returns the line's hash.

        Raises :class:`AdminLogFault` if the line could not be made durable
        (and on every call after that): the file then ends at the last whole
        line, if the filesystem still lets it be cut back.
        """
        with self._lock:
            if self._failed is not None:
                raise self._failed
            line = {"ts_ms": time.time_ns() // 1_000_000, **record, "prev": self._prev}
            data = json.dumps(line, sort_keys=True, separators=(",", ":")).encode() + b"\n"
            try:
                _write_all(self._fd, data)
                os.fsync(self._fd)
            except OSError as e:
                self._failed = AdminLogFault(self.path, e)
                try:  # leave no torn line behind (shrinking needs no free space)
                    os.ftruncate(self._fd, self._size)
                    os.fsync(self._fd)
                except OSError:
                    pass  # cut at the next start instead: it was never acknowledged
                raise self._failed from e
            self._size += len(data)
            self._prev = line_hash(data[:-1])
            return self._prev

    def close(self) -> None:
        """Close the file; idempotent, and later appends fail instead of writing to
        whatever descriptor the number was reused for (gRPC's epoll among them)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._failed = self._failed or AdminLogFault(self.path, "closed")


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written; a write that makes no progress fails."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(0, "short write: no bytes written")
        view = view[n:]


def _cut_torn_tail(fd: int, path: Path) -> int:
    """Truncate bytes after the last newline (a write a crash cut short); the new size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = _last_newline_before(fd, size)
    keep = 0 if end is None else end + 1
    os.ftruncate(fd, keep)
    os.fsync(fd)
    log.warning(
        "admin_audit_torn_tail_cut",
        path=str(path),
        bytes=size - keep,
        reason="an unterminated last line: a write a crash interrupted, never acknowledged",
    )
    return keep


def _last_newline_before(fd: int, end: int) -> int | None:
    """Offset of the last ``\\n`` before ``end``, reading backwards in chunks."""
    while end > 0:
        start = max(0, end - _CHUNK)
        at = os.pread(fd, end - start, start).rfind(b"\n")
        if at >= 0:
            return start + at
        end = start
    return None


def _last_line(fd: int, size: int) -> bytes | None:
    """The last whole line (without its newline) of a file ending in one."""
    if size == 0:
        return None
    start = _last_newline_before(fd, size - 1)
    begin = 0 if start is None else start + 1
    return os.pread(fd, size - 1 - begin, begin)


def verify(path: Path) -> tuple[int, str | None]:
    """(lines checked, first problem or None).

    Reads line by line (the log may be large).  An unterminated last line is
    not checked: it is a write a crash interrupted, never acknowledged (the
    daemon cuts it off when it next starts).
    """
    if not path.exists():
        return 0, None
    prev, n = GENESIS, 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            n += 1
            data = raw[:-1]
            try:
                record = json.loads(data)
            except ValueError:
                return n, f"line {n}: not JSON"
            if not isinstance(record, dict) or record.get("prev") != prev:
                return n, f"line {n}: chain broken (prev does not match line {n - 1})"
            prev = line_hash(data)
    return n, None
