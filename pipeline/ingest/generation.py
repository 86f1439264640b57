"""Which ping/report topics an ingest process produces to, live-switched by ``traverz topics rescale``.

The proxy starts on the newest of ``TRAVERZ_GENERATION`` and what the control topic says
(so an ingest started after a rescale never writes to the old topics), then follows the
control topic. On a new generation it fetches the new topics' metadata (so the coalescer
groups by the new partition count from the first flush), swaps the names in one step — a
flush reads the name and the partition count together, with no await in between — and,
once every send to the old topics has been acknowledged or has failed (the produce
timeout), heartbeats the new generation as *settled*. A request answered 202 before the
swap is on the old topics, which the old workers drain before the rescale goes on; one
answered after is on the new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from pipeline.ops import control
from pipeline.settings import CONTROL_TOPIC, TOPIC_PINGS, TOPIC_REPORTS, Settings, generation_topic

log = logging.getLogger("traverz.ingest.generation")

Prepare = Callable[[str], Awaitable[None]]


@dataclass
class Topics:
    """The topics accepted data goes to now (one object, read at the moment of each send)."""

    pings: str
    reports: str
    generation: int = 1

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        return cls(settings.pings_topic, settings.reports_topic, settings.generation)


async def fetch_metadata(producer: AIOKafkaProducer | None, topic: str) -> None:
    """Have ``producer`` learn ``topic``'s partitions (the coalescer's per-partition grouping needs them)."""
    if producer is not None:
        await producer.partitions_for(topic)


class GenerationFollower:
    """Follows ``traverz.control.v1`` and switches :class:`Topics` to a new generation live."""

    def __init__(self, settings: Settings, topics: Topics, prepare: Prepare) -> None:
        self.s = settings
        self.topics = topics
        self.prepare = prepare  # fetches a topic's metadata into the data producer
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.state = control.ControlState(settings.app_id)
        self.settled = topics.generation
        self.switches = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the control topic to its end, take the newest generation, heartbeat, then follow."""
        try:
            await asyncio.wait_for(self._open(grace_s=0.0), 3.0)  # nothing was sent yet: settled at once
        except Exception as exc:  # Kafka away: serve with the configured generation, retry in the loop
            log.warning("control topic not readable at start (%s); generation %d", exc, self.topics.generation)
        self._task = asyncio.create_task(self._run())

    async def _open(self, grace_s: float) -> None:
        await control.ensure_topic(self.s.bootstrap)
        self._consumer = await control.control_consumer(self.s.bootstrap)
        await control.catch_up(self._consumer, self.state)
        self._producer = AIOKafkaProducer(bootstrap_servers=self.s.bootstrap, acks="all")
        await self._producer.start()
        target = self.state.current(self.topics.generation)
        if target != self.topics.generation:
            await self._switch(target, grace_s)
        await self._heartbeat()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            with contextlib.suppress(Exception):  # gone for good: no longer a live ingest process
                await control.publish(self._producer, control.ingest_key(self.s.app_id, self.instance), None)
            await self._producer.stop()
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        next_beat = time.monotonic() + control.HEARTBEAT_S
        while True:
            try:
                if self._consumer is None or self._producer is None:
                    await self._open(self._grace())
                assert self._consumer is not None
                batch = await self._consumer.getmany(TopicPartition(CONTROL_TOPIC, 0), timeout_ms=250)
                for msgs in batch.values():
                    for msg in msgs:
                        self.state.apply(msg.key, msg.value)
                target = self.state.current(self.topics.generation)
                if target > self.topics.generation:
                    await self._switch(target, self._grace())
                if time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + control.HEARTBEAT_S
                    await self._heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following the control topic: %r", exc)
                await asyncio.sleep(1.0)

    def _grace(self) -> float:
        return self.s.ingest_produce_timeout + 0.3

    async def _switch(self, generation: int, grace_s: float) -> None:
        pings = generation_topic(TOPIC_PINGS, generation)
        reports = generation_topic(TOPIC_REPORTS, generation)
        for topic in (pings, reports):
            with contextlib.suppress(Exception):  # unknown partitions only make the first flushes per key
                await asyncio.wait_for(self.prepare(topic), 5.0)
        old = self.topics.generation
        # one step, no await: a flush reads the topic and its partition count together
        self.topics.pings, self.topics.reports, self.topics.generation = pings, reports, generation
        self.switches += 1
        log.warning("ingest switched from generation %d to %d (%s, %s)", old, generation, pings, reports)
        if grace_s > 0:
            # every send to the old topics began before the swap: acknowledged or failed (503) by now
            await asyncio.sleep(grace_s)
        self.settled = generation
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        if self._producer is not None:
            key = control.ingest_key(self.s.app_id, self.instance)
            await control.publish(self._producer, key, control.heartbeat(self.settled))
