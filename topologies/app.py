"""The faust application (``app``) and its thin agents.

Run with ``traverz worker`` (or ``faust -A topologies.app worker``). Logic lives
in ``pipeline``; agents only move bytes between topics, tables and those pure
functions.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import faust
import orjson

from pipeline import conditions, geo, pings
from pipeline.cellstate import PartitionedState
from pipeline.settings import (
    TOPIC_CONDITIONS,
    TOPIC_DEADLETTER,
    TOPIC_PINGS,
    get_settings,
)
from pipeline.speed import CellSpeedWindow

settings = get_settings()
DATADIR = settings.data_dir / f"{settings.app_id}-{settings.worker_port}"  # one per worker process
DATADIR.mkdir(parents=True, exist_ok=True)
PUBLISH_INTERVAL_S = 0.5
RESCAN_EVERY = 20  # ticks: every cell is re-evaluated at least every 10 s

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.bootstrap}",
    store="rocksdb://",  # faust drives RocksDB through rocksdict
    datadir=str(DATADIR),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication,
    web_bind=settings.worker_host,
    web_host=settings.worker_host,
    web_port=settings.worker_port,
    producer_acks=-1,
    consumer_auto_offset_reset="earliest",
    # at-least-once with idempotent state; never exactly_once (faust #517, #323, #440)
    processing_guarantee="at_least_once",
    table_cleanup_interval=3600.0,
)

pings_topic = app.topic(TOPIC_PINGS, key_serializer="raw", value_serializer="raw")
conditions_topic = app.topic(TOPIC_CONDITIONS, key_serializer="raw", value_serializer="raw")
deadletter_topic = app.topic(TOPIC_DEADLETTER, key_serializer="raw", value_serializer="raw")

# bytes key and value: raw serialisation, our own compact encoding
cell_speed_table = app.Table("cell-speed", partitions=settings.partitions, key_type=bytes, value_type=bytes)

cells: PartitionedState[CellSpeedWindow] = PartitionedState(
    cell_speed_table,
    encode=CellSpeedWindow.to_bytes,
    decode=CellSpeedWindow.from_bytes,
    empty=CellSpeedWindow.is_empty,
)
published: dict[str, dict[str, Any]] = {}
pending_publish: set[str] = set()
ticks = 0


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


@app.agent(pings_topic, concurrency=1)  # >1 acks out of order (faust #606)
async def cell_speed(stream: faust.StreamT[bytes]) -> None:
    """Pings → per-cell speed windows (table) → cells due for publication."""
    res = settings.cell_resolution
    async for event in stream.events():
        partition = event.message.partition
        try:
            _, _, batch = pings.decode_record(event.value)
        except pings.RecordError as exc:
            await deadletter_topic.send(key=event.message.key, value=dead_letter(event, str(exc)))
            continue
        now = time.time()
        for p in batch:
            if p.get("state") == "parked":
                continue  # a parked phone is not traffic
            key = geo.cell(p["lat"], p["lon"], res)
            window = cells.get(key, partition)
            if window is None:
                window = CellSpeedWindow()
            if window.add(p["device_id"], p["seq"], p["ts"], p["speed_mps"], p["heading_deg"], now):
                cells.put(key, window, partition)
                pending_publish.add(key)
        cells.flush(partition)


@app.timer(PUBLISH_INTERVAL_S)  # type: ignore[untyped-decorator]
async def publish_conditions() -> None:
    """Publish changed cells: on material change, else a heartbeat at most every 60 s."""
    global ticks
    ticks += 1
    now = time.time()
    due = set(pending_publish)
    pending_publish.clear()
    if ticks % RESCAN_EVERY == 0:
        due.update(k for k, _ in cells.items())
        due.update(published)
    for key in due:
        window = cells.values.get(key)
        if window is not None:
            window.expire(now)
            cells.mark(key)
        prev = published.get(key)
        stats = window.stats(now) if window is not None else {}
        version = conditions.next_version(prev["version"] if prev else 0, now)
        cond = conditions.build_condition(key, stats, now=now, version=version, min_devices=settings.min_devices)
        if cond is None:
            if prev is not None:
                # below k or gone quiet: a tombstone removes it from the compacted topic
                await conditions_topic.send(key=key.encode(), value=None)
                del published[key]
            continue
        if conditions.is_material(prev, cond, now):
            await conditions_topic.send(key=key.encode(), value=orjson.dumps(cond))
            published[key] = cond


@app.page("/healthz")
async def healthz(web: Any, request: Any) -> Any:
    return web.json({"status": "ok", "cells": len(cells.values)})
