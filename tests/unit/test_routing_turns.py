"""Routes take only the turns the net allows (SUMO ``<connection>``s), and a driver who arrived
by an edge is routed on from it (pipeline/routing/network.py, turns.py, router.py, reroute.py)."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from functools import cache
from pathlib import Path

import pytest

from pipeline.routing import network
from pipeline.routing.match import route_edges
from pipeline.routing.reroute import Plan, on_subscribe, reconsider
from pipeline.routing.router import Router
from pipeline.routing.turns import UTURN_PENALTY_S

PAIRS = 400  # random junction pairs per net (the old junction graph broke the rules on ~10 % of A10KW's)


@cache
def _router(name: str) -> Router:
    return Router(network.load(network.sumo_net_path(name)))


def _allowed(r: Router) -> set[tuple[int, int]]:
    return {(a, b) for a, bs in enumerate(r.net.turns) for b in bs}


def _banned(r: Router) -> list[tuple[int, int]]:
    """(in, out) edge pairs meeting at a junction that the net does not connect."""
    allowed = _allowed(r)
    leaving: dict[int, list[int]] = {}
    for i, e in enumerate(r.net.edges):
        leaving.setdefault(e.source, []).append(i)
    return [(a, b) for a, e in enumerate(r.net.edges) for b in leaving.get(e.target, ()) if (a, b) not in allowed]


def check_routes_follow_turns(r: Router, pairs: int, seed: int = 7) -> tuple[int, int]:
    """(routes, routes with a turn the net does not allow) over random routable pairs, and over the
    pairs either side of every banned turn that is not a U-turn (where a junction graph takes it)."""
    allowed = _allowed(r)
    rng = random.Random(seed)
    nodes = [int(n) for n in r._snap_nodes]
    across = [(r.net.edges[a].source, r.net.edges[b].target) for a, b in _banned(r)]
    todo = [tuple(rng.sample(nodes, 2)) for _ in range(pairs)] + [(s, t) for s, t in across if s != t]
    n = bad = 0
    for s, t in todo:
        route = r.route_nodes(s, t)
        if route is None:
            continue
        n += 1
        assert r.net.edges[route.edges[0]].source == s and r.net.edges[route.edges[-1]].target == t
        bad += any(pair not in allowed for pair in itertools.pairwise(route.edges))
    return n, bad


@pytest.mark.parametrize("name", network.BERLIN_NETS)
def test_berlin_routes_take_only_turns_the_net_allows(name: str) -> None:
    r = _router(name)
    assert sum(map(len, r.net.turns)) > len(r.net.edges)  # DRT: 1,620 turns between 740 car edges
    n, bad = check_routes_follow_turns(r, PAIRS)
    assert n >= PAIRS and bad == 0


@pytest.mark.parametrize("name", network.BERLIN_NETS)
def test_every_routable_junction_reaches_and_is_reached_under_the_turn_rules(name: str) -> None:
    r = _router(name)
    nodes = [int(n) for n in r._snap_nodes]
    hub = nodes[len(nodes) // 2]
    assert all(r.route_nodes(hub, n) is not None and r.route_nodes(n, hub) is not None for n in nodes if n != hub)


def test_arrived_by_routes_on_from_that_edge_not_back_down_it() -> None:
    """Where the net builds no U-turn, a driver who came down an edge is not sent back up it."""
    r = _router("DRT")
    allowed = _allowed(r)
    uturns = [(a, b) for a, b in _banned(r) if r.net.edges[b].target == r.net.edges[a].source]
    assert len(uturns) >= 10
    checked = 0
    for a, back in uturns:
        j, home = r.net.edges[a].target, r.net.edges[a].source
        fresh = r.route_nodes(j, home)
        assert fresh is not None and fresh.edges == (back,)  # from the junction itself: straight back
        onward = r.route_nodes(j, home, arrived_by=a)
        if onward is None:
            continue  # a dead end under the rules
        checked += 1
        assert onward.edges[0] != back and (a, onward.edges[0]) in allowed
        assert all(p in allowed for p in itertools.pairwise(onward.edges))
        assert r.map_path(j, home, arrived_by=a)[0] != back
    assert checked >= 10
    a = uturns[0][0]
    with pytest.raises(ValueError, match="does not end"):  # the edge must end where the route starts
        r.route_nodes(r.net.edges[a].source, r.net.edges[a].target, arrived_by=a)


def test_a_driver_mid_route_is_offered_a_way_on_not_a_turn_back() -> None:
    """A closure ahead: the way round starts with a turn allowed from the edge the driver is on.
    Before, the offer was planned from the junction alone: straight back up the road it came down."""
    r = Router(_router("DRT").net)
    allowed = _allowed(r)
    for a, back in (p for p in _banned(r) if r.net.edges[p[1]].target == r.net.edges[p[0]].source):
        j, home = r.net.edges[a].target, r.net.edges[a].source
        own = (a, *r.map_path(j, home, arrived_by=a))
        if len(own) < 4:
            continue
        driven = route_edges(r, [pt for e in own for pt in (r.net.edges[e].shape[0], r.net.edges[e].shape[-1])])
        assert driven == own
        lat, lon = r.net.edges[a].shape[len(r.net.edges[a].shape) // 2]
        for e in own[1:-1]:  # close an edge of the way ahead that leaves another way on
            p = r.pieces[e][len(r.pieces[e]) // 2]
            alert = {"id": "c-1", "type": "closure", "state": "opened", "cell": p.cell, "heading_deg": p.heading_deg}
            r.on_alert(alert)
            plan, offer = on_subscribe(r, None, lat, lon, home, driven)
            if offer is not None and offer.blocked:
                assert plan is not None and plan.entry == a and plan.arrived_by(j) == a
                assert offer.route.edges[0] != back and (a, offer.route.edges[0]) in allowed
                assert math.isfinite(offer.route.travel_s)
                return
            r.on_alert({**alert, "state": "cleared"})
    pytest.fail("no closable way on from a junction without a U-turn")


def _reference_s(r: Router, source: int, target: int, arrived_by: int | None) -> float:
    """The quickest time on the plain edge graph (vertex = road edge, arc = allowed turn), by heapq:
    what the router's merged graph must agree with (a U-turn where the driver is costs the penalty)."""
    edges, w = r.net.edges, r.weights
    if arrived_by is None:
        first = [(float(w[b]), b) for b, e in enumerate(edges) if e.source == source]
    else:
        came = edges[arrived_by].source
        first = [
            (float(w[b]) + (UTURN_PENALTY_S if edges[b].target == came else 0.0), b) for b in r.net.turns[arrived_by]
        ]
    best: dict[int, float] = {}
    heap = list(first)
    heapq.heapify(heap)
    while heap:
        d, a = heapq.heappop(heap)
        if a in best:
            continue
        best[a] = d
        if edges[a].target == target:
            return d
        for b in r.net.turns[a]:
            if b not in best:
                heapq.heappush(heap, (d + float(w[b]), b))
    return math.inf


