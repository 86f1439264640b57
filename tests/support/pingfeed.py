"""A known ping input for recovery tests, as the ingest proxy would put it on Kafka, and its expected counts.

Cells are chosen one per partition of the pings topic (default murmur2 partitioner on the
res-7 key), so that every worker of a group owns some of them. Each cell gets devices in two
opposite heading sectors, ≥ k devices per sector, so every sector is published. Some records
are sent twice (a retried batch: same device_id/seq) and some pings again inside other records
(a retry merged with newer pings); the reference counts each (device_id, seq) once.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from aiokafka.partitioner import DefaultPartitioner

from pipeline import geo, pings

KEY_RES, CELL_RES = 7, 9
_partitioner = DefaultPartitioner()


def partition_of(key: str, partitions: int) -> int:
    """The partition the default (Java-compatible murmur2) partitioner picks for a key."""
    every = list(range(partitions))
    return int(_partitioner(key.encode(), every, every))


def cells_one_per_partition(rng: random.Random, partitions: int, count: int) -> list[str]:
    """``count`` res-9 cells whose res-7 keys land on distinct partitions (all if count ≥ partitions).

    The area is random per run (around Berlin's outskirts) so that data left on a shared topic by
    an earlier run or another test never falls into these cells.
    """
    lat0, lon0 = rng.uniform(52.30, 52.70), rng.uniform(13.05, 13.75)
    seen: dict[int, str] = {}
    while len(seen) < min(count, partitions):
        lat, lon = geo.destination(lat0, lon0, rng.uniform(0, 360), rng.uniform(0, 20_000))
        key = geo.key_cell(lat, lon, KEY_RES, CELL_RES)
        seen.setdefault(partition_of(key, partitions), geo.cell(lat, lon, CELL_RES))
    return list(seen.values())[:count]


@dataclass
class Feed:
    """Kafka records of a test input, in production order, and what a correct worker must count."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    unique: set[tuple[str, int]] = field(default_factory=set)  # (device_id, seq) once each
    expected: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # cell → sector → (samples, devices)
    sent_pings: int = 0

    def add(self, key: str, batch: list[pings.Ping], ingest_ts: float) -> None:
        self.records.append((key.encode(), pings.encode_record(key, batch, ingest_ts)))
        self.sent_pings += len(batch)


def reference(all_pings: list[pings.Ping], min_devices: int) -> dict[str, dict[int, tuple[int, int]]]:
    """Per cell and sector: (distinct (device_id, seq), distinct devices), only sectors with ≥ k devices."""
    ids: dict[str, dict[int, set[tuple[str, int]]]] = defaultdict(lambda: defaultdict(set))
    for p in all_pings:
        ids[geo.cell(p["lat"], p["lon"], CELL_RES)][geo.sector(p["heading_deg"])].add((p["device_id"], p["seq"]))
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for cell, sectors in ids.items():
        published = {
            sec: (len(seen), len({d for d, _ in seen}))
            for sec, seen in sectors.items()
            if len({d for d, _ in seen}) >= min_devices
        }
        if published:
            out[cell] = published
    return out


def make_feed(
    rng: random.Random,
    run: str,
    cells: list[str],
    now: float,
    *,
    devices_per_sector: int = 3,
    pings_per_device: int = 100,
    max_record: int = 50,
    dup_every: int = 7,
) -> tuple[Feed, list[pings.Ping]]:
    """Records interleaving all devices in event-time order; every ``dup_every``-th record is retried later.

    Returns the feed and the unique pings (for the reference). Event times span the last ~50 s.
    """
    devices: list[tuple[str, str, float, float, float]] = []  # (device, cell, lat, lon, heading)
    for ci, cell in enumerate(cells):
        lat, lon = geo.cell_center(cell)
        for heading in (90.0, 270.0):  # sectors 2 and 6: two directions of one road
            for d in range(devices_per_sector):
                devices.append((f"rc-{run}-{ci}-{int(heading)}-{d}", cell, lat, lon, heading))
    unique: list[pings.Ping] = []
    per_step: list[list[pings.Ping]] = []
    for i in range(pings_per_device):
        step = []
        for dev, cell, lat, lon, heading in devices:
            # a few metres of GPS jitter around the centre keeps the ping inside its res-9 cell (~174 m edge)
            plat, plon = geo.destination(lat, lon, rng.uniform(0, 360), rng.uniform(0, 15))
            assert geo.cell(plat, plon, CELL_RES) == cell
            p: pings.Ping = {
                "device_id": dev,
                "seq": i + 1,
                "ts": round(now - 50 + i * 0.5, 3),
                "lat": plat,
                "lon": plon,
                "speed_mps": round(rng.uniform(8.0, 12.0), 1),
                "heading_deg": heading,
                "accuracy_m": 5.0,
            }
            step.append(p)
        unique.extend(step)
        per_step.append(step)
    feed = Feed()
    retries: list[tuple[str, list[pings.Ping]]] = []
    n = 0
    for step in per_step:
        by_key = pings.group_by_key(step, KEY_RES, CELL_RES)
        for key, group in by_key.items():
            for j in range(0, len(group), max_record):
                batch = group[j : j + max_record]
                if retries and retries[0][0] == key and rng.random() < 0.5:
                    # a retry merged into a newer batch of the same key: old pings ride along again
                    batch = retries.pop(0)[1][:5] + batch
                feed.add(key, batch, now)
                n += 1
                if n % dup_every == 0:
                    retries.append((key, batch))
        # retried batches arrive a little later, exactly as first sent
        while len(retries) > 3:
            key, batch = retries.pop(0)
            feed.add(key, batch, now)
    for key, batch in retries:
        feed.add(key, batch, now)
    feed.unique = {(p["device_id"], p["seq"]) for p in unique}
    return feed, unique


def closer(run: str, cells: list[str], now: float, devices: int) -> tuple[Feed, list[pings.Ping]]:
    """A last batch per cell that forces a publication: a new, crawling sector (level change).

    Conditions are published on a material change or a 60-s heartbeat; sample counts alone are
    not material. Sent once the main input is processed, it makes the last condition of each cell
    carry the final counts without waiting a minute for the heartbeat.
    """
    feed = Feed()
    extra: list[pings.Ping] = []
    for ci, cell in enumerate(cells):
        lat, lon = geo.cell_center(cell)
        batch = [
            {
                "device_id": f"rc-{run}-{ci}-close-{d}",
                "seq": 1,
                "ts": round(now - 1, 3),
                "lat": lat,
                "lon": lon,
                "speed_mps": 2.5,
                "heading_deg": 0.0,
                "accuracy_m": 5.0,
            }
            for d in range(devices)
        ]
        extra.extend(batch)
        feed.add(geo.key_cell(lat, lon, KEY_RES, CELL_RES), batch, now)
    return feed, extra
