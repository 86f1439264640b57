"""A driver's route, as a phone sends it (``[lat, lon]`` points), on the road network's edges.

A route polyline says where the driver means to go, not which graph edges that is. The
points that lie on a junction (within :data:`JUNCTION_M` of one) are kept in order, and
consecutive junctions are joined by the edge between them, or, where the points were
sparse, by the map's quickest path (what a navigation app draws between two of its
points), continuing from the edge matched before it under the net's turn rules. Where
the driver is on the route: the first edge passing within :data:`ON_ROUTE_M` of its position
(the nearest of the first such run: a route is sent from where the driver is, so that is its
current edge, even when the route comes back near the same place later).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

from pipeline import geo
from pipeline.routing.router import Router

JUNCTION_M = 35.0  # a route point this close to a junction is taken to pass through it
ON_ROUTE_M = 30.0  # a driver this close to an edge of its route is on it (GPS, lane offsets)
OFF_ROUTE_M = 100.0  # further than this from every edge of it, the driver has left its route
ALONG_DEG = 45.0  # a driver heading this close to an edge's direction where it passes is driving along it
ALONG_MIN_MPS = 2.0  # slower than this, a phone's heading is noise: a standing driver is placed by position only


def route_edges(router: Router, polyline: Iterable[tuple[float, float]]) -> tuple[int, ...]:
    """The edges a route polyline follows, in order; () when it touches fewer than two junctions.

    A gap no road joins ends the match: the part after it cannot be driven from the part before.
    """
    nodes: list[int] = []
    for lat, lon in polyline:
        node, d = router.nearest(lat, lon, routable=False)  # a route entering from the rim starts at its edge
        if d <= JUNCTION_M and (not nodes or nodes[-1] != node):
            nodes.append(node)
    edges: list[int] = []
    for a, b in itertools.pairwise(nodes):
        direct = router.between.get((a, b))
        part = (direct,) if direct is not None else router.map_path(a, b, arrived_by=edges[-1] if edges else None)
        if not part:
            break
        edges += part
    return tuple(edges)


def _to_segment_m(lat: float, lon: float, a: tuple[float, float], b: tuple[float, float]) -> float:
    """Metres from a point to a segment (equirectangular: segments are a few hundred metres)."""
    kx = math.cos(math.radians(lat)) * 111_195.0
    ky = 111_195.0
    ax, ay = (a[1] - lon) * kx, (a[0] - lat) * ky
    bx, by = (b[1] - lon) * kx, (b[0] - lat) * ky
    dx, dy = bx - ax, by - ay
    den = dx * dx + dy * dy
    f = 0.0 if den <= 0.0 else min(1.0, max(0.0, -(ax * dx + ay * dy) / den))
    return math.hypot(ax + f * dx, ay + f * dy)


def locate(router: Router, edges: tuple[int, ...], lat: float, lon: float) -> int | None:
    """Index of the route edge the driver is on; None when the driver is nowhere near its route.

    The nearest of the first run of edges within :data:`ON_ROUTE_M` (short edges around a
    junction are all that close), else the nearest edge within :data:`OFF_ROUTE_M`.
    """
    best: tuple[float, int] | None = None
    near: tuple[float, int] | None = None
    for i, e in enumerate(edges):
        shape = router.net.edges[e].shape
        d = min(
            (_to_segment_m(lat, lon, a, b) for a, b in itertools.pairwise(shape)),
            default=_to_segment_m(lat, lon, shape[0], shape[0]),
        )
        if d <= ON_ROUTE_M:
            near = (d, i) if near is None or d < near[0] else near
        elif near is not None:
            return near[1]
        if best is None or d < best[0]:
            best = (d, i)
    if near is not None:
        return near[1]
    return best[1] if best is not None and best[0] <= OFF_ROUTE_M else None


def along_edge(router: Router, lat: float, lon: float, heading_deg: float, speed_mps: float) -> int | None:
    """The edge a driver without a route is driving along, judged from its position and heading.

    The nearest edge within :data:`ON_ROUTE_M` whose direction, on the segment passing the
    driver, is within :data:`ALONG_DEG` of its heading (the other carriageway and the cross
    street do not match); None when nothing does or the driver is too slow for its heading
    to mean anything. Planning then starts at the edge's end, reached by it: not at the
    nearest junction, which may lie behind the driver (a route from there starts by turning
    round), and under the turn rules from the edge it is on.
    """
    if not speed_mps >= ALONG_MIN_MPS:
        return None
    best: tuple[float, int] | None = None
    for e in router.edges_near(lat, lon):
        for a, b in itertools.pairwise(router.net.edges[e].shape):
            d = _to_segment_m(lat, lon, a, b)
            if d > ON_ROUTE_M or (best is not None and d >= best[0]):
                continue
            if a != b and geo.angle_diff(geo.bearing_deg(a[0], a[1], b[0], b[1]), heading_deg) <= ALONG_DEG:
                best = (d, e)
    return best[1] if best is not None else None
