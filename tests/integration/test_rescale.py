"""`traverz topics rescale`: 4 → 8 partitions under a running load, against the real broker.

Devices post pings to a real ingest proxy the whole time. Generation G (4 partitions) runs one
worker; the rescale publishes G+1, ingest switches live, the G worker drains and is stopped when
the procedure says so, the tables move to G+1's changelogs (8 partitions), and a G+1 worker
takes over. Every ping answered 202 must be counted exactly once in the last published
conditions (pingfeed.reference), including pings accepted before the cut-over and sent again
after it, and every migrated table key must sit in the partition its res-7 key hashes to.

The generation number is random per run, so the topics (``traverz.pings.v1.g<G>``) and the
control record (keyed by the test's app id) are this test's alone on the shared broker.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import httpx
import pytest

from pipeline import geo, kafka_io
from pipeline.ops import migrate, rescale
from pipeline.settings import Settings
from tests.conftest import token_for
from tests.integration.test_recovery import final_conditions_match
from tests.support import pingfeed
from tests.support.pingload import Device, PingLoad
from tests.support.procs import Proc, Stack, process_env
from tests.support.streams import caught_up, committed, end_offsets, wait_for

pytestmark = pytest.mark.integration

OLD_PARTS, NEW_PARTS = 4, 8


def devices_for(settings: Settings, run: str, cells: list[str]) -> list[Device]:
    out = []
    for ci, cell in enumerate(cells):
        lat, lon = geo.cell_center(cell)
        for heading in (90.0, 270.0):
            for d in range(settings.min_devices):
                dev = f"rs-{run}-{ci}-{int(heading)}-{d}"
                out.append(Device(dev, token_for(settings, dev), lat, lon, heading))
    return out


async def lag_zero(bootstrap: str, group: str, topic: str) -> bool:
    return caught_up(await committed(bootstrap, group, topic), await end_offsets(bootstrap, topic))


async def wait_line(proc: Proc, text: str, timeout: float) -> None:
    async def seen() -> bool:
        if proc.popen.poll() is not None and text not in proc.output():
            raise AssertionError(f"{proc.name} exited {proc.popen.returncode}:\n{proc.output()}")
        return text in proc.output()

    await wait_for(seen, timeout, f"{proc.name} to say {text!r}", interval=0.1)


async def test_rescale_4_to_8_under_load_counts_every_ping_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    t_start = time.monotonic()
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    g = rng.randrange(1000, 10**6)
    settings = Settings(bootstrap=kafka_bootstrap, data_dir=tmp_path / "state", app_id=f"traverz-rs{run}", generation=g)
    old, new = rescale.Generation.of(settings, g), rescale.Generation.of(settings, g + 1)
    specs = rescale.data_specs(settings, old)
    await kafka_io.create_topics(
        kafka_bootstrap, OLD_PARTS, 1, tuple(s for s in specs if s.name in (old.pings, old.reports))
    )
    # one cell per partition of the new topics: some keys change partition, some do not
    cells = pingfeed.cells_one_per_partition(rng, NEW_PARTS, 6)
    env = process_env(settings, TRAVERZ_GENERATION=str(g), TRAVERZ_PARTITIONS=str(OLD_PARTS))
    stack = Stack(env=env, workdir=tmp_path)
    try:
        ingest = stack.ingest()
        ingest_url = f"http://127.0.0.1:{ingest.port}"
        stack.worker("worker-old")
        load = PingLoad(ingest_url, devices_for(settings, run, cells), rng=rng)
        loading = asyncio.create_task(load.run())
        await asyncio.sleep(4.0)
        before_cutover = {(p["device_id"], p["seq"]) for p in load.sent}
        assert before_cutover, "no ping accepted before the rescale"

        t_rescale = time.monotonic()
        rescaler = stack.start("rescale", "topics", "rescale", "--partitions", str(NEW_PARTS), "--timeout", "120")
        await wait_line(rescaler, "stop its workers now", 60)
        t_drained = time.monotonic()
        (worker_old,) = [p for p in stack.procs if p.name == "worker-old"]
        worker_old.stop()
        await wait_line(rescaler, "done: start generation", 60)
        assert rescaler.popen.wait(10) == 0, rescaler.output()
        t_migrated = time.monotonic()
        assert await lag_zero(kafka_bootstrap, old.app_id, old.pings)

        # every migrated key sits in the partition the proxy now sends its res-7 key's pings to
        for table in ("cell-speed", "active-incidents", "devices", "report-books"):
            await _check_partitions(kafka_bootstrap, migrate.changelog_topic(new.app_id, table))

        # told the old count on purpose: TRAVERZ_PARTITIONS only sizes topics a process creates
        stack.worker("worker-new", TRAVERZ_GENERATION=str(g + 1), TRAVERZ_PARTITIONS=str(OLD_PARTS))
        t_new_worker = time.monotonic()
        # phones that did not hear a 202 before the cut-over send those pings again: counted once
        old_pings = [p for p in load.sent if (p["device_id"], p["seq"]) in before_cutover]
        async with httpx.AsyncClient(timeout=10.0) as client:
            for d in load.devices:
                again = [p for p in old_pings if p["device_id"] == d.device_id][-8:]
                await load.post(client, d, again)
        await asyncio.sleep(3.0)
        load.stop.set()
        await loading

        old_ends, new_ends = (
            await end_offsets(kafka_bootstrap, old.pings),
            await end_offsets(kafka_bootstrap, new.pings),
        )
        assert len(old_ends) == OLD_PARTS and len(new_ends) == NEW_PARTS
        assert sum(old_ends.values()) > 0 and sum(new_ends.values()) > 0  # the load spanned the cut-over

        await wait_for(lambda: lag_zero(kafka_bootstrap, new.app_id, new.pings), 60, "the new worker to drain")
        _, close_pings = pingfeed.closer(run, cells, time.time(), settings.min_devices)
        async with httpx.AsyncClient(timeout=10.0) as client:
            for p in close_pings:  # a new, crawling sector: forces a last publication per cell
                dev = str(p["device_id"])
                await load.post(client, Device(dev, token_for(settings, dev), 0.0, 0.0, 0.0), [p])
            metrics = (await client.get(f"{ingest_url}/metrics")).text
        assert f"traverz_ingest_generation {g + 1}\n" in metrics
        expected = pingfeed.reference(load.unique() + close_pings, settings.min_devices)
        assert set(expected) == set(cells)
        seen = await final_conditions_match(kafka_bootstrap, expected, timeout=45)
        diff = {c: (seen.get(c), expected[c]) for c in expected if seen.get(c) != expected[c]}
        assert not diff, f"cell: (published, expected) sector → (samples, devices): {diff}"
        assert len(load.sent) > len(load.unique())  # duplicates were sent, and counted once
        print(
            f"rescale timings: load {t_rescale - t_start:.1f}s in, drained after {t_drained - t_rescale:.1f}s, "
            f"migrated {t_migrated - t_drained:.1f}s later, new worker up after {t_new_worker - t_migrated:.1f}s; "
            f"{len(load.unique())} pings, {len(load.sent) - len(load.unique())} resent, refused {load.refused}; "
            f"total {time.monotonic() - t_start:.1f}s"
        )
        print(rescaler.output())
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop_all()


async def _check_partitions(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(NEW_PARTS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        wrong = []
        n = 0
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                for msg in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                    n += 1
                    want = migrate.new_partition(msg.key, NEW_PARTS)
                    if want != tp.partition:
                        wrong.append((msg.key, tp.partition, want))
        assert not wrong, wrong[:5]
        if topic.endswith("cell-speed-changelog"):
            assert n > 0, "no speed window migrated"
    finally:
        await consumer.stop()
