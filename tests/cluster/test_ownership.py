"""Shard ownership through etcd leases: one owner at a time, epochs only grow."""

from __future__ import annotations

import threading

import pytest

from riskd.cluster.etcd import Etcd, EtcdUnavailable
from riskd.cluster.ownership import (
    Keeper,
    Owner,
    Ownership,
    campaign,
    current_owner,
    ingest_key,
)
from riskd.storage import StorageFault
from riskd.storage.postgres import PostgresJournal

from .services import EtcdCluster, Postgres


def test_one_owner_then_a_takeover_with_a_higher_epoch(etcd: EtcdCluster, shard: str) -> None:
    client = Etcd(etcd.endpoints)
    a = campaign(client, shard, "a:1", ttl=1)
    seen: list[Owner | None] = []
    stop = threading.Event()
    got: list[Ownership] = []

    def b_campaigns() -> None:
        # b runs an ingest front end: where it streams is published with its ownership.
        got.append(campaign(client, shard, "b:1", ttl=1, waiting=seen.append, ingest="b:2"))

    t = threading.Thread(target=b_campaigns)
    t.start()
    try:
        # a renews nothing (a paused node): its lease runs out and b gets the shard.
        t.join(30)
        assert got, "b never took over"
        b = got[0]
        # b was told who owned it while it waited (a has no front end: it takes
        # streams on its gRPC port).
        assert Owner("a:1", "a:1", a.epoch) in seen
        assert b.epoch > a.epoch and b.ingest == "b:2"
        assert current_owner(client, shard) == Owner("b:1", "b:2", b.epoch)
    finally:
        stop.set()


def test_the_keeper_holds_the_lease_and_releases_it_at_a_clean_stop(
    etcd: EtcdCluster, shard: str
) -> None:
    client = Etcd(etcd.endpoints)
    a = campaign(client, shard, "a:1", ttl=1)
    lost: list[StorageFault] = []
    keeper = Keeper(client, a, lost.append)
    keeper.start()
    waited = threading.Event()
    # Three ttls: a lease without renewals would have expired twice over.
    waited.wait(3)
    owner = current_owner(client, shard)
    assert lost == [] and owner is not None and owner.epoch == a.epoch
    keeper.release()
    keeper.join(5)
    assert current_owner(client, shard) is None  # revoked: a standby takes over at once


def test_an_ingest_key_not_written_with_the_owner_key_is_not_taken(
    etcd: EtcdCluster, shard: str
) -> None:
    """Only the ingest key of the owner key's own transaction names where streams go."""
    client = Etcd(etcd.endpoints)
    a = campaign(client, shard, "a:1", ttl=5)
    assert a.ingest == "a:1" and current_owner(client, shard) == Owner("a:1", "a:1", a.epoch)
    stray = client.grant(5)
    won, _ = client.create(ingest_key(shard), "stale:9", stray)
    assert won
    assert current_owner(client, shard) == Owner("a:1", "a:1", a.epoch)
    client.revoke(stray)
    client.revoke(a.lease)
    assert current_owner(client, shard) is None


def test_the_keeper_reports_a_lost_lease(etcd: EtcdCluster, shard: str) -> None:
    client = Etcd(etcd.endpoints)
    a = campaign(client, shard, "a:1", ttl=1)
    client.revoke(a.lease)  # as if it expired while the node was paused
    lost: list[StorageFault] = []
    keeper = Keeper(client, a, lost.append)
    keeper.start()
    keeper.join(10)
    assert lost and lost[0].what == "ownership" and "another node may own it" in lost[0].cause


def test_the_etcd_epoch_fences_the_journal(etcd: EtcdCluster, pg: Postgres, shard: str) -> None:
    client = Etcd(etcd.endpoints)
    a = campaign(client, shard, "a:1", ttl=1)
    ja = PostgresJournal(pg.dsn, shard, a.epoch)
    ja.append(["from a"])
    b = campaign(client, shard, "b:1", ttl=1)  # after a's lease ran out
    jb = PostgresJournal(pg.dsn, shard, b.epoch)
    try:
        with pytest.raises(StorageFault, match="another node took it over"):
            ja.append(["stale"])
        with pytest.raises(StorageFault, match=f"owned by epoch {b.epoch}"):
            PostgresJournal(pg.dsn, shard, a.epoch)  # a late restart of a
        assert list(jb.replay()) == ["from a"]
    finally:
        ja.close()
        jb.close()


def test_no_endpoint_answering_is_unavailable() -> None:
    with pytest.raises(EtcdUnavailable):
        Etcd(["http://127.0.0.1:1"], timeout=0.5).get("x")
