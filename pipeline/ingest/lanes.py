"""Several durable producers side by side, so that several coalesced flushes can await their acks at once.

aiokafka sends one produce request per broker at a time and producer: with one producer,
a flush waits for the previous flush's acknowledgement before it goes, so under load a
request waits up to two broker round trips, and with a fixed number of connections the
proxy's rate is capped by one round trip per flush. Each lane is a whole ``KafkaSink``
(its own idempotent, acks=all producer and connection, replaced on its own when it
breaks); a flush goes to the lane with the fewest sends in flight. Durability is each
lane's: a request hears 202 only after the lane that carried its flush has the ack.

Order: pings of one request travel in one flush, so they keep their order. Two requests
of one device can only be reordered if the phone sent the second before the first was
answered (phones upload a backlog one request at a time).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class Lane(Protocol):
    producer: Any

    async def start(self, wait: float = 5.0) -> None: ...

    async def stop(self, timeout: float = 10.0) -> None: ...

    async def send_all(
        self, topic: str, records: list[tuple[bytes, bytes]], timeout: float, partitions: list[int] | None = None
    ) -> None: ...

    async def healthy(self) -> bool: ...

    def partitions(self, topic: str) -> int | None: ...


class ProducerLanes:
    """A ``Sink`` over several ``KafkaSink`` lanes; the first lane's producer serves metadata."""

    def __init__(self, lanes: list[Lane]) -> None:
        if not lanes:
            raise ValueError("at least one lane")
        self.lanes = lanes
        self._busy = [0] * len(lanes)

    @property
    def producer(self) -> Any:
        """A connected producer for metadata look-ups (the generation follower), else None."""
        return next((lane.producer for lane in self.lanes if lane.producer is not None), None)

    async def start(self, wait: float = 5.0) -> None:
        await asyncio.gather(*(lane.start(wait) for lane in self.lanes))

    async def stop(self, timeout: float = 10.0) -> None:
        for lane in self.lanes:
            await lane.stop(timeout)

    async def send_all(
        self, topic: str, records: list[tuple[bytes, bytes]], timeout: float, partitions: list[int] | None = None
    ) -> None:
        i = min(range(len(self.lanes)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            await self.lanes[i].send_all(topic, records, timeout, partitions)
        finally:
            self._busy[i] -= 1

    async def healthy(self) -> bool:
        """Ready only when every lane is: a lane without a producer would answer its flushes 503."""
        for lane in self.lanes:
            if not await lane.healthy():
                return False
        return True

    def partitions(self, topic: str) -> int | None:
        for lane in self.lanes:
            n = lane.partitions(topic)
            if n:
                return n
        return None
