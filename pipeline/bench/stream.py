"""``traverz bench stream``: the faust worker against a bare aiokafka loop on the same records.

Everything runs against an embedded broker of its own on a free port:

1. N pings of synthetic drivers on roads around Berlin are produced the way the ingest
   proxy makes records: grouped per partition, up to ``record_size`` pings per record, the
   record keyed by the res-7 key of one of its pings, every ping's key on that partition.
2. Raw baseline: aiokafka ``getmany`` + a pure-Python decode (orjson, the per-ping type and
   range checks, h3-py) + ``speed.ReferenceWindow.add`` per res-9 cell, in this process — the
   issue's "bare consume-decode-aggregate loop". The worker's own decode does the checks and
   the H3 call in C (``pipeline._records``); the baseline keeps them in Python, as the loop
   the issue measures against. Each round also runs the baseline with the worker's C parts
   (``raw_native``: the C decode and the C window count, ``speed.add_pings``), and the report
   gives the worker's ratio to both: to the first the issue's figure, to the second what the
   worker costs beyond the per-ping work the two share.
3. ``traverz worker`` as a subprocess with a fresh app id (its group starts at the
   beginning); its rate is read from outside, from the group's committed offsets.
4. Latency with the worker caught up: background traffic at ``rate`` pings/s plus marker
   bursts (k devices in a fresh res-9 cell) every 0.25 s; produce ack → first condition.
5. Restart with a big table: pings into ``table_keys`` distinct res-9 cells (each a table
   key, through the worker's own path), then a restart keeping RocksDB and one with an
   empty data dir (full changelog restore, as in a takeover): spawn → first new condition.

Raw and worker rounds alternate; medians are reported and the full report goes to
``artifacts/bench-stream.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h3
import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from pipeline import geo, kafka_io, kafka_local, pings
from pipeline.settings import TOPIC_CONDITIONS, TOPIC_PINGS, Settings
from pipeline.sim.synthetic import CENTRE, ROADS
from pipeline.speed import CellSpeedWindow, ReferenceWindow, add_pings

KEY_RES, CELL_RES = 7, 9
MARKER_EVERY_S = 0.25


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- synthetic traffic --------------------------------------------------------------------------
@dataclass
class Road:
    lat: float
    lon: float
    bearing: float
    half_m: float
    typical: float


@dataclass
class Car:
    device: str
    road: int
    direction: int
    pos_m: float
    seq: int = 0


@dataclass
class City:
    """Drivers on many straight roads over greater Berlin (synthetic.py has four; a benchmark
    needs thousands of cells and hundreds of keys spread over every partition)."""

    partitions: int
    rng: random.Random
    roads: list[Road] = field(default_factory=list)
    cars: list[Car] = field(default_factory=list)
    _part: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, devices: int, partitions: int, seed: int = 7, roads: int = 400) -> City:
        rng = random.Random(seed)
        city = cls(partitions, rng)
        for _ in range(roads):
            lat, lon = geo.destination(CENTRE[0], CENTRE[1], rng.uniform(0, 360), 15_000 * math.sqrt(rng.random()))
            typical = rng.choice(ROADS)[1] * rng.uniform(0.7, 1.3)
            city.roads.append(Road(lat, lon, rng.uniform(0, 180), rng.uniform(1000, 5000), typical))
        for i in range(devices):
            road = rng.randrange(roads)
            half = city.roads[road].half_m
            city.cars.append(Car(f"bench-{i:06d}", road, rng.choice((1, -1)), rng.uniform(-half, half)))
        return city

    def partition(self, key: str) -> int:
        p = self._part.get(key)
        if p is None:
            every = list(range(self.partitions))
            p = self._part[key] = int(DefaultPartitioner()(key.encode(), every, every))
        return p

    def step(self, cars: list[Car], ts: float, dt: float) -> Iterator[pings.Ping]:
        rng = self.rng
        for car in cars:
            road = self.roads[car.road]
            speed = max(0.0, min(35.0, rng.gauss(road.typical, 1.5)))
            car.pos_m += car.direction * speed * dt
            if abs(car.pos_m) > road.half_m:  # turn around at the end of the road
                car.direction = -car.direction
                car.pos_m = max(-road.half_m, min(road.half_m, car.pos_m))
            lat, lon = geo.destination(road.lat, road.lon, road.bearing, car.pos_m)
            car.seq += 1
            yield {
                "device_id": car.device,
                "seq": car.seq,
                "ts": round(ts + rng.uniform(-dt / 2, 0), 3),
                "lat": round(lat, 6),
                "lon": round(lon, 6),
                "speed_mps": round(speed, 2),
                "heading_deg": road.bearing if car.direction > 0 else road.bearing + 180.0,
                "accuracy_m": round(rng.uniform(3, 12), 1),
            }


class Packer:
    """Pings → records as the ingest proxy makes them: per partition, up to ``size`` pings each."""

    def __init__(self, city: City, size: int) -> None:
        self.city, self.size = city, size
        self.buf: dict[int, tuple[str, list[pings.Ping]]] = {}

    def add(self, p: pings.Ping) -> tuple[bytes, bytes, int] | None:
        key = geo.key_cell(p["lat"], p["lon"], KEY_RES, CELL_RES)
        part = self.city.partition(key)
        cur = self.buf.get(part)
        if cur is None:
            cur = self.buf[part] = (key, [])  # the record's key: one of its pings' keys
        cur[1].append(p)
        if len(cur[1]) >= self.size:
            del self.buf[part]
            return cur[0].encode(), pings.encode_record(cur[0], cur[1], time.time()), len(cur[1])
        return None

    def drain(self) -> Iterator[tuple[bytes, bytes, int]]:
        for key, batch in self.buf.values():
            yield key.encode(), pings.encode_record(key, batch, time.time()), len(batch)
        self.buf.clear()


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, max_batch_size=1 << 20
    )


@dataclass
class Produced:
    pings: int = 0
    records: int = 0
    # per partition: cumulative pings after each offset (to turn committed offsets into pings)
    cum: dict[int, list[int]] = field(default_factory=dict)
    base: dict[int, int] = field(default_factory=dict)  # first offset of this data per partition

    def note(self, part: int, offset: int, n: int) -> None:
        c = self.cum.setdefault(part, [])
        self.base.setdefault(part, offset)
        c.append((c[-1] if c else 0) + n)
        self.pings += n
        self.records += 1

    def pings_below(self, committed: dict[int, int]) -> int:
        total = 0
        for part, c in self.cum.items():
            k = committed.get(part, 0) - self.base[part]
            if k > 0:
                total += c[min(k, len(c)) - 1]
        return total


async def _send(producer: AIOKafkaProducer, recs: list[tuple[bytes, bytes, int]], out: Produced | None) -> None:
    futs = [await producer.send(TOPIC_PINGS, key=k, value=v) for k, v, _ in recs]
    for md, (_, _, n) in zip(await asyncio.gather(*futs), recs, strict=True):
        if out is not None:
            out.note(md.partition, md.offset, n)


async def _pack_and_send(bootstrap: str, city: City, record_size: int, stream: Iterable[pings.Ping]) -> Produced:
    """Pings → records as ingest makes them → the pings topic, 500 records per send."""
    packer, out, pending = Packer(city, record_size), Produced(), []
    producer = _producer(bootstrap)
    await producer.start()
    try:
        for p in stream:
            rec = packer.add(p)
            if rec is not None:
                pending.append(rec)
                if len(pending) >= 500:
                    await _send(producer, pending, out)
                    pending = []
        pending.extend(packer.drain())
        await _send(producer, pending, out)
    finally:
        await producer.stop()
    return out


async def preproduce(bootstrap: str, city: City, total: int, interval: float, record_size: int) -> Produced:
    """``total`` pings, all devices step by step; event times end now (pings are fresh when read)."""
    steps = max(1, math.ceil(total / len(city.cars)))
    t0 = time.time() - steps * interval

    def stream() -> Iterator[pings.Ping]:
        left = total
        for i in range(steps):
            cars = city.cars[: min(left, len(city.cars))]
            left -= len(cars)
            yield from city.step(cars, t0 + (i + 1) * interval, interval)

    return await _pack_and_send(bootstrap, city, record_size, stream())


# -- raw baseline -------------------------------------------------------------------------------
_NUM = (int, float)


def decode_python(raw: bytes) -> list[pings.Ping]:
    """A record's pings, checked in plain Python: what ``pings.decode_record`` did before its C pass.

    Same refusals (exact types, ranges) and order; the unit tests hold ``pipeline._records`` to it.
    """
    doc = orjson.loads(raw)
    if not isinstance(doc, dict) or doc.get("v") != pings.RECORD_VERSION or not isinstance(doc.get("pings"), list):
        raise pings.RecordError("not a v1 ping record")
    batch: list[pings.Ping] = doc["pings"]
    check_python(batch)
    return batch


def check_python(batch: list[Any]) -> None:
    """``pipeline._records.check_pings`` in plain Python, without the cells: RecordError at the first bad ping."""
    for p in batch:
        if type(p) is not dict:
            raise pings.RecordError("ping: missing or mistyped field")
        try:
            dev, seq, ts = p["device_id"], p["seq"], p["ts"]
            lat, lon, speed, heading = p["lat"], p["lon"], p["speed_mps"], p["heading_deg"]
        except KeyError:
            raise pings.RecordError("ping: missing or mistyped field") from None
        if not (type(dev) is str and type(seq) is int and type(ts) in _NUM and type(lat) in _NUM
                and type(lon) in _NUM and type(speed) in _NUM and type(heading) in _NUM):
            raise pings.RecordError("ping: missing or mistyped field")
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0 and 0.0 <= speed <= pings.MAX_SPEED_MPS
                and 0.0 <= heading <= 360.0):
            raise pings.RecordError("ping: field out of range")


async def raw_baseline(
    bootstrap: str, ends: dict[int, int], starts: dict[int, int], native: bool = False
) -> dict[str, float]:
    """Bare aiokafka getmany + decode + the same per-cell aggregate; pings/s first → last record.

    The decode is :func:`decode_python` + h3-py per ping and the aggregate
    ``ReferenceWindow.add`` (the window in Python), or with ``native`` the worker's own:
    ``pings.decode_record`` (checks and cell in C) and ``speed.add_pings`` into native windows.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=1 << 21
    )
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC_PINGS, p) for p in sorted(ends)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, starts.get(tp.partition, 0))
        cells: dict[str, CellSpeedWindow] = {}  # the worker's native windows
        py_cells: dict[str, ReferenceWindow] = {}  # the same in Python: the pure-Python raw baseline
        touched: set[str] = set()  # the worker's bookkeeping of changed cells, kept as it keeps it
        wake: set[str] = set()
        pending = {tp for tp in tps if ends[tp.partition] > starts.get(tp.partition, 0)}
        n = counted = 0
        first = cpu0 = 0.0
        cell = geo.cell
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=200, max_records=20_000)
            if not first and batches:
                first, cpu0 = time.perf_counter(), time.process_time()
            now = time.time()
            for tp, msgs in batches.items():
                for msg in msgs:
                    if native:
                        batch = pings.decode_record(msg.value, CELL_RES)[2]
                        counted += len(batch) - add_pings(batch, cells, _new_window, tp.partition, now, touched, wake)
                        n += len(batch)
                        continue
                    batch = decode_python(msg.value)
                    for p in batch:
                        key = p["cell"] if native else cell(p["lat"], p["lon"], CELL_RES)
                        w = py_cells.get(key)
                        if w is None:
                            w = py_cells[key] = ReferenceWindow()
                        counted += w.add(p["device_id"], p["seq"], p["ts"], p["speed_mps"], p["heading_deg"], now)
                    n += len(batch)
                if msgs and msgs[-1].offset + 1 >= ends[tp.partition]:
                    pending.discard(tp)
        secs, cpu = time.perf_counter() - first, time.process_time() - cpu0
        return {"pings": n, "seconds": round(secs, 3), "pings_per_s": round(n / secs), "counted": counted,
                "cells": len(cells) + len(py_cells), "cpu_us_per_ping": round(cpu / n * 1e6, 2)}
    finally:
        await consumer.stop()


