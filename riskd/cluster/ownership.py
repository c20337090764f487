"""Shard ownership through an etcd lease; the owner key's revision is the epoch.

A node that wants shard ``S`` grants itself a lease of ``ttl`` seconds and
creates ``/riskd/owner/S`` (its advertised address as the value) only if the
key does not exist, in one etcd transaction.  The node that created it owns
the shard while its lease lives; the key's create revision is its epoch.
etcd revisions only grow, so every takeover has a higher epoch than the one
before, and that epoch is what the PostgreSQL journal checks in every append
(:mod:`riskd.storage.postgres`): the lease says who should write, the epoch
check in the journal's transaction is what stops anyone else from writing.

The owner renews its lease every ``ttl / 3`` seconds (:class:`Keeper`).  When
it cannot (etcd says the lease is gone, or no member answered for ``ttl``
seconds) it must assume another node owns the shard: it stops at once, like a
failed storage write (exit 4).  A paused owner (SIGSTOP, a long GC, a VM
stall) cannot renew; when it resumes, its next append is refused by the
journal (its epoch is no longer current) and it stops the same way.

Where gateways stream: a node whose ingest address is not its gRPC address
(it runs an ingest front end, ``[server] frontend_listen``, or was given
``--advertise-ingest``) also puts ``/riskd/ingest/S`` = that address in the
same transaction, under the same lease.  The owner key is
left exactly as it was (its create revision the epoch, its value the gRPC
address), so a node of an older version reads it as before and sends
gateways to the owner's gRPC port, which serves ingest too.  A reader takes
the ingest key only at the owner key's revision (both were written by one
transaction, so they share it); without one, streams go to the gRPC
address.  Both keys go with the lease, so no owner's ingest key outlives it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from riskd.cluster.etcd import Etcd, EtcdUnavailable, KeyValue
from riskd.storage.faults import StorageFault, fail_stop

__all__ = [
    "INGEST_PREFIX",
    "PREFIX",
    "Owner",
    "Ownership",
    "Keeper",
    "campaign",
    "ingest_key",
    "owner_key",
    "current_owner",
]

PREFIX = "/riskd/owner/"
INGEST_PREFIX = "/riskd/ingest/"


def owner_key(shard: str) -> str:
    return PREFIX + shard


def ingest_key(shard: str) -> str:
    return INGEST_PREFIX + shard


@dataclass(frozen=True, slots=True)
class Ownership:
    shard: str
    address: str
    lease: int
    epoch: int  # the owner key's create revision
    ttl: int
    #: Where IngestService streams go: its front end, or ``address`` ("": ``address``).
    ingest: str = ""


@dataclass(frozen=True, slots=True)
class Owner:
    """A shard's owner, as etcd names it."""

    address: str  # its gRPC port, as it advertises it
    ingest: str  # where IngestService streams go: its front end, or ``address``
    epoch: int


def _owner(shard: str, found: dict[str, KeyValue]) -> Owner | None:
    owner = found.get(owner_key(shard))
    if owner is None:
        return None
    ingest = found.get(ingest_key(shard))
    same = ingest is not None and ingest.create_revision == owner.create_revision
    address = ingest.value if same and ingest is not None and ingest.value else owner.value
    return Owner(owner.value, address, owner.create_revision)


def current_owner(etcd: Etcd, shard: str) -> Owner | None:
    """The owner now (both keys read at one revision), or None between owners."""
    return _owner(shard, etcd.get_all([owner_key(shard), ingest_key(shard)]))


def campaign(
    etcd: Etcd,
    shard: str,
    address: str,
    ttl: int,
    *,
    poll: float = 0.1,
    waiting: Callable[[Owner | None], object] = lambda _: None,
    stop: threading.Event | None = None,
    ingest: str = "",
) -> Ownership:
    """Block until this node owns ``shard``; ``waiting`` is told who owns it meanwhile.

    ``ingest``: where this node's IngestService streams go, published with
    the ownership when it is not ``address`` (the node has a front end).
    The lease is granted once and kept alive while waiting, so the takeover
    costs one transaction once the old owner's key is gone.  Raises
    :class:`EtcdUnavailable` only when ``stop`` is set.
    """
    values = {owner_key(shard): address}
    if ingest and ingest != address:
        values[ingest_key(shard)] = ingest
    lease: int | None = None
    while stop is None or not stop.is_set():
        try:
            if lease is None or etcd.keepalive(lease) <= 0:
                lease = etcd.grant(ttl)
            won, found = etcd.create_all(owner_key(shard), values, lease, [ingest_key(shard)])
        except EtcdUnavailable:
            time.sleep(poll)  # etcd electing a leader, or not up yet: keep asking
            continue
        owner = _owner(shard, found)
        if won:
            assert owner is not None
            return Ownership(shard, address, lease, owner.epoch, ttl, owner.ingest)
        waiting(owner)
        time.sleep(poll)
    raise EtcdUnavailable("campaign stopped")


class Keeper(threading.Thread):
    """Renews the owner's lease; stops the process (exit 4) once ownership is lost."""

    def __init__(
        self,
        etcd: Etcd,
        ownership: Ownership,
        lost: Callable[[StorageFault], object] = fail_stop,
    ) -> None:
        super().__init__(name=f"riskd-lease-{ownership.shard}", daemon=True)
        self.etcd = etcd
        self.ownership = ownership
        self.lost = lost
        self._released = threading.Event()

    def run(self) -> None:
        o = self.ownership
        key = owner_key(o.shard)
        renewed = time.monotonic()
        while not self._released.wait(o.ttl / 3):
            try:
                left = self.etcd.keepalive(o.lease)
                kv = self.etcd.get(key) if left > 0 else None
            except EtcdUnavailable as e:
                if time.monotonic() - renewed < o.ttl:
                    continue  # a member down or an election: the lease may still live
                why = f"no etcd member answered for {o.ttl} s ({e}): the lease may have expired"
            else:
                if kv is not None and kv.create_revision == o.epoch:
                    renewed = time.monotonic()
                    continue
                why = "the lease expired or the owner key changed: another node may own it"
            if self._released.is_set():
                return
            self.lost(StorageFault("ownership", key, f"epoch {o.epoch}: {why}"))
            return

    def release(self) -> None:
        """Stop renewing and end the lease now, for a quick handover (clean stop)."""
        self._released.set()
        with contextlib.suppress(EtcdUnavailable):  # it expires by itself within ttl
            self.etcd.revoke(self.ownership.lease)
