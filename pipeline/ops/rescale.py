"""``traverz topics rescale --partitions N``: a new generation of the ping/report topics and tables.

Kafka remaps keys when partitions are added and a faust table's partition count is fixed
(faust #535), so nothing is resized in place. The procedure (each step waits for the last):

1. create generation g+1: ``traverz.pings.v1.g<g+1>`` and ``traverz.reports.v1.g<g+1>`` with N
   partitions, and the changelogs of app id ``<app_id>-g<g+1>`` with N partitions (compacted);
2. publish g+1 on ``traverz.control.v1``; wait until every live ingest process has switched
   and settled (its sends to the old topics acknowledged or failed);
3. wait until generation g's workers have drained the old topics: their group's committed
   offsets equal the end offsets (records are acknowledged only once the state they changed
   is in the changelog), and the ends stayed put for :data:`QUIET_S`;
4. wait until the operator has stopped generation g's workers (their group is empty);
5. copy the last value of every table key from the old changelogs to the new ones, each to
   partition ``murmur2(res-7 key) % N`` (:mod:`pipeline.ops.migrate`);
6. say how to start generation g+1's workers; they restore the tables and read the new topics
   from the beginning — pings accepted since step 2 wait there, nothing is lost.

Conditions, alerts and dead letters keep their topics: push workers and analysts see a pause
of the updates (steps 2–6 plus the new workers' start), not a change. Not carried: a moving
device's motion state (never persisted) and up to 10 s of baseline learning (written back
every 10 s) — the same as a worker crash loses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from pipeline import kafka_io
from pipeline.ops import control, kafkaview, migrate
from pipeline.settings import CONTROL_TOPIC, TOPIC_PINGS, TOPIC_REPORTS, Settings, generation_app_id, generation_topic

QUIET_S = 2.0  # the old topics' ends must not move for this long once drained
POLL_S = 0.5


class RescaleError(Exception):
    pass


@dataclass(frozen=True)
class Generation:
    number: int
    pings: str
    reports: str
    app_id: str

    @classmethod
    def of(cls, settings: Settings, number: int) -> Generation:
        return cls(
            number,
            generation_topic(TOPIC_PINGS, number),
            generation_topic(TOPIC_REPORTS, number),
            generation_app_id(settings.app_id, number),
        )

    def changelogs(self) -> list[str]:
        return [migrate.changelog_topic(self.app_id, t) for t in migrate.TABLES]


def data_specs(settings: Settings, gen: Generation) -> tuple[kafka_io.TopicSpec, ...]:
    """Every Traverz topic with ``gen``'s ping/report names (configured like generation 1's)."""
    rename = {TOPIC_PINGS: gen.pings, TOPIC_REPORTS: gen.reports}
    return tuple(kafka_io.TopicSpec(rename.get(s.name, s.name), s.config) for s in kafka_io.TOPICS)


def topic_specs(settings: Settings, gen: Generation) -> tuple[kafka_io.TopicSpec, ...]:
    """What a rescale creates: ``gen``'s ping/report topics and its tables' changelogs."""
    data = tuple(s for s in data_specs(settings, gen) if s.name in (gen.pings, gen.reports))
    return data + tuple(kafka_io.TopicSpec(n, {"cleanup.policy": "compact"}) for n in gen.changelogs())


async def _wait(check: Callable[[], Awaitable[bool]], what: str, deadline: float) -> None:
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise RescaleError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


async def rescale(
    settings: Settings, partitions: int, *, say: Callable[[str], None] = print, timeout_s: float = 1800.0
) -> Generation:
    """Run the procedure to its end (or resume it); returns the new generation."""
    deadline = time.monotonic() + timeout_s
    state = await control.read(settings)
    published = state.current(0)
    current = state.current(settings.generation)
    async with kafkaview.admin_client(settings.bootstrap) as admin:
        names = set(await admin.list_topics())
    resuming = published >= 2 and published == current and await _unfinished(settings, published, names)
    new = Generation.of(settings, current if resuming else current + 1)
    old = Generation.of(settings, new.number - 1)
    if old.pings not in names:
        raise RescaleError(f"{old.pings} does not exist: is generation {old.number} deployed?")
    if resuming:
        say(f"resuming the move from generation {old.number} to {new.number}")
    else:
        await kafka_io.create_topics(settings.bootstrap, partitions, settings.replication, topic_specs(settings, new))
        tables = len(migrate.TABLES)
        say(f"created {new.pings}, {new.reports} and {tables} changelogs of {new.app_id}: {partitions} partitions")
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        if not resuming:
            record = control.generation_record(settings, new.number, partitions, time.time())
            await control.publish(producer, control.generation_key(settings.app_id), record)
            say(f"published generation {new.number} on {CONTROL_TOPIC}")
        await _ingest_switched(settings, new.number, say, deadline)
        ends = await _drained(settings, old, say, deadline)
        say(f"generation {old.number} drained (group {old.app_id} lag 0): stop its workers now")
        await _stopped(settings, old, ends, say, deadline)
        await _migrate(settings, producer, old, new, say)
    finally:
        await producer.stop()
    say(
        f"done: start generation {new.number} workers with TRAVERZ_GENERATION={new.number} traverz worker "
        f"(their tables follow the topics' {partitions} partitions)"
    )
    return new


async def _unfinished(settings: Settings, published: int, names: set[str]) -> bool:
    """Whether the move to the published generation has not finished: its workers never committed."""
    gen = Generation.of(settings, published)
    if not all(n in names for n in gen.changelogs()):
        return False
    async with kafkaview.admin_client(settings.bootstrap) as admin:
        return not await kafkaview.committed(admin, gen.app_id)


def _skipped(say: Callable[[str], None], table: str) -> Callable[[bytes], None]:
    return lambda key: say(f"{table}: skipped a key that is no table key: {key!r}")


async def _ingest_switched(settings: Settings, generation: int, say: Callable[[str], None], deadline: float) -> None:
    told: set[str] = set()

    async def switched() -> bool:
        live = (await control.read(settings)).live_ingest(time.time())
        behind = {i for i, g in live.items() if g < generation}
        for i in behind - told:
            say(f"waiting for ingest {i} to switch to generation {generation}")
        told.update(behind)
        return not behind

    await _wait(switched, f"every ingest process to switch to generation {generation}", deadline)
    say(f"every live ingest process produces to generation {generation}")


async def _ends(settings: Settings, gen: Generation) -> dict[str, dict[int, int]]:
    async with kafkaview.offsets_consumer(settings.bootstrap) as consumer:
        counts = await kafkaview.partition_counts(consumer, [gen.pings, gen.reports])
        return await kafkaview.end_offsets(consumer, counts)


async def _lag(settings: Settings, gen: Generation, ends: dict[str, dict[int, int]]) -> int:
    async with kafkaview.admin_client(settings.bootstrap) as admin:
        done = await kafkaview.committed(admin, gen.app_id)
    return sum(sum(kafkaview.lag(e, done.get(t, {})).values()) for t, e in ends.items())


async def _drained(
    settings: Settings, gen: Generation, say: Callable[[str], None], deadline: float
) -> dict[str, dict[int, int]]:
    """The old topics' end offsets once the old group has committed them and they stayed put."""
    quiet_since = time.monotonic()
    last: dict[str, dict[int, int]] = {}
    reported = -1.0

    async def drained() -> bool:
        nonlocal quiet_since, last, reported
        ends = await _ends(settings, gen)
        if ends != last:
            last, quiet_since = ends, time.monotonic()
        lag = await _lag(settings, gen, ends)
        if lag and time.monotonic() - reported >= 5:
            reported = time.monotonic()
            say(f"generation {gen.number} workers draining: lag {lag}")
        return lag == 0 and time.monotonic() - quiet_since >= QUIET_S

    await _wait(drained, f"generation {gen.number} workers to drain {gen.pings}", deadline)
    return last


