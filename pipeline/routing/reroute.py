"""When a driver going somewhere should be offered another way.

A driver subscribed with a destination has a plan: the junctions and edges it is
driving from the next junction on. It is the route the driver sends when it sends one
(matched to the network: :mod:`pipeline.routing.match`); without one, the map's quickest
route (free-flow times), which is what a driver finds without live traffic. Against it,
the fastest route now from the same junction: it is offered when it is at least
max(120 s, 10 %) faster than the rest of the plan, or when the plan is blocked (a closure
on it). This is decided at every subscribe (so a driver who subscribes after a closure is
known is told at once) and whenever live weights change on the plan. An offered route
becomes the plan; a driver who then sends its old route again has declined it, and the
same way round is not offered again (only a new one, e.g. from further along).

Routes follow the turns the net allows (:mod:`pipeline.routing.turns`). Where the plan knows
the edge the driver reaches its junction by (the plan's edge before it, or the route edge
the driver was found on), the way now starts with a turn allowed from that edge: a driver
mid-route is not told to take a banned turn, nor to turn round without a good reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.routing.match import along_edge, locate
from pipeline.routing.router import Route, Router

MIN_SAVING_S = 120.0
MIN_SAVING_FRACTION = 0.10


@dataclass
class Plan:
    destination: int  # junction
    nodes: tuple[int, ...]  # junctions along the plan, from its start
    edges: tuple[int, ...]
    edge_set: frozenset[int]
    at: int  # the junction the driver was last snapped to (or is heading to, on its route)
    offered: tuple[int, ...] = ()  # the last way offered (not offered again)
    entry: int | None = None  # the edge the driver reaches the plan's start by, when known

    @classmethod
    def of(cls, router: Router, start: int, destination: int, route: Route, entry: int | None = None) -> Plan:
        return cls.along(router, start, destination, route.edges, entry)

    @classmethod
    def along(
        cls, router: Router, start: int, destination: int, edges: tuple[int, ...], entry: int | None = None
    ) -> Plan:
        nodes = [start] + [router.net.edges[e].target for e in edges]
        return cls(destination, tuple(nodes), edges, frozenset(edges), start, entry=entry)

    def arrived_by(self, at: int) -> int | None:
        """The edge by which the plan reaches junction ``at`` (None: at its start, entered from nowhere known)."""
        try:
            i = self.nodes.index(at)
        except ValueError:
            return None
        return self.edges[i - 1] if i > 0 else self.entry

    def remaining(self, at: int) -> tuple[int, ...] | None:
        """Edges still ahead of junction ``at``; None when the driver left the plan."""
        try:
            i = self.nodes.index(at)
        except ValueError:
            return None
        return self.edges[i:]


@dataclass(frozen=True)
class Offer:
    route: Route
    saved_s: float  # 0 when the plan is blocked: there is nothing to compare with
    blocked: bool
    current_s: float
    reason: str = "congestion"  # the closure alert on the old route, if any


def worth_it(current_s: float, alternative_s: float) -> bool:
    """The Waze-like threshold: an alternative at least max(2 min, 10 %) faster, or any way past a block."""
    if not math.isfinite(alternative_s):
        return False
    if not math.isfinite(current_s):
        return True
    return current_s - alternative_s >= max(MIN_SAVING_S, MIN_SAVING_FRACTION * current_s)


def reconsider(router: Router, plan: Plan) -> Offer | None:
    """An offer when a clearly faster way exists from where the driver is; the plan follows it."""
    at = plan.at
    rest = plan.remaining(at)
    if rest is None:
        return None
    current = router.cost(rest)
    entry = plan.arrived_by(at)
    best = router.route_nodes(at, plan.destination, arrived_by=entry)
    if best is None or not worth_it(current, best.travel_s):
        return None
    n = len(best.edges)
    if n and plan.offered[-n:] == best.edges:
        return None  # the way already offered (the driver kept its own): not again
    reason = next(iter(router.closures_on(rest)), "congestion")
    new = Plan.of(router, at, plan.destination, best, entry)
    plan.nodes, plan.edges, plan.edge_set, plan.offered = new.nodes, new.edges, new.edge_set, best.edges
    plan.entry = entry
    blocked = not math.isfinite(current)
    return Offer(best, 0.0 if blocked else current - best.travel_s, blocked, current, reason)


def driven_plan(router: Router, route: tuple[int, ...], lat: float, lon: float, goal: int) -> Plan | None:
    """The plan of a driver on ``route`` (edges) at (lat, lon): its route from the next junction to ``goal``.

    None when the driver is not on its route. A route that does not reach ``goal`` is
    continued by the map's quickest path; one that passes it ends there.
    """
    i = locate(router, route, lat, lon)
    if i is None:
        return None
    at = router.net.edges[route[i]].target
    rest = route[i + 1 :]
    nodes = [at] + [router.net.edges[e].target for e in rest]
    if goal in nodes:
        rest = rest[: nodes.index(goal)]
    else:
        tail = router.map_path(nodes[-1], goal, arrived_by=(rest or route[i : i + 1])[-1])
        if not tail:
            return None
        rest += tail
    return Plan.along(router, at, goal, rest, entry=route[i])


def on_subscribe(
    router: Router,
    prev: Plan | None,
    lat: float,
    lon: float,
    goal: int,
    route: tuple[int, ...] = (),
    heading_deg: float | None = None,
    speed_mps: float = 0.0,
) -> tuple[Plan | None, Offer | None]:
    """A driver (re)subscribed: its plan now, and an offer if another way is clearly better.

    ``route``: the edges of the route the driver sent (() when it sent only a destination:
    it keeps the plan it has while it is on it, else the map's quickest route from here).
    Without a route, a moving driver's heading places it on the edge it drives along
    (:func:`~pipeline.routing.match.along_edge`): its plan starts at that edge's end, with a
    turn allowed from it; a standing one, or one on no edge, starts at the nearest junction.
    """
    plan = driven_plan(router, route, lat, lon, goal) if route else None
    if plan is None:
        entry = along_edge(router, lat, lon, heading_deg, speed_mps) if heading_deg is not None else None
        at = router.net.edges[entry].target if entry is not None else router.snap(lat, lon)
        if at is None:
            return None, None
        if not route and prev is not None and prev.destination == goal and prev.remaining(at) is not None:
            plan = prev
            plan.at = at
        else:
            path = router.map_path(at, goal, arrived_by=entry)
            if at != goal and not path and entry is not None:
                # its edge's end leads nowhere the turn rules allow (a rim exit): plan from the nearest junction
                entry, at = None, router.snap(lat, lon)
                if at is None:
                    return None, None
                path = router.map_path(at, goal)
            if at != goal and not path:
                return None, None
            plan = Plan.along(router, at, goal, path, entry=entry)
    if prev is not None and prev is not plan and prev.destination == goal:
        plan.offered = prev.offered
    return plan, reconsider(router, plan)
