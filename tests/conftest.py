"""How the suite splits across pytest-xdist workers (``make test``: ``-n 2 --dist loadgroup``).

Each test file is one unit of work, so a module's fixtures (a daemon shared by
its tests) start once; tests/cluster is one unit, so its session-wide
PostgreSQL and etcd cluster start once, on one worker.  Tests marked slow go
out first: the longest one last would leave a worker idle while it runs.
Without ``--dist loadgroup`` (a plain ``pytest``) nothing here changes what runs
or its order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _group(item: pytest.Item) -> str:
    rel = item.path.resolve().relative_to(TESTS)
    return "cluster" if rel.parts[0] == "cluster" else rel.as_posix()


# tryfirst: xdist's own hook in each worker names the groups from these marks.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    # Stable: within each kind, collection order (every worker sorts alike).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
