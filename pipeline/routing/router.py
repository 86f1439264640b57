"""Shortest travel time over a road network weighted by live conditions.

An edge's weight is the time to drive it now: for each H3 cell it crosses, the metres
inside that cell divided by the live median speed of the cell's heading sector that
matches the edge's direction there (capped at the speed limit), or by the speed limit
where there is no live data; infinite where an active closure covers that cell and
direction. A condition update touches only the edges crossing its cell.

Graph library: igraph, chosen by a measured benchmark (2,000 random pairs on the
largest strongly connected component, weights changing between calls as live speeds
do; python 3.11, 2-core machine):

    net (nodes/edges)   igraph 1.0.0        rustworkx 0.18.1    networkx 3.6.1
    DRT   (395/740)     56 µs med, 128 p95  67 µs med, 173 p95  237 µs med, 686 p95
    A10KW (89/125)      12 µs med,  18 p95  13 µs med,  22 p95   66 µs med, 128 p95

rustworkx calls back into Python for every edge weight; igraph takes the weight
vector whole, which is what live weights are.

Routes take only the turns the net allows (:mod:`pipeline.routing.turns`: junctions,
split where turns are restricted; DRT 830 vertices / 1,507 arcs, A10KW 195/274). The
weights go to igraph as a list per arc, kept in step with the edges' by ``_reweigh``:
igraph reads a list ~3x faster than the numpy array the junction graph was given (that
conversion was ~30 µs of a DRT query), which pays for the bigger graph. Measured
interleaved in one process against the junction-graph router (same pairs, same weight
changes; 3 rounds of 2,000; a busier machine than the table's, so all are slower):

    µs, median / p95   junction graph    turn rules        turn rules, arrived_by
    DRT                148-159/221-263   128-137/211-234   119-130/200-220
    A10KW               42-47/71-75       38-44/64-67       35-41/61-66

(``python -m pipeline.routing.bench [--arrived]`` times this checkout's queries alone.)
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import geo
from pipeline.routing import turns
from pipeline.routing.network import RoadNetwork

SAMPLE_M = 25.0  # step when walking an edge's shape to find the cells it crosses
MAX_SNAP_M = 300.0  # a point further than this from any junction is off the network
SAME_DIRECTION_DEG = 67.5  # a sector/alert within this of the edge's heading is "its" direction
MIN_LIVE_MPS = 0.5  # a standing queue is slow, not closed
GRID_M = 200.0  # the edge index's squares: a look-up within this reads the 3 x 3 around the point


@dataclass(frozen=True)
class Piece:
    """The part of an edge inside one cell, driven in one heading sector."""

    cell: str
    sector: int
    heading_deg: float
    metres: float


@dataclass(frozen=True)
class Route:
    edges: tuple[int, ...]
    polyline: tuple[tuple[float, float], ...]  # (lat, lon)
    travel_s: float
    free_flow_s: float
    distance_m: float


def edge_pieces(shape: tuple[tuple[float, float], ...], length_m: float, res: int) -> list[Piece]:
    """Cells an edge crosses, in order, with the heading and metres driven in each."""
    raw: list[list[Any]] = []
    for (a_lat, a_lon), (b_lat, b_lon) in itertools.pairwise(shape):
        seg = geo.distance_m(a_lat, a_lon, b_lat, b_lon)
        if seg <= 0.0:
            continue
        heading = geo.bearing_deg(a_lat, a_lon, b_lat, b_lon)
        n = max(1, math.ceil(seg / SAMPLE_M))
        for i in range(n):
            f = (i + 0.5) / n
            c = geo.cell(a_lat + (b_lat - a_lat) * f, a_lon + (b_lon - a_lon) * f, res)
            sec = geo.sector(heading)
            if raw and raw[-1][0] == c and raw[-1][1] == sec:
                raw[-1][3] += seg / n
            else:
                raw.append([c, sec, heading, seg / n])
    total = sum(p[3] for p in raw)
    if not raw or total <= 0.0:
        lat, lon = shape[0]
        return [Piece(geo.cell(lat, lon, res), 0, 0.0, length_m)]
    k = length_m / total  # the lane length is SUMO's; the shape is only where it lies
    return [Piece(c, sec, h, m * k) for c, sec, h, m in raw]


class Router:
    """A road network with live edge weights and shortest-time routes."""

    def __init__(self, net: RoadNetwork, res: int = 9) -> None:
        self.net = net
        self.turns = turns.build(net)
        self.graph = self.turns.graph
        self.speed_limit = np.array([e.speed_mps for e in net.edges], dtype=np.float64)
        self.free = np.array([e.free_flow_s for e in net.edges], dtype=np.float64)
        self.weights = self.free.copy()
        self._arc_w = self.turns.arc_weights(self.weights)  # kept in step with weights by _reweigh
        self._arc_free = self.turns.arc_weights(self.free)
        self._arc_edge: list[int] = self.turns.arc_edge.tolist()
        self.pieces = [edge_pieces(e.shape, e.length_m, res) for e in net.edges]
        self.by_cell: dict[str, set[int]] = {}
        self.between: dict[tuple[int, int], int] = {}  # (from, to) junctions → the quickest edge joining them
        for i, e in enumerate(net.edges):
            j = self.between.get((e.source, e.target))
            if j is None or self.free[i] < self.free[j]:
                self.between[(e.source, e.target)] = i
        for i, pieces in enumerate(self.pieces):
            for p in pieces:
                self.by_cell.setdefault(p.cell, set()).add(i)
        # live state, only for cells the network crosses
        self.sector_speed: dict[str, dict[int, tuple[float, int]]] = {}  # cell -> sector -> (median, level)
        self.closures: dict[str, tuple[str, float]] = {}  # alert id -> (cell, heading)
        # a junction to plan from and to: reached by, and left by, edges that reach each other under the turn rules
        self._routable = self.turns.core_in & self.turns.core_out
        self._snap_nodes = np.flatnonzero(self._routable).astype(np.int64)
        self._snap_lat = net.node_lat[self._snap_nodes]
        self._snap_lon = net.node_lon[self._snap_nodes]
        self._grid: dict[tuple[int, int], list[int]] | None = None  # built at the first edges_near
        # one scale for longitudes, at the network's mean latitude: a city is flat at 200 m squares
        self._grid_kx = math.cos(math.radians(float(np.mean(net.node_lat)))) * 111_195.0 if len(net.node_lat) else 1.0

    # -- live state ---------------------------------------------------------------------

    def on_condition(self, cell: str, cond: dict[str, Any] | None) -> set[int]:
        """Take a cell's condition (None: tombstone); the edges whose weight changed."""
        if cell not in self.by_cell:
            return set()
        if cond is None:
            self.sector_speed.pop(cell, None)
        else:
            self.sector_speed[cell] = {
                int(s["sector"]): (float(s["median_mps"]), int(s["level"])) for s in cond.get("sectors", ())
            }
        return self._reweigh(self.by_cell[cell])

    def on_alert(self, alert: dict[str, Any]) -> set[int]:
        """Track closures (the only alert type that makes a road impassable)."""
        if alert.get("type") != "closure":
            return set()
        alert_id, cell = str(alert["id"]), str(alert["cell"])
        old = self.closures.pop(alert_id, None)
        if alert.get("state") != "cleared":
            self.closures[alert_id] = (cell, float(alert["heading_deg"]))
        touched = set(self.by_cell.get(cell, ()))
        if old is not None:
            touched |= self.by_cell.get(old[0], set())
        return self._reweigh(touched)

    def _reweigh(self, edges: set[int]) -> set[int]:
        changed = set()
        arc_w, into = self._arc_w, self.turns.into
        for i in edges:
            w = self.edge_time(i)
            if w != self.weights[i]:
                self.weights[i] = w
                for k in into[i]:
                    arc_w[k] = w
                changed.add(i)
        return changed

    def edge_time(self, i: int) -> float:
        limit = float(self.speed_limit[i])
        total = 0.0
        for p in self.pieces[i]:
            if self._closed(p):
                return math.inf
            live = self.sector_speed.get(p.cell, {}).get(p.sector)
            if live is not None and live[1] >= 5:
                return math.inf  # level 5 is a closure, even before its alert is seen here
            speed = limit if live is None else min(limit, max(MIN_LIVE_MPS, live[0]))
            total += p.metres / speed
        return total

    def _closed(self, p: Piece) -> bool:
        return any(
            c == p.cell and geo.angle_diff(h, p.heading_deg) <= SAME_DIRECTION_DEG for c, h in self.closures.values()
        )

    # -- queries --------------------------------------------------------------------------

    def nearest(self, lat: float, lon: float, *, routable: bool = True) -> tuple[int, float]:
        """The nearest routable junction and its distance in metres.

        ``routable=False``: any junction, those on the network's rim too (an entry edge starts at
        one no road leads back to): where a route a driver sent passes, not where to plan from.
        """
        lats, lons = (self._snap_lat, self._snap_lon) if routable else (self.net.node_lat, self.net.node_lon)
        kx = math.cos(math.radians(lat))
        d2 = ((lats - lat) ** 2 + ((lons - lon) * kx) ** 2) * (111_195.0**2)
        j = int(np.argmin(d2))
        return (int(self._snap_nodes[j]) if routable else j), math.sqrt(float(d2[j]))

    def edges_near(self, lat: float, lon: float) -> list[int]:
        """Edges with a shape segment within :data:`GRID_M` of the point (and some a little further)."""
        if self._grid is None:
            self._grid = self._edge_grid()
        gx, gy = self._grid_xy(lat, lon)
        grid, out = self._grid, set[int]()
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                out.update(grid.get((gx + dx, gy + dy), ()))
        return sorted(out)

    def _grid_xy(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat * 111_195.0 / GRID_M), math.floor(lon * self._grid_kx / GRID_M)

    def _edge_grid(self) -> dict[tuple[int, int], list[int]]:
        grid: dict[tuple[int, int], list[int]] = {}
        for i, e in enumerate(self.net.edges):
            for a, b in itertools.pairwise(e.shape or ()):
                (x0, y0), (x1, y1) = self._grid_xy(*a), self._grid_xy(*b)
                for x in range(min(x0, x1), max(x0, x1) + 1):
                    for y in range(min(y0, y1), max(y0, y1) + 1):
                        cell = grid.setdefault((x, y), [])
                        if not cell or cell[-1] != i:
                            cell.append(i)
        return grid

    def snap(self, lat: float, lon: float) -> int | None:
        """The nearest routable junction, or None when nothing is within MAX_SNAP_M."""
        node, d = self.nearest(lat, lon)
        return node if d <= MAX_SNAP_M else None

    def _search(self, source: int, target: int, arrived_by: int | None, weights: list[float]) -> tuple[int, ...]:
        """Edges of the quickest way under the turn rules (source != target); () when there is none."""
        tg = self.turns
        mods: list[tuple[int, float]] = []
        if arrived_by is None:
            sure = bool(self._routable[source])
        elif self.net.edges[arrived_by].target != source:
            raise ValueError(f"edge {arrived_by} does not end at junction {source}")
        else:
            sure, mods = bool(tg.core[arrived_by]), tg.after[arrived_by]
        saved = [weights[k] for k, _ in mods]
        for k, add in mods:  # for this query: the turns the driver may not take, and turning back
            weights[k] += add
        try:
            if sure and self._routable[target]:
                arcs = self.graph.get_shortest_path(tg.start[source], tg.goal[target], weights=weights, output="epath")
            else:  # maybe unreachable (a rim junction, a dead end): igraph warns, and returns []
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    arcs = self.graph.get_shortest_path(
                        tg.start[source], tg.goal[target], weights=weights, output="epath"
                    )
            if any(weights[k] == math.inf for k in arcs):
                return ()  # igraph takes an infinite arc when nothing else leads there: closed, or not allowed
        finally:
            for (k, _), w in zip(mods, saved, strict=True):
                weights[k] = w
        arc_edge = self._arc_edge
        return tuple(e for e in (arc_edge[k] for k in arcs) if e >= 0)

    def route_nodes(self, source: int, target: int, arrived_by: int | None = None) -> Route | None:
        """Fastest route now between two junctions; None if every way is closed.

        ``arrived_by``: the edge the driver reached ``source`` by (it must end there): the
        route then starts with a turn the net allows from it. Without, any edge out of
        ``source`` may start it.
        """
        if source == target:
            lat, lon = float(self.net.node_lat[source]), float(self.net.node_lon[source])
            return Route((), ((lat, lon), (lat, lon)), 0.0, 0.0, 0.0)
        edges = self._search(source, target, arrived_by, self._arc_w)
        travel = float(self.weights[list(edges)].sum()) if edges else math.inf
        if not edges or not math.isfinite(travel):
            return None
        return self.path(edges)

    def map_path(self, source: int, target: int, arrived_by: int | None = None) -> tuple[int, ...]:
        """The quickest edges between two junctions by the map alone (free-flow times); () if none."""
        if source == target:
            return ()
        return self._search(source, target, arrived_by, self._arc_free)

    def closures_on(self, edges: tuple[int, ...]) -> list[str]:
        """Ids of the active closures on these edges, in the direction they are driven."""
        pieces = [p for i in edges for p in self.pieces[i]]
        return [
            alert_id
            for alert_id, (cell, heading) in self.closures.items()
            if any(p.cell == cell and geo.angle_diff(heading, p.heading_deg) <= SAME_DIRECTION_DEG for p in pieces)
        ]

    def path(self, edges: tuple[int, ...]) -> Route:
        """The route made of these edges, with travel times as of now."""
        poly: list[tuple[float, float]] = []
        for i in edges:
            shape = self.net.edges[i].shape
            poly.extend(shape[1:] if poly and poly[-1] == shape[0] else shape)
        idx = list(edges)
        return Route(
            edges,
            tuple(poly),
            float(self.weights[idx].sum()),
            float(self.free[idx].sum()),
            float(sum(self.net.edges[i].length_m for i in edges)),
        )

    def cost(self, edges: tuple[int, ...]) -> float:
        """Travel time of given edges with the current weights (inf when one is closed)."""
        return float(self.weights[list(edges)].sum()) if edges else 0.0

    def route(self, origin: tuple[float, float], destination: tuple[float, float]) -> Route | None:
        """Fastest route between two (lat, lon) points; raises LookupError when off the network."""
        a, b = self.snap(*origin), self.snap(*destination)
        if a is None or b is None:
            which = "from" if a is None else "to"
            raise LookupError(f"{which}: no road of the {self.net.name} network within {MAX_SNAP_M:.0f} m")
        return self.route_nodes(a, b)
