"""The push worker's state: topics in, hub and road network updated, reroutes decided.

Every push worker reads every partition of both topics with no consumer group (each
driver connects to one worker, and any worker must be able to serve any driver; a
worker's state is a few hundred bytes per cell, so a city fits in every worker and no
region affinity is needed). It rebuilds the latest state per cell from the compacted
conditions topic at start, and only then pushes news: what was already over is not news.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.feeds import waze
from pipeline.feeds.bbox import parse_bbox
from pipeline.metrics import Registry
from pipeline.push.delivery import DeliveryLatency
from pipeline.push.hub import Client, Hub, prepared
from pipeline.push.watch import corridor_watch
from pipeline.routing import network
from pipeline.routing.match import route_edges
from pipeline.routing.reroute import Offer, Plan, on_subscribe, reconsider
from pipeline.routing.router import Router
from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS, Settings
from pipeline.tokens import TokenVerifier, parse_keys

# Feed pollers get one rendering per second and bbox: the feed walks every jammed cell.
FEED_CACHE_S = 1.0
FEED_CACHE_MAX = 64
REROUTE_TICK_S = 0.5
# Records applied between delivery passes: 500 conditions x ~100 watching drivers is ~50 ms of
# fan-out, so news waits at most that long behind a backlog, and a pass still joins a busy
# driver's several news into one write.
MAX_RECORDS = 500
FETCH_WAIT_MS, FETCH_MIN_BYTES = 20, 64 * 1024


def load_router(spec: str, res: int) -> Router:
    """``spec``: a Berlin network of the eclipse-sumo package (DRT, A10KW) or a .net.xml path."""
    path = network.sumo_net_path(spec) if spec in network.BERLIN_NETS else spec
    return Router(network.load(path), res)


class PushService:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.hub = Hub()
        self.router: Router | None = None
        self.changed_edges: set[int] = set()
        self.verifier = TokenVerifier(
            parse_keys(settings.token_kid, settings.token_secret, settings.token_extra_keys),
            issuer=settings.token_issuer,
            audience=settings.token_audience,
        )
        self.caught_up = asyncio.Event()
        self.lag_s = 0.0  # how old the newest record of the last live batch was (0: nothing waiting)
        # while a live record is applied, when it was published (its Kafka timestamp, on the
        # time.monotonic() scale): delivery counts a driver's spacing from there (pipeline/push/dispatch.py)
        self.published: float | None = None
        # For the Waze feed: the latest version of every open alert, and the latest condition
        # of the cells at level >= 1 only (a feed lists jams, and free cells are most cells).
        self.open_alerts: dict[str, dict[str, Any]] = {}
        self.jammed: dict[str, dict[str, Any]] = {}
        self._feed_cache: dict[str, tuple[float, bytes]] = {}
        m = self.metrics = Registry()
        m.gauge("traverz_push_connections", "connected drivers", lambda: float(len(self.hub.clients)))
        m.gauge("traverz_push_cells_known", "cells with a current condition", lambda: float(len(self.hub.conditions)))
        self.delivered = m.counter("traverz_push_messages_sent_total", "messages written to sockets")
        self.writes = m.counter("traverz_push_socket_writes_total", "socket writes by delivery passes (1+ frames each)")
        self.dropped = m.counter("traverz_push_clients_dropped_total", "clients disconnected, by reason")
        self.reroutes = m.counter("traverz_push_reroutes_total", "reroute suggestions sent")
        self.delivery = DeliveryLatency(m)  # updated_at → socket (pipeline/push/delivery.py)

    async def consume(self) -> None:
        """Follow both topics from the beginning; news only after catching up."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.s.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            # A fetch waits up to 20 ms for 64 KiB: with the broker's default of 1 byte every record
            # came back in a fetch of its own, and aiokafka's per-fetch Python took a quarter of a
            # core at the bench's 1,200 conditions/s (5 % this way; news ~15 ms later)
            fetch_max_wait_ms=FETCH_WAIT_MS,
            fetch_min_bytes=FETCH_MIN_BYTES,
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
                batch = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
                live = self.caught_up.is_set()
                wall, mono = time.time(), time.monotonic()
                for tp, msgs in batch.items():
                    for m in msgs:
                        if live:  # (a timestamp ahead of this clock is taken as now)
                            self.published = mono - max(0.0, wall - m.timestamp / 1000.0)
                        self._apply(tp.topic, m.key, m.value, live)
                    if not live and tp in pending and msgs[-1].offset + 1 >= end[tp]:
                        pending.discard(tp)
                self.published = None
                if not live and not pending:
                    self.caught_up.set()
                if live:
                    newest = max((msgs[-1].timestamp for msgs in batch.values()), default=None)
                    self.lag_s = 0.0 if newest is None else max(0.0, time.time() - newest / 1000.0)
                if live and batch:
                    # getmany returns at once while the fetcher holds records: without a yield the
                    # delivery pass (and every socket) would wait behind all of them
                    await asyncio.sleep(0)
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
                if self.router is not None:
                    self.changed_edges |= self.router.on_condition(cell, cond)
            elif value is not None:
                alert = orjson.loads(value)
                self.hub.on_alert(alert, live)
                self._track_alert(alert)
                if self.router is not None:
                    self.changed_edges |= self.router.on_alert(alert)
        except (ValueError, KeyError, TypeError):
            return  # a poison record in an output topic must not stop the push worker

    def _track_condition(self, cell: str, cond: dict[str, Any] | None) -> None:
        cur = self.hub.conditions.get(cell)
        if cond is None or cur is None:
            self.jammed.pop(cell, None)
        elif cur.version == int(cond["version"]):  # the hub took it: not an older, replayed state
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

    # -- destinations and reroutes -----------------------------------------------------------

    def plan(
        self,
        client: Client,
        lat: float,
        lon: float,
        dest: tuple[float, float],
        route: list[tuple[float, float]] | None = None,
        heading_deg: float | None = None,
        speed_mps: float = 0.0,
    ) -> dict[str, int] | None:
        """Plan the driver's way to ``dest`` (along ``route`` when sent); the cells along what is left of it.

        A better way than the plan is offered right away (pipeline/routing/reroute.py). None
        when there is no road network or either end is off it: the driver then watches the
        cone ahead (or its route) and gets no reroutes.
        """
        r = self.router
        if r is None:
            return None
        goal = r.snap(*dest)
        prev = client.plan if isinstance(client.plan, Plan) else None
        driven = route_edges(r, route) if route else ()
        plan, offer = (
            (None, None) if goal is None else on_subscribe(r, prev, lat, lon, goal, driven, heading_deg, speed_mps)
        )
        client.plan = plan
        if plan is None:
            return None
        if offer is not None:
            self._send(client, offer)
        ahead = r.path(plan.remaining(plan.at) or ()).polyline or ((lat, lon), dest)
        return corridor_watch(ahead, self.s.cell_resolution)

    def _offer(self, client: Client, plan: Plan) -> bool:
        assert self.router is not None
        offer = reconsider(self.router, plan)
        if offer is None:
            return False
        self.hub.subscribe(client, corridor_watch(offer.route.polyline, self.s.cell_resolution), client.origin)
        self._send(client, offer)
        return True

    def _send(self, client: Client, offer: Offer) -> None:
        msg = prepared(
            {
                "type": "reroute",
                "polyline": [[lat, lon] for lat, lon in offer.route.polyline],
                "saved_s": round(offer.saved_s, 1),
                "eta_s": round(offer.route.travel_s, 1),
                "free_flow_s": round(offer.route.free_flow_s, 1),
                "blocked": offer.blocked,
                "reason": offer.reason,
            }
        )
        client.enqueue("reroute", msg)
        self.reroutes.inc()

    async def reroute_loop(self) -> None:
        """Reconsider the plans that a change of live weights touches."""
        while True:
            await asyncio.sleep(REROUTE_TICK_S)
            if not self.changed_edges or self.router is None:
                continue
            changed, self.changed_edges = self.changed_edges, set()
            for client in list(self.hub.clients):
                plan = client.plan
                if isinstance(plan, Plan) and not plan.edge_set.isdisjoint(changed):
                    self._offer(client, plan)
