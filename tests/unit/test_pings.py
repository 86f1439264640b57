"""pipeline.pings: validation of what phones send, and the multi-ping Kafka record."""

from __future__ import annotations

from typing import Any

import h3
import orjson
import pytest

from pipeline import geo, pings
from pipeline.pings import RecordError, decode_record, encode_record, validate_ping

NOW = 1_700_000_000.0
_MISSING = object()  # marks a field to leave out


def _ping(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "seq": 42,
        "ts": NOW - 2.5,
        "lat": 48.8566,
        "lon": 2.3522,
        "speed_mps": 12.5,
        "heading_deg": 270,
        "accuracy_m": 6.0,
        "state": "driving",
    }
    p.update(over)
    return {k: v for k, v in p.items() if v is not _MISSING}



# -- validate_ping ---------------------------------------------------------------
def test_good_ping_is_normalised() -> None:
    out = validate_ping(_ping(), "dev-1", NOW)
    assert out == {
        "device_id": "dev-1",
        "seq": 42,
        "ts": NOW - 2.5,
        "lat": 48.8566,
        "lon": 2.3522,
        "speed_mps": 12.5,
        "heading_deg": 270.0,
        "accuracy_m": 6.0,
        "state": "driving",
    }
    assert isinstance(out["heading_deg"], float)


def test_heading_360_becomes_0() -> None:
    out = validate_ping(_ping(heading_deg=360), "d", NOW)
    assert isinstance(out, dict) and out["heading_deg"] == 0.0


def test_unknown_fields_dropped_and_device_from_token() -> None:
    out = validate_ping(_ping(colour="red", extra={"x": 1}, device_id="someone-else"), "dev-1", NOW)
    assert isinstance(out, dict)
    assert "colour" not in out and "extra" not in out
    assert out["device_id"] == "dev-1"


def test_state_is_optional() -> None:
    out = validate_ping(_ping(state=_MISSING), "d", NOW)
    assert isinstance(out, dict) and "state" not in out


@pytest.mark.parametrize(
    "over",
    [
        {"ts": NOW + pings.MAX_FUTURE_S},
        {"ts": NOW - pings.MAX_AGE_S},
        {"lat": 90.0, "lon": -180.0},
        {"lat": -90, "lon": 180},
        {"speed_mps": 0},
        {"speed_mps": 90.0},
        {"heading_deg": 0},
        {"seq": 0},
        {"seq": 2**53 - 1},
        {"accuracy_m": 0},
        {"state": "parked"},
    ],
)
def test_edges_accepted(over: dict[str, Any]) -> None:
    assert isinstance(validate_ping(_ping(**over), "d", NOW), dict)


@pytest.mark.parametrize(
    "over,field",
    [
        ({"seq": True}, "seq"),
        ({"seq": -1}, "seq"),
        ({"seq": 1.0}, "seq"),
        ({"seq": "1"}, "seq"),
        ({"seq": 2**53}, "seq"),
        ({"seq": _MISSING}, "seq"),
        ({"ts": _MISSING}, "ts"),
        ({"ts": float("nan")}, "ts"),
        ({"ts": "now"}, "ts"),
        ({"ts": NOW + pings.MAX_FUTURE_S + 1}, "ts"),
        ({"ts": NOW - pings.MAX_AGE_S - 1}, "ts"),
        ({"lat": float("inf")}, "lat"),
        ({"lat": 91}, "lat"),
        ({"lat": -90.01}, "lat"),
        ({"lat": True}, "lat"),
        ({"lat": "48.8"}, "lat"),
        ({"lon": -181}, "lon"),
        ({"lon": float("-inf")}, "lon"),
        ({"speed_mps": -1}, "speed_mps"),
        ({"speed_mps": 91}, "speed_mps"),
        ({"speed_mps": float("nan")}, "speed_mps"),
        ({"heading_deg": 361}, "heading_deg"),
        ({"heading_deg": -0.5}, "heading_deg"),
        ({"accuracy_m": _MISSING}, "accuracy_m"),
        ({"accuracy_m": -1}, "accuracy_m"),
        ({"state": "flying"}, "state"),
        ({"state": 1}, "state"),
    ],
)
def test_bad_field_reason_names_the_field(over: dict[str, Any], field: str) -> None:
    reason = validate_ping(_ping(**over), "d", NOW)
    assert isinstance(reason, str)
    assert reason.startswith(f"{field}:"), reason


