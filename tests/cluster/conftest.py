from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .services import EtcdCluster, Postgres, etcd_cluster, postgres

_shards = itertools.count(1)


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL primary with a synchronous standby for the whole session;
    each test uses its own shard names."""
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install 'riskd[postgres]')")
    # Not under pytest's own temporary root: that is 0700, and another pytest
    # session of the same user resets it so while this one runs, which shuts
    # out PostgreSQL's own user (tests run as root start it as postgres).
    base = Path(tempfile.mkdtemp(prefix="riskd-pg-"))
    try:
        with postgres(base, standby=True) as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shard() -> str:
    return f"t{next(_shards)}"


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One 3-member etcd cluster for the session; tests use their own shard names."""
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd"))) as cluster:
        yield cluster
