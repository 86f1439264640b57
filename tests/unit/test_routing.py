"""pipeline.routing: the Berlin SUMO net, live weights, closures, reroute decisions."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from pipeline import geo
from pipeline.routing import network
from pipeline.routing.match import locate, route_edges
from pipeline.routing.reroute import Plan, on_subscribe, reconsider, worth_it
from pipeline.routing.router import Router


@cache
def _router() -> Router:
    return Router(network.load(network.sumo_net_path("DRT")))


def _long_pair(r: Router) -> tuple[int, int]:
    """Two far-apart junctions of the routable core (deterministic)."""
    nodes = r._snap_nodes
    lat, lon = r.net.node_lat[nodes], r.net.node_lon[nodes]
    return int(nodes[int(np.argmin(lat + lon))]), int(nodes[int(np.argmax(lat + lon))])


def test_berlin_net_is_georeferenced() -> None:
    net = _router().net
    # origBoundary of DRT/osm.net.xml is 13.45..13.58 E, 52.42..52.46 N (Berlin-Adlershof)
    assert net.node_lat.min() >= 52.42 and net.node_lat.max() <= 52.46
    assert net.node_lon.min() >= 13.45 and net.node_lon.max() <= 13.58
    assert len(net.edges) > 500
    e = max(net.edges, key=lambda e: e.length_m)
    # the shape's length (great circle on un-projected points) matches SUMO's length within 3 %
    shape_m = sum(geo.distance_m(*a, *b) for a, b in zip(e.shape, e.shape[1:], strict=False))
    assert shape_m == pytest.approx(e.length_m, rel=0.03)


def test_utm_inverse_known_point() -> None:
    # reference values from PROJ (pyproj 3.7.2, EPSG:32633 -> EPSG:4326)
    lat, lon = network.utm_to_latlon(np.array([392000.0, 420000.0]), np.array([5810000.0, 5790000.0]), 33)
    assert lat.tolist() == pytest.approx([52.42952765228024, 52.25457126994105], abs=1e-7)
    assert lon.tolist() == pytest.approx([13.411515496846548, 13.827997810773594], abs=1e-7)


def test_route_follows_edges_and_times_add_up() -> None:
    r = _router()
    a, b = _long_pair(r)
    route = r.route_nodes(a, b)
    assert route is not None and route.edges
    for e1, e2 in zip(route.edges, route.edges[1:], strict=False):
        assert r.net.edges[e1].target == r.net.edges[e2].source
    assert route.travel_s == pytest.approx(route.free_flow_s)  # no live data yet
    assert route.free_flow_s == pytest.approx(sum(r.net.edges[e].free_flow_s for e in route.edges))
    assert route.polyline[0] == pytest.approx((r.net.node_lat[a], r.net.node_lon[a]), abs=1e-3)


def test_snap_refuses_points_off_the_network() -> None:
    r = _router()
    assert r.snap(52.52, 13.40) is None  # Berlin-Mitte: no road of this net within 300 m
    with pytest.raises(LookupError, match="from"):
        r.route((52.52, 13.40), (52.43, 13.53))


def test_live_speed_in_the_edges_direction_only() -> None:
    r = Router(_router().net)
    i = max(range(len(r.net.edges)), key=lambda i: r.net.edges[i].length_m)
    p = r.pieces[i][0]
    free = r.weights[i]
    opposite = (p.sector + 4) % 8
    changed = r.on_condition(p.cell, {"sectors": [{"sector": opposite, "median_mps": 1.0, "level": 4}]})
    assert i not in changed and r.weights[i] == free
    r.on_condition(p.cell, {"sectors": [{"sector": p.sector, "median_mps": 1.0, "level": 4}]})
    assert r.weights[i] > free
    r.on_condition(p.cell, None)
    assert r.weights[i] == pytest.approx(free)


def test_closure_makes_an_edge_impassable_and_its_end_reopens_it() -> None:
    r = Router(_router().net)
    i = max(range(len(r.net.edges)), key=lambda i: r.net.edges[i].length_m)
    p = r.pieces[i][0]
    closure = {"id": "c-1", "type": "closure", "state": "opened", "cell": p.cell, "heading_deg": p.heading_deg}
    assert i in r.on_alert(closure)
    assert math.isinf(r.weights[i])
    assert r.closures_on((i,)) == ["c-1"]
    r.on_alert({**closure, "state": "cleared"})
    assert math.isfinite(r.weights[i])
    assert r.on_alert({**closure, "type": "crash"}) == set()


def test_worth_it_threshold() -> None:
    assert worth_it(600.0, 480.0)  # 120 s and 20 %
    assert not worth_it(600.0, 490.0)  # 110 s
    assert not worth_it(2000.0, 1850.0)  # 150 s but 7.5 %
    assert worth_it(2000.0, 1790.0)
    assert worth_it(math.inf, 900.0)
    assert not worth_it(math.inf, math.inf)


def test_reconsider_offers_a_way_around_a_closure_once() -> None:
    r = Router(_router().net)
    a, b = _long_pair(r)
    best = r.route_nodes(a, b)
    assert best is not None
    plan = Plan.of(r, a, b, best)
    assert reconsider(r, plan) is None  # nothing changed
    # close, one by one, edges of the plan until one has a way around
    for e in best.edges[1:-1]:
        p = r.pieces[e][len(r.pieces[e]) // 2]
        r.on_alert({"id": "x", "type": "closure", "state": "opened", "cell": p.cell, "heading_deg": p.heading_deg})
        offer = reconsider(r, plan)
        if offer is not None:
            break
        r.on_alert({"id": "x", "type": "closure", "state": "cleared", "cell": p.cell, "heading_deg": 0.0})
    else:
        pytest.fail("no closable edge with a way around on this route")
    assert offer.blocked and offer.saved_s == 0.0
    assert e not in offer.route.edges and math.isfinite(offer.route.travel_s)
    assert plan.edges == offer.route.edges
    assert reconsider(r, plan) is None  # the offered route is now the plan


# -- a driver's own route, and offers at subscribe time (pipeline/routing/match.py, reroute.py) --


def _sim_polyline(r: Router, edges: tuple[int, ...]) -> list[tuple[float, float]]:
    """A route as the simulator sends it: each edge's first and last shape point."""
    return [pt for e in edges for pt in (r.net.edges[e].shape[0], r.net.edges[e].shape[-1])]


