"""Producer lanes: a flush goes to the least busy lane; ready only when every lane is."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.ingest.lanes import ProducerLanes


class FakeLane:
    def __init__(self, name: str, ok: bool = True, parts: int | None = 8) -> None:
        self.name, self.ok, self.parts = name, ok, parts
        self.producer: Any = object() if ok else None
        self.sent: list[list[tuple[bytes, bytes]]] = []
        self.gate = asyncio.Event()

    async def start(self, wait: float = 5.0) -> None: ...

    async def stop(self, timeout: float = 10.0) -> None: ...

    async def send_all(
        self, topic: str, records: list[tuple[bytes, bytes]], timeout: float, partitions: list[int] | None = None
    ) -> None:
        self.sent.append(records)
        await self.gate.wait()

    async def healthy(self) -> bool:
        return self.ok

    def partitions(self, topic: str) -> int | None:
        return self.parts


async def test_concurrent_flushes_go_to_different_lanes_and_a_freed_lane_is_reused() -> None:
    a, b = FakeLane("a"), FakeLane("b")
    lanes = ProducerLanes([a, b])
    first = asyncio.create_task(lanes.send_all("t", [(b"k", b"1")], 1.0))
    second = asyncio.create_task(lanes.send_all("t", [(b"k", b"2")], 1.0))
    await asyncio.sleep(0)
    assert a.sent == [[(b"k", b"1")]] and b.sent == [[(b"k", b"2")]]  # both awaiting acks at once
    a.gate.set()
    await first
    third = asyncio.create_task(lanes.send_all("t", [(b"k", b"3")], 1.0))
    await asyncio.sleep(0)
    assert a.sent[-1] == [(b"k", b"3")]  # lane a is free again, b still busy
    b.gate.set()
    await asyncio.gather(second, third)


async def test_ready_only_when_every_lane_is_and_metadata_from_a_lane_that_has_it() -> None:
    lanes = ProducerLanes([FakeLane("a", ok=False, parts=None), FakeLane("b", parts=12)])
    assert not await lanes.healthy()
    assert lanes.partitions("t") == 12
    assert lanes.producer is lanes.lanes[1].producer
    assert await ProducerLanes([FakeLane("a"), FakeLane("b")]).healthy()
