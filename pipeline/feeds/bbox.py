"""A latitude/longitude box given as ``S,W,N,E`` (the order of the ``bbox`` query and ``--bbox``)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BBox:
    south: float
    west: float
    north: float
    east: float

    def contains(self, lat: float, lon: float) -> bool:
        if not self.south <= lat <= self.north:
            return False
        if self.west <= self.east:
            return self.west <= lon <= self.east
        # west > east: the box crosses the antimeridian (e.g. 170,-170 around Fiji)
        return lon >= self.west or lon <= self.east


def parse_bbox(text: str) -> BBox:
    """``S,W,N,E`` in degrees; ValueError with a message a user can act on."""
    parts = text.split(",")
    if len(parts) != 4:
        raise ValueError("bbox: four numbers S,W,N,E")
    try:
        s, w, n, e = (float(p) for p in parts)
    except ValueError:
        raise ValueError("bbox: four numbers S,W,N,E") from None
    if not all(math.isfinite(v) for v in (s, w, n, e)):
        raise ValueError("bbox: finite numbers")
    if not (-90.0 <= s <= n <= 90.0):
        raise ValueError("bbox: -90 <= S <= N <= 90")
    if not (-180.0 <= w <= 180.0 and -180.0 <= e <= 180.0):
        raise ValueError("bbox: W and E in -180..180")
    return BBox(s, w, n, e)
