"""Suite-wide settings: hypothesis without deadlines, and how the suite splits
across pytest-xdist workers (``make test``: ``-n 2 --dist loadgroup``).

Hypothesis's default 200 ms deadline per example is a timed assertion: on a
loaded machine (two workers on CI's two cores) a slow first call fails a
correct test.  Examples still run to completion; a test that sets its own
deadline keeps it.

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
from hypothesis import settings

settings.register_profile("riskd", deadline=None)
settings.load_profile("riskd")

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
