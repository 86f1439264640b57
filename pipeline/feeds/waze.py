"""Conditions and alerts as a Waze for Cities–compatible data feed (``GET /v1/feed/waze.json``).

Pure functions: the push worker hands in the latest conditions and open alerts it
holds and gets back the feed document. The field names are Waze's, so tools that
read a Waze for Cities (CCP) feed read this one; what each field is filled with,
and which Waze fields are left out, is in the README ("Waze feed").

Alerts: one per open Traverz alert. Jams: one per heading sector of a cell at
level >= 1, as a straight line through the cell centre along the sector heading
(Traverz has no road geometry at this layer; a cell's sector is what it measures).
Nothing here carries a device id: conditions and alerts never contain one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import h3

from pipeline import geo
from pipeline.feeds.bbox import BBox

# Traverz type → (Waze type, Waze subtype). "" is Waze's own value for "no subtype".
ALERT_TYPES: dict[str, tuple[str, str]] = {
    # a crash's severity (ACCIDENT_MINOR/MAJOR) is not known to Traverz
    "crash": ("ACCIDENT", ""),
    "hazard": ("HAZARD", "HAZARD_ON_ROAD"),
    "road_work": ("HAZARD", "HAZARD_ON_ROAD_CONSTRUCTION"),
    "stalled_vehicle": ("HAZARD", "HAZARD_ON_ROAD_CAR_STOPPED"),
    # why a road is closed (hazard, construction, event) is not known either
    "closure": ("ROAD_CLOSED", ""),
    "congestion": ("JAM", ""),
}
JAM_SUBTYPES = {
    1: "JAM_LIGHT_TRAFFIC",
    2: "JAM_MODERATE_TRAFFIC",
    3: "JAM_HEAVY_TRAFFIC",
    4: "JAM_STAND_STILL_TRAFFIC",
    5: "JAM_STAND_STILL_TRAFFIC",
}
OPEN_STATES = frozenset({"opened", "updated"})
CLOSED_LEVEL = 5
# The statistics behind a jam cover the conditions' 5-minute window: the feed's period.
FEED_PERIOD_MS = 300_000
# A standing queue is not a closed road: its delay is computed at a crawl, not reported as -1.
MIN_DELAY_SPEED_MPS = 0.5
# Waze jam "type" for an ordinary traffic jam (it names irregularity kinds otherwise).
JAM_TYPE = "NONE"


def waze_time(ms: int) -> str:
    """Waze's ``startTime``/``endTime`` text: UTC ``YYYY-MM-DD HH:MM:SS:mmm``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + f":{ms % 1000:03d}"


def cell_length_m(cell: str) -> float:
    """Distance across a hexagonal cell between opposite edges (= spacing of neighbouring centres).

    From the cell's exact area rather than the resolution's average: H3 cells of one
    resolution differ by up to ~2x in size over the globe.
    """
    area = float(h3.cell_area(cell, unit="m^2"))
    edge = math.sqrt(2.0 * area / (3.0 * math.sqrt(3.0)))
    return math.sqrt(3.0) * edge


def jam_line(lat: float, lon: float, heading_deg: float, length_m: float) -> list[dict[str, float]]:
    """Two points through the centre along the heading, in the direction of travel; Waze's {x: lon, y: lat}."""
    a = geo.destination(lat, lon, (heading_deg + 180.0) % 360.0, length_m / 2.0)
    b = geo.destination(lat, lon, heading_deg, length_m / 2.0)
    return [{"x": round(p[1], 6), "y": round(p[0], 6)} for p in (a, b)]


def jam_delay_s(length_m: float, speed_mps: float, free_flow_mps: float, level: int) -> int:
    """Seconds lost crossing the cell at the current speed vs free flow; -1 for a closed road (Waze)."""
    if level >= CLOSED_LEVEL:
        return -1
    current = length_m / max(speed_mps, MIN_DELAY_SPEED_MPS)
    free = length_m / max(free_flow_mps, MIN_DELAY_SPEED_MPS)
    return max(0, round(current - free))


