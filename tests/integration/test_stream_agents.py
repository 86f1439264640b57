"""Every stream agent end to end against the real broker: ingest HTTP → Kafka → `traverz worker` → Kafka.

One ingest proxy and one worker serve the whole module (a worker takes ~10-20 s to join its
group). Each test works at its own spot in Berlin — a res-9 cell of its own, far from the others
and from the other test modules' spots — with device ids of its own, and reads the output topics
through a :class:`~tests.support.taps.Tap` that starts at their end when the test starts.

Detectors run on event time, so the scenes are phone backlogs (``ts`` up to ~3 min old, 5-s
spacing) posted at once: a 90-s stall costs no 90 s of waiting.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from pipeline import geo, kafka_io, pings
from pipeline.settings import (
    TOPIC_ALERTS,
    TOPIC_CONDITIONS,
    TOPIC_DEADLETTER,
    TOPIC_PINGS,
    TOPIC_REPORTS,
    Settings,
)
from tests.conftest import token_for
from tests.support.procs import Proc, Stack, process_env
from tests.support.taps import Msg, Tap

pytestmark = pytest.mark.integration

EAST = 90.0
WEST = 270.0
WAIT_S = 60.0  # for one thing the worker should publish within a second or two


def _spot(lat: float, lon: float) -> tuple[float, float]:
    """The centre of the res-9 cell there: every scene stays well inside its own cell."""
    return geo.cell_center(geo.cell(lat, lon, 9))


STALL = _spot(52.5360, 13.2040)  # Spandau
JAM = _spot(52.4450, 13.5750)  # Köpenick
CRASH = _spot(52.5690, 13.4020)  # Pankow
REPORT = _spot(52.4560, 13.3200)  # Steglitz
CLOSURE = _spot(52.5430, 13.5640)  # Marzahn
POISON = _spot(52.5880, 13.3000)  # Reinickendorf


# The worker's faust tables (topologies/app.py); `traverz worker` creates their changelog topics
# ("<app id>-<table>-changelog") before faust starts: left to faust, the first write to a table whose
# changelog the consumer's metadata did not list yet crashed the worker (PartitionsMismatch).
TABLES = ("cell-speed", "baseline", "devices", "crash-areas", "report-books", "active-incidents")


@dataclass
class Running:
    settings: Settings
    stack: Stack
    worker: Proc
    ingest_url: str
    run: str  # makes device ids unique per run: the worker's per-device state is not shared across runs anyway

    def token(self, device: str) -> str:
        return token_for(self.settings, device)


@pytest.fixture(scope="module")
def running(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("stream-agents")
    settings = Settings(
        bootstrap=kafka_bootstrap, data_dir=workdir / "state", app_id=f"traverz-sa{uuid.uuid4().hex[:8]}"
    )
    env = process_env(settings, TRAVERZ_MIN_DEVICES="3")
    stack = Stack(env=env, workdir=Path(workdir))
    try:
        ingest = stack.ingest()
        worker = stack.worker()
        yield Running(settings, stack, worker, f"http://127.0.0.1:{ingest.port}", uuid.uuid4().hex[:6])
    finally:
        stack.stop_all()


@pytest.fixture
def env(running: Running, request: pytest.FixtureRequest) -> Iterator[Running]:
    """The module's processes; their logs are printed when the test fails."""
    assert running.worker.popen.poll() is None, f"the worker died:\n{running.worker.output()[-3000:]}"
    yield running
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(running.stack.logs())


# -- scene helpers ------------------------------------------------------------------------------
def ping(seq: int, ts: float, at: tuple[float, float], speed: float, heading: float = EAST) -> dict[str, Any]:
    return {
        "seq": seq,
        "ts": ts,
        "lat": at[0],
        "lon": at[1],
        "speed_mps": speed,
        "heading_deg": heading,
        "accuracy_m": 5.0,
    }


