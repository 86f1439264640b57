"""What a driver watches: cells, each in the heading sector the driver will drive there."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

from pipeline import geo

MIN_REACH_M = 1000.0
LOOKAHEAD_S = 180.0
CORRIDOR_M = 150.0


def reach_m(speed_mps: float) -> float:
    """How far ahead a driver cares: ~3 minutes of travel, at least 1 km."""
    return max(MIN_REACH_M, speed_mps * LOOKAHEAD_S)


def cone_watch(lat: float, lon: float, heading_deg: float, speed_mps: float, res: int) -> dict[str, int]:
    """Cells ahead (±35°, ~3 min, ≥1 km) watched in the driver's heading sector.

    The cone includes the driver's own cell and its neighbours; those whose centre is
    behind the driver are dropped: what lies behind is not where the driver is going.
    """
    here = geo.cell(lat, lon, res)
    sec = geo.sector(heading_deg)
    out = {}
    for c in geo.cone_cells(lat, lon, heading_deg, reach_m(speed_mps), res):
        clat, clon = geo.cell_center(c)
        if c == here or geo.angle_diff(geo.bearing_deg(lat, lon, clat, clon), heading_deg) <= 90.0:
            out[c] = sec
    return out


def corridor_watch(route: Iterable[tuple[float, float]], res: int, width_m: float = CORRIDOR_M) -> dict[str, int]:
    """Cells along a route, each watched in the route's heading sector nearest to it."""
    pts = list(route)
    cells = geo.corridor_cells(pts, width_m, res)
    samples: list[tuple[float, float, int]] = []
    for (a_lat, a_lon), (b_lat, b_lon) in itertools.pairwise(pts):
        seg = geo.distance_m(a_lat, a_lon, b_lat, b_lon)
        if seg <= 0.0:
            continue
        sec = geo.sector(geo.bearing_deg(a_lat, a_lon, b_lat, b_lon))
        n = max(1, math.ceil(seg / 50.0))
        samples += [(a_lat + (b_lat - a_lat) * i / n, a_lon + (b_lon - a_lon) * i / n, sec) for i in range(n)]
    if not samples:
        return dict.fromkeys(cells, 0)
    out = {}
    for c in cells:
        clat, clon = geo.cell_center(c)
        out[c] = min(samples, key=lambda s: (s[0] - clat) ** 2 + (s[1] - clon) ** 2)[2]
    return out
