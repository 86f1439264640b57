"""WebSocket ``/v1/stream``: token, subscribe messages in, prepared updates out.

Updates normally go out in the dispatcher's pass (pipeline/push/dispatch.py), written as
pre-encoded frames to the socket. A driver's sender task here is the slow path, started only
when needed and gone when done: it waits for a socket over its high-water mark, paces a
rate-limited outbox, closes an overflowed one. A driver on a raw socket is served by one task
— uvicorn's, reading its messages — and no other while nothing is slow (each task is a
coroutine chain, a context and futures: kilobytes and dozens of GC-tracked objects per
driver). Drivers without a raw socket (another server, a test client) keep a sender task for
their ASGI sends. A driver whose socket does not take a batch within the stuck limit is
disconnected by the watchdog, and one whose outbox overflows is closed with 1013; either way
nothing more is queued for it. Oversized frames never reach this code: uvicorn's
``ws_max_size`` closes them with 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from pipeline.push import mappage
from pipeline.push.dispatch import Dispatcher, joined
from pipeline.push.frames import RawSocket, raw_socket
from pipeline.push.heap import HeapKeeper
from pipeline.push.hub import Client
from pipeline.push.service import PushService
from pipeline.push.watch import cone_watch, corridor_watch
from pipeline.tokens import TokenError, bearer

MAX_FRAME = 64 * 1024
# News that spent time in Kafka may bring its driver's write forward by up to this share of the tick
# (pipeline/push/dispatch.py): at most twice as many writes for drivers whose news all came late
LEAD_TICKS = 0.5
WATCHDOG_S = 0.5


def error_message(code: str, message: str) -> str:
    return orjson.dumps({"type": "error", "code": code, "message": message}).decode()


def _point(v: Any) -> bool:
    return (
        isinstance(v, list | tuple)
        and len(v) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        and -90 <= v[0] <= 90
        and -180 <= v[1] <= 180
    )


def check_subscribe(msg: Any) -> str:
    """Why a client message is not a valid subscribe/ping, or '' when it is."""
    if not isinstance(msg, dict):
        return "a message is a JSON object"
    kind = msg.get("type")
    if kind == "ping":
        return ""
    if kind != "subscribe":
        return f"unknown message type {kind!r}"
    if "bbox" in msg:  # a map viewer: every cell of a box (pipeline/push/mappage.py)
        return mappage.check_bbox(msg)
    for name, lo, hi in (("lat", -90, 90), ("lon", -180, 180), ("heading_deg", 0, 360), ("speed_mps", 0, 90)):
        v = msg.get(name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            return f"{name}: a number in {lo}..{hi}"
    route = msg.get("route")
    if route is not None and (
        not isinstance(route, list) or not 2 <= len(route) <= 2000 or not all(map(_point, route))
    ):
        return "route: 2..2000 [lat, lon] pairs"
    dest = msg.get("destination")
    if dest is not None and (not isinstance(dest, dict) or not _point([dest.get("lat"), dest.get("lon")])):
        return "destination: {lat, lon} in range"
    since = msg.get("since_version")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        return "since_version: a non-negative integer"
    return ""


class StreamEndpoint:
    """One instance per push worker; ``serve`` serves one WebSocket."""

    def __init__(self, svc: PushService, stuck_s: float, rate: float) -> None:
        self.svc = svc
        self.stuck_s = stuck_s
        self.rate = rate
        self.sending_since: dict[Client, float] = {}
        self.senders: dict[Client, asyncio.Task[None]] = {}
        self.conns: dict[Client, tuple[WebSocket, RawSocket]] = {}
        tick_s = svc.s.push_tick_ms / 1000.0
        self.dispatch = Dispatcher(
            svc.delivered,
            svc.delivery,
            tick_s,
            wake=self.wake,
            writes=svc.writes,
            lag=lambda: svc.lag_s,
            published=lambda: svc.published,
            lead_s=tick_s * LEAD_TICKS,
        )
        spacing = "least time between two writes to a driver now (the tick when busy)"
        svc.metrics.gauge("traverz_push_spacing_seconds", spacing, lambda: self.dispatch.spacing)
        self.heap = HeapKeeper()  # pipeline/push/heap.py: full GC collections off the drivers' objects

    async def keep_heap(self) -> None:
        """Freeze the heap once the worker is ready (state rebuilt), then as drivers arrive."""
        await self.svc.caught_up.wait()
        await self.heap.run()

    async def serve(self, ws: WebSocket) -> None:
        token = ws.headers.get("authorization") or (
            f"Bearer {ws.query_params['token']}" if "token" in ws.query_params else None
        )
        await ws.accept()
        try:
            ident = self.svc.verifier.verify(bearer(token))
        except TokenError as exc:
            await ws.close(code=4401, reason=str(exc)[:100])
            return
        client = Client(device_id=ident.device_id, rate=self.rate)
        sock = raw_socket(ws)
        self.svc.hub.add(client)
        self.heap.arrive()
        try:
            if sock is not None:
                self.conns[client] = (ws, sock)
                self.dispatch.attach(client, sock)
                await self._receiver(ws, client)
            else:
                sender = self.senders[client] = asyncio.create_task(self._sender(ws, client, None))
                receiver = asyncio.create_task(self._receiver(ws, client))
                try:
                    await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    receiver.cancel()
        finally:
            task = self.senders.pop(client, None)
            if task is not None:
                task.cancel()
            self.dispatch.detach(client)
            self.svc.hub.remove(client)
            self.conns.pop(client, None)
            self.sending_since.pop(client, None)
            self.heap.depart()

    def wake(self, client: Client) -> None:
        """The dispatcher's slow path for a raw-socket driver: its sender task, started if not running."""
        client.wake.set()
        if client not in self.senders and client in self.conns:
            ws, sock = self.conns[client]
            self.senders[client] = asyncio.create_task(self._sender(ws, client, sock))

    async def _receiver(self, ws: WebSocket, client: Client) -> None:
        hub, res = self.svc.hub, self.svc.s.cell_resolution
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
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
                if msg["type"] != "subscribe":
                    continue
                if "bbox" in msg:
                    await self._view(ws, client, msg["bbox"])
                    continue
                lat, lon, heading = float(msg["lat"]), float(msg["lon"]), float(msg["heading_deg"])
                dest = msg.get("destination")
                watch = None
                if dest is not None:
                    route = [(float(a), float(b)) for a, b in msg.get("route") or ()]
                    to = (float(dest["lat"]), float(dest["lon"]))
                    watch = self.svc.plan(client, lat, lon, to, route, heading, float(msg["speed_mps"]))
                else:
                    client.plan = None
                if msg.get("route") and watch is None:
                    watch = corridor_watch([(float(a), float(b)) for a, b in msg["route"]], res)
                origin = None
                if watch is None:
                    watch = cone_watch(lat, lon, heading, float(msg["speed_mps"]), res)
                    origin = (lat, lon, heading)
                n = hub.subscribe(client, watch, origin, int(msg.get("since_version") or 0))
                reply = {"type": "subscribed", "cells": n}
                await ws.send_text(orjson.dumps(reply).decode())

    async def _view(self, ws: WebSocket, client: Client, bbox: list[float]) -> None:
        """The map viewer's subscription: all directions of every cell in the box, at a viewer's rate."""
        try:
            watch = mappage.bbox_watch(bbox, self.svc.s.cell_resolution)
        except ValueError as exc:
            await ws.send_text(error_message("bad_message", str(exc)))
            return
        client.rate, client.max_outbox, client.plan = mappage.VIEWER_RATE, mappage.VIEWER_OUTBOX, None
        n = self.svc.hub.subscribe(client, watch)
        await ws.send_text(orjson.dumps({"type": "subscribed", "cells": n}).decode())

    async def _sender(self, ws: WebSocket, client: Client, sock: RawSocket | None) -> None:
        """Until the outbox is empty and the socket takes writes again (raw socket), or for good (ASGI)."""
        try:
            while True:
                await client.wake.wait()
                if client.overflowed:
                    self.svc.dropped.inc(reason="slow")
                    await asyncio.wait_for(ws.close(code=1013, reason="too slow"), self.stuck_s)
                    self._end(sock)
                    return
                if sock is not None:
                    if not sock.writable():
                        self.sending_since[client] = time.monotonic()
                        await sock.wait_writable()  # news coalesce in the outbox meanwhile
                        del self.sending_since[client]
                    if not sock.open():
                        self._end(sock)
                        return
                    self._write(sock, client)
                else:
                    await self._send(ws, client)
                if client.outbox:  # rate-limited: the rest coalesces meanwhile
                    await asyncio.sleep(client.wait_s())
                elif sock is not None:
                    return  # back to the dispatcher's pass
        except (WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
            self._end(sock)
        finally:
            if sock is not None and self.senders.get(client) is asyncio.current_task():
                del self.senders[client]

    @staticmethod
    def _end(sock: RawSocket | None) -> None:
        """A raw-socket driver's connection is over: its reader (uvicorn's task) sees the disconnect."""
        if sock is not None:
            sock.transport.close()

    def _write(self, sock: RawSocket, client: Client) -> None:
        batch = client.take(time.monotonic())
        if batch:
            sock.write(joined(batch))
            self.svc.delivered.inc(len(batch))
            self.svc.delivery.sent(batch)

    async def _send(self, ws: WebSocket, client: Client) -> None:
        """Without a raw socket: one ASGI send per message."""
        now = time.monotonic()
        batch = client.take(now)
        self.sending_since[client] = now
        for msg in batch:
            await ws.send(msg)
        del self.sending_since[client]
        self.svc.delivered.inc(len(batch))
        self.svc.delivery.sent(batch)

    async def watchdog(self) -> None:
        """Disconnect drivers whose socket has not taken a batch for ``stuck_s``."""
        while True:
            await asyncio.sleep(WATCHDOG_S)
            limit = time.monotonic() - self.stuck_s
            for client, since in list(self.sending_since.items()):
                if since < limit:
                    self.sending_since.pop(client, None)
                    task = self.senders.pop(client, None)
                    if task is not None:
                        self.svc.dropped.inc(reason="stuck")
                        task.cancel()
                    conn = self.conns.get(client)
                    if conn is not None:
                        conn[1].transport.abort()  # nothing gets through: no close handshake
