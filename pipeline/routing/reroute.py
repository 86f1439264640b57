"""When a driver going somewhere should be offered another way.

A driver subscribed with a destination (or a route) has a plan: the junctions and edges
it is driving. When live weights change on the rest of the plan, the fastest route
from where the driver is now is computed; it is offered when it is at least
max(120 s, 10 %) faster than the rest of the plan, or when the plan is blocked (a
closure on it). The offered route becomes the plan, so the same alternative is never
offered twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.routing.router import Route, Router

MIN_SAVING_S = 120.0
MIN_SAVING_FRACTION = 0.10


@dataclass
class Plan:
    destination: int  # junction
    nodes: tuple[int, ...]  # junctions along the plan, from its start
    edges: tuple[int, ...]
    edge_set: frozenset[int]
    at: int  # the junction the driver was last snapped to

    @classmethod
    def of(cls, router: Router, start: int, destination: int, route: Route) -> Plan:
        nodes = [start] + [router.net.edges[e].target for e in route.edges]
        return cls(destination, tuple(nodes), route.edges, frozenset(route.edges), start)

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
    best = router.route_nodes(at, plan.destination)
    if best is None or not worth_it(current, best.travel_s):
        return None
    new = Plan.of(router, at, plan.destination, best)
    plan.nodes, plan.edges, plan.edge_set = new.nodes, new.edges, new.edge_set
    blocked = not math.isfinite(current)
    return Offer(best, 0.0 if blocked else current - best.travel_s, blocked, current)
