"""Snapshots: the whole engine state at one point of the journal, on disk.

A snapshot is taken between two inputs, once the journal holds everything
applied so far, and records how many journal records it covers; a restart
loads the newest valid snapshot and replays only the journal after it.
Snapshots are an optimisation: the journal is never truncated, so a missing
or damaged snapshot only makes the restart slower, never wrong.

Written atomically (temporary file, fsync, rename, fsync of the directory)
with a SHA-256 of the payload in the header, checked on load.  The payload is
a pickle of the core's own objects: a snapshot is read only by the riskd that
wrote it (same code version), from a directory only riskd may write.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

__all__ = ["dumps", "write", "read_latest", "MAGIC"]

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
    tmp = final.with_suffix(".tmp")
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
        old.unlink()
    return final


def read_latest(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """The newest snapshot that verifies, as ``(records covered, state)``."""
    for path in sorted(directory.glob("snapshot-*.bin"), reverse=True):
        data = path.read_bytes()
        header, _, payload = data[len(MAGIC) :].partition(b"\n")
        if not data.startswith(MAGIC) or hashlib.sha256(payload).hexdigest().encode() != header:
            continue  # torn or damaged: an older one (or the journal alone) will do
        state: dict[str, Any] = pickle.loads(payload)
        return int(path.stem.split("-")[1]), state
    return None