def _new_window(cell: str, partition: int) -> CellSpeedWindow:
    return CellSpeedWindow()


# -- the worker, seen from outside --------------------------------------------------------------
async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
        return {tp.partition: int(o) for tp, o in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def committed(admin: AIOKafkaAdminClient, group: str) -> dict[int, int]:
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:  # coordinator not there yet on a fresh group: no commits
        return {}
    return {tp.partition: int(m.offset) for tp, m in offsets.items() if tp.topic == TOPIC_PINGS and m.offset >= 0}


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    app_id: str
    data_dir: Path
    log: Path
    started: float  # monotonic, at spawn

    @classmethod
    def spawn(cls, bootstrap: str, app_id: str, data_dir: Path, port: int, log: Path) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAVERZ_")}
        env.update(TRAVERZ_BOOTSTRAP=bootstrap, TRAVERZ_APP_ID=app_id, TRAVERZ_DATA_DIR=str(data_dir),
                   TRAVERZ_WORKER_PORT=str(port), PYTHONUNBUFFERED="1")
        traverz = str(Path(sys.executable).with_name("traverz"))
        started = time.monotonic()
        with open(log, "ab") as out:
            proc = subprocess.Popen([traverz, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(proc, port, app_id, data_dir, log, started)

    def cpu_s(self) -> float:
        """CPU seconds (user + system, every thread) the worker process has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{tail}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def cells(self) -> int | None:
        with contextlib.suppress(Exception):
            return int(httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).json().get("cells"))
        return None


async def follow_commits(
    bootstrap: str, worker: Worker, data: Produced, ends: dict[int, int], timeout: float
) -> dict[str, float]:
    """Follow the worker until it has committed everything: its processing rate and its commits.

    ``pings_per_s`` is the rate at which the worker processed the records (its own count of
    pings seen, from ``/healthz``, between 10 % and 90 % of them: start-up and the tail left
    out). Commits trail processing by up to a write-back interval per partition (15 s, in
    turn), which in a run of half a minute made a commit-to-commit rate meaningless;
    ``committed_pings_per_s`` (first commit to all committed) is kept for what it is.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    seen: list[tuple[float, int, float]] = []
    first_commit: float | None = None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}", timeout=5) as http:
            deadline = time.monotonic() + timeout
            polled = 0.0
            while True:
                worker.alive()
                now = time.monotonic()
                if now - polled >= 0.25:
                    polled = now
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        doc = (await http.get("/healthz")).json()
                        seen.append((time.monotonic(), int(doc["pings"]) + int(doc["duplicates"]), worker.cpu_s()))
                done = await committed(admin, worker.app_id)
                if first_commit is None and data.pings_below(done) > 0:
                    first_commit = time.monotonic()
                if all(done.get(p, 0) >= e for p, e in ends.items()):
                    break
                if time.monotonic() > deadline:
                    n = data.pings_below(done)
                    raise TimeoutError(f"worker committed {n} of {data.pings} pings in {timeout:.0f}s")
                await asyncio.sleep(0.05)
    finally:
        await admin.close()
    t_last = time.monotonic()
    out: dict[str, float] = {"pings": data.pings}
    base = seen[0][1] if seen else 0  # the worker may have counted pings before these (a fill after a run)
    steady = [(t, n - base, cpu) for t, n, cpu in seen if 0.1 * data.pings <= n - base <= 0.9 * data.pings]
    if len(steady) >= 2:
        (t0, n0, c0), (t1, n1, c1) = steady[0], steady[-1]
        out["pings_per_s"] = round((n1 - n0) / (t1 - t0)) if t1 > t0 else float("nan")
        # CPU per ping over the same span: what a ping costs, less sensitive than a rate to others' load
        out["cpu_us_per_ping"] = round((c1 - c0) / (n1 - n0) * 1e6, 2) if n1 > n0 else float("nan")
    else:
        out["pings_per_s"] = out["cpu_us_per_ping"] = float("nan")  # too quick to sample
    first = first_commit if first_commit is not None else t_last
    out["committed_pings_per_s"] = round(data.pings / (t_last - first)) if t_last > first else float("nan")
    out["first_commit_to_caught_up_s"] = round(t_last - first, 2)
    out["spawn_to_caught_up_s"] = round(t_last - worker.started, 2)
    return out


# -- conditions: latency probes -----------------------------------------------------------------
class ConditionWatch:
    """Arrival time (monotonic) of the first condition per cell, from now on."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.first: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        c = self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await c.start()
        await c._client.force_metadata_update()
        tps = [TopicPartition(TOPIC_CONDITIONS, p) for p in sorted(c.partitions_for_topic(TOPIC_CONDITIONS) or set())]
        c.assign(tps)
        await c.seek_to_end(*tps)
        for tp in tps:
            await c.position(tp)  # resolve the end now, not at the first fetch
        self._task = asyncio.create_task(self._run(c))

    async def _run(self, c: AIOKafkaConsumer) -> None:
        while True:
            batches = await c.getmany(timeout_ms=50)
            now = time.monotonic()
            for msgs in batches.values():
                for m in msgs:
                    if m.key is not None and m.value is not None:
                        self.first.setdefault(m.key.decode(), now)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


class Markers:
    """Fresh res-9 cells far from the roads, each used once: k devices in one burst make it publish."""

    def __init__(self, k: int, origin: tuple[float, float] = (53.40, 14.55)) -> None:  # Szczecin, ~120 km NE
        self.k = k
        self.cells = iter(h3.grid_disk(h3.latlng_to_cell(origin[0], origin[1], CELL_RES), 200))
        self.n = 0

    def burst(self) -> tuple[str, bytes, bytes]:
        cell = str(next(self.cells))
        self.n += 1
        lat, lon = geo.cell_center(cell)
        now = time.time()
        batch = [
            {"device_id": f"mark-{self.n}-{d}", "seq": 1, "ts": now, "lat": lat, "lon": lon, "speed_mps": 10.0,
             "heading_deg": 90.0, "accuracy_m": 5.0}
            for d in range(self.k)
        ]
        key = geo.key_cell(lat, lon, KEY_RES, CELL_RES)
        return cell, key.encode(), pings.encode_record(key, batch, now)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


Tick = list[tuple[bytes, list[pings.Ping]]]  # the records (key, pings) sent in one tick


def _background(city: City, rate: float, seconds: float, tick: float, size: int) -> list[Tick]:
    """Per tick of ``tick`` s, the records of ``rate`` pings/s; each ping's ``ts`` is its offset in the tick.

    Made before the clock starts: generating 20,000 pings/s (positions, H3 keys) takes most
    of a core of this 2-core machine, which the worker under test would then not have.
    """
    per_tick = max(1, int(rate * tick))
    plan, cursor = [], 0
    for _ in range(int(seconds / tick)):
        cars = [city.cars[(cursor + i) % len(city.cars)] for i in range(per_tick)]
        cursor += per_tick
        parts: dict[int, tuple[bytes, list[pings.Ping]]] = {}
        records: list[tuple[bytes, list[pings.Ping]]] = []
        for p in city.step(cars, 0.0, 5.0):
            key = geo.key_cell(p["lat"], p["lon"], KEY_RES, CELL_RES)
            part = city.partition(key)
            cur = parts.get(part)
            if cur is None:
                cur = parts[part] = (key.encode(), [])
            cur[1].append(p)
            if len(cur[1]) >= size:
                records.append(parts.pop(part))
        records.extend(parts.values())
        plan.append(records)
    return plan


async def latency(bootstrap: str, city: City, rate: float, seconds: float, k: int, record_size: int) -> dict[str, Any]:
    """Background traffic at ``rate`` pings/s; a marker burst every 0.25 s; ack → first condition."""
    watch = ConditionWatch(bootstrap)
    await watch.start()
    markers = Markers(k)
    producer = _producer(bootstrap)
    await producer.start()
    acked: dict[str, float] = {}
    sent = 0
    tasks: set[asyncio.Task[None]] = set()

    async def marker() -> None:
        cell, key, value = markers.burst()
        await (await producer.send(TOPIC_PINGS, key=key, value=value))
        acked[cell] = time.monotonic()

    try:
        tick = 0.05
        plan = _background(city, rate, seconds, tick, record_size)
        t_start = time.monotonic()
        next_marker = t_start
        for records in plan:
            t_tick, now = time.monotonic(), time.time()
            for key, batch in records:  # live traffic: stamped now, no record waits for the next tick
                for p in batch:
                    p["ts"] = round(now + p["ts"], 3)
                await producer.send(TOPIC_PINGS, key=key, value=pings.encode_record(key.decode(), batch, now))
                sent += len(batch)
            if t_tick >= next_marker:
                t = asyncio.create_task(marker())
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                next_marker += MARKER_EVERY_S
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - t_tick)))
        elapsed = time.monotonic() - t_start
        await producer.flush()
        await asyncio.gather(*tasks)
        for _ in range(100):  # up to 10 s for the last markers' conditions
            if all(c in watch.first for c in acked):
                break
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
        await watch.stop()
    lat = [watch.first[c] - t for c, t in acked.items() if c in watch.first]
    return {
        "background_pings_per_s": round(sent / elapsed),
        "markers": len(acked),
        "missing": len(acked) - len(lat),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": round(1000 * _pct(lat, 0.99), 1) if lat else None,
        "max_ms": round(1000 * max(lat), 1) if lat else None,
    }


# -- restart with a big table -------------------------------------------------------------------
async def fill_table(bootstrap: str, city: City, keys: int, record_size: int) -> Produced:
    """One ping into each of ``keys`` distinct res-9 cells (all children of enough res-7 cells).

    Honest path: every table key is created by the worker itself from pings, so its RocksDB and
    changelog hold what production would. One device per cell: below k, nothing is published.
    """
    parents = h3.grid_disk(h3.latlng_to_cell(CENTRE[0], CENTRE[1], KEY_RES), 1 + int(math.sqrt(keys / 49 / 3)))

    def stream() -> Iterator[pings.Ping]:
        now, n = time.time(), 0
        for parent in parents:
            for child in h3.cell_to_children(parent, CELL_RES):
                if n >= keys:
                    return
                lat, lon = geo.cell_center(str(child))
                n += 1
                yield {"device_id": f"fill-{n % 50_000}", "seq": n, "ts": now, "lat": lat, "lon": lon,
                       "speed_mps": 12.0, "heading_deg": 0.0, "accuracy_m": 5.0}

    return await _pack_and_send(bootstrap, city, record_size, stream())


async def time_to_first_new_condition(bootstrap: str, worker: Worker, k: int, timeout: float = 300) -> float:
    """Seconds from the worker's spawn until a marker burst produced after the spawn is published."""
    watch = ConditionWatch(bootstrap)
    await watch.start()
    markers = Markers(k, origin=(51.34, 12.37))  # Leipzig: cells no other phase uses
    producer = _producer(bootstrap)
    await producer.start()
    try:
        sent: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker.alive()
            cell, key, value = markers.burst()
            await (await producer.send(TOPIC_PINGS, key=key, value=value))
            sent.append(cell)
            seen = [watch.first[c] for c in sent if c in watch.first]
            if seen:
                return round(min(seen) - worker.started, 2)
            await asyncio.sleep(0.25)
        raise TimeoutError(f"no new condition {timeout:.0f}s after the worker's spawn")
    finally:
        await producer.stop()
        await watch.stop()


# -- the run ------------------------------------------------------------------------------------
@dataclass
class Plan:
    pings: int = 2_000_000
    devices: int = 50_000
    interval: float = 3.0
    record_size: int = 64
    rounds: int = 3
    rate: float = 20_000.0
    latency_s: float = 30.0
    table_keys: int = 1_000_000

    @classmethod
    def quick(cls) -> Plan:
        # sized for ~2 min on 2 cores at the worker's current ~9k pings/s and ~1k restored records/s
        return cls(pings=100_000, devices=10_000, rounds=1, latency_s=10.0, table_keys=10_000)


async def _run(plan: Plan, bootstrap: str, partitions: int, k: int, work: Path, report: dict[str, Any]) -> None:
    """Fills ``report`` phase by phase, so a phase that fails still leaves the earlier results."""
    report.update(plan=plan.__dict__, partitions=partitions, min_devices=k)
    city = City.build(plan.devices, partitions)
    t = time.monotonic()
    data = await preproduce(bootstrap, city, plan.pings, plan.interval, plan.record_size)
    ends = await end_offsets(bootstrap, TOPIC_PINGS)
    report["produce"] = {"pings": data.pings, "records": data.records, "seconds": round(time.monotonic() - t, 1),
                         "pings_per_record": round(data.pings / data.records, 1)}
    print(f"produced {data.pings} pings in {data.records} records ({report['produce']['seconds']} s)", flush=True)
    raws: list[dict[str, float]] = []
    natives: list[dict[str, float]] = []
    workers: list[dict[str, float]] = []
    worker: Worker | None = None
    try:
        for r in range(plan.rounds):
            raws.append(await raw_baseline(bootstrap, ends, data.base))
            natives.append(await raw_baseline(bootstrap, ends, data.base, native=True))
            print(f"round {r + 1}: raw {raws[-1]['pings_per_s']:.0f} pings/s, with the C decode and window "
                  f"{natives[-1]['pings_per_s']:.0f}", flush=True)
            if worker is not None:
                worker.stop()
            app_id = f"bench-{uuid.uuid4().hex[:8]}"  # a new group: starts at the beginning
            worker = Worker.spawn(bootstrap, app_id, work / f"state-{r}", _free_port(), work / f"worker-{r}.log")
            workers.append(await follow_commits(bootstrap, worker, data, ends, timeout=1800))
            print(f"round {r + 1}: worker {workers[-1]['pings_per_s']:.0f} pings/s, "
                  f"{workers[-1]['cpu_us_per_ping']} CPU-µs a ping (raw {raws[-1]['cpu_us_per_ping']}, "
                  f"C raw {natives[-1]['cpu_us_per_ping']})", flush=True)
        assert worker is not None
        raw_med = statistics.median(x["pings_per_s"] for x in raws)
        native_med = statistics.median(x["pings_per_s"] for x in natives)
        wrk_med = statistics.median(x["pings_per_s"] for x in workers)
        report["throughput"] = {
            "raw_pings_per_s": round(raw_med), "worker_pings_per_s": round(wrk_med),
            "ratio_worker_raw": round(wrk_med / raw_med, 3), "target_ratio": 0.3, "target_worker_pings_per_s": 100_000,
            "raw_native_pings_per_s": round(native_med), "ratio_worker_raw_native": round(wrk_med / native_med, 3),
            "raw_native_runs": natives,
            "cpu_us_per_ping": {"raw": statistics.median(x["cpu_us_per_ping"] for x in raws),
                                "raw_native": statistics.median(x["cpu_us_per_ping"] for x in natives),
                                "worker": statistics.median(x["cpu_us_per_ping"] for x in workers)},
            "raw_fresh_fraction": round(raws[-1]["counted"] / raws[-1]["pings"], 3), "raw_runs": raws,
            "worker_runs": workers,
        }
        print("latency phase ...", flush=True)
        report["latency"] = await latency(bootstrap, city, plan.rate, plan.latency_s, k, plan.record_size)
        report["latency"]["target_p99_ms"] = 1000

        print(f"filling the table with {plan.table_keys} keys ...", flush=True)
        fill = await fill_table(bootstrap, city, plan.table_keys, plan.record_size)
        fill_ends = await end_offsets(bootstrap, TOPIC_PINGS)
        t = time.monotonic()
        filled = await follow_commits(bootstrap, worker, fill, fill_ends, timeout=3600)
        changelog = f"{worker.app_id}-cell-speed-changelog"
        restart: dict[str, Any] = {
            "table_keys_target": plan.table_keys, "fill_pings": fill.pings,
            "fill_seconds": round(time.monotonic() - t, 1), "fill_pings_per_s": filled["pings_per_s"],
            "worker_cells_in_memory": worker.cells(),
        }
        report["restart"] = restart
        # the changelog is done when its end stops moving (writes trail the commits a little)
        prev: dict[int, int] = {}
        for _ in range(60):
            cur = await end_offsets(bootstrap, changelog)
            if cur == prev:
                break
            prev = cur
            await asyncio.sleep(1.0)
        restart["changelog_records"] = sum(prev.values())
        for mode in ("keep_rocksdb", "empty_data_dir"):
            worker.stop()
            if mode == "empty_data_dir":
                shutil.rmtree(worker.data_dir, ignore_errors=True)
            worker = Worker.spawn(bootstrap, worker.app_id, worker.data_dir, worker.port, work / f"restart-{mode}.log")
            try:
                restart[f"{mode}_s"] = await time_to_first_new_condition(bootstrap, worker, k, timeout=900)
            except TimeoutError as exc:
                restart[f"{mode}_s"] = None
                restart[f"{mode}_error"] = str(exc)
            print(f"restart ({mode}): first new condition {restart[f'{mode}_s']} s after spawn", flush=True)
        restart["target_s"] = 30
    finally:
        if worker is not None:
            worker.stop()


def main(s: Settings, plan: Plan) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the /healthz polls, 4 a second: not news
    home = s.home
    lay = kafka_local.layout(home, _free_port(), _free_port())
    work = Path(tempfile.mkdtemp(prefix="traverz-bench-stream-"))
    kafka_local.start(lay, heap=s.kafka_heap, full_jit=True)
    report: dict[str, Any] = {}
    try:
        asyncio.run(kafka_io.create_topics(lay.bootstrap, s.partitions, s.replication))
        asyncio.run(_run(plan, lay.bootstrap, s.partitions, s.min_devices, work, report))
    finally:
        kafka_local.stop(lay)
        kafka_local.wipe(lay)
        out = Path("artifacts")
        out.mkdir(exist_ok=True)
        (out / "bench-stream.json").write_text(json.dumps(report, indent=2))  # partial on failure too
    print(summary(report))
    print(f"full report: {out / 'bench-stream.json'}; worker logs in {work}")
    return 0


def summary(report: dict[str, Any]) -> str:
    tp, lat, rs = report.get("throughput", {}), report.get("latency", {}), report.get("restart", {})
    rows = [
        ("raw aiokafka+orjson+Python checks+h3-py+aggregate (median)", f"{tp.get('raw_pings_per_s', 0):,} pings/s", ""),
        ("raw with the worker's C decode and count (median)", f"{tp.get('raw_native_pings_per_s', 0):,} pings/s", ""),
        ("traverz worker (median)", f"{tp.get('worker_pings_per_s', 0):,} pings/s", "≥ 100,000"),
        ("CPU-µs a ping: worker / raw / C raw",
         " / ".join(str(tp.get("cpu_us_per_ping", {}).get(k)) for k in ("worker", "raw", "raw_native")), ""),
        ("ratio worker/raw (to the C raw)",
         f"{tp.get('ratio_worker_raw', 0)} ({tp.get('ratio_worker_raw_native', 0)})", "≥ 0.3"),
        ("latency p50 / p99", f"{lat.get('p50_ms')} / {lat.get('p99_ms')} ms "
         f"({lat.get('markers')} markers, {lat.get('missing')} missing)", "p99 ≤ 1000 ms"),
        (f"restart, RocksDB kept ({rs.get('table_keys_target', 0):,} keys)", f"{rs.get('keep_rocksdb_s')} s", "≤ 30 s"),
        ("restart, empty data dir (changelog restore)", f"{rs.get('empty_data_dir_s')} s", "≤ 30 s"),
    ]
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b:<{v}}  {c}" for a, b, c in rows)
