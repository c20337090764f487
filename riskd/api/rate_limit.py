"""Rate limits: per-gateway update budgets, and how often refusals are recorded.

One bucket per gateway identity, shared by all its streams.  Mark prices are
not counted (see :mod:`riskd.api.ingest`): they are what keeps liquidations
going, and a gateway over its budget for fills must not starve them.

:class:`RecordBudget` bounds what refused callers cost on disk: denied calls
beyond it are counted, not written one by one (see :mod:`riskd.api.auth`).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RecordBudget", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up.

    A batch larger than ``burst`` could never pass a plain bucket, so a full
    bucket lets any batch through and goes into debt; the debt is paid back
    before the next batch passes.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def take(self, n: int, now: float) -> float:
        """Take ``n`` tokens: 0.0 if allowed, else the seconds until they would be."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n or self.tokens >= self.burst:
            self.tokens -= n
            return 0.0
        return (min(n, self.burst) - self.tokens) / self.rate


class RecordBudget:
    """Which refused calls are written down one by one, and which are only counted.

    A token bucket per key (an identity) and one for all keys together.  A
    call within both budgets is recorded, carrying the count of its key's
    calls that were not since the last one recorded; beyond either budget a
    call is only counted.  At most ``max_keys`` keys are tracked (the least
    recently seen goes first), so a stream of new names cannot grow memory.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        total_rate: float,
        total_burst: float,
        now: float,
        max_keys: int = 1024,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._total = TokenBucket(total_rate, total_burst, now)
        self._keys: OrderedDict[str, _Key] = OrderedDict()

    def admit(self, key: str, now: float) -> int | None:
        """None: only count this call; else record it, with this many unrecorded before it."""
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key(TokenBucket(self.rate, self.burst, now))
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        if entry.bucket.take(1, now) > 0 or self._total.take(1, now) > 0:
            entry.unrecorded += 1
            return None
        unrecorded, entry.unrecorded = entry.unrecorded, 0
        return unrecorded

    def __len__(self) -> int:
        return len(self._keys)


class _Key:
    __slots__ = ("bucket", "unrecorded")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.unrecorded = 0
