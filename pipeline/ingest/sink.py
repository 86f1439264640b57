"""Where the proxy's records go: the ``Sink`` protocol and its Kafka adapter.

``KafkaSink`` wraps one durable (acks=all, idempotent) aiokafka producer and keeps one
working; ``lanes.ProducerLanes`` puts several side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from pipeline.ingest.coalesce import KafkaUnavailable
from pipeline.ingest.record_batch import FlushBatch

MAX_BATCH_SIZE = 1 << 20  # the durable producer's max_batch_size (kafka_io), if a producer does not say


class Sink(Protocol):
    """Where accepted records go: Kafka in production, a list in unit tests."""

    async def send_all(
        self, topic: str, records: list[tuple[bytes, bytes]], timeout: float, partitions: list[int] | None = None
    ) -> None:
        """Produce ``records``; ``partitions`` (one per record) when the caller placed them already."""
        ...

    async def healthy(self) -> bool: ...

    def partitions(self, topic: str) -> int | None:
        """How many partitions ``topic`` has now; None while that is not known."""
        ...


class KafkaSink:
    """Produces through the durable (acks=all, idempotent) aiokafka producer, and keeps one working.

    ``factory`` makes a producer (not started). The sink connects in the background, so the
    proxy serves — 503 for data, 200 on ``/healthz`` — while Kafka is away, and answers 503 at
    once instead of after the produce timeout while it has no producer. A producer whose
    sender task died is replaced: after a fatal error (``OutOfOrderSequenceNumber``,
    ``ProducerFenced``, an unexpected sender error) aiokafka fails every later send and
    never recovers by itself; a new producer gets a new producer id and starts clean.
    """

    def __init__(self, factory: Callable[[], Any], retry_delay: float = 0.5, topics: tuple[str, ...] = ()) -> None:
        self._factory = factory
        self._retry_delay = retry_delay
        self._topics = topics  # whose metadata to fetch on connecting: the first flush then groups by partition
        self.producer: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.replaced = 0

    async def start(self, wait: float = 5.0) -> None:
        """Begin connecting; wait up to ``wait`` s for the first producer (it goes on after)."""
        task = self._connect_soon()
        with contextlib.suppress(TimeoutError, KafkaUnavailable):
            await asyncio.wait_for(asyncio.shield(task), wait)

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is pending (for at most ``timeout`` s) and close."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.producer is not None:
            self._retire(self.producer, timeout)
            self.producer = None
        if self._closing:
            await asyncio.wait(set(self._closing))

    def _connect_soon(self) -> asyncio.Task[None]:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect())
        return self._connecting

    async def _connect(self) -> None:
        delay = self._retry_delay
        while True:
            producer = self._factory()
            try:
                await producer.start()
            except asyncio.CancelledError:  # shutting down while Kafka is away
                self._retire(producer, 1.0)
                raise
            except Exception:
                self._retire(producer, 1.0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer = producer
            for topic in self._topics:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.partitions_for(topic), 2.0)
            return

    def _retire(self, producer: Any, timeout: float) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), timeout)

        task = asyncio.create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _usable(self) -> Any:
        """The current producer, or KafkaUnavailable (and a reconnect) when there is none."""
        producer = self.producer
        if producer is not None:
            sender = getattr(producer, "_sender", None)
            task = getattr(sender, "sender_task", None)
            if task is None or not task.done():
                return producer
            # the sender died: this producer will never deliver again
            self.producer = None
            self.replaced += 1
            self._retire(producer, 1.0)
        self._connect_soon()
        raise KafkaUnavailable("no Kafka producer (connecting)")

    async def send_all(
        self, topic: str, records: list[tuple[bytes, bytes]], timeout: float, partitions: list[int] | None = None
    ) -> None:
        producer = self._usable()
        try:
            # asyncio.timeout rather than wait_for: no task of its own per flush
            async with asyncio.timeout(timeout):
                if partitions is None:
                    futs = [await producer.send(topic, value, key=key) for key, value in records]
                else:
                    futs = await _send_batches(producer, topic, records, partitions)
                await (futs[0] if len(futs) == 1 else asyncio.gather(*futs))
        except TimeoutError as exc:
            raise KafkaUnavailable("Kafka did not acknowledge in time") from exc
        except Exception as exc:  # aiokafka errors: broker gone, not leader, a fatal sender error
            with contextlib.suppress(KafkaUnavailable):
                self._usable()  # replaces the producer if this was fatal
            raise KafkaUnavailable(type(exc).__name__) from exc

    def partitions(self, topic: str) -> int | None:
        producer = self.producer
        if producer is None:
            return None
        known = producer.client.cluster.partitions_for_topic(topic)
        return len(known) if known else None

    async def healthy(self) -> bool:
        try:
            producer = self._usable()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), 1.0)
            return True
        except Exception:
            return False


async def _send_batches(
    producer: Any, topic: str, records: list[tuple[bytes, bytes]], partitions: list[int]
) -> list[asyncio.Future[Any]]:
    """One batch per partition through ``send_batch``, as ``topologies/state.py`` does, built by ``FlushBatch``.

    ``producer.send`` per record costs a partitioner call (murmur2 in pure Python), a future and
    an accumulator pass per record; the coalescer already knows each record's partition. The
    batches still go through the idempotent producer's accumulator, which numbers them.
    """
    by_part: dict[int, list[tuple[bytes, bytes]]] = {}
    for record, part in zip(records, partitions, strict=True):
        by_part.setdefault(part, []).append(record)
    # the producer's max_batch_size, as its create_batch would use it (kept by its accumulator)
    max_size = getattr(getattr(producer, "_message_accumulator", None), "_batch_size", MAX_BATCH_SIZE)
    futs: list[asyncio.Future[Any]] = []
    for part, rows in by_part.items():
        batch = FlushBatch(max_size)
        for key, value in rows:
            if not batch.append(key, value):
                futs.append(await producer.send_batch(batch, topic, partition=part))
                batch = FlushBatch(max_size)
                batch.append(key, value)  # a batch's first record always goes in, as in aiokafka's builder
        futs.append(await producer.send_batch(batch, topic, partition=part))
    return futs
