"""pipeline.push.hub and watch: direction, dedupe, catch-up, coalescing, rate limit."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline import geo
from pipeline.push import hub, watch
from pipeline.push.hub import BURST, MAX_OUTBOX, RATE_PER_S, Client, Hub

LAT, LON = 48.8566, 2.3522
A = geo.cell(LAT, LON, 9)
B = geo.cell(*geo.destination(LAT, LON, 0.0, 600.0), 9)
C = geo.cell(*geo.destination(LAT, LON, 180.0, 600.0), 9)
NORTH, SOUTH, EAST = 0, 4, 2  # heading sectors


def _cond(
    cell: str, version: int, sectors: dict[int, float] | None = None, incidents: tuple[str, ...] = ()
) -> dict[str, Any]:
    secs = [
        {"sector": s, "median_mps": v, "level": 0 if v > 10 else 3}
        for s, v in (sectors if sectors is not None else {NORTH: 12.0}).items()
    ]
    return {"cell": cell, "version": version, "sectors": secs, "incidents": list(incidents)}


def _alert(
    cell: str, heading: float, version: int = 1, state: str = "opened", conf: float = 0.8, **kw: Any
) -> dict[str, Any]:
    lat, lon = geo.cell_center(cell)
    return {
        "id": "inc-1",
        "type": "crash",
        "state": state,
        "cell": cell,
        "lat": lat,
        "lon": lon,
        "heading_deg": heading,
        "confidence": conf,
        "version": version,
        **kw,
    }


def _decoded(client: Client) -> list[dict[str, Any]]:
    return [orjson.loads(m["text"]) for m in client.drain()]


def _client(h: Hub, cells: dict[str, int], name: str = "d", origin: tuple[float, float, float] | None = None) -> Client:
    cl = Client(name)
    h.add(cl)
    h.subscribe(cl, cells, origin)
    return cl


def test_subscribe_queues_current_state_of_watched_cells_once() -> None:
    h = Hub()
    h.on_condition(A, _cond(A, 10))
    h.on_condition(C, _cond(C, 11))
    h.on_alert(_alert(B, 0.0))
    cl = _client(h, {A: NORTH, B: NORTH})
    assert cl.wake.is_set()
    msgs = _decoded(cl)
    assert {m["type"] for m in msgs} == {"condition", "alert"} and len(msgs) == 2  # nothing of C
    h.subscribe(cl, {A: NORTH, B: NORTH})
    assert cl.drain() == []  # told already
    h.subscribe(cl, {B: NORTH, C: NORTH})
    assert [m["condition"]["cell"] for m in _decoded(cl)] == [C]
    assert A not in h.subs and cl in h.subs[C][NORTH]


def test_condition_only_for_the_drivers_direction() -> None:
    h = Hub()
    north, south, east = _client(h, {A: NORTH}, "n"), _client(h, {A: SOUTH}, "s"), _client(h, {A: EAST}, "e")
    # only the southbound carriageway has statistics
    assert h.on_condition(A, _cond(A, 1, {SOUTH: 3.0})) == 1
    assert north.drain() == [] and east.drain() == []
    assert len(south.drain()) == 1
    # the northbound side (and north-east, a neighbouring sector) now too
    assert h.on_condition(A, _cond(A, 2, {SOUTH: 3.0, 1: 4.0})) == 2  # north and east; south: nothing new
    assert len(north.drain()) == 1 and len(east.drain()) == 1 and south.drain() == []


def test_condition_dedupe_by_material_change() -> None:
    h = Hub()
    cl = _client(h, {A: NORTH})
    assert h.on_condition(A, _cond(A, 1, {NORTH: 12.0})) == 1
    cl.drain()
    assert h.on_condition(A, _cond(A, 2, {NORTH: 12.3})) == 0  # heartbeat-like: same band and level
    assert h.on_condition(A, _cond(A, 3, {NORTH: 12.0, SOUTH: 2.0})) == 0  # other direction only
    assert h.on_condition(A, _cond(A, 4, {NORTH: 7.0})) == 1  # slower by > 15 %, level changed
    assert h.on_condition(A, _cond(A, 4, {NORTH: 1.0})) == 0  # same version: replay
    assert h.on_condition(A, _cond(A, 3, {NORTH: 1.0})) == 0  # older
    assert h.conditions[A].version == 4


def test_same_prepared_message_for_every_subscriber() -> None:
    h = Hub()
    c1, c2 = _client(h, {A: NORTH}, "1"), _client(h, {A: NORTH}, "2")
    h.on_condition(A, _cond(A, 1))
    assert c1.outbox[A] is c2.outbox[A]
    assert c1.outbox[A]["type"] == "websocket.send" and isinstance(c1.outbox[A]["text"], str)


def test_not_live_updates_state_without_sending() -> None:
    h = Hub()
    cl = _client(h, {A: NORTH})
    assert h.on_condition(A, _cond(A, 1), live=False) == 0
    assert cl.drain() == [] and h.conditions[A].version == 1


def test_alert_direction_and_announced_once() -> None:
    h = Hub()
    same, opposite, near = _client(h, {B: NORTH}, "same"), _client(h, {B: SOUTH}, "opp"), _client(h, {B: 1}, "ne")
    assert h.on_alert(_alert(B, 10.0, version=1)) == 2
    assert opposite.drain() == []
    assert [m["alert"]["id"] for m in _decoded(same)] == ["inc-1"]
    near.drain()
    # an update with only more evidence is not news; a confidence band or state change is
    assert h.on_alert(_alert(B, 10.0, version=2, conf=0.82)) == 0
    assert h.on_alert(_alert(B, 10.0, version=3, conf=0.5)) == 2
    same.drain()
    assert h.on_alert(_alert(B, 10.0, version=3, state="cleared")) == 0  # not newer
    assert h.on_alert(_alert(B, 10.0, version=4, state="cleared")) == 2
    assert _decoded(same)[0]["alert"]["state"] == "cleared"
    late = _client(h, {B: NORTH}, "late")
    assert late.drain() == []  # a cleared incident is no news to someone who never heard of it


def test_alert_behind_a_cone_driver_is_not_sent() -> None:
    h = Hub()
    # the driver is 600 m north of A heading north: A is behind it even if it watched A
    lat, lon = geo.destination(LAT, LON, 0.0, 600.0)
    cl = _client(h, {A: NORTH, B: NORTH}, origin=(lat, lon, 0.0))
    assert h.on_alert(_alert(A, 0.0)) == 0
    assert cl.drain() == []


def test_reconnect_with_since_version_gets_only_what_was_missed() -> None:
    h = Hub()
    h.on_condition(A, _cond(A, 1000))
    h.on_condition(B, _cond(B, 2000))
    h.on_alert(_alert(C, 0.0, version=1500))
    h.on_alert({**_alert(C, 0.0, version=2500, state="cleared"), "id": "inc-1"})
    cl = Client("again")
    h.subscribe(cl, {A: NORTH, B: NORTH, C: NORTH}, since_version=1800)
    msgs = _decoded(cl)
    assert [m["condition"]["cell"] for m in msgs if m["type"] == "condition"] == [B]
    # the incident it knew about ended while it was away: that end is news
    assert [m["alert"]["state"] for m in msgs if m["type"] == "alert"] == ["cleared"]


def test_outbox_coalesces_updates_of_one_cell_and_overflows() -> None:
    h = Hub()
    cl = _client(h, {A: NORTH, B: NORTH})
    h.on_condition(A, _cond(A, 1, {NORTH: 12.0}))
    h.on_condition(B, _cond(B, 1))
    h.on_condition(A, _cond(A, 2, {NORTH: 3.0}))
    msgs = _decoded(cl)
    assert [m["condition"]["cell"] for m in msgs] == [B, A] and msgs[1]["condition"]["version"] == 2
    slow = Client("slow")
    for i in range(MAX_OUTBOX):
        slow.enqueue(f"cell-{i}", {"text": "x"})
    slow.enqueue("cell-0", {"text": "y"})
    assert not slow.overflowed
    slow.enqueue("one-more", {"text": "x"})
    assert slow.overflowed


def test_rate_limit_lets_a_burst_out_then_paces() -> None:
    cl = Client("r")
    for i in range(int(BURST) + 10):
        cl.enqueue(f"k{i}", {"text": str(i)})
    first = cl.take(now=cl.refilled)
    assert len(first) == int(BURST) and first[0]["text"] == "0"
    assert len(cl.outbox) == 10 and cl.wait_s() > 0
    assert len(cl.take(now=cl.refilled + 5.01 / RATE_PER_S)) == 5  # .01: monotonic() - refilled rounds down
    assert len(cl.take(now=cl.refilled + 10.0)) == 5 and not cl.wake.is_set()


def test_remove_unsubscribes() -> None:
    h = Hub()
    cl = _client(h, {A: NORTH, B: SOUTH})
    h.remove(cl)
    assert cl not in h.clients and h.subs == {}
    assert h.on_condition(A, _cond(A, 1)) == 0


def test_reach_minimum_1_km() -> None:
    assert watch.reach_m(0.0) == watch.MIN_REACH_M == 1000.0
    assert watch.reach_m(20.0) == 3600.0


def test_cone_is_ahead_and_in_the_drivers_sector() -> None:
    cone = watch.cone_watch(LAT, LON, 0.0, 0.0, 9)
    assert A in cone and B in cone and C not in cone
    assert set(cone.values()) == {NORTH}
    behind = geo.cell(*geo.destination(LAT, LON, 180.0, 250.0), 9)
    assert behind not in cone or behind == A


def test_corridor_watches_each_cell_in_the_routes_direction() -> None:
    end = geo.destination(LAT, LON, 180.0, 1200.0)
    w = watch.corridor_watch([(LAT, LON), end], 9)
    assert A in w and C in w and B not in w
    assert w[C] == SOUTH
    back = watch.corridor_watch([end, (LAT, LON)], 9)
    assert back[C] == NORTH


def test_speed_band_is_about_15_percent() -> None:
    assert hub.speed_band(10.0) == hub.speed_band(10.5)
    assert hub.speed_band(10.0) != hub.speed_band(8.0)


def test_tombstone_reaches_only_those_told_of_the_cell() -> None:
    h = Hub()
    told, never = _client(h, {A: NORTH}, "told"), _client(h, {A: SOUTH}, "never")
    h.on_condition(A, _cond(A, 1))
    told.drain()
    assert never.drain() == []  # nothing for its direction
    assert h.on_condition(A, None) == 1
    assert _decoded(told) == [{"type": "condition", "cell": A, "condition": None}] and never.drain() == []
    assert A not in h.conditions and h.on_condition(A, None) == 0  # a second tombstone is no news


def test_what_a_driver_was_told_of_a_cell_outlives_a_spell_of_not_watching_it() -> None:
    # while watched, the hub's subs hold it; while not, the client's told: either way no repeat
    h = Hub()
    h.on_condition(A, _cond(A, 1))
    cl = _client(h, {A: NORTH})
    assert len(_decoded(cl)) == 1
    h.subscribe(cl, {B: NORTH})  # A behind it for a while
    assert h.on_condition(A, _cond(A, 2, {NORTH: 12.1})) == 0  # not watched: not queued
    h.subscribe(cl, {A: NORTH})
    assert cl.drain() == []  # back in view, unchanged for its direction: told already
    h.subscribe(cl, {A: NORTH + 1})
    assert cl.drain() == []  # watched in the next sector, which sees the same: still no news
    assert h.on_condition(A, _cond(A, 3, {NORTH: 3.0})) == 1
    assert [m["condition"]["version"] for m in _decoded(cl)] == [3]
