"""Who gets which update: subscriptions by cell and direction, latest state, coalescing outboxes.

Direction: a driver watches each of its cells in one heading sector (its heading in the
cone; the route's heading there on a route). Only sectors within one sector of that
(±45°..67.5°) count, for conditions (their per-sector statistics) and for alerts (their
``heading_deg``): the other carriageway of the same road, 180° off, never does.

Every update is serialised once — the ASGI message, and the WebSocket frame that delivery
(pipeline/push/dispatch.py) writes straight to the transport — and the same object goes to
every subscriber. Per driver, a condition is sent when what it says
about the driver's direction (level and speed band of the matching sectors, their
incidents) differs from what that driver was last told about the cell; an incident is
announced once, then again only on a material change (state, type, place, direction,
confidence band of 0.2). A slow client never grows an unbounded queue: its outbox holds
at most one pending message per cell or incident — a newer one replaces it — and a
client whose outbox still grows past the limit is disconnected.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import geo
from pipeline.push.frames import text_frame

MAX_OUTBOX = 2000
RATE_PER_S = 50.0  # sustained messages per driver; more waits (and coalesces) in the outbox
BURST = 400.0  # the state of a whole corridor fits in one burst
CLEARED_KEPT_S = 3600.0  # a reconnecting driver still hears of an incident cleared meanwhile
AHEAD_SLACK_M = 150.0  # an alert this close counts as ahead whatever its bearing (GPS noise)

Message = dict[str, Any]  # a prepared ASGI "websocket.send" event, plus its encoded "frame"


def prepared(payload: dict[str, Any]) -> Message:
    """The ASGI event (servers read only "type" and "text") and the same text as one WebSocket frame."""
    raw = orjson.dumps(payload)
    return {"type": "websocket.send", "text": raw.decode(), "frame": text_frame(raw)}


def same_direction(a: int, b: int) -> bool:
    """Heading sectors within one of each other (of 8); a negative sector (a map viewer's) matches all."""
    return a < 0 or b < 0 or (a - b) % 8 in (0, 1, 7)


@dataclass(eq=False, slots=True)  # slots: ~10,000 of these are walked per second of news
class Client:
    """One connected driver."""

    device_id: str
    cells: dict[str, int] = field(default_factory=dict)  # cell -> heading sector watched there
    origin: tuple[float, float, float] | None = None  # (lat, lon, heading) in cone mode
    outbox: dict[str, Message] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the driver's sender task: take over
    # Delivery's hook, called once when the outbox gets news (until delivery or the sender
    # took it all); without one, the sender task is woken directly.
    notify: Callable[[Client], None] | None = None
    notified: bool = False
    written: float = 0.0  # time.monotonic() of its last write by a delivery pass (pipeline/push/dispatch.py)
    sock: Any = None  # the raw socket delivery passes write to (a slot read, not a dict lookup per driver)
    overflowed: bool = False
    # incident id -> digest last sent; and cell -> that of its condition while the cell is not watched
    # (while it is, the hub's subs hold it)
    told: dict[str, int] = field(default_factory=dict)
    rate: float = RATE_PER_S
    tokens: float = BURST
    refilled: float = field(default_factory=time.monotonic)
    plan: Any = None  # the routing plan of a driver with a destination (pipeline.push.rerouting)
    max_outbox: int = MAX_OUTBOX  # a map viewer (pipeline/push/mappage.py) watches far more cells

    def enqueue(self, key: str, msg: Message) -> None:
        outbox = self.outbox
        if key in outbox:
            del outbox[key]  # re-insert at the end: newest last
        outbox[key] = msg
        if len(outbox) > self.max_outbox:
            self.overflowed = True
        if not self.notified:  # once until the outbox is taken
            self.notified = True
            if self.notify is None:
                self.wake.set()
            else:
                self.notify(self)

    def drain(self) -> list[Message]:
        out = list(self.outbox.values())
        self.outbox.clear()
        if self.notify is None or self.wake.is_set():  # with a notify hook, wake is set only on the slow path
            self.wake.clear()
        self.notified = False
        return out

    def take(self, now: float) -> list[Message]:
        """What the rate limit lets out now (oldest first); the rest stays and coalesces."""
        tokens = self.tokens + (now - self.refilled) * self.rate
        if tokens > BURST:
            tokens = BURST
        self.refilled = now
        outbox = self.outbox
        k = len(outbox)
        if k <= tokens + 1e-9:  # a token accrued up to float rounding (5 / rate s × rate) counts
            self.tokens = tokens - k
            return self.drain()
        n = int(tokens + 1e-9)
        keys = list(outbox)[:n]
        self.tokens = tokens - n
        return [outbox.pop(k) for k in keys]

    def wait_s(self) -> float:
        """How long until the next message may go out."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


@dataclass
class CellState:
    version: int
    msg: Message
    sectors: dict[int, tuple[int, int]]  # sector -> (level, speed band)
    incidents: tuple[str, ...]


@dataclass
class AlertState:
    cell: str
    version: int
    sector: int
    lat: float
    lon: float
    digest: int
    cleared_at: float | None
    msg: Message


def speed_band(mps: float) -> int:
    """Bands ~15 % wide: a change of the median by more than that is news."""
    return int(math.log(max(mps, 0.5) + 1.0) / math.log(1.15))


class Hub:
    """Latest state per cell and incident, and the clients watching each cell by direction."""

    def __init__(self) -> None:
        self.conditions: dict[str, CellState] = {}
        self.alerts: dict[str, AlertState] = {}
        self.alerts_by_cell: dict[str, set[str]] = {}
        # cell -> sector -> the clients watching it there -> the digest of the condition each was last
        # sent (0: none). Held here while a client watches the cell, in its ``told`` while it does not:
        # the fan-out reads and updates it in the dict it iterates, not in one dict per client (whose
        # lookups missed the cache: a third of the fan-out's time at 10,000 drivers, bench push).
        self.subs: dict[str, dict[int, dict[Client, int]]] = {}
        self.clients: set[Client] = set()

    def add(self, client: Client) -> None:
        self.clients.add(client)

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        self._watch(client, {})

    def _watch(self, client: Client, cells: dict[str, int]) -> None:
        for c, sec in client.cells.items():
            if cells.get(c) != sec:
                by_sec = self.subs.get(c)
                group = None if by_sec is None else by_sec.get(sec)
                if by_sec is not None and group is not None:
                    told = group.pop(client, 0)
                    if told:
                        client.told[c] = told  # no news if the client watches the cell again
                    if not group:
                        del by_sec[sec]
                    if not by_sec:
                        del self.subs[c]
        for c, sec in cells.items():
            if client.cells.get(c) != sec:
                self.subs.setdefault(c, {}).setdefault(sec, {})[client] = client.told.pop(c, 0)
        client.cells = cells

    def subscribe(
        self,
        client: Client,
        cells: dict[str, int],
        origin: tuple[float, float, float] | None = None,
        since_version: int = 0,
    ) -> int:
        """Replace what the client watches; queue what it has not been told about them."""
        # cells interned here and in on_condition: the fan-out's lookups (subs, outboxes) then match
        # their keys by identity, without reading each stored key's string (a cache miss each)
        self._watch(client, {sys.intern(c): sec for c, sec in cells.items()})
        client.origin = origin
        for c, sec in client.cells.items():
            st = self.conditions.get(c)
            if st is not None and st.version > since_version:
                self._offer_condition(client, self.subs[c][sec], c, st, self._digest(st, sec))
            for incident_id in self.alerts_by_cell.get(c, ()):
                a = self.alerts[incident_id]
                # after a reconnect, an end the driver missed is news; else only open ones
                if a.version > since_version and (a.cleared_at is None or since_version):
                    self._offer_alert(client, incident_id, a, catch_up=bool(since_version))
        return len(client.cells)

    # -- conditions -----------------------------------------------------------------------

    def on_condition(self, cell: str, cond: dict[str, Any] | None, live: bool = True) -> int:
        """A condition (or tombstone) arrived; returns how many clients it was queued for."""
        if cond is None:
            if self.conditions.pop(cell, None) is None or not live:
                return 0
            return self._offer_removal(cell)
        version = int(cond["version"])
        cell = sys.intern(cell)
        cur = self.conditions.get(cell)
        if cur is not None and cur.version >= version:
            return 0  # replay or reordering: never send a client an older state
        st = CellState(
            version,
            prepared({"type": "condition", "condition": cond}),
            {int(s["sector"]): (int(s["level"]), speed_band(float(s["median_mps"]))) for s in cond["sectors"]},
            tuple(sorted(cond.get("incidents", ()))),
        )
        self.conditions[cell] = st
        if not live:
            return 0
        n, msg = 0, st.msg
        for sec, group in self.subs.get(cell, {}).items():
            digest = self._digest(st, sec)
            for client, told in group.items():  # the hot loop (~1e5 drivers/s): _offer_condition, enqueue inlined
                if told == digest:  # 0 for never told: nothing is no news to them
                    continue
                group[client] = digest  # (an existing key's value: the iteration goes on)
                outbox = client.outbox
                if cell in outbox:
                    del outbox[cell]  # re-insert at the end: newest last
                    outbox[cell] = msg
                else:
                    outbox[cell] = msg
                    if len(outbox) > client.max_outbox:
                        client.overflowed = True
                if not client.notified:
                    client.notified = True
                    if client.notify is None:
                        client.wake.set()
                    else:
                        client.notify(client)
                n += 1
        return n

    def _offer_removal(self, cell: str) -> int:
        """A tombstone: the cell has no condition any more; news to those who were told one."""
        msg, n = prepared({"type": "condition", "cell": cell, "condition": None}), 0
        for group in self.subs.get(cell, {}).values():
            for client, told in group.items():
                if told:
                    group[client] = 0
                    client.enqueue(cell, msg)
                    n += 1
        return n

    def _digest(self, st: CellState, sec: int) -> int:
        """What a condition says about one direction (0: nothing)."""
        seen = tuple(sorted((s, v) for s, v in st.sectors.items() if same_direction(s, sec)))
        incidents = tuple(i for i in st.incidents if (a := self.alerts.get(i)) is None or same_direction(a.sector, sec))
        return hash((seen, incidents)) if seen or incidents else 0

    @staticmethod
    def _offer_condition(client: Client, group: dict[Client, int], cell: str, st: CellState, digest: int) -> int:
        if group[client] == digest:
            return 0  # nothing new for this direction (or nothing at all, never told)
        group[client] = digest
        client.enqueue(cell, st.msg)
        return 1

    # -- alerts ---------------------------------------------------------------------------

    def on_alert(self, alert: dict[str, Any], live: bool = True, now: float | None = None) -> int:
        incident_id, cell, version = str(alert["id"]), str(alert["cell"]), int(alert["version"])
        prev = self.alerts.get(incident_id)
        if prev is not None and prev.version >= version:
            return 0
        now = time.time() if now is None else now
        cleared = alert.get("state") == "cleared"
        sector = geo.sector(float(alert["heading_deg"]))
        a = AlertState(
            cell,
            version,
            sector,
            float(alert["lat"]),
            float(alert["lon"]),
            hash((cleared, alert["type"], cell, sector, round(float(alert["confidence"]) * 5))),
            now if cleared else None,
            prepared({"type": "alert", "alert": alert}),
        )
        if prev is not None and prev.cell != cell:
            self.alerts_by_cell.get(prev.cell, set()).discard(incident_id)
        self.alerts[incident_id] = a
        self.alerts_by_cell.setdefault(cell, set()).add(incident_id)
        self._forget_cleared(now)
        if not live:
            return 0
        n = 0
        for sec, group in self.subs.get(cell, {}).items():
            if same_direction(sector, sec):
                for client in group:
                    n += self._offer_alert(client, incident_id, a)
        return n

    @staticmethod
    def _offer_alert(client: Client, incident_id: str, a: AlertState, catch_up: bool = False) -> int:
        told = client.told.get(incident_id)
        if told == a.digest:
            return 0
        if a.cleared_at is not None and told is None and not catch_up:
            return 0  # never told of it: its end is no news
        sec = client.cells.get(a.cell)
        if sec is None or not same_direction(a.sector, sec):
            return 0
        if client.origin is not None:
            lat, lon, heading = client.origin
            if geo.distance_m(lat, lon, a.lat, a.lon) > AHEAD_SLACK_M and (
                geo.angle_diff(geo.bearing_deg(lat, lon, a.lat, a.lon), heading) > 90.0
            ):
                return 0  # behind the driver
        client.told[incident_id] = a.digest
        client.enqueue(incident_id, a.msg)
        return 1

    def _forget_cleared(self, now: float) -> None:
        if len(self.alerts) % 64:
            return  # amortised sweep
        for incident_id, a in list(self.alerts.items()):
            if a.cleared_at is not None and now - a.cleared_at > CLEARED_KEPT_S:
                del self.alerts[incident_id]
                self.alerts_by_cell.get(a.cell, set()).discard(incident_id)
