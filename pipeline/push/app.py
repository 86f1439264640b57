"""The push worker's ASGI app: WebSocket ``/v1/stream``, ``GET /v1/route``, the Waze feed.

Handlers are thin: state and decisions live in ``service`` (topics, hub, routing) and
``stream`` (the WebSocket protocol). The route list is the one place to mount more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from pipeline.push import mappage
from pipeline.push.service import PushService, load_router
from pipeline.push.stream import MAX_FRAME, StreamEndpoint, check_subscribe, error_message
from pipeline.settings import Settings

__all__ = ["MAX_FRAME", "PushService", "build_app", "check_subscribe", "error_message", "parse_point"]


def parse_point(name: str, text: str | None) -> tuple[float, float]:
    """``lat,lon`` → (lat, lon); ValueError with a message a client can act on."""
    if not text:
        raise ValueError(f"{name}: required, as lat,lon")
    parts = text.split(",")
    try:
        lat, lon = (float(p) for p in parts) if len(parts) == 2 else (float("nan"), 0.0)
    except ValueError:
        lat, lon = float("nan"), 0.0
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"{name}: lat,lon in degrees (lat -90..90, lon -180..180), got {text!r}")
    return lat, lon


def build_app(settings: Settings) -> Starlette:
    svc = PushService(settings)
    stream = StreamEndpoint(svc, settings.push_stuck_s, settings.push_rate)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.routing_net:
            svc.router = await asyncio.to_thread(load_router, settings.routing_net, settings.cell_resolution)
        loops = (svc.consume(), svc.reroute_loop(), stream.watchdog(), stream.keep_heap())
        tasks = [asyncio.create_task(t) for t in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "at": time.time()})

    async def readyz(request: Request) -> Response:
        ok = svc.caught_up.is_set()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    async def waze_feed(request: Request) -> Response:
        if not svc.caught_up.is_set():
            # before the topics are read the feed would claim an empty, jam-free city
            return JSONResponse({"error": "not_ready"}, status_code=503, headers={"Retry-After": "1"})
        try:
            body = svc.waze_feed(request.query_params.get("bbox", ""))
        except ValueError as exc:
            return JSONResponse({"error": "bad_bbox", "message": str(exc)}, status_code=400)
        return Response(body, media_type="application/json")

    async def route(request: Request) -> Response:
        if svc.router is None:
            return JSONResponse({"error": "no_network", "message": "routing is off (TRAVERZ_ROUTING_NET)"}, 503)
        try:
            origin = parse_point("from", request.query_params.get("from"))
            dest = parse_point("to", request.query_params.get("to"))
        except ValueError as exc:
            return JSONResponse({"error": "bad_request", "message": str(exc)}, status_code=400)
        try:
            found = svc.router.route(origin, dest)
        except LookupError as exc:
            return JSONResponse({"error": "off_network", "message": str(exc)}, status_code=422)
        if found is None:
            return JSONResponse({"error": "unroutable", "message": "every way is closed"}, status_code=422)
        return JSONResponse(
            {
                "polyline": [[lat, lon] for lat, lon in found.polyline],
                "travel_s": round(found.travel_s, 1),
                "free_flow_s": round(found.free_flow_s, 1),
                "distance_m": round(found.distance_m, 1),
                "network": svc.router.net.name,
            }
        )

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/stream", stream.serve),
            Route("/v1/route", route),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/v1/feed/waze.json", waze_feed),
            *mappage.routes(svc),  # GET /map: the live map (pipeline/push/mappage.py)
        ],
        lifespan=lifespan,
    )
    app.state.service = svc
    return app
