"""What the system said: the alerts and conditions topics, and subscribed drivers' WebSockets.

:class:`Tap` reads ``traverz.alerts.v1`` and ``traverz.conditions.v1`` from their end at the
start of a run (as any analyst's consumer would) and keeps every alert with the wall time it
was read. :class:`Subscriber` is one driver's ``/v1/stream`` connection: it (re-)subscribes
with its position, destination and remaining route, and records when each alert reached it
and which reroutes it was offered. Reroutes are read tolerantly: a ``polyline`` of
``[lat, lon]`` pairs is all that is needed; ``saved_s``/``eta_s``/``reason`` are kept when sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS

JAM_LEVEL = 3


@dataclass
class SeenAlert:
    wall: float  # when the tap read it
    alert: dict[str, Any]


class Tap:
    """Every alert (and a count of conditions) published after :meth:`start`."""

    def __init__(self, bootstrap: str, bbox: tuple[float, float, float, float]) -> None:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        self.bbox = bbox
        self.alerts: list[SeenAlert] = []
        self.conditions = 0
        self.levels: dict[str, int] = {}  # cell → latest max sector level (live output)
        self.news: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        c = self.consumer
        await c.start()
        tps: list[TopicPartition] = []
        for topic in (TOPIC_ALERTS, TOPIC_CONDITIONS):
            for _ in range(100):
                parts = c.partitions_for_topic(topic)
                if parts:
                    break
                await c._client.force_metadata_update()
                await asyncio.sleep(0.2)
            tps += [TopicPartition(topic, p) for p in sorted(parts or ())]
        c.assign(tps)
        await c.seek_to_end(*tps)
        for tp in tps:  # pin the end now: what the run causes comes after
            await c.position(tp)
        self._task = asyncio.create_task(self._run())

    def _inside(self, lat: float, lon: float) -> bool:
        s, w, n, e = self.bbox
        return s <= lat <= n and w <= lon <= e

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=2000)
            now = time.time()
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.value is None:
                        continue
                    with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                        doc = orjson.loads(m.value)
                        if tp.topic == TOPIC_ALERTS:
                            if self._inside(float(doc["lat"]), float(doc["lon"])):
                                self.alerts.append(SeenAlert(now, doc))
                                self.news.put_nowait(("alert", doc))
                        else:
                            self._condition(doc)

    def _condition(self, doc: dict[str, Any]) -> None:
        self.conditions += 1
        level = max((int(s.get("level", 0)) for s in doc.get("sectors", [])), default=0)
        cell = str(doc["cell"])
        before = self.levels.get(cell, 0)
        if before != level:
            self.levels[cell] = level
            if max(before, level) >= JAM_LEVEL:  # live output: a jam forming or dissolving, not every ripple
                self.news.put_nowait(("condition", {**doc, "level_before": before, "level_now": level}))

    def open_alerts(self) -> dict[str, dict[str, Any]]:
        """Latest version of every alert not cleared."""
        latest: dict[str, dict[str, Any]] = {}
        for a in self.alerts:
            latest[str(a.alert["id"])] = a.alert
        return {i: a for i, a in latest.items() if a.get("state") != "cleared"}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


@dataclass
class Offer:
    wall: float
    polyline: list[tuple[float, float]]
    saved_s: float | None
    eta_s: float | None
    reason: str  # the push worker names the closure alert on the old route, else "congestion"
    blocked: bool = False  # the old route was impassable

    @property
    def about_closure(self) -> bool:
        return self.blocked or self.reason not in ("", "congestion")


@dataclass
class Subscriber:
    """One driver's push connection."""

    vehicle: str
    url: str
    token: str
    received: dict[str, float] = field(default_factory=dict)  # alert id → first wall time it arrived
    offers: list[Offer] = field(default_factory=list)  # not yet applied
    errors: int = 0
    subscribed_s: float = -1.0  # sim time of the last subscribe sent
    _out: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def subscribe(self, msg: dict[str, Any]) -> None:
        """Queue a subscribe; an older unsent one is replaced (only the latest position matters)."""
        if self._out.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._out.get_nowait()
        self._out.put_nowait(msg)

    async def _run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        try:
            async with connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"}) as ws:

                async def sender() -> None:
                    while True:
                        await ws.send(orjson.dumps(await self._out.get()).decode())

                send = asyncio.create_task(sender())
                try:
                    async for raw in ws:
                        self._on(orjson.loads(raw))
                finally:
                    send.cancel()
        except (OSError, WebSocketException, orjson.JSONDecodeError):
            self.errors += 1

    def _on(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        now = time.time()
        if kind == "alert":
            alert = msg.get("alert") or {}
            if alert.get("state") != "cleared":
                self.received.setdefault(str(alert.get("id")), now)
        elif kind == "reroute":
            line = msg.get("polyline") or msg.get("route") or []
            pts = [(float(p[0]), float(p[1])) for p in line if isinstance(p, list | tuple) and len(p) >= 2]
            if len(pts) >= 2:
                saved, eta = msg.get("saved_s"), msg.get("eta_s")
                self.offers.append(
                    Offer(
                        now,
                        pts,
                        float(saved) if isinstance(saved, int | float) else None,
                        float(eta) if isinstance(eta, int | float) else None,
                        str(msg.get("reason", "")),
                        msg.get("blocked") is True,
                    )
                )
        elif kind == "error":
            self.errors += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
