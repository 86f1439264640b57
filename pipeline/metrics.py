"""A small Prometheus text-format registry: counters, gauges, histograms.

Hand-rolled because the hot paths (ingest, push) observe per request and the
observation must cost a dict lookup, not a lock.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class Counter:
    def __init__(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> None:
        self.name, self.doc, self.fn = name, doc, fn  # fn: an unlabelled total kept elsewhere, read when scraped
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    @staticmethod
    def series(**labels: str) -> Labels:
        """The key of one labelled series, for hot paths that increment it by ``inc_series``."""
        return tuple(sorted(labels.items()))

    def inc_series(self, series: Labels, amount: float = 1.0) -> None:
        """``inc`` without building and sorting the labels on every call."""
        self.values[series] = self.values.get(series, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.doc}"
        yield f"# TYPE {self.name} counter"
        if self.fn is not None:
            yield f"{self.name} {float(self.fn())}"
        for labels, v in self.values.items():
            yield f"{self.name}{_fmt_labels(labels)} {v}"


class Gauge:
    def __init__(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> None:
        self.name, self.doc, self.fn = name, doc, fn
        self.value = 0.0

    def set(self, v: float) -> None:
        self.value = v

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.doc}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {self.fn() if self.fn else self.value}"


class Histogram:
    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc = name, doc
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, v: float, times: int = 1) -> None:
        """``times`` observations of ``v`` (a coalesced flush answers its requests at once)."""
        self.counts[bisect.bisect_left(self.bounds, v)] += times
        self.total += v * times
        self.n += times

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.doc}"
        yield f"# TYPE {self.name} histogram"
        acc = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            yield f'{self.name}_bucket{{le="{bound}"}} {acc}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.n}'
        yield f"{self.name}_sum {self.total}"
        yield f"{self.name}_count {self.n}"


class Registry:
    def __init__(self) -> None:
        self.metrics: list[Counter | Gauge | Histogram] = []

    def counter(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> Counter:
        m = Counter(name, doc, fn)
        self.metrics.append(m)
        return m

    def gauge(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> Gauge:
        m = Gauge(name, doc, fn)
        self.metrics.append(m)
        return m

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        m = Histogram(name, doc, buckets)
        self.metrics.append(m)
        return m

    def render(self) -> str:
        return "\n".join(line for m in self.metrics for line in m.render()) + "\n"


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
