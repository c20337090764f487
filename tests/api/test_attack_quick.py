"""Issue 11's attack classes that run in seconds, through the independent client
(``benchmarks/attack.py``) against a real mutual-TLS daemon: off-market fills and
cross-grant withdrawals (2), inverse rounding farming (3), a rejection across a
reconnect (4), 10,000 subscriptions, bad config values and truthful answers (8).
The slow classes (100,001 withdrawals, storage faults, the 17 s flood) run with
``python -m benchmarks.attack``; their faults have their own tests
(tests/storage/, tests/api/test_bounds.py)."""

from __future__ import annotations

from benchmarks.attack import run, table


def test_quick_attack_classes_all_hold() -> None:
    rows = run(quick=True, only={"2", "3", "4", "8"})
    assert {r.number for r in rows} == {"2a", "2b", "3", "4", "8a", "8b", "8c"}
    assert all(r.result == "held" for r in rows), table(rows)
