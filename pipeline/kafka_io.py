"""Thin Kafka adapters: topic specs, idempotent topic creation, the durable producer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.settings import (
    TOPIC_ALERTS,
    TOPIC_CONDITIONS,
    TOPIC_DEADLETTER,
    TOPIC_PINGS,
    TOPIC_REPORTS,
    Settings,
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    config: dict[str, str] = field(default_factory=dict)


TOPICS = (
    TopicSpec(TOPIC_PINGS, {"retention.ms": str(24 * 3600 * 1000)}),
    TopicSpec(TOPIC_REPORTS, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
    # latest condition per cell forever; tombstones removed after a day
    TopicSpec(
        TOPIC_CONDITIONS,
        {
            "cleanup.policy": "compact",
            "delete.retention.ms": "86400000",
            "min.cleanable.dirty.ratio": "0.2",
            "segment.ms": "600000",
        },
    ),
    TopicSpec(TOPIC_ALERTS, {"retention.ms": str(7 * 24 * 3600 * 1000)}),
    TopicSpec(TOPIC_DEADLETTER, {"retention.ms": str(14 * 24 * 3600 * 1000)}),
)


async def create_topics(
    bootstrap: str, partitions: int, replication: int, specs: tuple[TopicSpec, ...] = TOPICS
) -> list[str]:
    """Create missing topics; existing ones are left alone. Returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(spec.name, partitions, replication, topic_configs=spec.config)])
                created.append(spec.name)
        return created
    finally:
        await admin.close()


async def describe_partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Partition count per topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        meta = await admin.describe_topics(topics)
        return {t["topic"]: len(t["partitions"]) for t in meta if not t.get("error_code")}
    finally:
        await admin.close()


def durable_producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """The producer for data we acknowledged to a client: nothing acked that Kafka lacks."""
    opts: dict[str, object] = {
        "bootstrap_servers": settings.bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 2,
        "max_batch_size": 1 << 20,
        "compression_type": None,
        "request_timeout_ms": 10_000,
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)