def along(at: tuple[float, float], metres: float, heading: float = EAST) -> tuple[float, float]:
    """A point ``metres`` ahead of ``at`` on a road running ``heading`` (negative: behind)."""
    return geo.destination(at[0], at[1], heading if metres >= 0 else heading + 180.0, abs(metres))


async def post_pings(http: httpx.AsyncClient, env: Running, device: str, batch: list[dict[str, Any]]) -> None:
    r = await http.post("/v1/pings", json=batch, headers={"authorization": f"Bearer {env.token(device)}"})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(batch), "rejected": []}


async def post_report(http: httpx.AsyncClient, env: Running, device: str, type_: str, at: tuple[float, float]) -> str:
    body = {"type": type_, "lat": at[0], "lon": at[1], "heading_deg": EAST, "ts": time.time()}
    r = await http.post("/v1/reports", json=body, headers={"authorization": f"Bearer {env.token(device)}"})
    assert r.status_code == 202, r.text
    report_id: str = r.json()["id"]
    return report_id


async def post_vote(http: httpx.AsyncClient, env: Running, device: str, report_id: str, vote: str) -> None:
    r = await http.post(
        f"/v1/reports/{report_id}/votes",
        json={"vote": vote},
        headers={"authorization": f"Bearer {env.token(device)}"},
    )
    assert r.status_code == 202, r.text


def is_alert(type_: str, state: str, incident: str | None = None, near: tuple[float, float] | None = None) -> Any:
    def pred(m: Msg) -> bool:
        a = m.value
        return (
            m.topic == TOPIC_ALERTS
            and isinstance(a, dict)
            and a.get("type") == type_
            and a.get("state") == state
            and (incident is None or a.get("id") == incident)
            and (near is None or geo.distance_m(a["lat"], a["lon"], *near) < 200.0)
        )

    return pred


def alerts_near(tap: Tap, at: tuple[float, float], type_: str | None = None) -> list[dict[str, Any]]:
    return [
        m.value
        for m in tap.seen
        if m.topic == TOPIC_ALERTS
        and isinstance(m.value, dict)
        and (type_ is None or m.value.get("type") == type_)
        and geo.distance_m(m.value["lat"], m.value["lon"], *at) < 500.0
    ]


def condition_of(cell: str, pred: Any = None) -> Any:
    def match(m: Msg) -> bool:
        c = m.value
        return (
            m.topic == TOPIC_CONDITIONS
            and m.key == cell.encode()
            and isinstance(c, dict)
            and c.get("cell") == cell
            and (pred is None or bool(pred(c)))
        )

    return match


def sector_of(cond: dict[str, Any], heading: float) -> dict[str, Any] | None:
    secs = [s for s in cond.get("sectors", []) if s["sector"] == geo.sector(heading)]
    return secs[0] if secs else None


def mentions_any(value: Any, words: list[str]) -> list[str]:
    text = orjson.dumps(value).decode()
    return [w for w in words if w in text]