@pytest.mark.parametrize("value", [None, [], "ping", 3, [_ping()]])
def test_non_object_refused(value: Any) -> None:
    reason = validate_ping(value, "d", NOW)
    assert isinstance(reason, str) and reason.startswith("ping:")


# -- records ---------------------------------------------------------------------
def _valid(n: int = 3) -> list[pings.Ping]:
    out = []
    for i in range(n):
        p = validate_ping(_ping(seq=i, speed_mps=float(i)), "dev-1", NOW)
        assert isinstance(p, dict)
        out.append(p)
    return out


def test_record_round_trip() -> None:
    key = geo.cell(48.8566, 2.3522, 7)
    batch = _valid(5)
    raw = encode_record(key, batch, NOW + 0.25)
    assert orjson.loads(raw)["v"] == pings.RECORD_VERSION
    # each ping comes back with its res-9 cell, which the engine reads instead of computing it
    assert decode_record(raw) == (key, NOW + 0.25, [{**p, "cell": geo.cell(p["lat"], p["lon"], 9)} for p in batch])


def _record(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "cell": geo.cell(48.8566, 2.3522, 7), "ingest_ts": NOW, "pings": _valid(2)}
    doc.update(over)
    return doc


def _without(p: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k != key}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"{\"v\": 1,",
        orjson.dumps([1, 2, 3]),
        orjson.dumps("v1"),
        orjson.dumps(_record(v=2)),
        orjson.dumps(_record(v="1")),
        orjson.dumps(_without(_record(), "v")),
        orjson.dumps(_record(pings=[])),
        orjson.dumps(_record(pings={"a": 1})),
        orjson.dumps(_without(_record(), "pings")),
        orjson.dumps(_record(ingest_ts="now")),
        orjson.dumps(_record(ingest_ts=True)),
        orjson.dumps(_record(pings=[_without(_valid(1)[0], "device_id")])),
        orjson.dumps(_record(pings=[{**_valid(1)[0], "lat": "48.8"}])),
        orjson.dumps(_record(pings=[{**_valid(1)[0], "speed_mps": None}])),
        orjson.dumps(_record(pings=[{**_valid(1)[0], "heading_deg": False}])),
        orjson.dumps(_record(pings=[{**_valid(1)[0], "seq": 1.5}])),
        orjson.dumps(_record(pings=[*_valid(2), "ping"])),
    ],
)
def test_decode_record_refuses(raw: bytes | None) -> None:
    with pytest.raises(RecordError):
        decode_record(raw)


def test_record_error_is_value_error() -> None:
    assert issubclass(RecordError, ValueError)


# -- Kafka key ------------------------------------------------------------------
def test_group_by_key_partitions_pings_by_res7_cell() -> None:
    here = _ping(seq=1)
    far = _ping(seq=2, lat=48.9566)  # ~11 km north: another res-7 cell
    also_here = _ping(seq=3, lon=2.3523)
    groups = pings.group_by_key([here, far, also_here], 7)
    assert groups == {
        geo.cell(48.8566, 2.3522, 7): [here, also_here],
        geo.cell(48.9566, 2.3522, 7): [far],
    }
    assert pings.group_by_key([], 7) == {}


def test_group_by_key_gives_one_key_per_res9_cell() -> None:
    """H3 children do not tile their parent: the key must come from the res-9 cell, not the point."""
    c9 = "891fb466227ffff"
    clat, clon = geo.cell_center(c9)
    points = [(clat, clon)] + [(clat + 0.9 * (a - clat), clon + 0.9 * (b - clon)) for a, b in h3.cell_to_boundary(c9)]
    assert {geo.cell(lat, lon, 9) for lat, lon in points} == {c9}
    batch = [_ping(seq=i, lat=lat, lon=lon) for i, (lat, lon) in enumerate(points)]
    assert set(pings.group_by_key(batch, 7)) == {geo.parent(c9, 7)}
