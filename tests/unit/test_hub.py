"""pipeline.push.hub: subscriptions by cell, latest state, coalescing outboxes."""

from __future__ import annotations

from typing import Any

import orjson

from pipeline import geo
from pipeline.push import hub
from pipeline.push.hub import MAX_OUTBOX, MIN_REACH_M, Client, Hub

LAT, LON = 48.8566, 2.3522
A = geo.cell(LAT, LON, 9)
B = geo.cell(*geo.destination(LAT, LON, 0.0, 600.0), 9)
C = geo.cell(*geo.destination(LAT, LON, 180.0, 600.0), 9)


def _cond(cell: str, version: int, level: int = 1) -> dict[str, Any]:
    return {"cell": cell, "version": version, "level": level}


def _decoded(client: Client) -> list[dict[str, Any]]:
    return [orjson.loads(m) for m in client.drain()]


async def test_subscribe_queues_current_state_of_new_cells() -> None:
    h = Hub()
    h.on_condition(A, _cond(A, 10))
    h.on_condition(C, _cond(C, 11))
    h.on_alert({"id": "inc-1", "cell": B, "state": "active"})
    cl = Client("dev-1")
    h.add(cl)
    assert h.subscribe(cl, [A, B], heading_deg=90.0) == 2
    assert cl.heading_deg == 90.0
    assert cl.wake.is_set()
    msgs = _decoded(cl)
    assert {"type": "condition", "condition": _cond(A, 10)} in msgs
    assert {"type": "alert", "alert": {"id": "inc-1", "cell": B, "state": "active"}} in msgs
    assert len(msgs) == 2  # nothing of C
    assert not cl.wake.is_set()
    # re-subscribing to the same cells sends nothing again
    h.subscribe(cl, [A, B], heading_deg=90.0)
    assert cl.drain() == []
    # moving on: only the newly added cell's state
    h.subscribe(cl, [B, C], heading_deg=180.0)
    assert _decoded(cl) == [{"type": "condition", "condition": _cond(C, 11)}]
    assert h.subs.get(A) is None
    assert h.subs[C] == {cl}


async def test_subscribe_since_version_sends_only_newer() -> None:
    h = Hub()
    h.on_condition(A, _cond(A, 10))
    h.on_condition(B, _cond(B, 20))
    cl = Client("dev-1")
    h.subscribe(cl, [A, B], 0.0, since_version=15)
    assert [m["condition"]["cell"] for m in _decoded(cl)] == [B]


async def test_on_condition_fans_out_to_subscribers_of_that_cell_only() -> None:
    h = Hub()
    a1, a2, b1 = Client("a1"), Client("a2"), Client("b1")
    for cl, cells in ((a1, [A]), (a2, [A, C]), (b1, [B])):
        h.add(cl)
        h.subscribe(cl, cells, 0.0)
    assert h.on_condition(A, _cond(A, 5)) == 2
    assert _decoded(a1) == _decoded(a2) == [{"type": "condition", "condition": _cond(A, 5)}]
    assert b1.drain() == []
    assert not b1.wake.is_set()


async def test_same_bytes_for_every_subscriber() -> None:
    h = Hub()
    c1, c2 = Client("1"), Client("2")
    h.subscribe(c1, [A], 0.0)
    h.subscribe(c2, [A], 0.0)
    h.on_condition(A, _cond(A, 1))
    assert c1.outbox[("condition", A)] is c2.outbox[("condition", A)]


async def test_older_or_equal_versions_are_ignored() -> None:
    h = Hub()
    cl = Client("d")
    h.subscribe(cl, [A], 0.0)
    assert h.on_condition(A, _cond(A, 100, level=2)) == 1
    cl.drain()
    assert h.on_condition(A, _cond(A, 100, level=4)) == 0
    assert h.on_condition(A, _cond(A, 99, level=4)) == 0
    assert cl.drain() == []
    assert orjson.loads(h.conditions[A][1])["condition"]["level"] == 2
    assert h.on_condition(A, _cond(A, 101, level=3)) == 1


async def test_not_live_updates_state_without_sending() -> None:
    h = Hub()
    cl = Client("d")
    h.subscribe(cl, [A], 0.0)
    assert h.on_condition(A, _cond(A, 1), live=False) == 0
    assert cl.drain() == []
    assert h.conditions[A][0] == 1


async def test_outbox_coalesces_updates_of_one_cell() -> None:
    h = Hub()
    cl = Client("d")
    h.subscribe(cl, [A, B], 0.0)
    h.on_condition(A, _cond(A, 1, level=1))
    h.on_condition(B, _cond(B, 1))
    h.on_condition(A, _cond(A, 2, level=3))
    assert len(cl.outbox) == 2
    msgs = _decoded(cl)
    assert [m["condition"]["cell"] for m in msgs] == [B, A]  # the newest last
    assert msgs[1]["condition"]["version"] == 2


async def test_outbox_overflow() -> None:
    cl = Client("slow")
    for i in range(MAX_OUTBOX):
        cl.enqueue("condition", f"cell-{i}", b"x")
    assert not cl.overflowed
    cl.enqueue("condition", "cell-0", b"y")  # coalesced: no growth
    assert not cl.overflowed
    cl.enqueue("condition", "one-more", b"x")
    assert cl.overflowed
    assert len(cl.outbox) == MAX_OUTBOX + 1


async def test_tombstone_removes_state() -> None:
    h = Hub()
    h.on_condition(A, _cond(A, 7))
    assert h.on_condition(A, None) == 0
    assert A not in h.conditions
    cl = Client("d")
    h.subscribe(cl, [A], 0.0)
    assert cl.drain() == []
    assert h.on_condition(A, None) == 0  # twice is harmless


async def test_remove_unsubscribes() -> None:
    h = Hub()
    cl = Client("d")
    h.add(cl)
    h.subscribe(cl, [A, B], 0.0)
    h.remove(cl)
    assert cl not in h.clients
    assert h.subs == {}
    assert h.on_condition(A, _cond(A, 1)) == 0


def test_reach_minimum_1_km() -> None:
    assert hub.reach_m(0.0) == MIN_REACH_M == 1000.0
    assert hub.reach_m(5.0) == 1000.0
    assert hub.reach_m(20.0) == 3600.0


def test_subscription_cells_cone_and_route() -> None:
    cone = hub.subscription_cells({"lat": LAT, "lon": LON, "heading_deg": 0.0, "speed_mps": 0.0}, 9)
    assert A in cone and B in cone and C not in cone
    end = geo.destination(LAT, LON, 180.0, 1200.0)
    route = hub.subscription_cells({"route": [[LAT, LON], list(end)]}, 9)
    assert A in route and C in route and B not in route


async def test_alerts_fan_out_and_clear() -> None:
    h = Hub()
    on_b, elsewhere = Client("1"), Client("2")
    h.subscribe(on_b, [B], 0.0)
    h.subscribe(elsewhere, [C], 0.0)
    assert h.on_alert({"id": "inc-1", "cell": B, "state": "active"}) == 1
    assert "inc-1" in h.alerts
    assert elsewhere.drain() == []
    on_b.drain()
    assert h.on_alert({"id": "inc-1", "cell": B, "state": "cleared"}) == 1
    assert "inc-1" not in h.alerts
    assert _decoded(on_b) == [{"type": "alert", "alert": {"id": "inc-1", "cell": B, "state": "cleared"}}]
    # a later subscriber is not told about a cleared incident
    late = Client("3")
    h.subscribe(late, [B], 0.0)
    assert late.drain() == []