# -- 1. stalled vehicle among moving traffic ---------------------------------------------------------
async def test_stalled_vehicle_among_moving_traffic_opens_then_clears_when_it_moves_on(env: Running) -> None:
    cell = geo.cell(*STALL, 9)
    now = time.time()
    t0 = now - 160.0
    stuck = f"sa-{env.run}-stuck"
    # cars passing the spot eastbound at 11-13 m/s, one every 5 s, 3 pings each inside the cell
    cars = {f"sa-{env.run}-car{j:02d}": t0 + 5.0 * j for j in range(31)}
    still = [along(STALL, (i % 5) - 2.0) for i in range(31)]  # ±2 m of GPS jitter
    stuck_pings = [ping(1, t0, along(STALL, -60.0), 12.0)] + [
        ping(i + 2, t0 + 5.0 * (i + 1), at, 0.2 if i % 2 else 0.0) for i, at in enumerate(still)
    ]
    async with (
        Tap(env.settings.bootstrap, TOPIC_ALERTS, TOPIC_CONDITIONS) as tap,
        httpx.AsyncClient(base_url=env.ingest_url) as http,
    ):
        # it stops (live), then the traffic goes round it: passers are counted as their pings come in,
        # so a stop must be known before them (a stalled phone's backlog after a coverage gap is not
        # matched with pings the worker saw earlier; see pipeline/detect/spots.py)
        await post_pings(http, env, stuck, stuck_pings[:3])
        for j, (car, ts) in enumerate(cars.items()):
            speed = 11.0 + j % 3
            await post_pings(
                http, env, car, [ping(k + 1, ts + 5.0 * k, along(STALL, -60.0 + 60.0 * k), speed) for k in range(3)]
            )
        await post_pings(http, env, stuck, stuck_pings[3:])  # the rest of its 2.5 min standing, as a backlog

        opened_msg = await tap.wait(is_alert("stalled_vehicle", "opened", near=STALL), WAIT_S, "stall opened")
        opened = opened_msg.value
        assert opened_msg.key == cell.encode()  # keyed by its cell, not by anything about the vehicle
        assert geo.distance_m(opened["lat"], opened["lon"], *STALL) <= 25.0
        assert opened["cell"] == cell
        assert opened["confidence"] >= 0.5
        assert opened["evidence"]["probes"] == 1
        assert mentions_any(opened, [stuck, *cars, "device"]) == []
        incident = opened["id"]
        listed = await tap.wait(condition_of(cell, lambda c: incident in c["incidents"]), WAIT_S, "incident listed")
        cond = listed.value
        sector = sector_of(cond, EAST)
        assert sector is not None and sector["devices"] >= 4 and sector["median_mps"] >= 5.0
        assert mentions_any(cond, [stuck, *cars]) == []

        # the driver gets going again: on its way east, 40 and 100 m on
        last = stuck_pings[-1]["ts"]
        away = [ping(40, last + 5.0, along(STALL, 40.0), 9.0), ping(41, last + 10.0, along(STALL, 100.0), 12.0)]
        await post_pings(http, env, stuck, away)
        cleared = (await tap.wait(is_alert("stalled_vehicle", "cleared", incident), WAIT_S, "stall cleared")).value
        assert cleared["reason"] == "moved_on"
        assert mentions_any(cleared, [stuck, "device"]) == []

        def unlisted(m: Msg) -> bool:  # a later condition of the cell (same key: same partition) without it
            return m.offset > listed.offset and condition_of(cell, lambda c: incident not in c["incidents"])(m)

        await tap.wait(unlisted, WAIT_S, "incident gone from the cell's condition")
        assert len(tap.matching(is_alert("stalled_vehicle", "opened", near=STALL))) == 1


# -- 2. everyone stopped: a jam, not a stalled vehicle ------------------------------------------------
async def test_everyone_stopped_is_congestion_not_a_stalled_vehicle(env: Running) -> None:
    cell = geo.cell(*JAM, 9)
    now = time.time()
    t0 = now - 160.0
    queue = {f"sa-{env.run}-jam{i}": along(JAM, 8.0 * i - 16.0) for i in range(5)}  # a queue, 8 m apart
    sent = 0
    async with (
        Tap(env.settings.bootstrap, TOPIC_ALERTS, TOPIC_CONDITIONS) as tap,
        httpx.AsyncClient(base_url=env.ingest_url) as http,
    ):
        for device, at in queue.items():
            batch = [ping(1, t0, along(at, -15.0), 3.0)] + [
                ping(i + 2, t0 + 5.0 * (i + 1), at, 0.5 if i % 3 else 0.0) for i in range(31)
            ]
            await post_pings(http, env, device, batch)
            sent += len(batch)

        # then three cars in the opposite direction, free-flowing: a new sector is a material change, so
        # the cell's next condition shows them — and, coming after them in the partition, every jam ping
        for i in range(3):
            car = f"sa-{env.run}-jamwest{i}"
            await post_pings(http, env, car, [ping(1, now - 2.0 * i, along(JAM, 10.0 * i), 13.0, WEST)])
        cond = (
            await tap.wait(
                condition_of(cell, lambda c: (sector_of(c, WEST) or {}).get("devices") == 3),
                WAIT_S,
                f"condition of {cell} with both directions",
            )
        ).value
        east = sector_of(cond, EAST)
        assert east is not None and east["samples"] == sent, "the worker has not taken every jam ping"
        assert east["devices"] == len(queue) and east["median_mps"] < 1.0
        assert east["level"] == 4  # standstill: a jam
        assert cond["incidents"] == []
        # alerts are shipped while the pings are processed, before the condition: read the topic to its end
        await tap.catch_up()
        assert alerts_near(tap, JAM, "stalled_vehicle") == []


