"""Pings: validation of what phones send, and the multi-ping Kafka record.

A ping's Kafka key is an H3 resolution-7 cell (~1.2 km edge): the res-7 parent of
its res-9 cell. A record on ``traverz.pings.v1`` carries up to 500 pings,
``{"v": 1, "cell", "ingest_ts", "pings": [...]}``; several pings per record amortise
the stream side's per-record cost (faust pays ~40 µs per record). The ingest proxy
coalesces concurrent requests per Kafka *partition* (``pipeline.ingest.coalesce``):
a record holds pings whose res-7 keys all hash (default murmur2 partitioner) to the
record's partition, and its key — equal to ``cell`` — is one of those keys, so every
ping sits in the partition of its own key. The pings need not share a cell:
consumers must compute each ping's own cell from its lat/lon.

Unknown fields in a ping are dropped, not refused, so older servers accept
newer apps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline import geo
from pipeline._records import PingBatch, check_pings, parse_batch

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
    """A normalised ping carrying ``device_id``, or the reason it is refused.

    The fast path is one chain of type and range checks (NaN and ±inf fail the
    range comparisons); anything it does not accept goes to the slow path, which
    names the first problem.
    """
    if type(p) is dict:
        seq = p.get("seq")
        ts = p.get("ts")
        lat = p.get("lat")
        lon = p.get("lon")
        speed = p.get("speed_mps")
        heading = p.get("heading_deg")
        acc = p.get("accuracy_m")
        state = p.get("state")
        if (
            type(seq) is int
            and 0 <= seq < 2**53
            and type(ts) in _NUM
            and now - MAX_AGE_S <= ts <= now + MAX_FUTURE_S  # type: ignore[operator]
            and type(lat) in _NUM
            and -90.0 <= lat <= 90.0  # type: ignore[operator]
            and type(lon) in _NUM
            and -180.0 <= lon <= 180.0  # type: ignore[operator]
            and type(speed) in _NUM
            and 0.0 <= speed <= MAX_SPEED_MPS  # type: ignore[operator]
            and type(heading) in _NUM
            and 0.0 <= heading < 360.0  # type: ignore[operator]
            and type(acc) in _NUM
            and 0.0 <= acc <= MAX_ACCURACY_M  # type: ignore[operator]
            and (state is None or (type(state) is str and state in STATES))
        ):
            out: Ping = {
                "device_id": device_id,
                "seq": seq,
                "ts": float(ts),  # type: ignore[arg-type]
                "lat": float(lat),  # type: ignore[arg-type]
                "lon": float(lon),  # type: ignore[arg-type]
                "speed_mps": float(speed),  # type: ignore[arg-type]
                "heading_deg": float(heading),  # type: ignore[arg-type]
                "accuracy_m": float(acc),  # type: ignore[arg-type]
            }
            if state is not None:
                out["state"] = state
            return out
    return _validate_slow(p, device_id, now)


_NUM = (int, float)


def _validate_slow(p: Any, device_id: str, now: float) -> Ping | str:
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
        if not isinstance(state, str) or state not in STATES:  # a list/dict is unhashable
            return "state: must be one of driving, stopped, parked"
        out["state"] = state
    return out


def group_by_key(pings: Iterable[Ping], key_res: int, cell_res: int = 9) -> dict[str, list[Ping]]:
    """Pings grouped by the H3 cell that keys their Kafka record.

    The key is the ``key_res`` *parent of the ping's ``cell_res`` cell*, not the
    ``key_res`` cell of the point: H3 children do not tile their parent exactly,
    and the stream side relies on every ``cell_res`` cell living in one partition.
    """
    groups: dict[str, list[Ping]] = {}
    key_cell = geo.key_cell
    for p in pings:
        groups.setdefault(key_cell(p["lat"], p["lon"], key_res, cell_res), []).append(p)
    return groups


def encode_record(key_cell: str, pings: list[Ping], ingest_ts: float) -> bytes:
    """A record keyed by ``key_cell``: the key of one of ``pings``, whose keys share its partition."""
    return orjson.dumps({"v": RECORD_VERSION, "cell": key_cell, "ingest_ts": ingest_ts, "pings": pings})


def decode_record(raw: bytes | None, cell_res: int = 9) -> tuple[str, float, list[Ping]]:
    """(key cell, ingest time, pings) of a record; RecordError if it is not one.

    The stream side re-checks the shape: a record produced by anything but our
    ingest proxy must not crash an agent. Each returned ping also carries ``"cell"``,
    its ``cell_res`` H3 cell: the per-ping check and the H3 call are one C pass
    (``pipeline._records.check_pings``, ~1 µs a ping less than the same loop in Python
    with h3-py's string API), and the engine reads the cell instead of computing it.
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
    # exact types (a bool is not a number), positions and speeds in range — an out-of-range
    # position would make H3 raise inside the agent — then the cell
    check_pings(pings, cell_res, RecordError)
    return str(doc.get("cell", "")), float(ingest_ts), pings


def decode_batch(raw: bytes | None, cell_res: int = 9) -> tuple[str, float, PingBatch | list[Ping]]:
    """:func:`decode_record`, with the pings as a :class:`PingBatch` when the record is our ingest's JSON.

    ``pipeline._records.parse_batch`` reads the bytes straight into C structs (no dict, no float
    object a ping), and the engine's C parts read those; ``batch[i]`` is the dict
    :func:`decode_record` would give, made when asked for. Anything the fast path does not take
    whole — an error included — is :func:`decode_record`'s, which names the error.
    """
    if raw is not None:
        got = parse_batch(raw, cell_res)
        if got is not None:
            return got
    return decode_record(raw, cell_res)


def with_cells(pings: list[Ping], cell_res: int = 9) -> list[Ping]:
    """``pings`` checked as :func:`decode_record` checks a record's, each given its ``"cell"``.

    For pings that did not come through a record (the offline simulation, tests).
    """
    check_pings(pings, cell_res, RecordError)
    return pings
