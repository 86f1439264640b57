"""The ingest proxy as a real process against the real broker: every answer, and what reached Kafka.

Each test uses device ids of its own, so the shared topics never mix tests: what a test
finds in Kafka for its devices is exactly what it produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from pipeline import geo, kafka_io, kafka_local, tokens
from pipeline.ingest.app import build_app
from pipeline.settings import TOPIC_PINGS, TOPIC_REPORTS, Settings
from tests.conftest import token_for
from tests.support.procs import Proc, Stack, free_port, wait_http

pytestmark = pytest.mark.integration

# Around Lyon: no other test posts here.
LAT, LON = 45.7640, 4.8357
KEY_RES, CELL_RES = 7, 9
T = TypeVar("T")


# -- helpers (the TLS and fuzz modules use them too) ---------------------------------------------
def device(tag: str) -> str:
    """A device id no other test (or earlier run) uses."""
    return f"ti-{tag}-{uuid.uuid4().hex[:10]}"


def spot() -> tuple[float, float]:
    """A position near LAT, LON that differs per call."""
    u = uuid.uuid4().int
    return LAT + (u % 1000) / 20_000, LON + (u // 1000 % 1000) / 20_000


def ping(seq: int, lat: float = LAT, lon: float = LON, **over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "seq": seq,
        "ts": time.time() - 5,
        "lat": lat,
        "lon": lon,
        "speed_mps": 12.5,
        "heading_deg": 90.0,
        "accuracy_m": 5.0,
    }
    p.update(over)
    return p


def key_of(lat: float, lon: float) -> str:
    """The Kafka key of a spot: the res-7 parent of its res-9 cell (see pipeline.pings.group_by_key)."""
    return geo.key_cell(lat, lon, KEY_RES, CELL_RES)


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (aiokafka's twin of Java's)."""
    return int(DefaultPartitioner()(key.encode(), list(range(partitions)), list(range(partitions))))