# -- 3. crash: a hard brake into a standstill, a second vehicle stopped next to it -----------------------
async def test_hard_brake_into_standstill_next_to_a_stopped_vehicle_opens_a_crash(env: Running) -> None:
    now = time.time()
    tb = now - 45.0  # A's hard brake ends here
    a, b = f"sa-{env.run}-crash-a", f"sa-{env.run}-crash-b"
    a_stop, b_stop = CRASH, along(CRASH, 7.0)
    # A at 16 m/s, then 0.5 m/s 4 s later (3.9 m/s² ≈ 0.4 g), then standing for 30 s
    a_pings = [
        ping(1, tb - 9.0, along(CRASH, -112.0), 16.0),
        ping(2, tb - 4.0, along(CRASH, -32.0), 16.0),
        ping(3, tb, a_stop, 0.5),
    ] + [ping(4 + i, tb + 5.0 * (i + 1), a_stop, 0.0) for i in range(6)]
    # B ahead of it, stopping gently (≈ 1.9 m/s²) 7 m further on, standing as long
    b_pings = [
        ping(1, tb - 9.0, along(CRASH, -90.0), 10.0),
        ping(2, tb - 4.0, along(CRASH, -20.0), 8.0),
        ping(3, tb, b_stop, 0.5),
    ] + [ping(4 + i, tb + 5.0 * (i + 1), b_stop, 0.0) for i in range(6)]
    assert geo.distance_m(*a_stop, *b_stop) < 30.0
    # and the traffic goes round them in the next lane (4 m aside): a lane is blocked, not a red light
    lane = geo.destination(*CRASH, 180.0, 4.0)
    passers = {
        f"sa-{env.run}-crash-by{i}": [
            ping(1, tb + 5.0 + i, along(lane, -60.0), 14.0),
            ping(2, tb + 10.0 + i, along(lane, 20.0), 14.0),
        ]
        for i in range(2)
    }
    async with Tap(env.settings.bootstrap, TOPIC_ALERTS) as tap, httpx.AsyncClient(base_url=env.ingest_url) as http:
        await post_pings(http, env, a, a_pings)
        await post_pings(http, env, b, b_pings)
        for dev, pings in passers.items():
            await post_pings(http, env, dev, pings)
        crash = (await tap.wait(is_alert("crash", "opened", near=CRASH), WAIT_S, "crash opened")).value
        assert crash["confidence"] >= 0.6
        assert crash["evidence"]["probes"] >= 2
        assert crash["evidence"]["reports"] == 0
        assert geo.distance_m(crash["lat"], crash["lon"], *a_stop) <= 30.0
        assert mentions_any(crash, [a, b, "device"]) == []


