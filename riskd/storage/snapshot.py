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
with a SHA-256 of the payload in the header, checked on load.  The header
also names the journal position the state covers: the record count and the
journal's chain hash after that record.  A restart checks that the journal
still holds that record with that hash (:func:`mismatch`): a journal cut
below a snapshot lost acknowledged records, and is refused rather than
silently replayed from where it now ends.

A snapshot that cannot be written (disk full, read-only, ``ulimit -f``) is a
storage fault like a failed journal write: :func:`wait_child` raises
:class:`~riskd.storage.StorageFault` with the child's reason, and the daemon
fail-stops (exit 4).  A child that died otherwise (killed, a bug) only costs
restart time.  The payload is
a pickle of the core's own objects: a snapshot is read only by the riskd that
wrote it (same code version), from a directory only riskd may write.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from riskd.storage.faults import StorageFault, describe

__all__ = [
    "Snapshot",
    "dumps",
    "write",
    "write_in_child",
    "wait_child",
    "load_latest",
    "latest_position",
    "read_latest",
    "mismatch",
    "remove_partial",
    "MAGIC",
]

# v2: market engines and wallets carry the trade and deposit ids they remember.
# v3: the header names the journal position (records, chain hash) covered.
# A snapshot of another version is skipped like a damaged one: the journal
# rebuilds the state (and those ids) from the start.
MAGIC = b"riskd-snapshot-v3\n"
KEEP = 2
#: Exit status of a snapshot child whose write failed (its reason in the pipe).
_WRITE_FAILED = 4
_children: dict[int, tuple[int, Path]] = {}


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    records: int  # journal records the state covers
    journal_hash: str  # the journal's chain hash after the last of them
    state: dict[str, Any]  # empty from latest_position()


def _name(records: int) -> str:
    return f"snapshot-{records:020d}.bin"


def dumps(state: dict[str, Any]) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def write(directory: Path, records: int, payload: bytes, journal_hash: str = "") -> Path:
    """Write a pickled state covering the first ``records`` journal records.

    ``journal_hash``: the journal's chain hash after record ``records`` (""
    when unknown, as in tools that write a snapshot without a journal).
    """
    final = directory / _name(records)
    tmp = final.with_suffix(f".{os.getpid()}.tmp")  # two writers never share one
    header = f"{hashlib.sha256(payload).hexdigest()} {records} {journal_hash or '-'}\n"
    try:
        with tmp.open("wb") as f:
            f.write(MAGIC + header.encode())
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError:
        tmp.unlink(missing_ok=True)  # on a full disk, a partial file only holds space
        raise
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in sorted(directory.glob("snapshot-*.bin"))[:-KEEP]:
        old.unlink(missing_ok=True)  # another writer (an orphaned child) may prune too
    return final


def write_in_child(
    directory: Path, records: int, state: dict[str, Any], journal_hash: str = ""
) -> int:
    """Fork a child that writes ``state`` as a snapshot; returns its pid at once.

    Call it between two inputs: the child sees the state exactly as it is at
    the fork, whatever the parent does next.  The child touches nothing but
    the state, the snapshot file and a pipe to the parent (no locks, no
    logging, no gRPC) and leaves with ``os._exit``: 0 written, 4 the write
    failed (the reason goes down the pipe), 1 anything else.  Wait for it with
    :func:`wait_child`.  Returns -1 when no child could be started (fork
    failed); :func:`wait_child` then reports failure.
    """
    try:
        reader, writer = os.pipe()
    except OSError:
        return -1
    try:
        pid = os.fork()
    except OSError:  # no memory or process slot: no snapshot this time, not a crash
        os.close(reader)
        os.close(writer)
        return -1
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(reader)
            # A SIGTERM meant for the daemon's process group is not ours to
            # relay to the parent's signal handling: just die (the snapshot is
            # an optimisation; the journal has everything).
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            payload = dumps(state)
            code = _WRITE_FAILED
            try:
                write(directory, records, payload, journal_hash)
                code = 0
            except OSError as e:
                os.write(writer, describe(e).encode()[:4096])
        finally:
            os._exit(code)
    os.close(writer)
    _children[pid] = (reader, directory)
    return pid


def wait_child(pid: int) -> bool:
    """Block until a :func:`write_in_child` child ends; whether it wrote its snapshot.

    Raises :class:`StorageFault` when the child could not write the file:
    that is the disk failing, not the snapshot.
    """
    if pid < 0:
        return False
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    reader, directory = _children.pop(pid, (-1, Path()))
    reason = b""
    if reader >= 0:
        try:
            while chunk := os.read(reader, 4096):
                reason += chunk
        finally:
            os.close(reader)
    if code == _WRITE_FAILED:
        raise StorageFault("snapshot", directory, reason.decode(errors="replace") or "write failed")
    return code == 0


def remove_partial(directory: Path) -> int:
    """Delete temporary files of writers that died mid-write (call before any
    writer starts); how many there were."""
    partial = list(directory.glob("snapshot-*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def _verified(directory: Path, unpickle: bool) -> Snapshot | None:
    for path in sorted(directory.glob("snapshot-*.bin"), reverse=True):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # pruned meanwhile by a writer still finishing (a crashed daemon's child)
        header, _, payload = data[len(MAGIC) :].partition(b"\n")
        fields = header.split(b" ")
        if (
            not data.startswith(MAGIC)
            or len(fields) != 3
            or hashlib.sha256(payload).hexdigest().encode() != fields[0]
        ):
            continue  # torn or damaged: an older one (or the journal alone) will do
        records = int(path.stem.split("-")[1])
        if int(fields[1]) != records:
            continue  # renamed by hand: its name is not where its state sits
        state: dict[str, Any] = pickle.loads(payload) if unpickle else {}
        journal_hash = fields[2].decode()
        return Snapshot(path, records, "" if journal_hash == "-" else journal_hash, state)
    return None


def load_latest(directory: Path) -> Snapshot | None:
    """The newest snapshot that verifies."""
    return _verified(directory, unpickle=True)


def latest_position(directory: Path) -> Snapshot | None:
    """The newest snapshot that verifies, without its state (for ``riskd audit``)."""
    return _verified(directory, unpickle=False)


def read_latest(directory: Path) -> tuple[int, dict[str, Any]] | None:
    """The newest snapshot that verifies, as ``(records covered, state)``."""
    snap = load_latest(directory)
    return None if snap is None else (snap.records, snap.state)


def mismatch(snap: Snapshot, journal: Path, records: int, hash_at: str | None) -> str | None:
    """Why ``snap`` and the journal disagree, naming both files; None if they agree.

    ``records``: how many records the journal holds; ``hash_at``: its chain
    hash after record ``snap.records`` (None when it has fewer).
    """
    if snap.records > records or hash_at is None:
        return (
            f"{snap.path} covers {snap.records} journal records but {journal} holds only"
            f" {records}: acknowledged records are missing from the journal (truncated, or"
            " its -wal deleted); restore the data directory from a backup or replica"
        )
    if snap.journal_hash and snap.journal_hash != hash_at:
        return (
            f"{snap.path} was taken at journal record {snap.records} with chain hash"
            f" {snap.journal_hash[:16]}…, but {journal} has {hash_at[:16]}… there: they are"
            " not the same history (a journal from another data directory?)"
        )
    return None
