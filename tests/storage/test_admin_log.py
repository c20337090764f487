"""The admin audit log is a hash chain: appends survive reopening, edits are found,
a torn tail is cut, a failed write leaves no torn line, denied calls are rate-recorded."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from riskd.api.rate_limit import RecordBudget
from riskd.storage.admin_log import GENESIS, AdminLog, verify


def test_chain_continues_across_reopen_and_detects_edits(tmp_path: Path) -> None:
    path = tmp_path / "admin-audit.jsonl"
    log = AdminLog(path)
    head = log.append({"step": "requested", "identity": "ops", "method": "/m"})
    log.close()
    assert json.loads(path.read_text())["prev"] == GENESIS
    log = AdminLog(path)
    log.append({"step": "completed", "identity": "ops", "code": "OK"})
    log.close()
    assert verify(path) == (2, None)
    lines = path.read_text().splitlines()
    assert json.loads(lines[1])["prev"] == head
    edited = lines[0].replace('"ops"', '"eve"')
    path.write_text("\n".join([edited, lines[1]]) + "\n")
    _, problem = verify(path)
    assert problem is not None and "line 2" in problem


def _filled(path: Path, n: int) -> list[bytes]:
    log = AdminLog(path)
    for i in range(n):
        log.append({"step": "requested", "identity": "ops", "i": i})
    log.close()
    return path.read_bytes().splitlines(keepends=True)


@settings(max_examples=60, deadline=None)
@given(lines=st.integers(1, 5), data=st.data())
def test_a_log_cut_anywhere_reopens_whole_and_keeps_chaining(
    lines: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "admin-audit.jsonl"
        raw = b"".join(_filled(path, lines))
        cut = data.draw(st.integers(0, len(raw)), label="cut")
        path.write_bytes(raw[:cut])  # what a crash mid-write can leave
        whole = raw[:cut].count(b"\n")
        assert verify(path) == (whole, None)  # the torn tail was never acknowledged
        log = AdminLog(path)
        assert log.size == len(b"".join(raw.splitlines(keepends=True)[:whole]))
        log.append({"step": "completed", "identity": "ops", "code": "OK"})
        log.close()
        assert verify(path) == (whole + 1, None)
        assert path.read_bytes().endswith(b"\n")


def test_reopening_reads_only_the_tail_of_a_large_log(tmp_path: Path) -> None:
    path = tmp_path / "admin-audit.jsonl"
    log = AdminLog(path)
    log.append({"step": "requested", "blob": "x" * 300_000})  # longer than one read chunk
    head = log.append({"step": "completed", "blob": "y" * 200_000})
    log.close()
    log = AdminLog(path)
    log.append({"step": "requested"})
    log.close()
    assert json.loads(path.read_bytes().splitlines()[-1])["prev"] == head
    assert verify(path) == (3, None)


FAULT_CHILD = """
import os, resource, sys
from pathlib import Path
from riskd.storage.admin_log import AdminLog, AdminLogFault
path = Path(sys.argv[1])
log = AdminLog(path)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 300, resource.RLIM_INFINITY))
log.append({"step": "requested", "small": 1})
for attempt in range(2):
    try:
        log.append({"step": "requested", "big": "z" * 5000})
    except AdminLogFault as e:  # the same fault again, caused by the first write's error
        print("fault", e.__cause__.errno, attempt, flush=True)
    else:
        print("written", flush=True)
"""


def test_a_write_over_the_file_size_limit_fails_whole_and_leaves_no_torn_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "admin-audit.jsonl"
    _filled(path, 3)
    out = subprocess.run(
        [sys.executable, "-c", FAULT_CHILD, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    # EFBIG both times: after a fault nothing more is written.
    assert out.stdout.split("\n")[:2] == [f"fault {errno.EFBIG} 0", f"fault {errno.EFBIG} 1"]
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"zzz" not in raw
    assert verify(path) == (4, None)


def test_record_budget_records_a_burst_then_counts() -> None:
    budget = RecordBudget(rate=1.0, burst=3, total_rate=100.0, total_burst=100, now=0.0)
    assert [budget.admit("eve", 0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.admit("bob", 0.0) == 0  # another identity has its own budget
    assert budget.admit("eve", 1.0) == 2  # the next recorded line says how many were not


def test_record_budget_total_caps_many_identities_and_memory() -> None:
    budget = RecordBudget(rate=1.0, burst=1, total_rate=1.0, total_burst=10, now=0.0, max_keys=50)
    recorded = sum(budget.admit(f"id-{i}", 0.0) is not None for i in range(1000))
    assert recorded == 10
    assert len(budget) == 50
