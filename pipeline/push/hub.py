"""Who gets which update: subscriptions by cell, latest state, coalescing outboxes.

Every update is serialised once and the same bytes go to every subscriber. A
slow client never grows an unbounded queue: its outbox holds at most one
pending message per (kind, key) — a newer update of a cell replaces the older
one — and a client whose outbox stays over the limit is disconnected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import geo

MIN_REACH_M = 1000.0
LOOKAHEAD_S = 180.0
MAX_OUTBOX = 2000


@dataclass(eq=False)
class Client:
    """One connected driver."""

    device_id: str
    cells: set[str] = field(default_factory=set)
    heading_deg: float = 0.0
    outbox: dict[tuple[str, str], bytes] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False
    seen_versions: dict[str, int] = field(default_factory=dict)

    def enqueue(self, kind: str, key: str, data: bytes) -> None:
        self.outbox.pop((kind, key), None)  # re-insert at the end: newest last
        self.outbox[(kind, key)] = data
        if len(self.outbox) > MAX_OUTBOX:
            self.overflowed = True
        self.wake.set()

    def drain(self) -> list[bytes]:
        out = list(self.outbox.values())
        self.outbox.clear()
        self.wake.clear()
        return out


def reach_m(speed_mps: float) -> float:
    """How far ahead a driver cares: ~3 minutes of travel, at least 1 km."""
    return max(MIN_REACH_M, speed_mps * LOOKAHEAD_S)


def subscription_cells(msg: dict[str, Any], res: int) -> set[str]:
    """Cells a subscribe message covers: the route corridor, else the cone ahead."""
    route = msg.get("route")
    if route:
        return geo.corridor_cells([(float(a), float(b)) for a, b in route], 150.0, res)
    return geo.cone_cells(
        float(msg["lat"]), float(msg["lon"]), float(msg["heading_deg"]), reach_m(float(msg["speed_mps"])), res
    )


def condition_message(cond: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "condition", "condition": cond})


def alert_message(alert: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": "alert", "alert": alert})


class Hub:
    """Latest state per cell and the clients subscribed to each cell."""

    def __init__(self) -> None:
        self.conditions: dict[str, tuple[int, bytes]] = {}
        self.alerts: dict[str, tuple[str, bytes]] = {}  # incident id -> (cell, message)
        self.subs: dict[str, set[Client]] = {}
        self.clients: set[Client] = set()
        self.delivered = 0

    def add(self, client: Client) -> None:
        self.clients.add(client)

    def remove(self, client: Client) -> None:
        self.clients.discard(client)
        self._unsubscribe(client)

    def _unsubscribe(self, client: Client) -> None:
        for c in client.cells:
            subs = self.subs.get(c)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self.subs[c]
        client.cells = set()

    def subscribe(self, client: Client, cells: Iterable[str], heading_deg: float, since_version: int = 0) -> int:
        """Replace the client's cells and queue the current state of the new ones."""
        new = set(cells)
        added = new - client.cells
        for c in client.cells - new:
            subs = self.subs.get(c)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self.subs[c]
        for c in added:
            self.subs.setdefault(c, set()).add(client)
        client.cells = new
        client.heading_deg = heading_deg
        for c in added if not since_version else new:
            cur = self.conditions.get(c)
            if cur is not None and cur[0] > since_version and client.seen_versions.get(c, 0) < cur[0]:
                client.seen_versions[c] = cur[0]
                client.enqueue("condition", c, cur[1])
        for incident_id, (cell, data) in self.alerts.items():
            if cell in added:
                client.enqueue("alert", incident_id, data)
        return len(new)

    def on_condition(self, cell: str, cond: dict[str, Any] | None, live: bool = True) -> int:
        """A condition (or tombstone) arrived; returns how many clients it was queued for."""
        if cond is None:
            self.conditions.pop(cell, None)
            return 0
        version = int(cond["version"])
        cur = self.conditions.get(cell)
        if cur is not None and cur[0] >= version:
            return 0  # replay or reordering: never send a client an older state
        data = condition_message(cond)
        self.conditions[cell] = (version, data)
        if not live:
            return 0
        n = 0
        for client in self.subs.get(cell, ()):
            if client.seen_versions.get(cell, 0) < version:
                client.seen_versions[cell] = version
                client.enqueue("condition", cell, data)
                n += 1
        return n

    def on_alert(self, alert: dict[str, Any], live: bool = True) -> int:
        incident_id, cell = str(alert["id"]), str(alert["cell"])
        data = alert_message(alert)
        if alert.get("state") == "cleared":
            self.alerts.pop(incident_id, None)
        else:
            self.alerts[incident_id] = (cell, data)
        if not live:
            return 0
        n = 0
        for client in self.subs.get(cell, ()):
            client.enqueue("alert", incident_id, data)
            n += 1
        return n
