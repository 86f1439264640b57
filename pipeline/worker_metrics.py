"""Prometheus metrics of a stream worker (``GET /metrics`` on the faust web server).

Reads what the worker already keeps — the engine's counters and in-memory state, faust's
consumer offsets — and counts what leaves it by wrapping the ``send`` of the output topics
and the engine's report entry point (per instance, as ``topologies.app.Changelogs`` wraps
table writes), so the agents stay as they are. Everything is read when scraped: a scrape
costs O(cells), a ping nothing extra.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.engine import Engine
from pipeline.metrics import Registry

CONTENT_TYPE = "text/plain; version=0.0.4"


def _count_calls(counter: Callable[[Any], None], fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        counter(kwargs.get("value", args[1] if len(args) > 1 else None))
        return fn(*args, **kwargs)

    return wrapped


class WorkerMetrics:
    """One per worker process; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, engine: Engine, app: Any, topics: dict[str, Any], inputs: Iterable[str]) -> None:
        """``topics``: output name (conditions, alerts, deadletter) → faust topic; ``inputs``: topic names consumed."""
        self.engine, self.app = engine, app
        self.inputs = set(inputs)
        self.started = time.time()
        r = self.registry = Registry()
        r.counter("traverz_worker_pings_total", "pings counted into the speed windows", lambda: engine.pings)
        r.counter(
            "traverz_worker_ping_duplicates_total",
            "pings recognised as seen before (seq dedupe)",
            lambda: engine.duplicates,
        )
        self.reports = r.counter("traverz_worker_report_records_total", "report and vote records processed")
        self.published = r.counter("traverz_worker_published_total", "records sent, by topic and kind")
        r.gauge("traverz_worker_incidents_open", "open incidents in the cells this worker publishes", self._incidents)
        r.gauge("traverz_worker_cells_published", "cells with a current condition from this worker", self._published)
        r.gauge("traverz_worker_uptime_seconds", "seconds since the worker started", lambda: time.time() - self.started)
        on_report = engine.on_report

        def counted_report(*args: Any, **kwargs: Any) -> Any:
            self.reports.inc()
            return on_report(*args, **kwargs)

        engine.on_report = counted_report  # type: ignore[method-assign]
        for name, topic in topics.items():
            topic.send = _count_calls(self._sent(name), topic.send)

    def _sent(self, name: str) -> Callable[[Any], None]:
        data, tomb = (
            self.published.series(topic=name, kind="record"),
            self.published.series(topic=name, kind="tombstone"),
        )

        def count(value: Any) -> None:
            self.published.inc_series(tomb if value is None else data)

        return count

    def _incidents(self) -> float:
        return float(sum(len(v) for v in self.engine.active.values.values()))

    def _published(self) -> float:
        return float(len(self.engine.published))

    def tables(self) -> dict[str, int]:
        """Keys held in memory per table (the hot part of each; the rest waits in RocksDB)."""
        e = self.engine
        return {
            "cell-speed": len(e.cells.values),
            "baseline": len(e.baselines.values),
            "devices": len(e.devices.values),
            "crash-areas": len(e.areas.values),
            "report-books": len(e.books.values),
            "active-incidents": len(e.active.values),
        }

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the highwater per assigned input partition (from faust's committed offsets)."""
        out: dict[tuple[str, int], int] = {}
        consumer = getattr(self.app, "consumer", None)
        if consumer is None:
            return out
        try:
            assigned = consumer.assignment()
        except Exception:  # not started or rebalancing: no partitions to report
            return out
        for tp in assigned:
            if tp.topic not in self.inputs:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:
                continue
            if high is None:
                continue
            done = consumer._committed_offset.get(tp) or 0  # faust keeps the last committed offset per tp
            out[(tp.topic, tp.partition)] = max(0, int(high) - int(done))
        return out

    def render(self) -> str:
        lines = [self.registry.render().rstrip("\n")]
        lines += [
            "# HELP traverz_worker_table_keys keys held in memory per table",
            "# TYPE traverz_worker_table_keys gauge",
        ]
        lines += [f'traverz_worker_table_keys{{table="{t}"}} {n}' for t, n in self.tables().items()]
        lines += [
            "# HELP traverz_worker_consumer_lag records not yet committed per input partition",
            "# TYPE traverz_worker_consumer_lag gauge",
        ]
        lines += [
            f'traverz_worker_consumer_lag{{topic="{t}",partition="{p}"}} {n}'
            for (t, p), n in sorted(self.lag().items())
        ]
        return "\n".join(lines) + "\n"
