"""Operators' views against the real broker: `traverz topics describe`, /metrics of every process, JSON logs."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from pipeline import geo, kafka_io
from pipeline.ops import rescale
from pipeline.settings import Settings
from tests.conftest import token_for
from tests.support.procs import TRAVERZ, Stack, process_env, wait_http
from tests.support.streams import wait_for

pytestmark = pytest.mark.integration

TEXT_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)")


async def describe(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        TRAVERZ, "topics", "describe", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_describe_shows_layout_end_offsets_group_lag_and_skew(kafka_bootstrap: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    g = random.randrange(1000, 10**6)
    settings = Settings(bootstrap=kafka_bootstrap, data_dir=tmp_path, app_id=f"traverz-op{run}", generation=g)
    gen = rescale.Generation.of(settings, g)
    specs = tuple(s for s in rescale.data_specs(settings, gen) if s.name in (gen.pings, gen.reports))
    await kafka_io.create_topics(kafka_bootstrap, 4, 1, specs)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        futs = [
            await producer.send(gen.pings, b"x", key=b"k", partition=p)
            for p, n in ((0, 30), (1, 10), (2, 10))
            for _ in range(n)
        ]
        await asyncio.gather(*futs)
        # the workers' group (the generation's app id) has committed part of it
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=gen.app_id, enable_auto_commit=False)
        await consumer.start()
        tps = [TopicPartition(gen.pings, p) for p in range(4)]
        consumer.assign(tps)
        await consumer.commit({tps[0]: OffsetAndMetadata(20, ""), tps[1]: OffsetAndMetadata(10, "")})
        await consumer.stop()

        env = process_env(settings, TRAVERZ_GENERATION=str(g))
        doc = json.loads(await describe(env, "--json", "--sample", "0.2"))
        assert doc["generation"] == g and doc["group"] == gen.app_id
        by_name = {t["name"]: t for t in doc["topics"]}
        pings = by_name[gen.pings]
        assert (pings["partitions"], pings["replication"], pings["cleanup_policy"]) == (4, 1, "delete")
        assert [p["end_offset"] for p in pings["detail"]] == [30, 10, 10, 0]
        assert [p["lag"] for p in pings["detail"]] == [10, 0, 10, 0] and pings["lag_total"] == 20
        assert pings["skew_by"] == "end_offsets" and pings["skew"] == pytest.approx(30 / 12.5, abs=1e-3)
        assert by_name["traverz.conditions.v1"]["cleanup_policy"] == "compact"
        assert by_name["traverz.control.v1"]["partitions"] == 1

        # traffic during the sample: skew follows what flows now, not what has accumulated
        stop = asyncio.Event()

        async def trickle() -> None:  # only partition 3 grows while describe samples
            while not stop.is_set():
                await (await producer.send(gen.pings, b"y", key=b"k", partition=3))
                await asyncio.sleep(0.02)

        trickling = asyncio.create_task(trickle())
        try:
            text = await describe(env, "--sample", "1.5")
        finally:
            stop.set()
            await trickling
        block = text.split(gen.pings + " ", 1)[1].split("\n\n", 1)[0]
        assert "skew 4.00× (growth)" in block, text
        p3 = next(line for line in block.splitlines() if line.strip().startswith("p3 "))
        assert "█" * 30 in p3 and "100.0%" in p3, block
    finally:
        await producer.stop()


def _log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


async def test_metrics_of_every_process_and_json_logs(settings: Settings, tmp_path: Path) -> None:
    env = process_env(settings, TRAVERZ_LOG_FORMAT="json", TRAVERZ_MIN_DEVICES="3")
    stack = Stack(env=env, workdir=tmp_path)
    try:
        ingest, push = stack.ingest(), stack.push()
        worker = stack.start("worker", "worker", "--loglevel", "info", port_var="TRAVERZ_WORKER_PORT")
        wait_http(worker, f"http://127.0.0.1:{worker.port}/healthz", timeout=90)
        rng = random.Random()
        lat, lon = geo.cell_center(geo.cell(rng.uniform(50.90, 51.00), rng.uniform(6.90, 7.00), 9))  # Cologne
        cell = geo.cell(lat, lon, 9)
        async with websockets.connect(
            f"ws://127.0.0.1:{push.port}/v1/stream?token={token_for(settings, 'ops-viewer')}"
        ) as ws:
            await ws.send(
                orjson.dumps(
                    {"type": "subscribe", "bbox": [lat - 0.003, lon - 0.005, lat + 0.003, lon + 0.005]}
                ).decode()
            )
            assert orjson.loads(await ws.recv())["type"] == "subscribed"
            async with httpx.AsyncClient(timeout=10.0) as client:
                now = time.time()
                for d in range(3):
                    dev = f"ops-{settings.app_id}-{d}"
                    batch = [
                        {
                            "seq": i + 1,
                            "ts": now - 10 + i,
                            "lat": lat,
                            "lon": lon,
                            "speed_mps": 9.0,
                            "heading_deg": 90.0,
                            "accuracy_m": 5.0,
                        }
                        for i in range(5)
                    ]
                    r = await client.post(
                        f"http://127.0.0.1:{ingest.port}/v1/pings",
                        json=batch,
                        headers={"authorization": f"Bearer {token_for(settings, dev)}"},
                    )
                    assert r.status_code == 202, r.text
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
                assert msg["type"] == "condition" and msg["condition"]["cell"] == cell

                async def scraped(port: int) -> str:
                    return (await client.get(f"http://127.0.0.1:{port}/metrics")).text

                def value(text: str, series: str) -> float:
                    m = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.M)
                    return float(m[1]) if m else -1.0

                async def worker_counted() -> bool:
                    w = await scraped(worker.port)
                    return value(w, 'traverz_worker_published_total{kind="record",topic="conditions"}') >= 1

                await wait_for(worker_counted, 30, "the worker's metrics to count the condition")
                w = await scraped(worker.port)
                assert value(w, "traverz_worker_pings_total") >= 15
                assert value(w, 'traverz_worker_table_keys{table="cell-speed"}') >= 1
                assert re.search(
                    r'^traverz_worker_consumer_lag\{topic="traverz.pings.v1",partition="0"\} \d+$', w, re.M
                )
                assert "traverz_worker_incidents_open" in w and "traverz_worker_report_records_total" in w
                i = await scraped(ingest.port)
                assert value(i, "traverz_ingest_pings_accepted_total") == 15
                assert value(i, "traverz_ingest_generation") == 1
                p = await scraped(push.port)
                assert value(p, "traverz_push_delivery_seconds_count") >= 1
                assert value(p, "traverz_push_connections") == 1
    finally:
        stack.stop_all()
    for proc in stack.procs:
        lines = _log_lines(proc.output())
        assert not [ln for ln in lines if TEXT_LOG.match(ln)], f"{proc.name} logged text lines"
        docs = [json.loads(ln) for ln in lines if ln.startswith("{")]
        assert any(d["msg"] == f"traverz {proc.name} starting" and d["process"] == proc.name for d in docs), proc.name
        assert all({"ts", "time", "level", "logger", "pid", "msg"} <= d.keys() for d in docs)
    worker_docs = [json.loads(ln) for ln in _log_lines(stack.procs[2].output()) if ln.startswith("{")]
    assert any(d["logger"].startswith("faust") for d in worker_docs)  # faust's own lines, in our JSON
