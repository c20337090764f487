"""The one hash chain riskd uses: the journal, the fund ledgers and the admin audit log.

Each link is SHA-256 over the previous link's hash and what is appended, so a
changed byte anywhere breaks every later link; the first link's previous
hash is :data:`GENESIS`.  Pure (hashlib only): the core's fund ledger and the
storage layer's files share it, and ``riskd audit`` checks all three with it.
"""

from __future__ import annotations

import hashlib

__all__ = ["GENESIS", "link", "chain", "line_hash"]

#: The previous hash of every chain's first link.
GENESIS = "0" * 64


def link(prev: str, *fields: object) -> str:
    """The hash of a link whose fields are written ``prev|field|field...`` (str() each)."""
    return hashlib.sha256("|".join((prev, *map(str, fields))).encode()).hexdigest()


def chain(prev: str, record: str) -> str:
    """A journal record's link: it covers the record's text and the one before."""
    return link(prev, record)


def line_hash(line: bytes) -> str:
    """A self-describing line's hash (the admin log: each line carries ``prev`` itself)."""
    return hashlib.sha256(line).hexdigest()
