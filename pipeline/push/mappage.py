"""``GET /map``: a live map of the conditions and incidents, served by the push worker.

Nothing is fetched from the internet at run time: the page draws H3 hexagons (h3-js, from
npm at build time — ``make web`` copies it into ``static/vendor/``) as SVG on a plain
background, coloured by level, with incident markers. It follows ``/v1/stream`` like a
driver's app, with the map-viewer subscription ``{"type": "subscribe", "bbox": [S, W, N, E]}``:
every res-9 cell of the box, all directions, at a higher message rate than a driver's.

``/map?token=T[&bbox=S,W,N,E]``: without a bbox the page asks ``/map/extent.json`` for the box
around every cell that has a condition. The token is a device token (``traverz tokens issue``):
a browser cannot set the Authorization header on a WebSocket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h3
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline import geo

STATIC = Path(__file__).with_name("static")
VENDOR_H3 = STATIC / "vendor" / "h3-js.umd.js"
MAX_VIEW_CELLS = 60_000  # a city of ~6,000 km² at res 9
VIEWER_RATE = 5000.0  # messages/s to a map viewer (a driver gets 50): a view's first state is thousands
VIEWER_OUTBOX = 100_000
ALL_DIRECTIONS = -1  # the hub's sector wildcard: every heading sector of a cell

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Traverz live map</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/map/static/map.css">
</head><body>
<div id="status" data-ws="connecting" data-cells="0" data-incidents="0">connecting…</div>
<div id="legend"></div>
<svg id="map" xmlns="http://www.w3.org/2000/svg"><g id="cells"></g><g id="incidents"></g></svg>
<script src="/map/static/vendor/h3-js.umd.js"></script>
<script src="/map/static/map.js"></script>
</body></html>
"""


def check_bbox(msg: dict[str, Any]) -> str:
    """Why a map-viewer subscription is not valid, or ''."""
    box = msg.get("bbox")
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
    ):
        return "bbox: [south, west, north, east] numbers"
    s, w, n, e = box
    if not (-90 <= s < n <= 90 and -180 <= w < e <= 180):
        return "bbox: south < north in -90..90, west < east in -180..180"
    return ""


def bbox_watch(box: list[float], res: int) -> dict[str, int]:
    """Every ``res`` cell whose centre is in the box, watched in all directions; ValueError when too many."""
    s, w, n, e = (float(v) for v in box)
    poly = h3.LatLngPoly([(s, w), (s, e), (n, e), (n, w)])
    if h3.cell_area(geo.cell(s, w, res), unit="km^2") * MAX_VIEW_CELLS < _area_km2(s, w, n, e):
        raise ValueError(f"bbox: more than {MAX_VIEW_CELLS} cells; zoom in")
    return dict.fromkeys((str(c) for c in h3.h3shape_to_cells(poly, res)), ALL_DIRECTIONS)


def _area_km2(s: float, w: float, n: float, e: float) -> float:
    return geo.distance_m(s, w, n, w) * geo.distance_m((s + n) / 2, w, (s + n) / 2, e) / 1e6


def extent(cells: list[str], pad: float = 0.15) -> list[float] | None:
    """[S, W, N, E] around the centres of ``cells`` (padded by a fraction, at least ~300 m), or None."""
    if not cells:
        return None
    pts = [geo.cell_center(c) for c in cells]
    s, n = min(p[0] for p in pts), max(p[0] for p in pts)
    w, e = min(p[1] for p in pts), max(p[1] for p in pts)
    dlat, dlon = max((n - s) * pad, 0.003), max((e - w) * pad, 0.005)
    return [max(-90.0, s - dlat), max(-180.0, w - dlon), min(90.0, n + dlat), min(180.0, e + dlon)]


def routes(svc: Any) -> list[BaseRoute]:
    """The page, its extent and its static files; ``svc`` is the worker's PushService."""

    async def page(request: Request) -> Response:
        if not VENDOR_H3.exists():
            return HTMLResponse("h3-js is not installed: run `make web` (npm ci in web/)", status_code=503)
        return HTMLResponse(PAGE)

    async def extent_json(request: Request) -> Response:
        return JSONResponse({"bbox": extent(list(svc.hub.conditions))})

    return [
        Route("/map", page),
        Route("/map/extent.json", extent_json),
        Mount("/map/static", StaticFiles(directory=STATIC), name="map-static"),
    ]
