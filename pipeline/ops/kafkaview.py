"""What any Kafka client can see of a deployment: topics, configs, end offsets, group commits.

Thin async wrappers over aiokafka's admin client and a group-less consumer, shared by
``traverz topics describe`` and ``traverz topics rescale``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError

# a fresh broker creates __consumer_offsets on the first group request: these pass within seconds
NOT_YET = (CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError)


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    replication: int
    cleanup_policy: str


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def offsets_consumer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer without a group: reads offsets and records, commits nothing."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def topics(admin: AIOKafkaAdminClient, names: list[str] | None = None) -> list[TopicInfo]:
    """Partitions, replication factor and ``cleanup.policy`` of ``names`` (all but internal ones if None)."""
    if names is None:
        names = sorted(n for n in await admin.list_topics() if not n.startswith("__"))
    if not names:
        return []
    meta = {t["topic"]: t for t in await admin.describe_topics(names) if not t.get("error_code")}
    policies = await cleanup_policies(admin, [n for n in names if n in meta])
    out = []
    for name in names:
        t = meta.get(name)
        if t is None:
            continue
        parts = t["partitions"]
        replication = max((len(p.get("replicas", ())) for p in parts), default=0)
        out.append(TopicInfo(name, len(parts), replication, policies.get(name, "delete")))
    return out


async def cleanup_policies(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n, configs={"cleanup.policy": None}) for n in names]
    out: dict[str, str] = {}
    for resp in await admin.describe_configs(resources):
        for res in resp.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            name, entries = res[3], res[4]
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    out[name] = str(entry[1])
    return out


async def end_offsets(consumer: AIOKafkaConsumer, topic_partitions: dict[str, int]) -> dict[str, dict[int, int]]:
    """End offset per partition of each topic (``{topic: partition count}``)."""
    tps = [TopicPartition(t, p) for t, n in topic_partitions.items() for p in range(n)]
    if not tps:
        return {}
    ends = await consumer.end_offsets(tps)
    out: dict[str, dict[int, int]] = {t: {} for t in topic_partitions}
    for tp, off in ends.items():
        out[tp.topic][tp.partition] = int(off)
    return out


async def partition_counts(consumer: AIOKafkaConsumer, names: list[str]) -> dict[str, int]:
    """Partitions of each existing topic in ``names`` (from fresh metadata)."""
    await consumer._client.force_metadata_update()
    return {n: len(parts) for n in names if (parts := consumer.partitions_for_topic(n))}


async def committed(admin: AIOKafkaAdminClient, group: str) -> dict[str, dict[int, int]]:
    """Committed offsets of ``group``: topic → partition → offset (a partition without a commit is absent)."""
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except NOT_YET:
        return {}
    out: dict[str, dict[int, int]] = {}
    for tp, meta in offsets.items():
        if meta.offset >= 0:
            out.setdefault(tp.topic, {})[tp.partition] = int(meta.offset)
    return out


async def group_state(admin: AIOKafkaAdminClient, group: str) -> tuple[str, int]:
    """(state, member count) of a consumer group; ``Dead``/``Empty`` with 0 members when nobody is in it."""
    try:
        (resp,) = await admin.describe_consumer_groups([group])
    except NOT_YET:
        return "Unknown", 0
    (desc,) = resp.groups
    return str(desc[2]), len(desc[5])


def lag(ends: dict[int, int], done: dict[int, int]) -> dict[int, int]:
    """Records not yet committed per partition (a partition never committed lags by its whole length)."""
    return {p: max(0, end - done.get(p, 0)) for p, end in ends.items()}


async def read_to_end(consumer: AIOKafkaConsumer, topic: str, partitions: int) -> AsyncIterator[Any]:
    """Every record of ``topic`` from the beginning up to its end offsets at the start of the read."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    await consumer.seek_to_beginning(*tps)
    pending = {tp for tp in tps if ends[tp] > 0}
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
        for tp, msgs in batch.items():
            for msg in msgs:
                if msg.offset < ends[tp]:
                    yield msg
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