def _middle(r: Router, e: int) -> tuple[float, float]:
    shape = r.net.edges[e].shape
    (a_lat, a_lon), (b_lat, b_lon) = shape[len(shape) // 2 - 1 if len(shape) > 2 else 0], shape[len(shape) // 2]
    return (a_lat + b_lat) / 2, (a_lon + b_lon) / 2


def _closed_with_a_way_round(r: Router, edges: tuple[int, ...], start: int, goal: int) -> int:
    """Close (alert id ``c-1``) the first edge of ``edges[2:-1]`` that leaves a way from ``start`` to ``goal``."""
    for e in edges[2:-1]:
        p = r.pieces[e][len(r.pieces[e]) // 2]
        r.on_alert({"id": "c-1", "type": "closure", "state": "opened", "cell": p.cell, "heading_deg": p.heading_deg})
        if r.route_nodes(start, goal) is not None:
            return e
        r.on_alert({"id": "c-1", "type": "closure", "state": "cleared", "cell": p.cell, "heading_deg": 0.0})
    pytest.fail("no closable edge with a way around on this route")


def test_route_polyline_is_matched_to_its_edges() -> None:
    r = _router()
    a, b = _long_pair(r)
    route = r.route_nodes(a, b)
    assert route is not None and len(route.edges) > 5
    assert route_edges(r, _sim_polyline(r, route.edges)) == route.edges
    # a sparse polyline (every third junction): the gaps are joined by the map's quickest path
    sparse = [
        (float(r.net.node_lat[n]), float(r.net.node_lon[n]))
        for n in ([a, *(r.net.edges[e].target for e in route.edges)])[::3]
    ]
    assert route_edges(r, sparse)[:3] == route.edges[:3]
    assert route_edges(r, [(52.52, 13.40), (52.53, 13.41)]) == ()  # off the network: nothing


def test_locate_finds_the_edge_the_driver_is_on() -> None:
    r = _router()
    a, b = _long_pair(r)
    route = r.route_nodes(a, b)
    assert route is not None
    assert locate(r, route.edges, *_middle(r, route.edges[3])) == 3
    assert locate(r, route.edges, 52.52, 13.40) is None


def test_a_driver_subscribing_onto_a_closed_route_is_offered_a_way_round_at_once() -> None:
    r = Router(_router().net)
    a, b = _long_pair(r)
    own = r.route_nodes(a, b)
    assert own is not None
    closed = _closed_with_a_way_round(r, own.edges, a, b)
    lat, lon = _middle(r, own.edges[0])
    driven = route_edges(r, _sim_polyline(r, own.edges))
    plan, offer = on_subscribe(r, None, lat, lon, b, driven)
    assert plan is not None and offer is not None  # at its first subscribe, no change of weights needed
    assert offer.blocked and offer.reason == "c-1"
    assert closed not in offer.route.edges and plan.edges == offer.route.edges
    assert offer.route.polyline[0] == pytest.approx(
        r.net.edges[own.edges[0]].shape[-1], abs=1e-3
    )  # from its next junction
    # it declined: it sends its own route again, a little further on; the same way is not offered twice
    lat2, lon2 = _middle(r, own.edges[1])
    plan2, offer2 = on_subscribe(r, plan, lat2, lon2, b, driven)
    assert offer2 is None and plan2 is not None and closed in plan2.edges
    # the closure ends: nothing to offer
    r.on_alert({"id": "c-1", "type": "closure", "state": "cleared", "cell": "x", "heading_deg": 0.0})
    assert on_subscribe(r, None, lat2, lon2, b, driven)[1] is None


def test_a_driver_entering_from_the_rim_is_on_its_route_and_offered_a_way_from_its_next_junction() -> None:
    """An entry edge starts at a rim junction no road leads back to (not routable): the route a
    driver sends from there still starts with that edge. Before, the match dropped it, the driver
    was not found on its route, and the offer started from the junction nearest to it: one it
    could not turn into (the simulator's takers drove a loop or kept their route)."""
    r = Router(_router().net)
    ids = [e.sumo_id for e in r.net.edges]
    entry = ids.index("46039050#0")  # Rudower Chaussee, from the west rim (scenarios/blocking.toml)
    assert r.net.edges[entry].source not in set(r._snap_nodes.tolist())
    a = r.net.edges[entry].target
    goal = int(r._snap_nodes[int(np.argmax(r.net.node_lat[r._snap_nodes] + r.net.node_lon[r._snap_nodes]))])
    own = (entry, *r.map_path(a, goal))
    driven = route_edges(r, _sim_polyline(r, own))
    assert driven[0] == entry and driven == own
    lat, lon = r.net.edges[entry].shape[0]  # just entered
    closed = _closed_with_a_way_round(r, own, a, goal)
    plan, offer = on_subscribe(r, None, lat, lon, goal, driven)
    assert plan is not None and offer is not None and offer.blocked
    assert r.net.edges[offer.route.edges[0]].source == a  # from the end of the edge it is on
    assert closed not in offer.route.edges


def test_a_driver_with_a_destination_only_is_assumed_on_the_maps_route() -> None:
    r = Router(_router().net)
    a, b = _long_pair(r)
    lat, lon = float(r.net.node_lat[a]), float(r.net.node_lon[a])
    plan, offer = on_subscribe(r, None, lat, lon, b)
    assert plan is not None and offer is None and plan.edges == r.map_path(a, b)
    closed = _closed_with_a_way_round(r, plan.edges, a, b)
    plan, offer = on_subscribe(r, None, lat, lon, b)  # a driver connecting now: told at once
    assert plan is not None and offer is not None and offer.blocked and closed not in plan.edges


def test_a_congested_route_is_offered_a_faster_one_with_the_saving() -> None:
    r = Router(_router().net)
    a, b = _long_pair(r)
    own = r.route_nodes(a, b)
    assert own is not None
    slow = own.edges[len(own.edges) // 2]
    for p in r.pieces[slow]:  # a standing queue on one edge of the route
        r.on_condition(p.cell, {"sectors": [{"sector": p.sector, "median_mps": 0.5, "level": 4}]})
    lat, lon = _middle(r, own.edges[0])
    plan, offer = on_subscribe(r, None, lat, lon, b, own.edges)
    if offer is None:  # no way round that queue is 2 min faster on this pair: the threshold holds
        assert plan is not None and slow in plan.edges
        return
    assert not offer.blocked and offer.reason == "congestion"
    assert offer.saved_s >= max(120.0, 0.1 * offer.current_s) and slow not in offer.route.edges