# -- 4. reports: open, merge, votes; closure ----------------------------------------------------------------
async def test_hazard_reports_open_merge_and_a_not_there_majority_clears(env: Running) -> None:
    """One report opens a hazard (a crash needs two devices: tests/unit/test_detect_incidents.py)."""
    first, second = f"sa-{env.run}-rep1", f"sa-{env.run}-rep2"
    voters = [f"sa-{env.run}-voter{i}" for i in range(3)]
    async with Tap(env.settings.bootstrap, TOPIC_ALERTS) as tap, httpx.AsyncClient(base_url=env.ingest_url) as http:
        r1 = await post_report(http, env, first, "hazard", REPORT)
        opened = (await tap.wait(is_alert("hazard", "opened", near=REPORT), WAIT_S, "reported hazard")).value
        incident = opened["id"]
        assert opened["confidence"] == pytest.approx(0.5, abs=0.02)
        assert opened["evidence"] == {"probes": 0, "reports": 1, "votes_up": 0, "votes_down": 0}
        assert geo.distance_m(opened["lat"], opened["lon"], *REPORT) < 1.0
        assert mentions_any(opened, [first, r1, "device"]) == []

        # another driver, ~30 m on: the same hazard
        r2 = await post_report(http, env, second, "hazard", geo.destination(*REPORT, 0.0, 30.0))
        merged = (await tap.wait(is_alert("hazard", "updated", incident), WAIT_S, "merged report")).value
        assert merged["evidence"]["reports"] == 2
        assert merged["confidence"] == pytest.approx(0.75, abs=0.02)
        assert len(tap.matching(is_alert("hazard", "opened", near=REPORT))) == 1

        # not_there must outnumber still_there + the two reporters: two downs are not enough ...
        await post_vote(http, env, voters[0], r1, "not_there")
        await post_vote(http, env, voters[1], r2, "not_there")  # a vote may name any report of the incident

        def second_down(m: Msg) -> bool:
            return bool(
                (is_alert("hazard", "updated", incident)(m) and m.value["evidence"]["votes_down"] == 2)
                or is_alert("hazard", "cleared", incident)(m)
            )

        after_two = (await tap.wait(second_down, WAIT_S, "the second not_there vote taken")).value
        assert after_two["state"] == "updated", after_two
        # ... the third is a majority
        await post_vote(http, env, voters[2], r1, "not_there")
        cleared = (await tap.wait(is_alert("hazard", "cleared", incident), WAIT_S, "voted down")).value
        assert cleared["reason"] == "voted_down"
        assert cleared["evidence"]["votes_down"] == 3
        assert mentions_any(cleared, [first, second, *voters]) == []


async def test_closure_needs_two_devices_and_closes_the_cell(env: Running) -> None:
    one, other = f"sa-{env.run}-close1", f"sa-{env.run}-close2"
    async with (
        Tap(env.settings.bootstrap, TOPIC_ALERTS, TOPIC_CONDITIONS) as tap,
        httpx.AsyncClient(base_url=env.ingest_url) as http,
    ):
        # one device reporting twice is still one device
        await post_report(http, env, one, "closure", CLOSURE)
        await post_report(http, env, one, "closure", along(CLOSURE, 10.0))
        await post_report(http, env, other, "closure", along(CLOSURE, 20.0))
        opened = (await tap.wait(is_alert("closure", "opened", near=CLOSURE), WAIT_S, "closure opened")).value
        # it opened on the second device's report, not on either of the first device's
        assert opened["evidence"]["reports"] == 3
        assert opened["confidence"] >= 0.7
        assert [a["state"] for a in alerts_near(tap, CLOSURE)] == ["opened"]
        cell = opened["cell"]
        cond = (await tap.wait(condition_of(cell, lambda c: opened["id"] in c["incidents"]), WAIT_S, "closed")).value
        assert cond["level"] == 5
        assert cond["jam_factor"] == 10.0