def _blocking_alert(cond: Mapping[str, Any], alerts: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for incident in cond.get("incidents", ()):
        alert = alerts.get(incident)
        if alert is not None and alert.get("type") == "closure":
            return alert
    return None


def jams_for(cond: Mapping[str, Any], alerts: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Waze jams of one condition: one per sector at level >= 1."""
    cell = str(cond["cell"])
    lat, lon = float(cond["lat"]), float(cond["lon"])
    length = cell_length_m(cell)
    pub = int(float(cond["updated_at"]) * 1000)
    blocking = _blocking_alert(cond, alerts)
    out: list[dict[str, Any]] = []
    sectors: Iterable[Mapping[str, Any]] = cond.get("sectors", ())
    for s in sectors:
        level = int(s["level"])
        if level < 1:
            continue
        speed = float(s["median_mps"])
        heading = float(s["heading_deg"])
        jam: dict[str, Any] = {
            "uuid": f"{cell}-{int(s['sector'])}",
            "type": JAM_TYPE,
            "level": level,
            "speed": round(speed, 2),
            "speedKMH": round(speed * 3.6, 1),
            "delay": jam_delay_s(length, speed, float(s["free_flow_mps"]), level),
            "length": round(length),
            "line": jam_line(lat, lon, heading, length),
            "pubMillis": pub,
        }
        if blocking is not None and level >= CLOSED_LEVEL:
            jam["blockingAlertUuid"] = str(blocking["id"])
        out.append(jam)
    if not out and int(cond.get("level", 0)) >= CLOSED_LEVEL and blocking is not None:
        # closed with no traffic left to measure: the jam follows the closure's carriageway
        heading = float(blocking["heading_deg"]) % 360.0
        out.append(
            {
                "uuid": f"{cell}-closed",
                "type": JAM_TYPE,
                "level": CLOSED_LEVEL,
                "speed": 0.0,
                "speedKMH": 0.0,
                "delay": -1,
                "length": round(length),
                "line": jam_line(lat, lon, heading, length),
                "pubMillis": pub,
                "blockingAlertUuid": str(blocking["id"]),
            }
        )
    return out


def waze_alert(alert: Mapping[str, Any], cell_level: int = 0) -> dict[str, Any]:
    """One Traverz alert in Waze's alert fields.

    ``reliability`` is Traverz's own belief (confidence 0..1 → 0..10), which like Waze's
    combines reports, probes and votes; ``confidence`` is Waze's vote-based score
    (thumbs up minus "not there", 0..10). ``cell_level`` picks a congestion alert's
    JAM_* subtype.
    """
    kind = str(alert["type"])
    wtype, subtype = ALERT_TYPES.get(kind, ("HAZARD", ""))
    if kind == "congestion":
        subtype = JAM_SUBTYPES.get(cell_level, "")
    ev = alert.get("evidence") or {}
    up, down = int(ev.get("votes_up", 0)), int(ev.get("votes_down", 0))
    return {
        "uuid": str(alert["id"]),
        "type": wtype,
        "subtype": subtype,
        "location": {"x": round(float(alert["lon"]), 6), "y": round(float(alert["lat"]), 6)},
        "pubMillis": int(float(alert["opened_at"]) * 1000),
        "reliability": max(0, min(10, round(10.0 * float(alert["confidence"])))),
        "confidence": max(0, min(10, up - down)),
        "nThumbsUp": up,
        # Waze's reporter rank (1..6): Traverz ranks no reporters and publishes nothing about them
        "reportRating": 0,
        "magvar": round(float(alert["heading_deg"])) % 360,
    }


def is_open(alert: Mapping[str, Any], now: float) -> bool:
    if alert.get("state") not in OPEN_STATES:
        return False
    expires = alert.get("expires_at")
    # the worker sends "cleared" when an alert lapses; this only covers a worker that is down
    return expires is None or float(expires) > now


def feed(
    conditions: Iterable[Mapping[str, Any]],
    alerts: Mapping[str, Mapping[str, Any]],
    now: float,
    bbox: BBox | None = None,
) -> dict[str, Any]:
    """The feed document: open alerts and jams (level >= 1), optionally inside ``bbox``.

    ``conditions`` are the latest condition per cell, ``alerts`` the latest version per
    alert id. Alerts are placed by their position, jams by their cell's centre.
    """
    levels: dict[str, int] = {}
    jams: list[dict[str, Any]] = []
    for cond in conditions:
        levels[str(cond["cell"])] = int(cond.get("level", 0))
        if int(cond.get("level", 0)) < 1:
            continue
        if bbox is not None and not bbox.contains(float(cond["lat"]), float(cond["lon"])):
            continue
        jams.extend(jams_for(cond, alerts))
    out_alerts = [
        waze_alert(a, levels.get(str(a.get("cell")), 0))
        for a in alerts.values()
        if is_open(a, now) and (bbox is None or bbox.contains(float(a["lat"]), float(a["lon"])))
    ]
    out_alerts.sort(key=lambda a: (a["pubMillis"], a["uuid"]))
    jams.sort(key=lambda j: (-j["level"], j["uuid"]))
    end = int(now * 1000)
    start = end - FEED_PERIOD_MS
    return {
        "alerts": out_alerts,
        "jams": jams,
        "startTimeMillis": start,
        "endTimeMillis": end,
        "startTime": waze_time(start),
        "endTime": waze_time(end),
    }
