"""Push workers against the real broker: conditions and alerts produced to the real topics,
two real ``traverz push`` processes, real WebSocket clients."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pipeline import geo
from pipeline.bench import wsclient
from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS, Settings
from tests.conftest import token_for
from tests.support.procs import Proc, Stack, process_env

pytestmark = pytest.mark.integration

# Spots no other test uses (Paris, per test a different block), so shared topics do not mix tests.
BASE = (48.80, 2.20)


def _spot(i: int) -> tuple[float, float]:
    return geo.destination(*BASE, 90.0, 6000.0 * i)


@pytest.fixture(scope="module")
def push_settings(kafka_bootstrap: str) -> Settings:
    return Settings(bootstrap=kafka_bootstrap)


@pytest.fixture(scope="module")
def workers(push_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    """Two push workers side by side; the per-driver rate limit is lifted so a slow socket fills fast."""
    stack = Stack(env=process_env(push_settings), workdir=Path(tmp_path_factory.mktemp("push")))
    extra = {"TRAVERZ_PUSH_STUCK_S": "2", "TRAVERZ_PUSH_RATE": "100000"}
    try:
        yield [stack.push("push-1", **extra), stack.push("push-2", **extra)]
    finally:
        stack.stop_all()


@pytest.fixture
async def producer(push_settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=push_settings.bootstrap, acks="all")
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def condition(cell: str, sectors: dict[int, float], version: int | None = None) -> dict[str, Any]:
    lat, lon = geo.cell_center(cell)
    now = time.time()
    secs = [
        {
            "sector": s,
            "heading_deg": geo.sector_heading(s),
            "mean_mps": v,
            "median_mps": v,
            "p85_mps": v,
            "samples": 9,
            "devices": 3,
            "free_flow_mps": 13.9,
            "level": 0 if v >= 12.5 else 3,
            "jam_factor": round(max(0.0, 10 * (1 - v / 13.9)), 2),
        }
        for s, v in sectors.items()
    ]
    return {
        "cell": cell,
        "version": version or int(now * 1000),
        "updated_at": now,
        "lat": lat,
        "lon": lon,
        "level": max((s["level"] for s in secs), default=0),
        "jam_factor": max((s["jam_factor"] for s in secs), default=0.0),
        "sectors": secs,
        "incidents": [],
        "sample_bucket": "3-9",
        "window_s": 300,
    }


def alert(cell: str, heading: float, kind: str = "crash", state: str = "opened", **kw: Any) -> dict[str, Any]:
    lat, lon = geo.cell_center(cell)
    now = time.time()
    return {
        "id": kw.pop("id", f"t-{uuid.uuid4().hex[:12]}"),
        "type": kind,
        "state": state,
        "lat": lat,
        "lon": lon,
        "heading_deg": heading,
        "cell": cell,
        "confidence": 0.9,
        "opened_at": now,
        "updated_at": now,
        "expires_at": None,
        "version": int(now * 1000),
        "evidence": {"probes": 2, "reports": 1, "votes_up": 0, "votes_down": 0},
        **kw,
    }


async def publish(p: AIOKafkaProducer, *items: dict[str, Any]) -> None:
    for item in items:
        topic = TOPIC_CONDITIONS if "sectors" in item else TOPIC_ALERTS
        await p.send_and_wait(topic, orjson.dumps(item), key=item["cell"].encode())


def ws_url(proc: Proc) -> str:
    return f"ws://127.0.0.1:{proc.port}/v1/stream"


async def subscribe(ws: ClientConnection, **msg: Any) -> dict[str, Any]:
    await ws.send(orjson.dumps({"type": "subscribe", **msg}).decode())
    return await next_of(ws, "subscribed")


async def next_of(ws: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    async def _loop() -> dict[str, Any]:
        while True:
            msg: dict[str, Any] = orjson.loads(await ws.recv())
            if msg["type"] == kind:
                return msg

    return await asyncio.wait_for(_loop(), timeout)


async def first_of_each(ws: ClientConnection, *kinds: str, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """The first message of each kind, in whichever order they come: updates of two topics have none."""
    got: dict[str, dict[str, Any]] = {}

    async def _loop() -> dict[str, dict[str, Any]]:
        while len(got) < len(kinds):
            msg: dict[str, Any] = orjson.loads(await ws.recv())
            if msg["type"] in kinds:
                got.setdefault(msg["type"], msg)
        return got

    return await asyncio.wait_for(_loop(), timeout)


async def nothing_but(ws: ClientConnection, seconds: float) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                got.append(orjson.loads(await ws.recv()))
    except TimeoutError:
        return got


def _driver(settings: Settings, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(settings, name)}"}


async def test_alert_reaches_only_drivers_heading_into_it(
    workers: list[Proc], producer: AIOKafkaProducer, push_settings: Settings
) -> None:
    lat, lon = _spot(1)
    target = geo.cell(lat, lon, 9)
    south = geo.destination(lat, lon, 180.0, 500.0)
    north = geo.destination(lat, lon, 0.0, 500.0)
    url, s = ws_url(workers[0]), push_settings
    async with (
        connect(url, additional_headers=_driver(s, "toward")) as toward,
        connect(url, additional_headers=_driver(s, "away")) as away,
        connect(url, additional_headers=_driver(s, "opposite")) as opposite,
    ):
        await subscribe(toward, lat=south[0], lon=south[1], heading_deg=0.0, speed_mps=10.0)  # northbound, 500 m before
        await subscribe(away, lat=north[0], lon=north[1], heading_deg=0.0, speed_mps=10.0)  # northbound, past it
        # southbound on the other carriageway, heading toward the spot
        sub = await subscribe(opposite, lat=north[0], lon=north[1], heading_deg=180.0, speed_mps=10.0)
        assert sub["cells"] > 3
        crash = alert(target, heading=2.0)
        await publish(producer, crash, condition(target, {0: 4.0}))  # only the northbound side is slow
        got = await first_of_each(toward, "alert", "condition")
        assert got["alert"]["alert"]["id"] == crash["id"]
        assert got["condition"]["condition"]["cell"] == target
        assert await nothing_but(away, 1.5) == []
        assert await nothing_but(opposite, 0.1) == []
        # the same incident again with nothing new is not announced twice
        await publish(producer, {**crash, "version": crash["version"] + 1, "state": "updated"})
        assert await nothing_but(toward, 1.5) == []


async def test_reconnect_with_last_version_catches_up(
    workers: list[Proc], producer: AIOKafkaProducer, push_settings: Settings
) -> None:
    lat, lon = _spot(2)
    target = geo.cell(lat, lon, 9)
    here = geo.destination(lat, lon, 270.0, 300.0)
    sub = {"lat": here[0], "lon": here[1], "heading_deg": 90.0, "speed_mps": 8.0}
    first = condition(target, {2: 13.0})
    headers = _driver(push_settings, "reconnecting")
    async with connect(ws_url(workers[0]), additional_headers=headers) as ws:
        await subscribe(ws, **sub)
        await publish(producer, first)
        seen = (await next_of(ws, "condition"))["condition"]["version"]
    assert seen == first["version"]
    # while the driver is away: its side jams and a crash opens
    missed = condition(target, {2: 3.0}, version=seen + 10)
    crash = alert(target, heading=90.0, version=seen + 20)
    await publish(producer, missed, crash)
    await asyncio.sleep(1.0)
    async with connect(ws_url(workers[0]), additional_headers=headers) as ws:
        await subscribe(ws, **sub, since_version=seen)
        got = await nothing_but(ws, 1.5)
    assert [m["condition"]["version"] for m in got if m["type"] == "condition"] == [missed["version"]]
    assert [m["alert"]["id"] for m in got if m["type"] == "alert"] == [crash["id"]]
    async with connect(ws_url(workers[0]), additional_headers=headers) as ws:
        await subscribe(ws, **sub, since_version=crash["version"])
        assert await nothing_but(ws, 1.0) == []  # up to date: nothing to catch up


async def test_slow_client_does_not_slow_others_and_is_dropped(
    workers: list[Proc], producer: AIOKafkaProducer, push_settings: Settings
) -> None:
    lat, lon = _spot(3)
    end = geo.destination(lat, lon, 90.0, 2500.0)
    route = [[lat, lon], list(end)]
    port = workers[0].port
    slow = await wsclient.connect("127.0.0.1", port, token_for(push_settings, "slow"), rcvbuf=4096)
    slow.send_text(
        orjson.dumps(
            {"type": "subscribe", "lat": lat, "lon": lon, "heading_deg": 90.0, "speed_mps": 10.0, "route": route}
        ).decode()
    )
    await asyncio.sleep(0.5)
    assert slow.transport is not None
    slow.transport.pause_reading()  # a phone that stopped reading
    cells = sorted(geo.corridor_cells([(lat, lon), end], 150.0, 9))
    async with connect(ws_url(workers[0]), additional_headers=_driver(push_settings, "fast")) as fast:
        await subscribe(fast, lat=lat, lon=lon, heading_deg=90.0, speed_mps=10.0, route=route)
        pad = "x" * 30_000  # large updates fill the slow socket (and kernel buffers) quickly
        last: dict[str, Any] = {}
        for rnd in range(40):
            batch = [{**condition(c, {2: 3.0 if rnd % 2 else 13.0}), "incidents": [pad[: 20_000 + rnd]]} for c in cells]
            await asyncio.gather(
                *(producer.send(TOPIC_CONDITIONS, orjson.dumps(b), key=b["cell"].encode()) for b in batch)
            )
            last = batch[-1]
        await producer.flush()
        t0 = time.monotonic()
        while True:
            msg = await next_of(fast, "condition", timeout=15.0)
            if msg["condition"]["version"] == last["version"] and msg["condition"]["cell"] == last["cell"]:
                break
        assert time.monotonic() - t0 < 10.0
    # the slow one was let go (stuck or overflowing), not waited for
    await asyncio.sleep(3.0)
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    dropped = [ln for ln in text.splitlines() if ln.startswith("traverz_push_clients_dropped_total")]
    assert any(float(ln.split()[-1]) >= 1 for ln in dropped), text
    slow.transport.resume_reading()
    try:
        await asyncio.wait_for(slow.closed, 20.0)
    finally:
        slow.transport.close()


async def test_bad_messages_get_errors_and_the_connection_survives(
    workers: list[Proc], push_settings: Settings
) -> None:
    url = ws_url(workers[0])
    async with connect(url, additional_headers=_driver(push_settings, "clumsy")) as ws:
        for bad, code in (
            ("{not json", "malformed_json"),
            ('{"type": "dance"}', "bad_message"),
            ('{"type": "subscribe", "lat": 91, "lon": 0, "heading_deg": 0, "speed_mps": 1}', "bad_message"),
            (
                '{"type": "subscribe", "lat": 1, "lon": 0, "heading_deg": 0, "speed_mps": 1, "route": [[1, 2]]}',
                "bad_message",
            ),
            ("[1, 2]", "bad_message"),
        ):
            await ws.send(bad)
            err = await next_of(ws, "error")
            assert err["code"] == code, bad
        assert (await subscribe(ws, lat=48.8, lon=2.3, heading_deg=10.0, speed_mps=5.0))["cells"] > 0
        await ws.send("x" * (70 * 1024))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5.0)
    assert ws.close_code == 1009
    async with connect(url) as anonymous:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(anonymous.recv(), 5.0)
    assert anonymous.close_code == 4401


async def test_two_workers_each_serve_their_clients(
    workers: list[Proc], producer: AIOKafkaProducer, push_settings: Settings
) -> None:
    lat, lon = _spot(4)
    target = geo.cell(lat, lon, 9)
    here = geo.destination(lat, lon, 180.0, 300.0)
    sub = {"lat": here[0], "lon": here[1], "heading_deg": 0.0, "speed_mps": 5.0}
    async with (
        connect(ws_url(workers[0]), additional_headers=_driver(push_settings, "on-1")) as one,
        connect(ws_url(workers[1]), additional_headers=_driver(push_settings, "on-2")) as two,
    ):
        await subscribe(one, **sub)
        await subscribe(two, **sub)
        jam = condition(target, {0: 2.0})
        await publish(producer, jam)
        for ws in (one, two):
            assert (await next_of(ws, "condition"))["condition"]["version"] == jam["version"]


def _closable_trip() -> tuple[tuple[float, float], tuple[float, float], float, str, float, float]:
    """From, to, heading at the start, a closable (cell, heading) on the fastest route, its first edge's time.

    A driver at the start heading along the first edge is on it (match.along_edge): its plan, and a
    reroute's ETA, start at that edge's end.
    """
    from pipeline.routing import network
    from pipeline.routing.router import Router

    r = Router(network.load(network.sumo_net_path("DRT")))
    nodes = r._snap_nodes
    lat, lon = r.net.node_lat[nodes], r.net.node_lon[nodes]
    a, b = int(nodes[int((lat + lon).argmin())]), int(nodes[int((lat + lon).argmax())])
    best = r.route_nodes(a, b)
    assert best is not None
    for e in best.edges[1:-1]:
        p = r.pieces[e][len(r.pieces[e]) // 2]
        r.on_alert({"id": "probe", "type": "closure", "state": "opened", "cell": p.cell, "heading_deg": p.heading_deg})
        around = r.route_nodes(a, b)
        r.on_alert({"id": "probe", "type": "closure", "state": "cleared", "cell": p.cell, "heading_deg": 0.0})
        if around is not None:
            start = r.pieces[best.edges[0]][0].heading_deg
            pt = lambda n: (float(r.net.node_lat[n]), float(r.net.node_lon[n]))  # noqa: E731
            return pt(a), pt(b), start, p.cell, p.heading_deg, float(r.free[best.edges[0]])
    raise AssertionError("no closable edge with a way around")


def _drives_through(polyline: list[list[float]], cell: str, heading: float) -> bool:
    from pipeline.routing.router import SAME_DIRECTION_DEG, edge_pieces

    shape = tuple((float(a), float(b)) for a, b in polyline)
    return any(
        p.cell == cell and geo.angle_diff(p.heading_deg, heading) <= SAME_DIRECTION_DEG
        for p in edge_pieces(shape, 1.0, 9)
    )


async def test_route_and_a_reroute_around_a_closure(
    workers: list[Proc], producer: AIOKafkaProducer, push_settings: Settings
) -> None:
    origin, dest, heading, cell, closed_heading, first_s = _closable_trip()
    base = f"http://127.0.0.1:{workers[0].port}"
    async with httpx.AsyncClient(base_url=base) as http:
        for params, status in (
            ({"to": "1,2"}, 400),
            ({"from": "abc", "to": "1,2"}, 400),
            ({"from": "91,13.5", "to": "52.43,13.53"}, 400),
            ({"from": "52.52,13.40", "to": f"{dest[0]},{dest[1]}"}, 422),  # Berlin-Mitte: off this network
        ):
            r = await http.get("/v1/route", params=params)
            assert r.status_code == status, (params, r.text)
            assert r.json()["message"]
        q = {"from": f"{origin[0]},{origin[1]}", "to": f"{dest[0]},{dest[1]}"}
        before = (await http.get("/v1/route", params=q)).json()
        assert before["travel_s"] == pytest.approx(before["free_flow_s"]) and before["distance_m"] > 1000
        assert _drives_through(before["polyline"], cell, closed_heading)

        async with connect(ws_url(workers[0]), additional_headers=_driver(push_settings, "going-somewhere")) as ws:
            sub = await subscribe(
                ws,
                lat=origin[0],
                lon=origin[1],
                heading_deg=heading,
                speed_mps=10.0,
                destination={"lat": dest[0], "lon": dest[1]},
            )
            assert sub["cells"] > 5  # the corridor of its route
            closure = alert(cell, heading=closed_heading, kind="closure")
            await publish(producer, closure)
            msg = await next_of(ws, "reroute", timeout=15.0)
        assert msg["blocked"] is True and msg["reason"] == closure["id"]
        # a driver subscribing now with its route through the closure is told at once, not left to drive into it
        async with connect(ws_url(workers[0]), additional_headers=_driver(push_settings, "late-driver")) as late:
            await late.send(
                orjson.dumps(
                    {
                        "type": "subscribe",
                        "lat": origin[0],
                        "lon": origin[1],
                        "heading_deg": heading,
                        "speed_mps": 10.0,
                        "destination": {"lat": dest[0], "lon": dest[1]},
                        "route": before["polyline"],
                    }
                ).decode()
            )
            first = await next_of(late, "reroute", timeout=5.0)
        assert first["blocked"] is True and first["reason"] == closure["id"]
        assert not _drives_through(first["polyline"], cell, closed_heading)
        assert not _drives_through(msg["polyline"], cell, closed_heading)
        assert msg["eta_s"] >= before["travel_s"] - first_s - 0.1  # from the end of the edge it drives on
        after = (await http.get("/v1/route", params=q)).json()
        assert not _drives_through(after["polyline"], cell, closed_heading)
        await publish(producer, {**closure, "state": "cleared", "version": closure["version"] + 1})