# -- 5. poison records: dead letters, and the worker goes on --------------------------------------------------
async def test_poison_records_go_to_dead_letters_and_the_agents_keep_going(env: Running) -> None:
    lat, lon = POISON
    key7 = geo.key_cell(lat, lon, env.settings.key_resolution, env.settings.cell_resolution)
    cell = geo.cell(lat, lon, 9)
    now = time.time()
    good = {"device_id": f"sa-{env.run}-p0", "seq": 1, "ts": now, "lat": lat, "lon": lon}
    good |= {"speed_mps": 10.0, "heading_deg": EAST, "accuracy_m": 5.0}
    poison: list[tuple[str, bytes, str]] = [
        (TOPIC_PINGS, b"\x00\x01 not json {", "not JSON"),
        (TOPIC_PINGS, pings.encode_record(key7, [{**good, "seq": "7"}], now), "mistyped seq"),
        (TOPIC_PINGS, pings.encode_record(key7, [{**good, "lat": 500.0}], now), "lat=500"),
        (TOPIC_REPORTS, orjson.dumps({"v": 1, "kind": "nonsense", "id": "x"}), "kind nonsense"),
        (TOPIC_REPORTS, b"{truncated", "report not JSON"),
    ]
    valid_pings = [
        {**good, "device_id": f"sa-{env.run}-p{i}", "speed_mps": 9.0 + i, "lat": lat + 0.0001 * i} for i in range(3)
    ]
    report = {
        "v": 1,
        "kind": "report",
        "id": f"r-{key7}-{uuid.uuid4().hex[:16]}",
        "device_id": f"sa-{env.run}-p9",
        "type": "hazard",
        "lat": lat,
        "lon": lon,
        "heading_deg": EAST,
        "ts": now,
        "ingest_ts": now,
    }
    producer = AIOKafkaProducer(bootstrap_servers=env.settings.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    sent: list[tuple[str, int, int, bytes, str]] = []  # topic, partition, offset, value, what
    try:
        async with Tap(env.settings.bootstrap, TOPIC_DEADLETTER, TOPIC_ALERTS, TOPIC_CONDITIONS) as tap:
            for topic, value, what in poison:
                meta = await producer.send_and_wait(topic, value, key=key7.encode())
                sent.append((topic, meta.partition, meta.offset, value, what))
            # after them, in the same partitions: records the agents must still take
            await producer.send_and_wait(TOPIC_PINGS, pings.encode_record(key7, valid_pings, now), key=key7.encode())
            await producer.send_and_wait(TOPIC_REPORTS, orjson.dumps(report), key=key7.encode())

            for topic, partition, offset, value, what in sent:

                def letter(m: Msg, topic: str = topic, partition: int = partition, offset: int = offset) -> bool:
                    d = m.value
                    return (
                        m.topic == TOPIC_DEADLETTER
                        and isinstance(d, dict)
                        and d.get("source_topic") == topic
                        and d.get("partition") == partition
                        and d.get("offset") == offset
                    )

                dead = (await tap.wait(letter, WAIT_S, f"dead letter for {what}")).value
                assert isinstance(dead["reason"], str) and dead["reason"].strip(), what
                assert base64.b64decode(dead["value"]) == value, what
                assert dead["key"] is not None and base64.b64decode(dead["key"]) == key7.encode(), what

            cond = (
                await tap.wait(
                    condition_of(cell, lambda c: (sector_of(c, EAST) or {}).get("devices") == 3), WAIT_S, "condition"
                )
            ).value
            assert (sector_of(cond, EAST) or {})["samples"] == 3
            hazard = (await tap.wait(is_alert("hazard", "opened", near=POISON), WAIT_S, "hazard opened")).value
            assert hazard["evidence"]["reports"] == 1
            # the poison records went to the dead letters (at least once: delivery is at-least-once), the valid
            # ones did not
            await tap.catch_up()
            letters = [m.value for m in tap.seen if m.topic == TOPIC_DEADLETTER and m.key == key7.encode()]
            assert {(d["source_topic"], d["offset"]) for d in letters} == {(s[0], s[2]) for s in sent}
    finally:
        await producer.stop()


async def test_worker_made_its_changelog_topics_with_the_topics_partition_count(env: Running) -> None:
    """`traverz worker` creates them before faust starts (a start-up race otherwise killed it)."""
    names = [f"{env.settings.app_id}-{t}-changelog" for t in TABLES]
    found = await kafka_io.describe_partitions(env.settings.bootstrap, names)
    assert found == dict.fromkeys(names, env.settings.partitions)