def auth(settings: Settings, dev: str, ttl: int = 3600) -> dict[str, str]:
    return {"authorization": f"Bearer {token_for(settings, dev, ttl)}"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def _consumer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Where ``topic`` ends now: what a test produces after this is read by ``records_since``."""
    n = (await kafka_io.describe_partitions(bootstrap, [topic])).get(topic, 0)
    assert n, f"no partitions for {topic}"
    async with _consumer(bootstrap) as c:
        return dict(await c.end_offsets([TopicPartition(topic, p) for p in range(n)]))


async def records_since(bootstrap: str, since: dict[TopicPartition, int], timeout: float = 30.0) -> list[Any]:
    """Every record written after ``since`` up to the end as of now (so every acked write)."""
    async with _consumer(bootstrap) as c:
        tps = list(since)
        c.assign(tps)
        end = await c.end_offsets(tps)
        for tp in tps:
            c.seek(tp, since[tp])
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await c.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for recs in (await c.getmany(timeout_ms=300)).values():
                out.extend(recs)
        return out


async def pings_since(bootstrap: str, since: dict[TopicPartition, int], devices: Iterable[str]) -> list[dict[str, Any]]:
    """The pings of ``devices`` on the pings topic after ``since``; each checked against its record.

    A record holds pings whose keys all hash to the record's partition, and is keyed by one of
    them: every ping is in the partition of its own key, as if it had been sent alone.
    """
    wanted = set(devices)
    partitions = len(since)
    found: list[dict[str, Any]] = []
    for rec in await records_since(bootstrap, since):
        doc = orjson.loads(rec.value)
        mine = [p for p in doc["pings"] if p["device_id"] in wanted]
        if not mine:
            continue
        key = rec.key.decode()
        assert doc["v"] == 1 and doc["cell"] == key and isinstance(doc["ingest_ts"], float)
        keys = {key_of(p["lat"], p["lon"]) for p in doc["pings"]}
        assert key in keys, "a record keyed by a cell none of its pings is in"
        assert {partition_of(k, partitions) for k in keys} == {rec.partition}, "a ping outside its key's partition"
        found.extend(mine)
    return found


def seqs(found: list[dict[str, Any]], dev: str) -> list[int]:
    return sorted(p["seq"] for p in found if p["device_id"] == dev)


def proxy_stack(bootstrap: str, workdir: Path, settings: Settings) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAVERZ_")}
    env.update(TRAVERZ_BOOTSTRAP=bootstrap, TRAVERZ_TOKEN_SECRET=settings.token_secret, PYTHONUNBUFFERED="1")
    return Stack(env=env, workdir=workdir)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text (0 when the series does not exist yet)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- one proxy for the module (tests that need other settings start their own) -------------------
@pytest.fixture(scope="module")
def cfg(kafka_bootstrap: str) -> Settings:
    return Settings(bootstrap=kafka_bootstrap)


@pytest.fixture(scope="module")
def proxy(cfg: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    s = proxy_stack(cfg.bootstrap, tmp_path_factory.mktemp("ingest"), cfg)
    p = s.ingest()
    yield p
    s.stop_all()
    assert p.popen.returncode in (0, -15), p.output()[-3000:]


@pytest.fixture
async def http(proxy: Proc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proxy.port}", timeout=10) as c:
        yield c


@pytest.fixture
async def mark(cfg: Settings) -> dict[TopicPartition, int]:
    return await end_offsets(cfg.bootstrap, TOPIC_PINGS)


# -- authentication and authorisation -------------------------------------------------------------
async def test_bad_tokens_are_401_and_nothing_is_produced(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("401")

    def forged(**over: str) -> dict[str, str]:
        claims = {
            "secret": cfg.token_secret,
            "kid": cfg.token_kid,
            "issuer": cfg.token_issuer,
            "audience": cfg.token_audience,
        } | over
        return {"authorization": "Bearer " + tokens.issue(dev, **claims)}

    cases: dict[str, dict[str, str]] = {
        "missing token": {},
        "expected a Bearer token": {"authorization": f"Basic {token_for(cfg, dev)}"},
        "malformed token": {"authorization": "Bearer not.a.jwt"},
        "token expired": auth(cfg, dev, ttl=-60),
        "bad signature": forged(secret="another-secret-0123456789abcdef-xyz"),
        "wrong audience": forged(audience="somebody-else"),
        "wrong issuer": forged(issuer="somebody-else"),
        "unknown key id": forged(kid="k9"),
    }
    for i, (detail, headers) in enumerate(cases.items()):
        r = await http.post("/v1/pings", json=[ping(i + 1, device_id=dev)], headers=headers)
        assert r.status_code == 401, (detail, r.text)
        assert r.json() == {"error": "unauthorized", "detail": detail}
    # the same body with a good token is accepted: only the token was wrong above
    ok = await http.post("/v1/pings", json=[ping(100, device_id=dev)], headers=auth(cfg, dev))
    assert ok.status_code == 202, ok.text
    assert seqs(await pings_since(cfg.bootstrap, mark, [dev]), dev) == [100]


async def test_body_naming_another_device_is_403_and_nothing_is_produced(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    me, other = device("403-me"), device("403-other")
    r = await http.post("/v1/pings", json=ping(1, device_id=other), headers=auth(cfg, me))
    assert r.status_code == 403
    assert r.json() == {"error": "forbidden", "detail": "a ping names another device", "index": 0}
    # one foreign ping refuses the whole batch, good pings included
    batch = [ping(2), ping(3, device_id=me), ping(4, device_id=other)]
    r = await http.post("/v1/pings", json=batch, headers=auth(cfg, me))
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden" and r.json()["index"] == 2
    assert await pings_since(cfg.bootstrap, mark, [me, other]) == []


# -- malformed bodies and per-ping validation -----------------------------------------------------
async def test_malformed_json_is_400_malformed_json(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("400-json")
    good = orjson.dumps(ping(1))
    bodies = [b"", b"{", good[:-1], good + b"]", b"{'seq': 1}", b"\xff\xfe{}", b"[1,]", b"[" * 2000 + b"]" * 2000]
    for body in bodies:
        r = await http.post("/v1/pings", content=body, headers={**auth(cfg, dev), "content-type": "application/json"})
        assert r.status_code == 400, (body[:40], r.text)
        doc = r.json()
        assert doc["error"] == "malformed_json" and isinstance(doc["detail"], str) and doc["detail"]
    assert await pings_since(cfg.bootstrap, mark, [dev]) == []


async def test_wrong_types_are_400_with_a_reason_per_ping(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("400-types")
    cases: list[tuple[Any, str]] = [
        ("a string", "ping: must be an object"),
        (42, "ping: must be an object"),
        (None, "ping: must be an object"),
        (ping(1) | {"seq": "1"}, "seq: must be an integer"),
        (ping(1) | {"seq": 1.5}, "seq: must be an integer"),
        (ping(1) | {"seq": True}, "seq: must be an integer"),
        (ping(-1), "seq: out of range"),
        (ping(1, lat="45.7"), "lat: must be a number"),
        (ping(1, lon=None), "lon: required"),
        (ping(1, speed_mps=False), "speed_mps: must be a number"),
        (ping(1, heading_deg=[90]), "heading_deg: must be a number"),
        (ping(1, ts={"s": 1}), "ts: must be a number"),
        ({k: v for k, v in ping(1).items() if k != "accuracy_m"}, "accuracy_m: required"),
        (ping(1, state="flying"), "state: must be one of driving, stopped, parked"),
        (ping(1, state=3), "state: must be one of driving, stopped, parked"),
        (ping(1, state={"x": 1}), "state: must be one of driving, stopped, parked"),  # was a 500
        (ping(1, state=["driving"]), "state: must be one of driving, stopped, parked"),
    ]
    for body, reason in cases:
        r = await http.post(
            "/v1/pings", content=orjson.dumps(body), headers={**auth(cfg, dev), "content-type": "application/json"}
        )
        assert r.status_code == 400, (body, r.text)
        assert r.json() == {"error": "invalid_pings", "accepted": 0, "rejected": [{"index": 0, "reason": reason}]}
    r = await http.post("/v1/pings", json=[], headers=auth(cfg, dev))
    assert r.status_code == 400 and r.json()["error"] == "empty_batch"
    r = await http.post("/v1/pings", json=[c for c, _ in cases], headers=auth(cfg, dev))
    assert r.status_code == 400
    assert r.json()["rejected"] == [{"index": i, "reason": reason} for i, (_, reason) in enumerate(cases)]
    assert await pings_since(cfg.bootstrap, mark, [dev]) == []


async def test_mixed_batch_accepts_the_good_lists_the_bad_and_only_the_good_reach_kafka(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("mixed")
    now = time.time()
    lat2, lon2 = geo.destination(LAT, LON, 45.0, 5000.0)  # another res-7 cell: another record
    assert key_of(lat2, lon2) != key_of(LAT, LON)
    # a spot whose res-7 cell is not the parent of its res-9 cell: keyed by that parent
    edge = next(
        (lat, LON) for lat in (LAT + i * 1e-4 for i in range(20_000)) if geo.cell(lat, LON, KEY_RES) != key_of(lat, LON)
    )
    batch = [
        ping(1),
        ping(2, lat=91.0),
        ping(3, lat=lat2, lon=lon2, state="stopped", future_field={"x": 1}),
        ping(4, speed_mps=-1.0),
        ping(5, device_id=dev),
        ping(6, ts=now + 3600),
        ping(7, lat=lat2, lon=lon2),
        ping(8, lat=edge[0], lon=edge[1]),
    ]
    r = await http.post("/v1/pings", json=batch, headers=auth(cfg, dev))
    assert r.status_code == 202, r.text
    assert r.json() == {
        "accepted": 5,
        "rejected": [
            {"index": 1, "reason": "lat: out of range"},
            {"index": 3, "reason": "speed_mps: out of range 0..90"},
            {"index": 5, "reason": "ts: more than 5 min in the future"},
        ],
    }
    found = await pings_since(cfg.bootstrap, mark, [dev])
    assert seqs(found, dev) == [1, 3, 5, 7, 8]
    by_seq = {p["seq"]: p for p in found}
    assert by_seq[3]["state"] == "stopped" and "future_field" not in by_seq[3]
    assert {k for k in by_seq[1]} == {"device_id", "seq", "ts", "lat", "lon", "speed_mps", "heading_deg", "accuracy_m"}
    # pings of one request and one partition travel as one record, in the order sent, on the
    # partition of their keys (pings_since checked that); the edge ping counts under its parent key
    recs = [
        (r.partition, orjson.loads(r.value))
        for r in await records_since(cfg.bootstrap, mark)
        if any(p["device_id"] == dev for p in orjson.loads(r.value)["pings"])
    ]
    expected: dict[int, list[int]] = {}
    for p in batch:
        if p["seq"] in (1, 3, 5, 7, 8):
            expected.setdefault(partition_of(key_of(p["lat"], p["lon"]), len(mark)), []).append(p["seq"])
    assert {part: [p["seq"] for p in rec["pings"]] for part, rec in recs} == expected
    assert len(recs) == len(expected)
    assert geo.cell(*edge, KEY_RES) != key_of(*edge)


async def test_each_out_of_range_value_is_rejected_with_its_reason(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("ranges")
    now = time.time()
    cases: list[tuple[dict[str, Any], str]] = [
        (ping(0, lat=90.0001), "lat: out of range"),
        (ping(0, lat=-90.5), "lat: out of range"),
        (ping(0, lon=180.01), "lon: out of range"),
        (ping(0, lon=-181), "lon: out of range"),
        (ping(0, speed_mps=-0.01), "speed_mps: out of range 0..90"),
        (ping(0, speed_mps=90.01), "speed_mps: out of range 0..90"),
        (ping(0, heading_deg=-0.5), "heading_deg: out of range 0..360"),
        (ping(0, heading_deg=360.5), "heading_deg: out of range 0..360"),
        (ping(0, ts=now + 330), "ts: more than 5 min in the future"),
        (ping(0, ts=now - 86_400 - 60), "ts: older than 24 h"),
        (ping(0, accuracy_m=-1), "accuracy_m: out of range"),
        (ping(0) | {"seq": 2**53}, "seq: out of range"),
    ]
    edges = [  # boundaries that are fine
        ping(0, speed_mps=0),
        ping(0, speed_mps=90),
        ping(0, heading_deg=0),
        ping(0, heading_deg=360),
        ping(0, ts=now + 240),
        ping(0, ts=now - 86_400 + 120),
    ]
    batch: list[dict[str, Any]] = []
    for i, (p, _) in enumerate(cases):
        batch += [p if p["seq"] else p | {"seq": 1000 + i}]
    for i, p in enumerate(edges):
        batch += [p | {"seq": i + 1}]
    r = await http.post("/v1/pings", json=batch, headers=auth(cfg, dev))
    assert r.status_code == 202, r.text
    assert r.json() == {
        "accepted": len(edges),
        "rejected": [{"index": i, "reason": reason} for i, (_, reason) in enumerate(cases)],
    }
    found = await pings_since(cfg.bootstrap, mark, [dev])
    assert seqs(found, dev) == list(range(1, len(edges) + 1))
    assert {p["seq"]: p["heading_deg"] for p in found}[4] == 0.0  # 360° is north, stored as 0


async def test_non_finite_numbers_are_rejected_per_ping(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    """NaN, ±Infinity and 1e400 are not JSON, but lenient encoders send them: one bad fix must
    not cost the rest of the batch."""
    dev = device("nonfinite")
    good = [orjson.dumps(ping(i)) for i in (1, 2)]
    bad = {
        b'"speed_mps": NaN': "speed_mps: must be finite",
        b'"lat": Infinity': "lat: must be finite",
        b'"heading_deg": -Infinity': "heading_deg: must be finite",
        b'"lon": 1e400': "lon: must be finite",
        b'"ts": -1e999': "ts: must be finite",
    }
    items = [good[0]]
    for i, field in enumerate(bad):
        name = field.split(b'"')[1]
        p = ping(10 + i)
        del p[name.decode()]
        items.append(orjson.dumps(p)[:-1] + b"," + field + b"}")
    items.append(good[1])
    body = b"[" + b",".join(items) + b"]"
    r = await http.post("/v1/pings", content=body, headers={**auth(cfg, dev), "content-type": "application/json"})
    assert r.status_code == 202, r.text
    assert r.json() == {
        "accepted": 2,
        "rejected": [{"index": i + 1, "reason": reason} for i, reason in enumerate(bad.values())],
    }
    # a lone non-finite value is still a 400 with the reason
    r = await http.post("/v1/pings", content=items[1], headers={**auth(cfg, dev), "content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["rejected"] == [{"index": 0, "reason": "speed_mps: must be finite"}]
    # a non-finite number does not open the door to what orjson refuses for other reasons
    for body in (b"[NaN, " + b"[" * 2000 + b"]" * 2000 + b"]", b'{"text": "\\ud800", "x": NaN}', b"NaN NaN"):
        r = await http.post("/v1/pings", content=body, headers={**auth(cfg, dev), "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "malformed_json", (body[:30], r.text)
    assert seqs(await pings_since(cfg.bootstrap, mark, [dev]), dev) == [1, 2]


# -- limits ---------------------------------------------------------------------------------------
async def test_body_over_256_kib_is_413(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("413-body")
    batch = [ping(i, pad="x" * 30_000) for i in range(1, 10)]
    body = orjson.dumps(batch)
    assert 256 * 1024 < len(body) < 300_000
    headers = {**auth(cfg, dev), "content-type": "application/json"}
    r = await http.post("/v1/pings", content=body, headers=headers)
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for i in range(0, len(body), 16_384):
            yield body[i : i + 16_384]

    r = await http.post("/v1/pings", content=chunks(), headers=headers)
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"
    # just under the limit is fine
    small = orjson.dumps([ping(i, pad="x" * 30_000) for i in range(20, 28)])
    assert len(small) < 256 * 1024
    r = await http.post("/v1/pings", content=small, headers=headers)
    assert r.status_code == 202 and r.json()["accepted"] == 8
    assert seqs(await pings_since(cfg.bootstrap, mark, [dev]), dev) == list(range(20, 28))


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _gzip_of_zeros(n: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [c.compress(block) for _ in range(n >> 20)]
    return b"".join([*parts, c.flush()])


async def test_gzip_bomb_is_413_and_inflation_stops_early(
    http: httpx.AsyncClient, cfg: Settings, proxy: Proc, mark: dict[TopicPartition, int]
) -> None:
    dev = device("413-bomb")
    bomb = _gzip_of_zeros(240 << 20)  # 240 MiB inflated, ~240 KB on the wire
    assert len(bomb) < 256 * 1024
    before = _peak_rss_kib(proxy.popen.pid)
    headers = {**auth(cfg, dev), "content-type": "application/json", "content-encoding": "gzip"}
    t0 = time.monotonic()
    r = await http.post("/v1/pings", content=bomb, headers=headers)
    assert r.status_code == 413
    assert r.json()["error"] == "inflated_too_large"
    assert time.monotonic() - t0 < 2.0
    # inflating it all would have cost the proxy 240 MiB; it stopped after ~2 MiB
    assert _peak_rss_kib(proxy.popen.pid) - before < 32 * 1024
    # a real body inflating to just under 2 MiB is fine
    body = orjson.dumps([ping(1)]) + b" " * (2 * 1024 * 1024 - 400)
    r = await http.post("/v1/pings", content=gzip.compress(body), headers=headers)
    assert r.status_code == 202, r.text
    r = await http.post("/v1/pings", content=gzip.compress(body + b" " * 400), headers=headers)
    assert r.status_code == 413 and r.json()["error"] == "inflated_too_large"
    for broken in (b"not gzip at all", gzip.compress(orjson.dumps([ping(2)]))[:-12]):
        r = await http.post("/v1/pings", content=broken, headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "bad_gzip", r.text
    assert seqs(await pings_since(cfg.bootstrap, mark, [dev]), dev) == [1]


async def test_batch_over_500_is_413_and_500_is_fine(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev, dev2 = device("413-batch"), device("500-batch")
    r = await http.post("/v1/pings", json=[ping(i) for i in range(1, 502)], headers=auth(cfg, dev))
    assert r.status_code == 413
    assert r.json()["error"] == "batch_too_large"
    r = await http.post("/v1/pings", json=[ping(i) for i in range(1, 501)], headers=auth(cfg, dev2))
    assert r.status_code == 202 and r.json() == {"accepted": 500, "rejected": []}
    found = await pings_since(cfg.bootstrap, mark, [dev, dev2])
    assert seqs(found, dev) == [] and seqs(found, dev2) == list(range(1, 501))


async def test_wrong_content_type_or_encoding_is_415(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("415")
    body = orjson.dumps([ping(1)])
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx", "multipart/form-data", ""):
        r = await http.post("/v1/pings", content=body, headers={**auth(cfg, dev), "content-type": ctype})
        assert r.status_code == 415, ctype
        assert r.json()["error"] == "unsupported_media_type"
    for enc in ("br", "deflate", "zstd", "gzip, gzip"):
        r = await http.post(
            "/v1/pings",
            content=body,
            headers={**auth(cfg, dev), "content-type": "application/json", "content-encoding": enc},
        )
        assert r.status_code == 415, enc
        assert r.json()["error"] == "unsupported_encoding"
    r = await http.post(
        "/v1/pings", content=body, headers={**auth(cfg, dev), "content-type": "Application/JSON; charset=utf-8"}
    )
    assert r.status_code == 202
    assert seqs(await pings_since(cfg.bootstrap, mark, [dev]), dev) == [1]


# -- rate limit and retries ----------------------------------------------------------------------
async def test_a_flooding_device_gets_429_and_others_do_not_notice(
    stack: Stack, settings: Settings, mark: dict[TopicPartition, int]
) -> None:
    proc = stack.ingest(TRAVERZ_INGEST_RATE="0.5", TRAVERZ_INGEST_BURST="3")
    flood, calm = device("429-flood"), device("429-calm")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{proc.port}") as http:
        codes = []
        for seq in range(1, 7):
            r = await http.post("/v1/pings", json=[ping(seq)], headers=auth(settings, flood))
            codes.append(r.status_code)
            if r.status_code == 429:
                assert r.json()["error"] == "rate_limited"
                assert 1 <= int(r.headers["retry-after"]) <= 2
        assert codes == [202, 202, 202, 429, 429, 429]
        r = await http.post("/v1/pings", json=[ping(1)], headers=auth(settings, calm))
        assert r.status_code == 202
    found = await pings_since(settings.bootstrap, mark, [flood, calm])
    assert seqs(found, flood) == [1, 2, 3] and seqs(found, calm) == [1]


async def test_a_retried_batch_is_accepted_again_with_the_same_ids(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("retry")
    batch = [ping(7), ping(8)]
    for _ in range(2):
        r = await http.post("/v1/pings", json=batch, headers=auth(cfg, dev))
        assert r.status_code == 202 and r.json() == {"accepted": 2, "rejected": []}
    found = await pings_since(cfg.bootstrap, mark, [dev])
    # both copies are in Kafka under the same (device_id, seq): the stream side dedupes
    assert sorted((p["device_id"], p["seq"]) for p in found) == [(dev, 7), (dev, 7), (dev, 8), (dev, 8)]
    first, second = ([p for p in found if p["seq"] == s] for s in (7, 8))
    assert first[0] == first[1] and second[0] == second[1]


async def test_concurrent_requests_share_records_and_each_ping_lands_on_its_keys_partition(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    """Single-ping requests from many devices at once are coalesced: fewer records than requests,
    every accepted ping in Kafka exactly once, on the partition its own key hashes to."""
    devs = [device(f"coalesce{i}") for i in range(200)]
    spots = [spot() for _ in devs]
    assert len({key_of(*s) for s in spots}) > 1
    headers = {d: auth(cfg, d) for d in devs}

    async def post(i: int) -> int:
        r = await http.post("/v1/pings", json=ping(1, *spots[i]), headers=headers[devs[i]])
        return r.status_code

    assert await asyncio.gather(*(post(i) for i in range(len(devs)))) == [202] * len(devs)
    found = await pings_since(cfg.bootstrap, mark, devs)  # checks each ping's partition
    assert sorted((p["device_id"], p["seq"]) for p in found) == sorted((d, 1) for d in devs)
    by_dev = {p["device_id"]: p for p in found}
    assert all((by_dev[d]["lat"], by_dev[d]["lon"]) == spots[i] for i, d in enumerate(devs))
    wanted = set(devs)
    records = [
        rec
        for rec in await records_since(cfg.bootstrap, mark)
        if any(p["device_id"] in wanted for p in orjson.loads(rec.value)["pings"])
    ]
    assert len(records) < len(devs) / 4, len(records)


# -- encodings ------------------------------------------------------------------------------------
async def test_gzip_requests_and_gzip_responses(
    http: httpx.AsyncClient, cfg: Settings, mark: dict[TopicPartition, int]
) -> None:
    dev = device("gzip")
    lat, lon = spot()
    body = gzip.compress(orjson.dumps([ping(i, lat, lon) for i in range(1, 51)]))
    headers = {**auth(cfg, dev), "content-type": "application/json", "content-encoding": "gzip"}
    r = await http.post("/v1/pings", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["accepted"] == 50
    # a large answer (500 rejected pings) comes gzipped when the client accepts it
    bad = [ping(i, lat=100.0) for i in range(500)]
    r = await http.post("/v1/pings", json=bad, headers={**auth(cfg, dev), "accept-encoding": "gzip"})
    assert r.status_code == 400
    assert r.headers["content-encoding"] == "gzip" and "accept-encoding" in r.headers["vary"].lower()
    assert int(r.headers["content-length"]) < len(orjson.dumps(r.json())) / 5
    assert r.json()["rejected"][499] == {"index": 499, "reason": "lat: out of range"}
    r = await http.post("/v1/pings", json=bad, headers={**auth(cfg, dev), "accept-encoding": "identity"})
    assert r.status_code == 400 and "content-encoding" not in r.headers
    r = await http.post("/v1/pings", json=bad, headers={**auth(cfg, dev), "accept-encoding": "gzip;q=0"})
    assert r.status_code == 400 and "content-encoding" not in r.headers
    # small answers are not worth compressing
    r = await http.post("/v1/pings", json=[ping(51, lat, lon)], headers={**auth(cfg, dev), "accept-encoding": "gzip"})
    assert r.status_code == 202 and "content-encoding" not in r.headers
    assert seqs(await pings_since(cfg.bootstrap, mark, [dev]), dev) == list(range(1, 52))


# -- operations -----------------------------------------------------------------------------------
async def test_health_ready_and_metrics(http: httpx.AsyncClient, cfg: Settings) -> None:
    r = await http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await http.get("/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True}

    before = (await http.get("/metrics")).text
    dev = device("metrics")
    batch = [ping(1), ping(2), ping(3, lat=95.0), ping(4, speed_mps=99.0), ping(5, speed_mps=-3.0)]
    r = await http.post("/v1/pings", json=batch, headers=auth(cfg, dev))
    assert r.status_code == 202
    r = await http.post("/v1/pings", json=[ping(9)], headers={"authorization": "Bearer nope"})
    assert r.status_code == 401
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("traverz_ingest_pings_accepted_total") == 2
    assert moved("traverz_ingest_pings_rejected_total", reason="lat") == 1
    assert moved("traverz_ingest_pings_rejected_total", reason="speed_mps") == 2
    assert moved("traverz_ingest_requests_total", route="pings", status="202") == 1
    assert moved("traverz_ingest_requests_total", route="pings", status="401") == 1
    assert moved("traverz_ingest_produce_seconds_count") == 1
    assert moved("traverz_ingest_produce_seconds_sum") > 0
    assert moved("traverz_ingest_produce_seconds_bucket", le="+Inf") == 1
    assert "# TYPE traverz_ingest_produce_seconds histogram" in after
    assert moved("traverz_ingest_batch_pings_count") == 1


async def test_openapi_is_valid_3_1_and_covers_every_route(http: httpx.AsyncClient) -> None:
    from openapi_spec_validator import validate
    from openapi_spec_validator.versions import consts, get_spec_version

    r = await http.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    spec = r.json()
    assert get_spec_version(spec) == consts.OPENAPIV31
    validate(spec)
    app = build_app(Settings())
    routes = {
        (route.path, method.lower())  # type: ignore[attr-defined]
        for route in app.routes
        for method in (route.methods or ()) - {"HEAD"}  # type: ignore[attr-defined]
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops if method != "parameters"}
    assert routes == documented
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (path, method)
            if method == "post":
                assert {"202", "400", "401", "413", "415", "429", "503"} <= set(op["responses"]), path


# -- reports and votes ---------------------------------------------------------------------------
async def test_reports_and_votes_land_keyed_by_the_cell_in_the_id(http: httpx.AsyncClient, cfg: Settings) -> None:
    since = await end_offsets(cfg.bootstrap, TOPIC_REPORTS)
    dev, voter = device("report"), device("voter")
    lat, lon = spot()
    now = time.time()
    report = {"type": "crash", "lat": lat, "lon": lon, "heading_deg": 370 - 10, "ts": now - 3, "text": "t" * 280}
    r = await http.post("/v1/reports", json=report, headers=auth(cfg, dev))
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    cell = key_of(lat, lon)
    assert re.fullmatch(rf"r-{cell}-[0-9a-f]{{16}}", rid)
    r = await http.post(f"/v1/reports/{rid}/votes", json={"vote": "still_there"}, headers=auth(cfg, voter))
    assert r.status_code == 202 and r.json() == {"report_id": rid, "vote": "still_there"}
    r = await http.post(f"/v1/reports/{rid}/votes", json={"vote": "not_there"}, headers=auth(cfg, dev))
    assert r.status_code == 202

    # refusals
    bad_reports = [
        ({**report, "type": "alien_landing"}, "type: must be one of"),
        ({**report, "type": {"crash": 1}}, "type: must be one of"),  # was a 500
        ({**report, "text": "t" * 281}, "text: a string of at most 280 characters"),
        ({**report, "text": 5}, "text: a string of at most 280 characters"),
        ({**report, "lat": 91}, "lat/lon: out of range"),
        ({**report, "heading_deg": "east"}, "heading_deg: must be a finite number"),
        ({**report, "ts": now + 3600}, "ts: out of range"),
        ([report], "a report is an object"),
    ]
    for body, detail in bad_reports:
        r = await http.post("/v1/reports", json=body, headers=auth(cfg, dev))
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_report" and r.json()["detail"].startswith(detail), r.text
    for vote in ("maybe", ["still_there"], {}, None):
        r = await http.post(f"/v1/reports/{rid}/votes", json={"vote": vote}, headers=auth(cfg, voter))
        assert r.status_code == 400 and r.json()["error"] == "invalid_vote", vote
    res9 = geo.cell(lat, lon, CELL_RES)
    for bad_id in (
        "nope",
        f"r-{cell}",
        f"x-{cell}-0123456789abcdef",
        "r-ffffffffffffff-0123456789abcdef",
        f"r-{res9}-0123456789abcdef",  # a real cell, but not the key resolution
        f"r-{cell}-",
        f"r-{cell}-0123456789abcdeg",
        f"r-{cell.upper()}-0123456789abcdef",
    ):
        r = await http.post(f"/v1/reports/{bad_id}/votes", json={"vote": "not_there"}, headers=auth(cfg, voter))
        assert r.status_code == 404, bad_id
        assert r.json()["error"] == "unknown_report"
    r = await http.post(f"/v1/reports/{rid}/votes", json={"vote": "not_there"})
    assert r.status_code == 401

    recs = [
        (rec.key.decode(), orjson.loads(rec.value))
        for rec in await records_since(cfg.bootstrap, since)
        if orjson.loads(rec.value).get("device_id") in (dev, voter)
    ]
    assert [doc["kind"] for _, doc in recs if doc["kind"] == "report"] == ["report"]
    assert all(key == cell for key, _ in recs)
    (rep,) = [doc for _, doc in recs if doc["kind"] == "report"]
    assert rep["id"] == rid and rep["type"] == "crash" and rep["device_id"] == dev
    assert rep["heading_deg"] == 0.0 and rep["text"] == "t" * 280 and rep["lat"] == lat
    votes = sorted((doc["device_id"], doc["vote"]) for _, doc in recs if doc["kind"] == "vote")
    assert votes == sorted([(voter, "still_there"), (dev, "not_there")])
    assert all(doc["report_id"] == rid for _, doc in recs if doc["kind"] == "vote")


# -- Kafka outage (a broker of this test's own: the session broker stays up) -----------------------
def test_kafka_outage_is_503_fast_nothing_unacked_is_claimed_and_the_proxy_recovers(
    stack: Stack, settings: Settings
) -> None:
    home = Path(os.environ.get("TRAVERZ_HOME", Path.home() / ".cache" / "traverz"))
    lay = kafka_local.layout(home, free_port(), free_port())
    dev = device("outage")
    answers: dict[int, int] = {}  # seq → status

    def post(client: httpx.Client, limit: float) -> httpx.Response:
        seq = len(answers) + 1
        t0 = time.monotonic()
        r = client.post("/v1/pings", json=[ping(seq)], headers=auth(settings, dev))
        answers[seq] = r.status_code
        assert r.status_code in (202, 503), r.text
        assert time.monotonic() - t0 < limit, (seq, time.monotonic() - t0)
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"] == "kafka_unavailable"
        return r

    def until_accepted(client: httpx.Client, within: float) -> None:
        deadline = time.monotonic() + within
        while post(client, 1.5).status_code != 202:
            assert time.monotonic() < deadline, f"no recovery after {within}s:\n{proc.output()[-3000:]}"
            time.sleep(0.3)

    # the proxy comes up (and stays up) before there is any Kafka
    proc = stack.start(
        "ingest", "ingest", port_var="TRAVERZ_INGEST_PORT", extra_env={"TRAVERZ_BOOTSTRAP": lay.bootstrap}
    )
    try:
        wait_http(proc, f"http://127.0.0.1:{proc.port}/healthz")
        with httpx.Client(base_url=f"http://127.0.0.1:{proc.port}", timeout=10) as http:
            assert http.get("/readyz").status_code == 503
            r = post(http, 0.5)  # no producer at all: 503 at once, no waiting for a timeout
            assert r.status_code == 503
            never = set(answers)

            kafka_local.start(lay, heap="384m")
            run(kafka_io.create_topics(lay.bootstrap, 2, 1))
            until_accepted(http, 30)
            for _ in range(3):
                assert post(http, 1.0).status_code == 202

            # the broker goes away: 503 + Retry-After within a second, every time
            kafka_local.stop(lay)
            outage = len(answers)
            for _ in range(4):
                assert post(http, 1.5).status_code == 503
            r = http.get("/readyz")
            assert r.status_code == 503 and r.json() == {"ready": False}
            assert http.get("/healthz").status_code == 200

            # it comes back (same data): the proxy recovers by itself
            kafka_local.start(lay, heap="384m")
            until_accepted(http, 60)
            for _ in range(3):
                assert post(http, 1.0).status_code == 202
            assert http.get("/readyz").status_code == 200

        since = {tp: 0 for tp in run(end_offsets(lay.bootstrap, TOPIC_PINGS))}
        stored = set(seqs(run(pings_since(lay.bootstrap, since, [dev])), dev))
        acked = {seq for seq, status in answers.items() if status == 202}
        assert acked <= stored, sorted(acked - stored)  # every 202 is in Kafka
        assert not never & stored  # refused before any producer existed: never stored
        assert all(answers[s] == 503 for s in range(outage + 1, outage + 5))
        assert len(acked) >= 8
    finally:
        proc.stop()
        kafka_local.stop(lay)
        kafka_local.wipe(lay)
        for child in kafka_local._CHILDREN:  # stop() reaps by pid: tell the Popen (no ResourceWarning)
            child.poll()
