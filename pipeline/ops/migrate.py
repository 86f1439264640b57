"""Table state of one generation into the changelogs of the next, each key in its new partition.

Faust restores a table partition from the same-numbered partition of its changelog topic
(``<app_id>-<table>-changelog``, compacted), and a worker reads a table key only while it
processes a record of the partition its res-7 Kafka key hashes to. So every table key is
mapped back to that res-7 key (layouts in :mod:`pipeline.engine`) and written to partition
``murmur2(key7) % N`` of the new changelog: the partition the ingest proxy now sends that
spot's pings to. The per-device seq windows ride along inside the speed windows, so a ping
seen before the rescale (a client retry that lands in the new generation) counts once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import h3
from aiokafka import AIOKafkaProducer

from pipeline.ingest.coalesce import partition_of
from pipeline.ops import kafkaview

CHANGELOG_SUFFIX = "-changelog"


def partition_key(table_key: str, key_res: int = 7) -> str:
    """The res-``key_res`` Kafka key whose partition holds ``table_key``.

    ``<key7>|<device>`` (devices) → its prefix; an H3 cell finer than ``key_res`` (speed,
    baseline, crash areas, active incidents) → its parent; a ``key_res`` cell (report books)
    → itself. Anything else is not a table key of the engine.
    """
    if "|" in table_key:
        table_key = table_key.split("|", 1)[0]
    if not h3.is_valid_cell(table_key):
        raise ValueError(f"not a table key of the engine: {table_key!r}")
    res = h3.get_resolution(table_key)
    if res < key_res:
        raise ValueError(f"cell {table_key} is coarser than the key resolution {key_res}")
    return table_key if res == key_res else str(h3.cell_to_parent(table_key, key_res))


def new_partition(table_key: bytes, partitions: int, key_res: int = 7) -> int:
    return partition_of(partition_key(table_key.decode(), key_res), partitions)


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}{CHANGELOG_SUFFIX}"


# The worker's tables (topologies/app.py ``_table(...)``; a unit test holds the two equal). Named, not
# discovered by prefix: ``traverz-`` also prefixes other deployments' and generations' changelogs.
TABLES = ("cell-speed", "baseline", "devices", "crash-areas", "report-books", "active-incidents")


@dataclass
class Copied:
    table: str
    records_read: int
    keys_written: int
    per_partition: dict[int, int]


def latest(records: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """Compaction by hand: the last value per key, tombstoned keys gone."""
    out: dict[bytes, bytes] = {}
    for key, value in records:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


async def copy_table(
    bootstrap: str,
    producer: AIOKafkaProducer,
    source: str,
    source_partitions: int,
    target: str,
    partitions: int,
    key_res: int,
    table: str,
    on_bad_key: Callable[[bytes], None] = lambda _: None,
) -> Copied:
    """Read ``source`` to its end, write the last value of each key to its new partition of ``target``."""
    records: list[tuple[bytes, bytes | None]] = []
    async with kafkaview.offsets_consumer(bootstrap) as consumer:
        async for msg in kafkaview.read_to_end(consumer, source, source_partitions):
            if msg.key is not None:
                records.append((msg.key, msg.value))
    state = latest(records)
    per_partition: dict[int, int] = {}
    futs = []
    for key, value in state.items():
        try:
            part = new_partition(key, partitions, key_res)
        except (ValueError, UnicodeDecodeError):
            on_bad_key(key)
            continue
        per_partition[part] = per_partition.get(part, 0) + 1
        futs.append(await producer.send(target, value=value, key=key, partition=part))
    for fut in futs:
        await fut
    return Copied(table, len(records), sum(per_partition.values()), per_partition)
