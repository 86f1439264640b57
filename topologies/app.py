"""The faust application (``app``) and its thin agents.

Run with ``traverz worker`` (or ``faust -A topologies.app worker``). The logic
lives in :class:`pipeline.engine.Engine`; agents only move bytes between
topics, tables and it:

* ``pings`` (traverz.pings.v1) → speed windows, baseline, stalled vehicles,
  crashes; alerts out as they happen.
* ``reports`` (traverz.reports.v1) → report/vote lifecycle; alerts out.
* timer ``publish`` every 0.25 s → conditions (material change or 60-s
  heartbeat) and the detectors' timed clears.

Both agents read co-partitioned topics keyed by the same res-7 cells, so a
spot's pings and reports meet in one partition. Delivery is at-least-once
(``concurrency=1``, never exactly_once: faust #517, #323, #440, #606); replays
are made harmless by the per-device seq dedupe in the speed windows and by
the detectors ignoring pings older than what they saw.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import math
import time
from typing import Any

import faust
import orjson
from aiokafka.errors import ProducerClosed
from faust.types import TP

from pipeline import pings
from pipeline.engine import Engine, Output, RecordProblem, Tables
from pipeline.settings import (
    TOPIC_ALERTS,
    TOPIC_CONDITIONS,
    TOPIC_DEADLETTER,
    get_settings,
)
from pipeline.worker_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pipeline.worker_metrics import WorkerMetrics
from topologies.flow import QuietWorker, SourceTopic, TraverzApp
from topologies.state import ChangelogTable, Outbox, Pending

settings = get_settings()
DATADIR = settings.data_dir / f"{settings.worker_app_id}-{settings.worker_port}"  # one per worker process
DATADIR.mkdir(parents=True, exist_ok=True)
# A new cell's first condition waits for the next tick: half an interval on average. The work per
# tick follows the cells touched since the last and the time passed (budgets below are per tick),
# so a shorter interval costs little more in all.
PUBLISH_INTERVAL_S = 0.25
# State written back and records acknowledged this often (Kafka Streams commits every 30 s): each
# write-back rewrites every cell touched since the last, so its cost is per cell, not per ping —
# a longer interval is cheaper, and only lengthens the replay after a crash. At 5 s, a city at
# 20,000 pings/s rewrote nearly every window (dedupe entries of thousands of devices each) every
# 5 s: a fifth of the worker's time.
FLUSH_S = 15.0
MAX_HELD = 20_000  # ... or once a partition holds this many records

app = TraverzApp(  # faust.App whose commits never pass an unacknowledged record (topologies/flow.py)
    settings.worker_app_id,  # per generation (traverz topics rescale): new group, new changelogs
    broker=f"kafka://{settings.bootstrap}",
    store="rocksdb://",  # faust drives RocksDB through rocksdict
    datadir=str(DATADIR),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    web_bind=settings.worker_host,
    web_host=settings.worker_host,
    web_port=settings.worker_port,
    producer_acks=-1,
    # a write-back sends a partition's changed rows at once; at faust's 16 KiB a batch, they went
    # as dozens of batches, each waiting for the one before (aiokafka sends one per partition at a time)
    producer_max_batch_size=512 * 1024,
    consumer_auto_offset_reset="earliest",
    # at-least-once with idempotent state; never exactly_once (faust #517, #323, #440)
    processing_guarantee="at_least_once",
    # our own expiry removes old state (faust #385: window expiry misbehaves after recovery)
    table_cleanup_interval=3600.0,
    Worker=QuietWorker,  # faust's spinner would leave the root logger at DEBUG (topologies/flow.py)
)


def _raw_topic(name: str) -> Any:
    # agent buffers not wiped when faust resumes the flow after a rebalance (topologies/flow.py)
    return SourceTopic(app, topics=[name], key_serializer="raw", value_serializer="raw")


pings_topic = _raw_topic(settings.pings_topic)
reports_topic = _raw_topic(settings.reports_topic)


outbox = Outbox(app.producer)


def _table(name: str) -> ChangelogTable:
    # bytes in, bytes out: our own compact encodings, no faust.Record; written a batch at a time
    table = app.Table(name, partitions=settings.partitions, key_type=bytes, value_type=bytes)
    return ChangelogTable(table, outbox)


engine = Engine(
    Tables(
        speed=_table("cell-speed"),
        baseline=_table("baseline"),
        devices=_table("devices"),
        areas=_table("crash-areas"),
        books=_table("report-books"),
        active=_table("active-incidents"),
    ),
    min_devices=settings.min_devices,
    cell_res=settings.cell_resolution,
    key_res=settings.key_resolution,
)


def dead_letter(event: faust.types.EventT[bytes], reason: str) -> bytes:
    msg = event.message
    value: bytes = msg.value or b""
    return orjson.dumps(
        {
            "source_topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "reason": reason,
            "key": base64.b64encode(msg.key).decode() if msg.key else None,
            "value": base64.b64encode(value[:65536]).decode(),
            "truncated": len(value) > 65536,
            "at": time.time(),
        }
    )


async def ship(out: Output) -> None:
    await outbox.publish(TOPIC_ALERTS, out.alerts)
    await outbox.publish(TOPIC_CONDITIONS, out.conditions)


class Held:
    """Records processed but not yet acknowledged, until the state they changed is in Kafka.

    Writing every touched cell back per record would cost a changelog record
    per ping (a busy cell is touched by nearly every record). Instead the
    changed state of each partition is written at most every
    :data:`FLUSH_S` (or once the partition holds :data:`MAX_HELD` records);
    the changelog records are then awaited until the broker acknowledged them,
    and only then are the records that led to them acknowledged — in offset
    order. Faust's own pre-commit flush is not enough: its producer buffer
    gives up after 0.1 s without progress (``ProducerBuffer.flush_atmost``)
    and the commit goes ahead with changelog records still queued, which loses
    state when the worker is killed right after. A crash now only replays
    unacknowledged records, and the per-device seq dedupe counts them once.

    Partitions are written back in turn, not together: partition ``p``'s turn
    comes at its own phase of the period (``p / partitions`` of it). Writing
    all of them at once stopped the loop for 0.3–0.5 s at each turn at 20,000
    pings/s — the worst of the produce → condition latency; a partition at a
    time is an eighth of that, spread over the period. And the agent does not
    wait for the broker: the acknowledgements wait (:attr:`acking`, a chain of
    tasks, so they stay in offset order) while the agent goes on with the next
    records — their state goes with the next write-back.

    The write-back goes around faust's per-key table path (see
    :mod:`topologies.state`): a partition's rows are one RocksDB batch and one
    Kafka batch.
    """

    def __init__(self, partitions: int) -> None:
        self.partitions = max(1, partitions)
        self.events: dict[int, list[faust.types.EventT[bytes]]] = {}
        self.turn: dict[int, float] = {}  # partition → when its next write-back is due
        self.releasing = False
        self.acking: asyncio.Future[None] | None = None  # the last write-back's acknowledgements

    def _next_turn(self, partition: int, now: float) -> float:
        # partition p's turns are at p/partitions of each period, whatever happened in between: released
        # at its first record after a quiet spell, it would otherwise keep the turn of that moment
        # (after an idle minute every partition's first record came at once, and so did every turn)
        phase = FLUSH_S * (partition % self.partitions) / self.partitions
        return (math.floor((now - phase) / FLUSH_S) + 1) * FLUSH_S + phase

    def _turn(self, partition: int, now: float) -> float:
        at = self.turn.get(partition)
        if at is None:  # first seen: its first turn on the grid
            at = self.turn[partition] = self._next_turn(partition, now)
        return at

    def due(self, now: float) -> list[int]:
        """Partitions whose write-back is due."""
        return [p for p in self.events if now >= self._turn(p, now)]

    async def hold(self, event: faust.types.EventT[bytes], now: float) -> None:
        part = event.message.partition
        held = self.events.setdefault(part, [])
        held.append(event)
        if len(held) >= MAX_HELD or now >= self._turn(part, now):
            await self.release([part], now)

    async def release(self, partitions: list[int], now: float) -> None:
        if self.releasing:
            return  # another agent or the timer is at it; what we hold goes with the next one
        self.releasing = True
        try:
            if self.acking is not None and self.acking.done():
                self.acking.result()  # a failed delivery fails the agent, as if awaited here
            batch = {p: self.events.pop(p) for p in partitions if p in self.events}
            for part in batch:
                self.turn[part] = self._next_turn(part, now)
                engine.flush(part, now)
            pending = await outbox.send()
            self.acking = asyncio.ensure_future(self._ack(self.acking, pending, batch))
        finally:
            self.releasing = False

    @staticmethod
    async def _ack(
        before: asyncio.Future[None] | None, pending: list[Pending], batch: dict[int, list[faust.types.EventT[bytes]]]
    ) -> None:
        if before is not None:
            await before  # offset order across write-backs (faust #606)
        await outbox.confirm(pending)
        for events in batch.values():
            for ev in events:
                ev.ack()

    def drop_revoked(self, keep: set[int]) -> None:
        # their offsets were not committed: the new owner replays them
        for part in [p for p in self.events if p not in keep]:
            del self.events[part]


held = Held(settings.partitions)


def _unacked(stream: faust.StreamT[bytes]) -> Any:
    # acknowledged by Held, strictly in offset order: faust commits past a gap
    # when a later offset is acked first (faust #606)
    return stream.noack().events()  # type: ignore[attr-defined]


@app.agent(pings_topic, concurrency=1)  # >1 acks out of order (faust #606)
async def ping_agent(stream: faust.StreamT[bytes]) -> None:
    """Ping records → every per-ping detector; alerts out."""
    async for event in _unacked(stream):
        if _stale(event):
            continue  # not acknowledged: faust forgot this partition's acks when it was revoked
        try:
            _, _, batch = pings.decode_batch(event.value, engine.cell_res)  # C structs, no dict a ping
        except pings.RecordError as exc:
            await outbox.publish(TOPIC_DEADLETTER, [(event.message.key or b"", dead_letter(event, str(exc)))])
            await held.hold(event, time.time())  # acknowledged in offset order with the rest (faust #606)
            continue
        now = time.time()
        out = engine.on_pings(batch, event.message.partition, now)
        if out.alerts:
            await ship(out)
        await held.hold(event, now)


@app.agent(reports_topic, concurrency=1)
async def report_agent(stream: faust.StreamT[bytes]) -> None:
    """Reports and votes → incidents; alerts out."""
    async for event in _unacked(stream):
        if _stale(event):
            continue
        key = (event.message.key or b"").decode(errors="replace")
        now = time.time()
        try:
            out = engine.on_report(key, orjson.loads(event.value or b"null"), event.message.partition, now)
        except (orjson.JSONDecodeError, RecordProblem) as exc:
            await outbox.publish(TOPIC_DEADLETTER, [(event.message.key or b"", dead_letter(event, str(exc)))])
            await held.hold(event, now)
            continue
        await ship(out)
        await held.hold(event, now)


class Heap:
    """Keep the cyclic GC's collections off the engine's state (the reasoning of pipeline/push/heap.py).

    A million speed windows are ~7M GC-tracked objects (dicts, sets, dataclasses); a full
    collection walks them all with the event loop stopped (1.5 s measured), and the
    collector's 25 % rule triggers one each time the state grows by a quarter — a fill of
    1M cells spent most of its time in them, and every young collection of a big batch
    rode along. So the state is frozen (``gc.freeze``: O(1), to the permanent generation no
    collection walks) every :attr:`freeze_s`; what the collector sees is what the last
    seconds created. Frozen objects are still freed by reference counting; cyclic garbage
    among them waits for the full collection every :attr:`collect_s`: one pause per
    10 minutes instead of several a minute.
    """

    freeze_s = 5.0
    collect_s = 600.0

    def __init__(self) -> None:
        self.frozen_at = self.collected_at = time.monotonic()

    def tick(self) -> None:
        t = time.monotonic()
        if t - self.collected_at >= self.collect_s:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.collected_at = self.frozen_at = t
        elif t - self.frozen_at >= self.freeze_s:
            gc.freeze()
            self.frozen_at = t


heap = Heap()


@app.timer(PUBLISH_INTERVAL_S)  # type: ignore[untyped-decorator]
async def publish() -> None:
    """Conditions of the cells that changed (material change, else a heartbeat at most every 60 s)."""
    if app.stopping:
        return  # the producer is closing: nothing acknowledged depends on this tick
    heap.tick()
    now = time.time()
    try:
        due = held.due(now)
        if due:
            await held.release(due, now)
        await _refetch_skipped()
        await ship(engine.tick(now))
    except ProducerClosed:
        if not app.stopping:
            raise
        # a tick that began just before the stop (a crash report otherwise, and exit code 1)


assigned: set[int] = set()  # partitions of the pings/reports topics this worker owns now


@app.on_partitions_assigned.connect
async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
    """The full new assignment: keep cached state only of partitions owned before *and* now.

    A partition that comes (back) to this worker must be read from its restored
    table: what this worker cached when it last owned it is older than what the
    previous owner wrote to the changelog since.
    """
    global assigned
    new = {
        tp.partition for tp in (args[0] if args else kwargs.get("assigned", set())) if tp.topic == settings.pings_topic
    }
    keep = new & assigned
    held.drop_revoked(keep)
    engine.forget_partitions(keep)
    for partition in new - keep:  # restored tables: their incidents' and windows' timers run here now
        engine.adopt(partition)
    assigned = new


skipped: dict[TP, int] = {}  # owned, not yet announced: the first offset skipped, to fetch again


async def _refetch_skipped() -> None:
    """Seek back to records skipped before their partition was announced, once it is (their tables restored).

    Nothing else fetches them again: the consumer counts them as read, and the
    commit waits for them (``topologies/flow.py``), so without this the
    partition would stall. What comes after them is fetched again too: the seq
    dedupe counts each ping once.
    """
    for tp in [tp for tp in skipped if tp.partition in assigned]:
        offset = skipped.pop(tp)
        if tp in app.consumer.assignment():
            await app.consumer.seek(tp, offset)


def _stale(event: faust.types.EventT[bytes]) -> bool:
    """A record of a partition :func:`on_assigned` has not (or no longer) given this worker: skipped.

    Either a rebalance took the partition away (the new owner replays it), or the
    record was fetched before faust announced the assignment — and so before
    the partition's table was restored: processing it would cache empty state
    over what the restore brings (tried: a rescale then lost the migrated
    windows). Not acknowledged either way.
    """
    msg = event.message
    if msg.partition in assigned:
        return False
    if msg.tp in app.consumer.assignment():  # fetched before the announcement: fetch it again later
        skipped[msg.tp] = min(skipped.get(msg.tp, msg.offset), msg.offset)
    return True


@app.page("/healthz")
async def healthz(web: Any, request: Any) -> Any:
    return web.json(
        {
            "status": "ok",
            "pings": engine.pings,
            "duplicates": engine.duplicates,
            "cells": len(engine.cells.values),
            "devices": engine.tracked_devices(),
            "published": len(engine.pacing.published),
        }
    )


@app.page("/readyz")
async def readyz(web: Any, request: Any) -> Any:
    """200 once this worker owns partitions and no rebalance is under way (their tables restored), else 503.

    A worker that joins a group whose partitions are all taken stays 503: it is a
    standby, not serving. Speed windows may still be being read (``adopting``).
    """
    ready = bool(assigned) and not app.rebalancing
    body = {"ready": ready, "partitions": sorted(assigned), "adopting": len(engine.pacing.adopting)}
    return web.json(body, status=200 if ready else 503)


worker_metrics = WorkerMetrics(
    engine,
    app,
    outbox.published,
    {TOPIC_CONDITIONS: "conditions", TOPIC_ALERTS: "alerts", TOPIC_DEADLETTER: "deadletter"},
    (settings.pings_topic, settings.reports_topic),
)


@app.page("/metrics")
async def metrics(web: Any, request: Any) -> Any:
    """Prometheus text format (pipeline/worker_metrics.py)."""
    return web.text(worker_metrics.render(), content_type=METRICS_CONTENT_TYPE)
