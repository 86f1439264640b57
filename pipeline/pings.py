"""Pings: validation of what phones send, and the multi-ping Kafka record.

A record on ``traverz.pings.v1`` is keyed by the H3 cell (resolution 7,
~1.2 km edge) of its pings and carries up to 500 pings of that key:
``{"v": 1, "cell", "ingest_ts", "pings": [...]}``. Several pings per record
amortise the stream side's per-record cost (faust pays ~40 µs per record).

Unknown fields in a ping are dropped, not refused, so older servers accept
newer apps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline import geo

MAX_BATCH = 500
MAX_SPEED_MPS = 90.0
MAX_FUTURE_S = 300.0
MAX_AGE_S = 86_400.0
MAX_ACCURACY_M = 100_000.0
STATES = frozenset({"driving", "stopped", "parked"})
RECORD_VERSION = 1

Ping = dict[str, Any]


class RecordError(ValueError):
    """A Kafka record that is not a valid ping record (goes to the dead letters)."""


def _number(p: dict[str, Any], name: str) -> float | str:
    v = p.get(name)
    if v is None:
        return f"{name}: required"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"{name}: must be a number"
    f = float(v)
    if not math.isfinite(f):
        return f"{name}: must be finite"
    return f


def validate_ping(p: Any, device_id: str, now: float) -> Ping | str:
    """A normalised ping carrying ``device_id``, or the reason it is refused."""
    if not isinstance(p, dict):
        return "ping: must be an object"
    seq = p.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        return "seq: must be an integer"
    if seq < 0 or seq >= 2**53:
        return "seq: out of range"
    values: dict[str, float] = {}
    for name in ("ts", "lat", "lon", "speed_mps", "heading_deg", "accuracy_m"):
        f = _number(p, name)
        if isinstance(f, str):
            return f
        values[name] = f
    ts = values["ts"]
    if ts > now + MAX_FUTURE_S:
        return "ts: more than 5 min in the future"
    if ts < now - MAX_AGE_S:
        return "ts: older than 24 h"
    if not -90.0 <= values["lat"] <= 90.0:
        return "lat: out of range"
    if not -180.0 <= values["lon"] <= 180.0:
        return "lon: out of range"
    if not 0.0 <= values["speed_mps"] <= MAX_SPEED_MPS:
        return "speed_mps: out of range 0..90"
    if not 0.0 <= values["heading_deg"] <= 360.0:
        return "heading_deg: out of range 0..360"
    if not 0.0 <= values["accuracy_m"] <= MAX_ACCURACY_M:
        return "accuracy_m: out of range"
    out: Ping = {"device_id": device_id, "seq": seq, **values}
    if values["heading_deg"] == 360.0:
        out["heading_deg"] = 0.0
    state = p.get("state")
    if state is not None:
        if state not in STATES:
            return "state: must be one of driving, stopped, parked"
        out["state"] = state
    return out


def group_by_key(pings: Iterable[Ping], res: int) -> dict[str, list[Ping]]:
    """Pings grouped by the H3 cell that keys their Kafka record."""
    groups: dict[str, list[Ping]] = {}
    for p in pings:
        key = geo.cell(p["lat"], p["lon"], res)
        groups.setdefault(key, []).append(p)
    return groups


def encode_record(key_cell: str, pings: list[Ping], ingest_ts: float) -> bytes:
    return orjson.dumps({"v": RECORD_VERSION, "cell": key_cell, "ingest_ts": ingest_ts, "pings": pings})


def decode_record(raw: bytes | None) -> tuple[str, float, list[Ping]]:
    """(key cell, ingest time, pings) of a record; RecordError if it is not one.

    The stream side re-checks the shape: a record produced by anything but our
    ingest proxy must not crash an agent.
    """
    if raw is None:
        raise RecordError("empty record")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != RECORD_VERSION:
        raise RecordError("not a v1 ping record")
    pings = doc.get("pings")
    if not isinstance(pings, list) or not pings:
        raise RecordError("pings: must be a non-empty list")
    ingest_ts = doc.get("ingest_ts")
    if isinstance(ingest_ts, bool) or not isinstance(ingest_ts, int | float):
        raise RecordError("ingest_ts: must be a number")
    for p in pings:
        if not (
            isinstance(p, dict)
            and isinstance(p.get("device_id"), str)
            and isinstance(p.get("seq"), int)
            and all(
                isinstance(p.get(k), int | float) and not isinstance(p.get(k), bool)
                for k in ("ts", "lat", "lon", "speed_mps", "heading_deg")
            )
        ):
            raise RecordError("ping: missing or mistyped field")
    return str(doc.get("cell", "")), float(ingest_ts), pings
