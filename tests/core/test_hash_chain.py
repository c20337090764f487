"""One hash chain for the journal, the fund ledgers and the admin log, and its formats stay put."""

from __future__ import annotations

import hashlib

from riskd.core import GENESIS, FundKind, LedgerEntry, chain, line_hash, link
from riskd.storage import admin_log, journal


def test_one_genesis() -> None:
    assert journal.GENESIS is GENESIS
    assert admin_log.GENESIS is GENESIS
    assert LedgerEntry(1, 0, FundKind.INJECTION, "", "seed", 1, 1).prev == GENESIS


def test_journal_link_format() -> None:
    # Written into every journal: changing it would break every existing chain.
    want = hashlib.sha256(f"{GENESIS}|record".encode()).hexdigest()
    assert chain(GENESIS, "record") == want
    assert journal.chain is chain


def test_ledger_entry_link_format() -> None:
    e = LedgerEntry(3, 17, FundKind.SHORTFALL, "BTC-USDT", "liq:1", -5, 95, "ab" * 32)
    text = f"{'ab' * 32}|3|17|shortfall|BTC-USDT|liq:1|-5|95"
    assert e.digest() == hashlib.sha256(text.encode()).hexdigest()
    assert e.digest() == link(e.prev, 3, 17, "shortfall", "BTC-USDT", "liq:1", -5, 95)


def test_any_change_breaks_the_link() -> None:
    assert chain(GENESIS, "a") != chain(GENESIS, "b")
    assert chain(chain(GENESIS, "a"), "c") != chain(chain(GENESIS, "b"), "c")
    assert line_hash(b"x") == hashlib.sha256(b"x").hexdigest()
