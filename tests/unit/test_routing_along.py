"""A driver with a destination and no route is placed on the edge it drives along (match.along_edge)."""

from __future__ import annotations

from functools import cache

import pytest

from pipeline import geo
from pipeline.routing import network
from pipeline.routing.match import ALONG_MIN_MPS, along_edge
from pipeline.routing.reroute import on_subscribe
from pipeline.routing.router import Router


@cache
def _router() -> Router:
    return Router(network.load(network.sumo_net_path("DRT")))


def _two_way_edges(r: Router) -> list[tuple[int, int]]:
    """Edges starting with a long straight segment, with a reverse edge, both ends routable: (edge, its reverse)."""
    out = []
    for i, e in enumerate(r.net.edges):
        j = r.between.get((e.target, e.source))
        if (
            j is not None
            and geo.distance_m(*e.shape[0], *e.shape[1]) > 100.0
            and r._routable[e.source]
            and r._routable[e.target]
        ):
            out.append((i, j))
    return out


def _point_on(r: Router, edge: int, fraction: float) -> tuple[float, float, float]:
    """A point ``fraction`` along the edge's first segment, and that segment's bearing."""
    (a_lat, a_lon), (b_lat, b_lon) = r.net.edges[edge].shape[0], r.net.edges[edge].shape[1]
    lat, lon = a_lat + fraction * (b_lat - a_lat), a_lon + fraction * (b_lon - a_lon)
    return lat, lon, geo.bearing_deg(a_lat, a_lon, b_lat, b_lon)


def test_the_heading_picks_the_carriageway() -> None:
    r = _router()
    pairs = _two_way_edges(r)
    assert len(pairs) > 20
    for edge, reverse in pairs[:20]:
        lat, lon, bearing = _point_on(r, edge, 0.5)
        assert along_edge(r, lat, lon, bearing, 10.0) == edge
        assert along_edge(r, lat, lon, (bearing + 180.0) % 360.0, 10.0) == reverse
        # across the road: neither direction of it (another edge there, or none)
        assert along_edge(r, lat, lon, (bearing + 90.0) % 360.0, 10.0) not in (edge, reverse)


def test_a_standing_driver_or_one_off_the_roads_is_on_no_edge() -> None:
    r = _router()
    edge, _ = _two_way_edges(r)[0]
    lat, lon, bearing = _point_on(r, edge, 0.5)
    assert along_edge(r, lat, lon, bearing, ALONG_MIN_MPS - 0.1) is None
    far_lat, far_lon = geo.destination(lat, lon, (bearing + 90.0) % 360.0, 500.0)
    assert all(along_edge(r, far_lat, far_lon, h, 10.0) != edge for h in range(0, 360, 15))


def test_a_driver_just_past_a_junction_is_planned_from_the_junction_ahead() -> None:
    """Snapping to the nearest junction put it behind the driver: the plan began by turning round."""
    r = _router()
    checked = 0
    for edge, _ in _two_way_edges(r):
        e = r.net.edges[edge]
        lat, lon, bearing = _point_on(r, edge, 0.2)  # nearer the junction it left
        if r.snap(lat, lon) != e.source:
            continue
        goal = e.source  # even a goal behind it: it drives on and comes back by an allowed turn
        plan, _ = on_subscribe(r, None, lat, lon, goal, (), bearing, 12.0)
        assert plan is not None
        assert plan.at == e.target and plan.entry == edge
        assert plan.edges == r.map_path(e.target, goal, arrived_by=edge)
        # its first turn is one the net allows from the edge it is on
        first = plan.edges[0]
        assert first in r.net.turns[edge]
        # without the heading, as before: from the nearest junction, which is behind it
        old, _ = on_subscribe(r, None, lat, lon, goal)
        assert old is not None and old.at == e.source and old.edges == ()
        checked += 1
        if checked >= 5:
            break
    assert checked == 5


def test_a_standing_driver_is_planned_from_the_nearest_junction() -> None:
    r = _router()
    edge, _ = _two_way_edges(r)[0]
    lat, lon, bearing = _point_on(r, edge, 0.2)
    goal = r.net.edges[_two_way_edges(r)[-1][0]].target
    plan, _ = on_subscribe(r, None, lat, lon, goal, (), bearing, 0.0)
    at = r.snap(lat, lon)
    assert plan is not None and at is not None and plan.at == at and plan.entry is None
    assert plan.edges == r.map_path(at, goal)


@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_a_kept_plan_follows_the_driver_along_its_edge(fraction: float) -> None:
    r = _router()
    edge, _ = _two_way_edges(r)[3]
    e = r.net.edges[edge]
    goal = r.net.edges[_two_way_edges(r)[-5][0]].target
    lat, lon, bearing = _point_on(r, edge, 0.1)
    plan, _ = on_subscribe(r, None, lat, lon, goal, (), bearing, 12.0)
    assert plan is not None and plan.at == e.target
    lat2, lon2, _ = _point_on(r, edge, fraction)
    again, _ = on_subscribe(r, plan, lat2, lon2, goal, (), bearing, 12.0)
    assert again is plan and again.at == e.target  # the same plan, still ahead of it
