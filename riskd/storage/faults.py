"""Fail-stop on storage faults: a write riskd cannot complete ends the process.

A journal commit, snapshot or audit-log line that fails (disk full, a
filesystem gone read-only, ``ulimit -f``, an I/O error) leaves riskd unable
to keep its promise that an acknowledgement means durable.  Retrying a write
whose outcome is unknown could apply or record something twice, and carrying
on without it would acknowledge what is not on disk.  So the rule is: stop
acknowledging, log the cause once, exit with :data:`EXIT_STORAGE_FAULT` (4),
and let the supervisor restart riskd from what is on disk once the operator
has fixed the disk (``docs/runbook.md``).

Two ways in, depending on where the write happens:

* while serving, any thread: ``fail_stop(StorageFault(...))`` — logs one
  ``storage_fault`` line and ends the process at once (``os._exit``: no
  shutdown path that could wait on an actor that will never answer, and no
  acknowledgement released after the fault);
* during start-up: ``raise StorageFault(...)`` — ``riskd serve`` prints one
  ``riskd: ...`` line and exits 2 (nothing was ever acknowledged).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sqlite3
import sys
import threading
from pathlib import Path
from typing import NoReturn

import structlog

from riskd.errors import RiskdError

__all__ = ["EXIT_STORAGE_FAULT", "StorageFault", "fail_stop", "describe"]

#: Exit status after a storage write failed while serving.
EXIT_STORAGE_FAULT = 4

log = structlog.get_logger("riskd")

# Taken by the first fault and never released: a second thread failing at the
# same moment waits here for the process to end instead of logging again.
_once = threading.Lock()
# Tests running the actors in-process replace this to observe the stop.
_exit = os._exit


class StorageFault(RiskdError):
    """A write to durable storage failed (``what``: journal, snapshot, admin audit log...)."""

    STATUS = "UNAVAILABLE"

    def __init__(self, what: str, path: str | Path, cause: BaseException | str) -> None:
        self.what = what
        self.path = str(path)
        self.cause = cause if isinstance(cause, str) else describe(cause, Path(path))
        super().__init__(f"{what} {self.path}: {self.cause}")


def fail_stop(fault: StorageFault) -> NoReturn:
    """Log ``fault`` once and end the process with exit status 4, from any thread."""
    _once.acquire()
    try:
        log.critical(
            "storage_fault",
            what=fault.what,
            path=fault.path,
            cause=fault.cause,
            exit_code=EXIT_STORAGE_FAULT,
        )
    except Exception:  # the log itself may sit on the full disk: stderr is the last resort
        with contextlib.suppress(OSError):
            os.write(2, f"riskd: storage fault, stopping: {fault}\n".encode())
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _exit(EXIT_STORAGE_FAULT)
    raise SystemExit(EXIT_STORAGE_FAULT)  # only reached when a test replaced _exit


def describe(error: BaseException, path: Path | None = None) -> str:
    """The cause in words an operator can act on.

    SQLite reports most failed writes as a bare "disk I/O error" (``ulimit
    -f`` included), so for those the file system is asked what is wrong.
    """
    if isinstance(error, OSError) and error.errno is not None:
        name = errno.errorcode.get(error.errno, str(error.errno))
        text = f"{error.strerror} ({name})"
        if error.filename is not None:
            text += f": {error.filename}"
        return text
    text = str(error) or type(error).__name__
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorname", None)
        if code:
            text += f" ({code})"
    if path is not None:
        found = _diagnose(path)
        if found:
            text += f"; {found}"
    return text


def _diagnose(path: Path) -> str | None:
    """Why writes under ``path`` (a file or its directory) may fail, if it shows."""
    directory = path if path.is_dir() else path.parent
    with contextlib.suppress(OSError):
        st = os.statvfs(directory)
        if st.f_flag & os.ST_RDONLY:
            return "the file system is read-only"
        if st.f_bavail == 0:
            return "no space left on the device"
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        for f in (path, Path(f"{path}-wal")):
            with contextlib.suppress(OSError):
                if f.stat().st_size + 64 * 1024 >= soft:
                    return f"file size limit reached (RLIMIT_FSIZE, ulimit -f: {soft} bytes)"
    if not os.access(directory, os.W_OK):
        return f"{directory} is not writable"
    return None
