"""Black-box views of the stream worker through the broker: offsets, group members, topic contents.

The recovery tests and ``traverz bench stream`` judge the worker only by what any Kafka
client can see: the committed offsets of its consumer group (= the app id), which member
owns which partition, and the records on ``traverz.conditions.v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError

# a fresh broker creates __consumer_offsets on the first group request: these pass within seconds
_NOT_YET = (CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:  # metadata of a topic this client has not asked about yet
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in sorted(parts)])
        return {tp.partition: int(off) for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Committed offsets of ``group`` on ``topic``; a partition without a commit is absent."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except _NOT_YET:
        return {}
    finally:
        await admin.close()
    return {tp.partition: int(meta.offset) for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


def caught_up(done: dict[int, int], ends: dict[int, int]) -> bool:
    """Every partition with data is committed up to ``ends`` (an empty partition needs no commit)."""
    return all(done.get(p, 0) >= end for p, end in ends.items())


@dataclass(frozen=True)
class Member:
    member_id: str
    url: str  # the faust worker's web URL, from its subscription metadata: tells which process it is
    partitions: frozenset[tuple[str, int]]

    def owns(self, topic: str) -> set[int]:
        return {p for t, p in self.partitions if t == topic}


async def group_members(bootstrap: str, group: str) -> tuple[str, list[Member]]:
    """(group state, members with their assigned partitions)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        (resp,) = await admin.describe_consumer_groups([group])
    except _NOT_YET:
        return "Unknown", []
    finally:
        await admin.close()
    (desc,) = resp.groups
    state = str(desc[2])
    members = []
    for m in desc[5]:
        member_id, metadata, assignment = m[0], m[3], m[4]
        url = ""
        if metadata:
            with contextlib.suppress(Exception):  # not a faust member: no url
                url = str(orjson.loads(ConsumerProtocolMemberMetadata.decode(metadata).user_data).get("url", ""))
        parts: frozenset[tuple[str, int]] = frozenset()
        if assignment:
            decoded = ConsumerProtocolMemberAssignment.decode(assignment)
            parts = frozenset((tp.topic, tp.partition) for tp in decoded.partitions())
        members.append(Member(member_id, url, parts))
    return state, members


async def last_values(bootstrap: str, topic: str, want: Callable[[bytes], bool]) -> dict[bytes, bytes | None]:
    """The last value per key (None = tombstone) of the keys ``want`` accepts, read up to the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or set())]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[bytes, bytes | None] = {}
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for msgs in batches.values():
                for msg in msgs:
                    if msg.key is not None and want(msg.key):
                        out[msg.key] = msg.value
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"could not read {topic} to its end: {sorted(tp.partition for tp in pending)}")
        return out
    finally:
        await consumer.stop()


def durable_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer with the ingest proxy's durability (acks=all, idempotent); start() it before use."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2, max_batch_size=1 << 20
    )


async def send_all(
    producer: AIOKafkaProducer, topic: str, records: Iterable[tuple[bytes, bytes]]
) -> list[tuple[int, int]]:
    """Send records and wait for every ack; (partition, offset) of each (the default partitioner picks)."""
    futs = [await producer.send(topic, key=k, value=v) for k, v in records]
    return [(md.partition, md.offset) for md in await asyncio.gather(*futs)]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``check`` until it holds; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
