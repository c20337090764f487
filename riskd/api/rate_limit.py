"""Per-gateway rate limits: a token bucket counted in updates.

One bucket per gateway identity, shared by all its streams.  Mark prices are
not counted (see :mod:`riskd.api.ingest`): they are what keeps liquidations
going, and a gateway over its budget for fills must not starve them.
"""

from __future__ import annotations

__all__ = ["TokenBucket"]


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
