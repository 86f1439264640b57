"""Push delivery latency: a condition's or alert's ``updated_at`` → written to a driver's socket.

The hub prepares each update once as the text every subscriber gets, so the sender only
has that text. ``updated_at`` is read out of it with a substring search (no JSON parse),
and the same text object sent to many drivers in a row is read once. The dispatcher's pass
counts how many drivers got each update and observes each once, with that weight.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.metrics import Histogram, Registry

_FIELD = '"updated_at":'
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def updated_at(text: str) -> float | None:
    """The first ``"updated_at":<number>`` of a message (the update's own; it comes before nested objects')."""
    i = text.find(_FIELD)
    if i < 0:
        return None
    j = k = i + len(_FIELD)
    while k < len(text) and text[k] in "0123456789.eE+-":
        k += 1
    try:
        return float(text[j:k])
    except ValueError:
        return None


class DeliveryLatency:
    def __init__(self, registry: Registry) -> None:
        self.hist: Histogram = registry.histogram(
            "traverz_push_delivery_seconds", "update updated_at → written to a driver's socket", BUCKETS
        )
        self._last: str | None = None
        self._last_at: float | None = None

    def sent(self, batch: Iterable[dict[str, Any]], now: float | None = None) -> None:
        """Observe every message of a batch just written (prepared ASGI ``websocket.send`` events)."""
        now = time.time() if now is None else now
        for msg in batch:
            text = msg.get("text")
            if not isinstance(text, str):
                continue
            if text is not self._last:
                self._last, self._last_at = text, updated_at(text)
            if self._last_at is not None:
                self.hist.observe(max(0.0, now - self._last_at))

    def sent_counts(self, counts: Mapping[str, int], now: float) -> None:
        """Observe updates written ``counts[text]`` times each at ``now`` (one delivery pass)."""
        h = self.hist
        for text, k in counts.items():
            at = updated_at(text)
            if at is None:
                continue
            v = max(0.0, now - at)
            h.counts[bisect.bisect_left(h.bounds, v)] += k  # Histogram.observe, k times at once
            h.total += v * k
            h.n += k
