"""The control topic ``traverz.control.v1``: which generation of the ping/report topics is current.

Compacted, one partition. Keys are namespaced by the base app id, so several deployments
(or test runs) can share a broker:

* ``generation/<app_id>`` → ``{"generation", "partitions", "pings_topic", "reports_topic",
  "worker_app_id", "at"}``: written by ``traverz topics rescale``; ingest processes follow it.
* ``ingest/<app_id>/<instance>`` → ``{"generation", "at"}``: each ingest process's heartbeat,
  naming the generation it has *settled* on (switched, and nothing it sent to the old topics
  still in flight); a tombstone when it stops. The rescale waits for every live one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.settings import (
    CONTROL_TOPIC,
    TOPIC_PINGS,
    TOPIC_REPORTS,
    Settings,
    generation_app_id,
    generation_topic,
)

HEARTBEAT_S = 2.0
LIVE_S = 10.0  # an ingest heartbeat older than this is a process that is gone
CONTROL_CONFIG = {"cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1"}


def generation_key(app_id: str) -> bytes:
    return f"generation/{app_id}".encode()


def ingest_key(app_id: str, instance: str) -> bytes:
    return f"ingest/{app_id}/{instance}".encode()


def generation_record(settings: Settings, generation: int, partitions: int, now: float) -> bytes:
    return orjson.dumps(
        {
            "generation": generation,
            "partitions": partitions,
            "pings_topic": generation_topic(TOPIC_PINGS, generation),
            "reports_topic": generation_topic(TOPIC_REPORTS, generation),
            "worker_app_id": generation_app_id(settings.app_id, generation),
            "at": now,
        }
    )


@dataclass
class ControlState:
    """What the control topic says for one app id, folded from its records in order."""

    app_id: str
    generation: dict[str, Any] | None = None
    ingest: dict[str, dict[str, Any]] = field(default_factory=dict)  # instance → last heartbeat

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        k = key.decode(errors="replace")
        if k == f"generation/{self.app_id}":
            self.generation = orjson.loads(value) if value else None
        elif k.startswith(f"ingest/{self.app_id}/"):
            instance = k.rsplit("/", 1)[1]
            if value:
                self.ingest[instance] = orjson.loads(value)
            else:
                self.ingest.pop(instance, None)

    def current(self, default: int) -> int:
        """The current generation: the control record's, never below ``default`` (the settings')."""
        g = int(self.generation["generation"]) if self.generation else 0
        return max(g, default)

    def live_ingest(self, now: float) -> dict[str, int]:
        """Settled generation of every ingest process that sent a heartbeat within :data:`LIVE_S`."""
        return {i: int(v["generation"]) for i, v in self.ingest.items() if now - float(v["at"]) <= LIVE_S}


async def ensure_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        if CONTROL_TOPIC not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(CONTROL_TOPIC, 1, 1, topic_configs=CONTROL_CONFIG)])
    finally:
        await admin.close()


async def catch_up(consumer: AIOKafkaConsumer, state: ControlState) -> None:
    """Apply every control record up to the current end (the consumer is assigned to the topic)."""
    tp = TopicPartition(CONTROL_TOPIC, 0)
    (end,) = (await consumer.end_offsets([tp])).values()
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=500)
        for msg in batch.get(tp, []):
            state.apply(msg.key, msg.value)


async def control_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """A started consumer, no group, assigned to the control topic from its beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=200,
        auto_offset_reset="earliest",  # with "latest", a position asked before the seek lands can be the end
    )
    await consumer.start()
    tp = TopicPartition(CONTROL_TOPIC, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    return consumer


async def read(settings: Settings) -> ControlState:
    """The control topic's current view for ``settings.app_id``."""
    await ensure_topic(settings.bootstrap)
    state = ControlState(settings.app_id)
    consumer = await control_consumer(settings.bootstrap)
    try:
        await catch_up(consumer, state)
    finally:
        await consumer.stop()
    return state


async def publish(producer: AIOKafkaProducer, key: bytes, value: bytes | None) -> None:
    await (await producer.send(CONTROL_TOPIC, value=value, key=key, partition=0))


def heartbeat(generation: int, now: float | None = None) -> bytes:
    return orjson.dumps({"generation": generation, "at": time.time() if now is None else now})
