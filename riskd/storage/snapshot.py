"""Snapshots: the whole engine state at one point of the journal, on disk.

A snapshot is taken between two inputs, once the journal holds everything
applied so far, and records how many journal records it covers; a restart
loads the newest valid snapshot and replays only the journal after it.
Snapshots are an optimisation: the journal is never truncated, so a missing
or damaged snapshot only makes the restart slower, never wrong.

Captured without stopping the engine: :func:`write_in_child` forks, and the
child pickles the state as it was at the fork (copy-on-write) and writes it
while the daemon goes on; only the fork itself pauses input processing.
(Pickling in place took 3–4 s at 10^6 positions, every snapshot interval.)
The price is memory: the child's pickling touches most pages, so expect up
to twice the daemon's RSS while a snapshot is written.

Written atomically (temporary file, fsync, rename, fsync of the directory)
with a SHA-256 of the payload in the header, checked on load.  The payload is
a pickle of the core's own objects: a snapshot is read only by the riskd that
wrote it (same code version), from a directory only riskd may write.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
from pathlib import Path
from typing import Any

__all__ = [
    "dumps",
    "write",
    "write_in_child",
    "wait_child",
    "read_latest",
    "remove_partial",
    "MAGIC",
]

# v2: market engines and wallets carry the trade and deposit ids they remember.
# A snapshot of another version is skipped like a damaged one: the journal
# rebuilds the state (and those ids) from the start.
MAGIC = b"riskd-snapshot-v2\n"
KEEP = 2


def _name(records: int) -> str:
    return f"snapshot-{records:020d}.bin"


def dumps(state: dict[str, Any]) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def write(directory: Path, records: int, payload: bytes) -> Path:
    """Write a pickled state covering the first ``records`` journal records."""
    final = directory / _name(records)
    tmp = final.with_suffix(f".{os.getpid()}.tmp")  # two writers never share one
    with tmp.open("wb") as f:
        f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in sorted(directory.glob("snapshot-*.bin"))[:-KEEP]:
        old.unlink(missing_ok=True)  # another writer (an orphaned child) may prune too
    return final


def write_in_child(directory: Path, records: int, state: dict[str, Any]) -> int:
    """Fork a child that writes ``state`` as a snapshot; returns its pid at once.

    Call it between two inputs: the child sees the state exactly as it is at
    the fork, whatever the parent does next.  The child touches nothing but
    the state and the snapshot file (no locks, no logging, no gRPC) and leaves
    with ``os._exit``: 0 written, 1 failed.  Wait for it with :func:`wait_child`.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            # A SIGTERM meant for the daemon's process group is not ours to
            # relay to the parent's signal handling: just die (the snapshot is
            # an optimisation; the journal has everything).
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            write(directory, records, dumps(state))
            code = 0
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int) -> bool:
    """Block until a :func:`write_in_child` child ends; whether it wrote its snapshot."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def remove_partial(directory: Path) -> int:
    """Delete temporary files of writers that died mid-write (call before any
    writer starts); how many there were."""
    partial = list(directory.glob("snapshot-*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def read_latest(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """The newest snapshot that verifies, as ``(records covered, state)``."""
    for path in sorted(directory.glob("snapshot-*.bin"), reverse=True):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # pruned meanwhile by a writer still finishing (a crashed daemon's child)
        header, _, payload = data[len(MAGIC) :].partition(b"\n")
        if not data.startswith(MAGIC) or hashlib.sha256(payload).hexdigest().encode() != header:
            continue  # torn or damaged: an older one (or the journal alone) will do
        state: dict[str, Any] = pickle.loads(payload)
        return int(path.stem.split("-")[1]), state
    return None