async def _stopped(
    settings: Settings, gen: Generation, ends: dict[str, dict[int, int]], say: Callable[[str], None], deadline: float
) -> None:
    reported = -1.0

    async def stopped() -> bool:
        nonlocal reported
        async with kafkaview.admin_client(settings.bootstrap) as admin:
            _, members = await kafkaview.group_state(admin, gen.app_id)
        if members and time.monotonic() - reported >= 10:
            reported = time.monotonic()
            say(f"waiting for generation {gen.number} workers to stop (group {gen.app_id}: {members} members)")
        return members == 0

    await _wait(stopped, f"generation {gen.number} workers to stop", deadline)
    now_ends = await _ends(settings, gen)
    if now_ends != ends or await _lag(settings, gen, now_ends):
        raise RescaleError(f"{gen.pings} changed after it was drained: an ingest process still writes to it")


async def _migrate(
    settings: Settings, producer: AIOKafkaProducer, old: Generation, new: Generation, say: Callable[[str], None]
) -> None:
    async with kafkaview.offsets_consumer(settings.bootstrap) as consumer:
        counts = await kafkaview.partition_counts(consumer, old.changelogs() + new.changelogs())
        targets = await kafkaview.end_offsets(consumer, {n: counts[n] for n in new.changelogs() if n in counts})
    async with kafkaview.admin_client(settings.bootstrap) as admin:
        if (await kafkaview.committed(admin, new.app_id)) or (await kafkaview.group_state(admin, new.app_id))[1]:
            raise RescaleError(f"generation {new.number} workers already ran: their tables are theirs now")
    for table in migrate.TABLES:
        source, target = migrate.changelog_topic(old.app_id, table), migrate.changelog_topic(new.app_id, table)
        if sum(targets.get(target, {}).values()):
            # an interrupted copy: same keys, same values again, compaction keeps one
            say(f"{target} already holds records: copying over them")
        if source not in counts:
            say(f"{table}: generation {old.number} has no changelog (never written)")
            continue
        copied = await migrate.copy_table(
            settings.bootstrap,
            producer,
            source,
            counts[source],
            target,
            counts[target],
            settings.key_resolution,
            table,
            on_bad_key=_skipped(say, table),
        )
        spread = " ".join(f"p{p}:{n}" for p, n in sorted(copied.per_partition.items()))
        say(f"migrated {table}: {copied.records_read} records → {copied.keys_written} keys ({spread})")
