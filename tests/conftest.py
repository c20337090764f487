"""Suite-wide settings: hypothesis without deadlines, and how the suite splits
across pytest-xdist workers (``make test``: ``-n 2 --dist loadfile``).

Hypothesis's default 200 ms deadline per example is a timed assertion: on a
loaded machine (two workers on CI's two cores) a slow first call fails a
correct test.  Examples still run to completion; a test that sets its own
deadline keeps it.

``--dist loadfile`` keeps each test file on one worker, so a module's fixtures
(a daemon shared by its tests, the Node client's ``npm ci``) run once.  Not
``--dist loadgroup``: pytest-xdist 3.8 renames a grouped test's ``_nodeid``,
which pytest 9.2 no longer reads, so groups were silently ignored and one
file's tests ran on both workers (two ``npm ci`` in one directory).  Tests
marked slow go out first: the longest one last would leave a worker idle
while it runs.  In one process (a plain ``pytest``) nothing here changes the
order.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

settings.register_profile("riskd", deadline=None)
settings.load_profile("riskd")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # one process: collection order
        return
    # Stable: within each kind, collection order (every worker sorts alike).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
