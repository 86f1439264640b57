"""Read what the stream worker publishes, as any Kafka client would, from the moment a test starts.

A :class:`Tap` assigns every partition of some topics and starts at their *current* end, so a
test sees only what was produced after it began (earlier tests and runs share the topics). It
keeps everything it read, so a test can wait for one record and later ask about the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes | None
    value: Any  # the decoded JSON value; None for a tombstone (or a value that is not JSON)


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class Tap:
    """Every record that appears on ``topics`` after :meth:`start`."""

    def __init__(self, bootstrap: str, *topics: str) -> None:
        self.topics = topics
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        self.seen: list[Msg] = []
        self.tps: list[TopicPartition] = []

    async def start(self) -> None:
        await self.consumer.start()
        try:
            await self._assign()
        except BaseException:
            await self.consumer.stop()
            raise

    async def _assign(self) -> None:
        await self.consumer._client.force_metadata_update()  # metadata of every topic: nothing is subscribed
        for topic in self.topics:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                raise RuntimeError(f"topic {topic} does not exist")
            self.tps += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(self.tps)
        # explicit offsets: seek_to_end is resolved lazily and could skip what is produced meanwhile
        for tp, end in (await self.consumer.end_offsets(self.tps)).items():
            self.consumer.seek(tp, end)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def __aenter__(self) -> Tap:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def poll(self, timeout_s: float = 0.2) -> list[Msg]:
        """Fetch what arrived; returns the new records (also kept in :attr:`seen`)."""
        batches = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000))
        new = [
            Msg(m.topic, m.partition, m.offset, m.key, m.value, _decode(m.value))
            for tp in sorted(batches, key=lambda t: (t.topic, t.partition))
            for m in batches[tp]
        ]
        self.seen += new
        return new

    def matching(self, pred: Callable[[Msg], bool]) -> list[Msg]:
        return [m for m in self.seen if pred(m)]

    async def wait(self, pred: Callable[[Msg], bool], timeout: float, what: str) -> Msg:
        """The first record (seen already or arriving within ``timeout`` s) that ``pred`` accepts."""
        deadline = time.monotonic() + timeout
        for m in self.seen:
            if pred(m):
                return m
        while True:
            for m in await self.poll():
                if pred(m):
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing on {', '.join(self.topics)} after {timeout:.0f}s: {what}")

    async def catch_up(self, timeout: float = 20.0) -> None:
        """Read up to the end every partition has now: whatever is on the topics now is in :attr:`seen`."""
        ends = await self.consumer.end_offsets(self.tps)
        deadline = time.monotonic() + timeout
        while [tp for tp, end in ends.items() if await self.consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {', '.join(self.topics)} to its end in {timeout:.0f}s")
            await self.poll()
