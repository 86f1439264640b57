"""Prometheus metrics of a stream worker (``GET /metrics`` on the faust web server).

Reads what the worker already keeps — the engine's counters and in-memory state, faust's
consumer offsets, the outbox's per-topic counts of what it published. Everything is read
when scraped: a scrape costs O(cells), a ping nothing extra.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from pipeline.engine import Engine
from pipeline.metrics import Registry

CONTENT_TYPE = "text/plain; version=0.0.4"


class WorkerMetrics:
    """One per worker process; :meth:`render` is the ``/metrics`` body."""

    def __init__(
        self,
        engine: Engine,
        app: Any,
        published: dict[tuple[str, str], int],
        names: dict[str, str],
        inputs: Iterable[str],
    ) -> None:
        """``published``: (topic, kind) → records sent, kept by the worker's outbox; ``names``: topic → label;
        ``inputs``: topic names consumed."""
        self.engine, self.app = engine, app
        self.inputs = set(inputs)
        self.sent, self.names = published, names
        self.started = time.time()
        r = self.registry = Registry()
        r.counter("traverz_worker_pings_total", "pings counted into the speed windows", lambda: engine.pings)
        r.counter(
            "traverz_worker_ping_duplicates_total",
            "pings recognised as seen before (seq dedupe)",
            lambda: engine.duplicates,
        )
        r.counter("traverz_worker_report_records_total", "report and vote records processed", lambda: engine.reports)
        self.published = r.counter("traverz_worker_published_total", "records sent, by topic and kind")
        r.gauge("traverz_worker_incidents_open", "open incidents in the cells this worker publishes", self._incidents)
        r.gauge("traverz_worker_cells_published", "cells with a current condition from this worker", self._published)
        r.gauge("traverz_worker_uptime_seconds", "seconds since the worker started", lambda: time.time() - self.started)

    def _incidents(self) -> float:
        return float(sum(len(v) for v in self.engine.active.values.values()))

    def _published(self) -> float:
        return float(len(self.engine.pacing.published))

    def tables(self) -> dict[str, int]:
        """Keys held in memory per table (the hot part of each; the rest waits in RocksDB)."""
        e = self.engine
        return {
            "cell-speed": len(e.cells.values),
            "baseline": len(e.baselines.values),
            "devices": e.tracked_devices(),  # moving ones are in e.movers
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
        for (topic, kind), n in list(self.sent.items()):
            self.published.values[self.published.series(topic=self.names.get(topic, topic), kind=kind)] = float(n)
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
