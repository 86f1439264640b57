"""The static road network (sumolib): geo conversion, edge shapes, free-flow times.

SUMO networks are in projected metres (UTM for the Berlin nets); sumolib un-projects them
(``convertXY2LonLat``, through pyproj). This module is the only place in ``pipeline/sim``
that does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sumolib  # type: ignore[import-untyped]


def net_path(network: str) -> Path:
    """A network name shipped with eclipse-sumo (``DRT``, ``A10KW``, …) or a path to a ``.net.xml``."""
    p = Path(network)
    if p.suffix == ".xml" and p.is_file():
        return p
    import sumo  # type: ignore[import-untyped]  # the eclipse-sumo package

    path = Path(sumo.SUMO_HOME) / "tools" / "game" / network / "osm.net.xml"
    if not path.is_file():
        raise FileNotFoundError(f"{network}: no such network ({path})")
    return path


class Network:
    """The static network (sumolib): geo conversion, edge shapes and free-flow times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.net = sumolib.net.readNet(str(path))
        self._proj = self.net.getGeoProj()
        self._off = self.net.getLocationOffset()
        self.car_edges = [e.getID() for e in self.net.getEdges() if not e.isSpecial() and e.allows("passenger")]

    def to_latlon(self, xs: Any, ys: Any) -> tuple[np.ndarray, np.ndarray]:
        """sumolib's ``convertXY2LonLat`` for arrays of net coordinates → (lat, lon) arrays."""
        lon, lat = self._proj(np.asarray(xs) - self._off[0], np.asarray(ys) - self._off[1], inverse=True)
        return np.asarray(lat), np.asarray(lon)

    def latlon(self, x: float, y: float) -> tuple[float, float]:
        lon, lat = self.net.convertXY2LonLat(x, y)
        return float(lat), float(lon)

    def bbox(self) -> tuple[float, float, float, float]:
        """(south, west, north, east) of the network."""
        (x0, y0), (x1, y1) = self.net.getBoundary()[:2], self.net.getBoundary()[2:]
        lat, lon = self.to_latlon([x0, x1], [y0, y1])
        return float(lat.min()), float(lon.min()), float(lat.max()), float(lon.max())

    def edge_shape(self, edge: str) -> list[tuple[float, float]]:
        shape = self.net.getEdge(edge).getShape()
        lat, lon = self.to_latlon([p[0] for p in shape], [p[1] for p in shape])
        return list(zip(lat.tolist(), lon.tolist(), strict=True))

    def shapes(self) -> Iterable[list[tuple[float, float]]]:
        for e in self.car_edges:
            yield self.edge_shape(e)

    def free_s(self, edge: str) -> float:
        e = self.net.getEdge(edge)
        return float(e.getLength() / max(1.0, e.getSpeed()))

    def leads_to(self, a: str, b: str, hops: int = 2) -> bool:
        """``b`` is ``a`` or lies within ``hops`` edges after it (the way goes on from here, not from behind)."""
        front = {a}
        for _ in range(hops):
            if b in front:
                return True
            front = {o.getID() for e in front for o in self.net.getEdge(e).getOutgoing()}
        return b in front

    def point(self, edge: str, lane: int, pos: float) -> tuple[float, float, float]:
        """(lat, lon, heading) at ``pos`` metres along a lane (< 0: its middle)."""
        ln = self.net.getEdge(edge).getLane(lane)
        length = ln.getLength()
        at = length / 2 if pos < 0 else min(pos, length)
        x, y = sumolib.geomhelper.positionAtShapeOffset(ln.getShape(), at)
        x2, y2 = sumolib.geomhelper.positionAtShapeOffset(ln.getShape(), min(length, at + 5.0))
        heading = (math.degrees(math.atan2(x2 - x, y2 - y)) + 360.0) % 360.0
        lat, lon = self.latlon(x, y)
        return lat, lon, heading