def test_the_merged_graph_finds_the_plain_edge_graphs_times_under_live_weights() -> None:
    """Junctions where every turn is allowed are one vertex (turns.py): that changes no route's time."""
    r = Router(_router("DRT").net)
    rng = random.Random(3)
    cells = sorted(r.by_cell)
    for c in rng.sample(cells, len(cells) // 3):
        sectors = [{"sector": s, "median_mps": rng.uniform(1.0, 15.0), "level": 2} for s in range(8)]
        r.on_condition(c, {"sectors": sectors})
    nodes = [int(n) for n in r._snap_nodes]
    for _ in range(150):
        s, t = rng.sample(nodes, 2)
        route = r.route_nodes(s, t)
        assert route is not None and route.travel_s == pytest.approx(_reference_s(r, s, t, None))
        came = rng.choice([i for i, e in enumerate(r.net.edges) if e.target == s])
        route = r.route_nodes(s, t, arrived_by=came)
        want = _reference_s(r, s, t, came)
        if route is None:
            assert math.isinf(want)
            continue
        u_turn = r.net.edges[route.edges[0]].target == r.net.edges[came].source
        assert route.travel_s + (UTURN_PENALTY_S if u_turn else 0.0) == pytest.approx(want)
        assert route.edges[0] in r.net.turns[came]


# -- a small constructed net -------------------------------------------------------------------
#
#   N(100,100) <-fn-- F(200,100)
#    |  ^              ^
#   nb  bn (banned     ef
#    v  |   left)      |
#   W(0,0) -wb/bw- B(100,0) --be--> E(200,0)      S(100,-100): bs/sb, reached only by a bus lane
#
# wb has a car lane and a bus lane; the bus lane alone turns left into bn (a bus gate).

_EDGES = {  # id: (from, to)
    "wb": ("W", "B"),
    "bw": ("B", "W"),
    "be": ("B", "E"),
    "ef": ("E", "F"),
    "fn": ("F", "N"),
    "nb": ("N", "B"),
    "bn": ("B", "N"),
    "bs": ("B", "S"),
    "sb": ("S", "B"),
}
_XY = {"W": (0, 0), "B": (100, 0), "E": (200, 0), "F": (200, 100), "N": (100, 100), "S": (100, -100)}
_CONNECTIONS = [  # (from, to, fromLane, toLane)
    ("wb", "be", 0, 0),
    ("wb", "bn", 1, 0),  # bus lane only: no car turns left here
    ("wb", "bs", 1, 0),  # nor into the bus-gated side street
    ("be", "ef", 0, 0),
    ("ef", "fn", 0, 0),
    ("fn", "nb", 0, 0),
    ("nb", "bw", 0, 0),
    ("nb", "be", 0, 0),
    ("bw", "wb", 0, 0),  # W is a dead end: netconvert builds the turn round
    ("sb", "be", 0, 0),
]


def _net_xml(path: Path, connections: list[tuple[str, str, int, int]], fast: tuple[str, ...] = ()) -> Path:
    lines = [
        '<net version="1.16">',
        '  <location netOffset="-392000.00,-5810000.00" convBoundary="0,-100,200,100"'
        ' origBoundary="0,0,0,0" projParameter="+proj=utm +zone=33 +ellps=WGS84 +datum=WGS84 +units=m +no_defs"/>',
    ]
    for eid, (a, b) in _EDGES.items():
        (x0, y0), (x1, y1) = _XY[a], _XY[b]
        shape = f"{x0},{y0} {x1},{y1}"
        lines.append(f'  <edge id="{eid}" from="{a}" to="{b}" priority="1">')
        speed = 50.0 if eid in fast else 13.89
        lines.append(f'    <lane id="{eid}_0" index="0" speed="{speed}" length="100.00" shape="{shape}"/>')
        if eid == "wb":
            lines.append(
                f'    <lane id="{eid}_1" index="1" allow="bus" speed="13.89" length="100.00" shape="{shape}"/>'
            )
        lines.append("  </edge>")
    for j, (x, y) in _XY.items():
        lines.append(f'  <junction id="{j}" type="priority" x="{x}" y="{y}" incLanes="" intLanes="" shape=""/>')
    for a, b, fl, tl in connections:
        lines.append(f'  <connection from="{a}" to="{b}" fromLane="{fl}" toLane="{tl}" dir="s" state="M"/>')
    lines.append("</net>")
    path.write_text("\n".join(lines) + "\n")
    return path


def _small(
    tmp_path: Path, connections: list[tuple[str, str, int, int]] = _CONNECTIONS, fast: tuple[str, ...] = ()
) -> Router:
    return Router(network.load(_net_xml(tmp_path / "small.net.xml", connections, fast), "small"))


def _ids(r: Router, edges: tuple[int, ...]) -> list[str]:
    return [r.net.edges[e].sumo_id for e in edges]


def test_a_banned_left_turn_is_routed_around(tmp_path: Path) -> None:
    r = _small(tmp_path)
    node = {j: r.net.node_ids.index(j) for j in _XY}
    edge = {e.sumo_id: i for i, e in enumerate(r.net.edges)}
    assert _ids(r, r.net.turns[edge["wb"]]) == ["be"]  # the bus lane's turns are not a car's
    w_to_n = r.route_nodes(node["W"], node["N"])
    assert w_to_n is not None and _ids(r, w_to_n.edges) == ["wb", "be", "ef", "fn"]  # not wb, bn
    assert w_to_n.travel_s == pytest.approx(4 * 100 / 13.89)
    b_to_n = r.route_nodes(node["B"], node["N"])  # from B itself, any edge out of it may start
    assert b_to_n is not None and _ids(r, b_to_n.edges) == ["bn"]
    assert _ids(r, r.route_nodes(node["B"], node["N"], arrived_by=edge["wb"]).edges) == ["be", "ef", "fn"]  # type: ignore[union-attr]
    # S is joined to B both ways, but no car may turn into bs: not a junction to plan from or to
    assert node["S"] not in set(r._snap_nodes.tolist()) and node["W"] in set(r._snap_nodes.tolist())
    lat, lon = float(r.net.node_lat[node["S"]]), float(r.net.node_lon[node["S"]])
    assert r.snap(lat, lon) == node["B"]
    assert r.route_nodes(node["W"], node["S"]) is None
    # without the rules (a net listing no connections) the left turn is what a junction graph takes
    plain = _small(tmp_path, [])
    w_to_n = plain.route_nodes(node["W"], node["N"])
    assert w_to_n is not None and _ids(plain, w_to_n.edges) == ["wb", "bn"]


def test_arrived_by_prevents_a_u_turn_and_a_built_one_costs_its_penalty(tmp_path: Path) -> None:
    r = _small(tmp_path)
    node = {j: r.net.node_ids.index(j) for j in _XY}
    edge = {e.sumo_id: i for i, e in enumerate(r.net.edges)}
    back = r.route_nodes(node["B"], node["W"])
    assert back is not None and _ids(r, back.edges) == ["bw"]
    on = r.route_nodes(node["B"], node["W"], arrived_by=edge["wb"])
    assert on is not None and _ids(r, on.edges) == ["be", "ef", "fn", "nb", "bw"]  # round the block
    # with a U-turn built at B: taken when round the block is slower by more than the penalty
    r2 = _small(tmp_path, [*_CONNECTIONS, ("wb", "bw", 0, 0)])
    turned = r2.route_nodes(node["B"], node["W"], arrived_by=edge["wb"])
    assert turned is not None and _ids(r2, turned.edges) == ["bw"]
    assert turned.travel_s == pytest.approx(100 / 13.89)  # the penalty steers, the time is the road's
    # round a block of fast roads is 8 s more than straight back: less than the penalty, so round it
    r3 = _small(tmp_path, [*_CONNECTIONS, ("wb", "bw", 0, 0)], fast=("be", "ef", "fn", "nb"))
    assert UTURN_PENALTY_S > 4 * 100 / 50.0
    turned = r3.route_nodes(node["B"], node["W"], arrived_by=edge["wb"])
    assert turned is not None and _ids(r3, turned.edges) == ["be", "ef", "fn", "nb", "bw"]
    assert _ids(r3, r3.route_nodes(node["B"], node["W"]).edges) == ["bw"]  # type: ignore[union-attr]


def test_reconsider_does_not_offer_a_banned_turn_round_a_closure(tmp_path: Path) -> None:
    """Arrived at B by wb, the plan (be, ef, fn) closed: from wb, only be is allowed, so there is
    no way round to offer (the junction graph offered the banned left bn)."""
    r = _small(tmp_path)
    node = {j: r.net.node_ids.index(j) for j in _XY}
    edge = {e.sumo_id: i for i, e in enumerate(r.net.edges)}
    plan = Plan.along(r, node["W"], node["N"], (edge["wb"], edge["be"], edge["ef"], edge["fn"]))
    plan.at = node["B"]
    assert plan.arrived_by(node["B"]) == edge["wb"]
    p = r.pieces[edge["be"]][0]
    r.on_alert({"id": "c-1", "type": "closure", "state": "opened", "cell": p.cell, "heading_deg": p.heading_deg})
    assert math.isinf(r.weights[edge["be"]])
    assert reconsider(r, plan) is None
    fresh = r.route_nodes(node["B"], node["N"])
    assert fresh is not None and _ids(r, fresh.edges) == ["bn"]  # what a driver standing at B could take
