"""Per-device token buckets: a device flooding the proxy gets 429, others do not notice."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``; one token per request."""

    def __init__(self, rate: float, burst: float, max_keys: int = 1_000_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: dict[str, Bucket] = {}

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """0.0 if allowed, else the seconds until ``cost`` tokens are there again."""
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            b = self._buckets[key] = Bucket(self.burst, now)
        else:
            # max(0, …): a wall clock stepping back must not lock a device out
            b.tokens = min(self.burst, b.tokens + max(0.0, now - b.updated) * self.rate)
            b.updated = now
        if b.tokens >= cost:
            b.tokens -= cost
            return 0.0
        return (cost - b.tokens) / self.rate

    def _evict(self, now: float) -> None:
        # a bucket that has refilled completely carries no information
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()
