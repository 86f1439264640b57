"""The push worker: WebSocket ``/v1/stream`` fed from the condition and alert topics.

Every push worker reads every partition of both topics with no consumer group
(each driver connects to one worker, and any worker must be able to serve any
driver). It rebuilds the latest state per cell from the compacted conditions
topic at start, and only then pushes news: what was already over is not news.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pipeline.feeds import waze
from pipeline.feeds.bbox import parse_bbox
from pipeline.metrics import Registry
from pipeline.push.hub import Client, Hub, subscription_cells
from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS, Settings
from pipeline.tokens import TokenError, TokenVerifier, bearer, parse_keys

SEND_TIMEOUT_S = 10.0
MAX_FRAME = 64 * 1024
# Feed pollers get one rendering per second and bbox: the feed walks every jammed cell.
FEED_CACHE_S = 1.0
FEED_CACHE_MAX = 64


def error_message(code: str, message: str) -> str:
    return orjson.dumps({"type": "error", "code": code, "message": message}).decode()


def check_subscribe(msg: Any) -> str:
    """Why a client message is not a valid subscribe/ping, or '' when it is."""
    if not isinstance(msg, dict):
        return "a message is a JSON object"
    kind = msg.get("type")
    if kind == "ping":
        return ""
    if kind != "subscribe":
        return f"unknown message type {kind!r}"
    for name, lo, hi in (("lat", -90, 90), ("lon", -180, 180), ("heading_deg", 0, 360), ("speed_mps", 0, 90)):
        v = msg.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            return f"{name}: a number in {lo}..{hi}"
    route = msg.get("route")
    if route is not None and (
        not isinstance(route, list)
        or not 2 <= len(route) <= 2000
        or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, int | float) for x in p) for p in route)
    ):
        return "route: 2..2000 [lat, lon] pairs"
    return ""


class PushService:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.hub = Hub()
        self.verifier = TokenVerifier(
            parse_keys(settings.token_kid, settings.token_secret, settings.token_extra_keys),
            issuer=settings.token_issuer,
            audience=settings.token_audience,
        )
        self.caught_up = asyncio.Event()
        # For the Waze feed: the latest version of every open alert, and the latest condition
        # of the cells at level >= 1 only (a feed lists jams, and free cells are most cells).
        self.open_alerts: dict[str, dict[str, Any]] = {}
        self.jammed: dict[str, dict[str, Any]] = {}
        self._feed_cache: dict[str, tuple[float, bytes]] = {}
        m = self.metrics = Registry()
        m.gauge("traverz_push_connections", "connected drivers", lambda: float(len(self.hub.clients)))
        m.gauge("traverz_push_cells_known", "cells with a current condition", lambda: float(len(self.hub.conditions)))
        self.delivered = m.counter("traverz_push_messages_sent_total", "messages written to sockets")
        self.dropped = m.counter("traverz_push_clients_dropped_total", "clients disconnected, by reason")

    async def consume(self) -> None:
        """Follow both topics from the beginning; news only after catching up."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.s.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        try:
            tps = []
            for topic in (TOPIC_CONDITIONS, TOPIC_ALERTS):
                parts = consumer.partitions_for_topic(topic)
                while not parts:
                    await consumer._client.force_metadata_update()
                    parts = consumer.partitions_for_topic(topic)
                    if not parts:
                        await asyncio.sleep(0.5)
                tps += [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp, off in end.items() if off > 0}
            if not pending:
                self.caught_up.set()
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                live = self.caught_up.is_set()
                for tp, msgs in batch.items():
                    for m in msgs:
                        self._apply(tp.topic, m.key, m.value, live)
                    if not live and tp in pending and msgs[-1].offset + 1 >= end[tp]:
                        pending.discard(tp)
                if not live and not pending:
                    self.caught_up.set()
        finally:
            await consumer.stop()

    def _apply(self, topic: str, key: bytes | None, value: bytes | None, live: bool) -> None:
        try:
            if topic == TOPIC_CONDITIONS:
                if key is None:
                    return
                cell = key.decode()
                cond = orjson.loads(value) if value else None
                self.hub.on_condition(cell, cond, live)
                self._track_condition(cell, cond)
            elif value is not None:
                alert = orjson.loads(value)
                self.hub.on_alert(alert, live)
                self._track_alert(alert)
        except (ValueError, KeyError, TypeError):
            return  # a poison record in an output topic must not stop the push worker

    def _track_condition(self, cell: str, cond: dict[str, Any] | None) -> None:
        cur = self.hub.conditions.get(cell)
        if cond is None or cur is None:
            self.jammed.pop(cell, None)
        elif cur[0] == int(cond["version"]):  # the hub took it: not an older, replayed state
            if int(cond["level"]) >= 1:
                self.jammed[cell] = cond
            else:
                self.jammed.pop(cell, None)

    def _track_alert(self, alert: dict[str, Any]) -> None:
        incident_id = str(alert["id"])
        prev = self.open_alerts.get(incident_id)
        if prev is not None and int(prev["version"]) >= int(alert["version"]):
            return  # replayed or reordered version
        if alert.get("state") in waze.OPEN_STATES:
            self.open_alerts[incident_id] = alert
        else:
            self.open_alerts.pop(incident_id, None)

    def waze_feed(self, bbox_text: str) -> bytes:
        """The Waze feed (optionally inside ``bbox``), rendered at most once a second per bbox."""
        now = time.time()
        hit = self._feed_cache.get(bbox_text)
        if hit is not None and now - hit[0] < FEED_CACHE_S:
            return hit[1]
        bbox = parse_bbox(bbox_text) if bbox_text else None
        body = orjson.dumps(waze.feed(self.jammed.values(), self.open_alerts, now, bbox))
        if len(self._feed_cache) >= FEED_CACHE_MAX:
            self._feed_cache.clear()  # many distinct boxes: start over rather than grow
        self._feed_cache[bbox_text] = (now, body)
        return body

    async def stream(self, ws: WebSocket) -> None:
        token = ws.headers.get("authorization") or (
            f"Bearer {ws.query_params['token']}" if "token" in ws.query_params else None
        )
        await ws.accept()
        try:
            ident = self.verifier.verify(bearer(token))
        except TokenError as exc:
            await ws.close(code=4401, reason=str(exc)[:100])
            return
        client = Client(device_id=ident.device_id)
        self.hub.add(client)
        sender = asyncio.create_task(self._sender(ws, client))
        try:
            while True:
                text = await ws.receive_text()
                try:
                    msg = orjson.loads(text)
                except orjson.JSONDecodeError:
                    await ws.send_text(error_message("malformed_json", "send JSON"))
                    continue
                problem = check_subscribe(msg)
                if problem:
                    await ws.send_text(error_message("bad_message", problem))
                    continue
                if msg["type"] == "subscribe":
                    cells = subscription_cells(msg, self.s.cell_resolution)
                    since = msg.get("since_version")
                    n = self.hub.subscribe(
                        client, cells, float(msg["heading_deg"]), int(since) if isinstance(since, int) else 0
                    )
                    await ws.send_text(orjson.dumps({"type": "subscribed", "cells": n}).decode())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            sender.cancel()
            self.hub.remove(client)

    async def _sender(self, ws: WebSocket, client: Client) -> None:
        try:
            while True:
                await client.wake.wait()
                if client.overflowed:
                    self.dropped.inc(reason="slow")
                    await ws.close(code=1013, reason="too slow")
                    return
                for data in client.drain():
                    await asyncio.wait_for(ws.send_text(data.decode()), SEND_TIMEOUT_S)
                    self.delivered.inc()
        except TimeoutError:
            self.dropped.inc(reason="stuck")
            with contextlib.suppress(Exception):
                await ws.close(code=1013, reason="stuck")
        except (WebSocketDisconnect, RuntimeError, OSError):
            return


def build_app(settings: Settings) -> Starlette:
    svc = PushService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(svc.consume())
        try:
            yield
        finally:
            task.cancel()
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

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/stream", svc.stream),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/v1/feed/waze.json", waze_feed),
        ],
        lifespan=lifespan,
    )
    app.state.service = svc
    return app
