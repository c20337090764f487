"""The admin audit log is a hash chain: appends survive reopening, edits are found."""

from __future__ import annotations

import json
from pathlib import Path

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
