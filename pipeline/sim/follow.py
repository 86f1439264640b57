"""Following a route the app drew: a ``[lat, lon]`` polyline → the SUMO edges it runs along.

A reroute's polyline is the road geometry of the push worker's router, which reads the same
``.net.xml`` (:func:`pipeline.routing.network.load`). A polyline segment runs along an edge
when both its ends lie on that edge's shape (within :data:`ON_M`) and it points the way the
edge is driven (within :data:`SAME_DEG`). The direction matters: both directions of a road
share one centre line in an OpenStreetMap import, and a nearest-road lookup
(``convertRoad``) picks either; one wrong-way edge in the middle of a route makes the
shortest-path join drive a loop to reach it and back (measured on the blocking scenario:
the taken way round was 2.1× the free-flow time of the way the app offered). Segments that
cross a junction (from one edge's last point to the next one's first) lie on no edge and
are skipped; the edges either side are joined by SUMO's shortest path.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from pipeline import geo
from pipeline.routing import network

ON_M = 3.0  # both ends of a polyline segment this close to an edge's shape: the segment runs along it
SAME_DEG = 45.0  # and it points the way the edge is driven
CELL_M = 50.0  # grid of the segment index
MIN_SEG_M = 0.5  # shorter polyline segments (repeated points) say nothing about the way


class Matcher:
    """Edge shapes of a network, indexed on a local metric grid."""

    def __init__(self, path: Path) -> None:
        net = network.load(path)
        self.lat0 = float(net.node_lat.mean())
        self.lon0 = float(net.node_lon.mean())
        self.kx = math.cos(math.radians(self.lat0)) * 111_195.0
        self.ky = 111_195.0
        # (edge, ax, ay, bx, by, heading) per shape segment
        self.segs: list[tuple[str, float, float, float, float, float]] = []
        self.grid: dict[tuple[int, int], list[int]] = defaultdict(list)
        for e in net.edges:
            for (a_lat, a_lon), (b_lat, b_lon) in itertools.pairwise(e.shape):
                ax, ay = self.xy(a_lat, a_lon)
                bx, by = self.xy(b_lat, b_lon)
                if ax == bx and ay == by:
                    continue
                i = len(self.segs)
                self.segs.append((e.sumo_id, ax, ay, bx, by, geo.bearing_deg(a_lat, a_lon, b_lat, b_lon)))
                for cell in self._cells(ax, ay, bx, by):
                    self.grid[cell].append(i)

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.lon0) * self.kx, (lat - self.lat0) * self.ky

    def _cells(self, ax: float, ay: float, bx: float, by: float) -> Iterable[tuple[int, int]]:
        """Every grid cell a segment's bounding box (grown by ON_M) touches."""
        x0, x1 = sorted((ax, bx))
        y0, y1 = sorted((ay, by))
        for i in range(math.floor((x0 - ON_M) / CELL_M), math.floor((x1 + ON_M) / CELL_M) + 1):
            for j in range(math.floor((y0 - ON_M) / CELL_M), math.floor((y1 + ON_M) / CELL_M) + 1):
                yield i, j

    def edge_of(self, a: tuple[float, float], b: tuple[float, float]) -> str | None:
        """The edge the segment a → b runs along, the way it is driven; None if none (a junction, off the map)."""
        ax, ay = self.xy(*a)
        bx, by = self.xy(*b)
        if math.hypot(bx - ax, by - ay) < MIN_SEG_M:
            return None
        heading = geo.bearing_deg(a[0], a[1], b[0], b[1])
        near_a: dict[str, float] = {}
        near_b: dict[str, float] = {}
        for k in self.grid.get((math.floor(ax / CELL_M), math.floor(ay / CELL_M)), ()):
            edge, px, py, qx, qy, h = self.segs[k]
            if geo.angle_diff(h, heading) > SAME_DEG:
                continue
            d = _to_segment(ax, ay, px, py, qx, qy)
            if d <= ON_M:
                near_a[edge] = min(d, near_a.get(edge, d))
        for k in self.grid.get((math.floor(bx / CELL_M), math.floor(by / CELL_M)), ()):
            edge, px, py, qx, qy, h = self.segs[k]
            if edge not in near_a or geo.angle_diff(h, heading) > SAME_DEG:
                continue
            d = _to_segment(bx, by, px, py, qx, qy)
            if d <= ON_M:
                near_b[edge] = min(d, near_b.get(edge, d))
        if not near_b:
            return None
        return min(near_b, key=lambda e: near_a[e] + near_b[e])

    def edges(self, line: Iterable[tuple[float, float]]) -> list[str]:
        """The edges a polyline runs along, in order (each once per visit)."""
        out: list[str] = []
        for a, b in itertools.pairwise(line):
            e = self.edge_of(a, b)
            if e is not None and (not out or out[-1] != e):
                out.append(e)
        return out


def _to_segment(x: float, y: float, px: float, py: float, qx: float, qy: float) -> float:
    dx, dy = qx - px, qy - py
    den = dx * dx + dy * dy
    f = 0.0 if den <= 0.0 else min(1.0, max(0.0, ((x - px) * dx + (y - py) * dy) / den))
    return math.hypot(px + f * dx - x, py + f * dy - y)
