"""Table write-back and output in batches: one RocksDB WriteBatch and one Kafka batch per partition.

Faust's ``Table.__setitem__`` costs, per key, a RocksDB put, a changelog send
queued in faust's ProducerBuffer (drained one message at a time) and an
``aiokafka`` send with its own bookkeeping — ~100 µs a key, and the worker
rewrites thousands of cells every write-back. The engine hands over each
partition's changed rows at once, so they go the way faust's own recovery
applies a changelog (``Store.apply_changelog_batch``): one ``WriteBatch`` into
that partition's RocksDB, and the same rows to the table's changelog partition
in ``aiokafka`` record batches. Faust still owns the tables' life: changelog
topics, recovery on assignment, standby replicas.

Every batch sent (changelog, alerts, conditions, dead letters) leaves a
delivery future; :meth:`Outbox.confirm` awaits them, and the agent
acknowledges its records only after that — so a committed offset never runs
ahead of the state in the changelog. It also records each changelog
partition's last offset as the store's persisted offset, as faust's own
changelog callback does, so a restart with the RocksDB directory kept reads
only the changelog written since.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from faust.types import TP
from rocksdict import WriteBatch

Row = tuple[bytes, bytes | None]


class ChangelogTable:
    """One faust table seen as partitions of rows (:class:`pipeline.cellstate.PartitionTable`)."""

    def __init__(self, table: Any, outbox: Outbox) -> None:
        self.table = table
        self.outbox = outbox

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def read(self, partition: int, key: bytes) -> bytes | None:
        value: bytes | None = self._db(partition).get(key)
        return value

    def write(self, partition: int, rows: list[Row]) -> None:
        wb = WriteBatch(raw_mode=True)
        for key, value in rows:
            if value is None:
                wb.delete(key)
            else:
                wb.put(key, value)
        self._db(partition).write(wb)
        self.outbox.changelog(self, partition, rows)

    def scan(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        # faust's own visible-items view: its persisted-offset key left out. A RocksDB iterator
        # reads a consistent snapshot; rows written later are in memory anyway.
        rows: Iterator[tuple[bytes, bytes]] = self.table.data._visible_items(self._db(partition))
        return rows

    @property
    def topic(self) -> str:
        name: str = self.table.changelog_topic.get_topic_name()
        return name


# a batch sent: its delivery, its changelog table (None: an output topic), partition, records
Pending = tuple[asyncio.Future[Any], ChangelogTable | None, int, int]


class Outbox:
    """Records for Kafka, sent a batch per topic partition; delivery awaited before acks."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer  # faust's Producer: its aiokafka producer exists once started
        self.pending: list[Pending] = []
        self._changelog: list[tuple[ChangelogTable, int, list[Row]]] = []
        self._partitions: dict[str, int] = {}
        self.sent = 0
        # (topic, "record" | "tombstone") → records published (changelogs not counted): for /metrics
        self.published: dict[tuple[str, str], int] = {}

    def _aiokafka(self) -> AIOKafkaProducer:
        p: AIOKafkaProducer = self._producer._ensure_producer()
        return p

    def changelog(self, table: ChangelogTable, partition: int, rows: list[Row]) -> None:
        if rows:
            self._changelog.append((table, partition, rows))

    async def publish(self, topic: str, records: list[Row]) -> None:
        """Keyed records, partitioned as Kafka's default partitioner would (murmur2 of the key)."""
        if not records:
            return
        n = self._partitions.get(topic)
        if n is None:
            n = self._partitions[topic] = len(await self._aiokafka().partitions_for(topic))
        by_part: dict[int, list[Row]] = {}
        tombstones = 0
        for key, value in records:
            by_part.setdefault((murmur2(key) & 0x7FFFFFFF) % n, []).append((key, value))
            tombstones += value is None
        counts = self.published
        counts[(topic, "tombstone")] = counts.get((topic, "tombstone"), 0) + tombstones
        counts[(topic, "record")] = counts.get((topic, "record"), 0) + len(records) - tombstones
        # partitions at once: a batch waits for the one before it *of its partition* to be sent
        await asyncio.gather(*(self._send(topic, part, rows, None) for part, rows in by_part.items()))

    async def _send(self, topic: str, partition: int, rows: list[Row], table: ChangelogTable | None) -> None:
        producer = self._aiokafka()
        batch = producer.create_batch()
        count = 0
        for key, value in rows:
            if batch.append(key=key, value=value, timestamp=None) is None:
                await self._ship(producer, batch, topic, partition, count, table)
                batch, count = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"{topic}: a record of {len(value or b'')} bytes exceeds the batch size")
            count += 1
        if count:
            await self._ship(producer, batch, topic, partition, count, table)

    async def _ship(
        self,
        producer: AIOKafkaProducer,
        batch: Any,
        topic: str,
        partition: int,
        count: int,
        table: ChangelogTable | None,
    ) -> None:
        fut = await producer.send_batch(batch, topic, partition=partition)
        self.pending.append((fut, table, partition, count))
        self.sent += count

    async def send(self) -> list[Pending]:
        """Send the changelog rows written so far; the delivery futures of everything sent since the last call."""
        rows, self._changelog = self._changelog, []
        await asyncio.gather(*(self._send(owner.topic, partition, chunk, owner) for owner, partition, chunk in rows))
        pending, self.pending = self.pending, []
        return pending

    @staticmethod
    async def confirm(pending: list[Pending]) -> None:
        """Wait until the broker has every batch of ``pending``; note each changelog's persisted offset."""
        if not pending:
            return
        metas = await asyncio.gather(*(f for f, _, _, _ in pending))
        last: dict[tuple[ChangelogTable, int], int] = {}
        for meta, (_, table, partition, count) in zip(metas, pending, strict=True):
            if table is not None:
                last[(table, partition)] = max(last.get((table, partition), -1), meta.offset + count - 1)
        for (table, partition), offset in last.items():
            table.table.data.set_persisted_offset(TP(table.topic, partition), offset)

