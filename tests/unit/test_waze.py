"""pipeline.feeds.waze: conditions and alerts in Waze for Cities feed fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h3
import jsonschema
import orjson
import pytest

from pipeline import geo
from pipeline.conditions import build_condition
from pipeline.detect.events import Evidence, IncidentEvent, Snapshot, to_alert
from pipeline.feeds import waze
from pipeline.feeds.bbox import BBox, parse_bbox
from pipeline.speed import SectorStats

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ALERT = jsonschema.Draft7Validator(json.loads((SCHEMAS / "alert.schema.json").read_text()))
CONDITION = jsonschema.Draft7Validator(json.loads((SCHEMAS / "condition.schema.json").read_text()))

NOW = 1_760_000_000.0
LAT, LON = 52.5200, 13.4050
CELL = geo.cell(LAT, LON, 9)


def _alert(kind: str = "crash", state: str = "opened", **kw: Any) -> dict[str, Any]:
    snap = Snapshot(
        id=kw.pop("id", f"i-{kind}"),
        type=kind,
        lat=kw.pop("lat", LAT),
        lon=kw.pop("lon", LON),
        heading_deg=kw.pop("heading_deg", 91.6),
        confidence=kw.pop("confidence", 0.74),
        opened_at=NOW - 60,
        updated_at=NOW - 5,
        expires_at=kw.pop("expires_at", NOW + 3600),
        evidence=kw.pop("evidence", Evidence(probes=1, reports=2, votes_up=3, votes_down=1)),
    )
    doc = to_alert(IncidentEvent(state, snap, 7, "expired" if state == "cleared" else None))  # type: ignore[arg-type]
    ALERT.validate(doc)
    return doc


def _condition(
    speeds: dict[int, float], cell: str = CELL, incidents: tuple[str, ...] = (), closed: bool = False
) -> dict[str, Any]:
    stats = {sec: SectorStats(sec, v, v, v, 12, 4) for sec, v in speeds.items()}
    cond = build_condition(
        cell,
        stats,
        now=NOW - 2,
        version=int(NOW * 1000),
        min_devices=3,
        free_flow={sec: 14.0 for sec in speeds},
        incidents=incidents,
        closed=closed,
    )
    assert cond is not None
    CONDITION.validate(cond)
    return cond


@pytest.mark.parametrize(
    ("kind", "wtype", "subtype"),
    [
        ("crash", "ACCIDENT", ""),
        ("hazard", "HAZARD", "HAZARD_ON_ROAD"),
        ("road_work", "HAZARD", "HAZARD_ON_ROAD_CONSTRUCTION"),
        ("stalled_vehicle", "HAZARD", "HAZARD_ON_ROAD_CAR_STOPPED"),
        ("closure", "ROAD_CLOSED", ""),
        ("congestion", "JAM", ""),
    ],
)
def test_alert_types_map_to_waze_types(kind: str, wtype: str, subtype: str) -> None:
    a = waze.waze_alert(_alert(kind))
    assert (a["type"], a["subtype"]) == (wtype, subtype)


def test_alert_fields() -> None:
    a = waze.waze_alert(_alert("crash", id="x-abc"))
    assert a == {
        "uuid": "x-abc",
        "type": "ACCIDENT",
        "subtype": "",
        "location": {"x": LON, "y": LAT},
        "pubMillis": int((NOW - 60) * 1000),
        "reliability": 7,
        "confidence": 2,
        "nThumbsUp": 3,
        "reportRating": 0,
        "magvar": 92,
    }


def test_alert_scores_are_clamped_to_0_10() -> None:
    sure = waze.waze_alert(_alert(confidence=1.0, evidence=Evidence(votes_up=40)))
    doubted = waze.waze_alert(_alert(confidence=0.0, evidence=Evidence(votes_down=5)))
    assert (sure["reliability"], sure["confidence"]) == (10, 10)
    assert (doubted["reliability"], doubted["confidence"]) == (0, 0)
    assert waze.waze_alert(_alert(heading_deg=359.7))["magvar"] == 0


def test_congestion_subtype_follows_the_cell_level() -> None:
    assert waze.waze_alert(_alert("congestion"), cell_level=2)["subtype"] == "JAM_MODERATE_TRAFFIC"
    assert waze.waze_alert(_alert("congestion"), cell_level=4)["subtype"] == "JAM_STAND_STILL_TRAFFIC"
    cond = _condition({2: 2.0})  # ratio 0.14 → level 4
    doc = waze.feed([cond], {"i-congestion": _alert("congestion")}, NOW)
    assert doc["alerts"][0]["subtype"] == "JAM_STAND_STILL_TRAFFIC"


def test_jam_per_slow_sector_only() -> None:
    cond = _condition({0: 13.5, 2: 7.0})  # north free (level 0), east at half speed (level 2)
    (jam,) = waze.jams_for(cond, {})
    length = waze.cell_length_m(CELL)
    assert jam["uuid"] == f"{CELL}-2"
    assert jam["type"] == "NONE"
    assert jam["level"] == 2
    assert jam["speed"] == 7.0
    assert jam["speedKMH"] == pytest.approx(25.2)
    assert jam["length"] == round(length)
    assert jam["delay"] == round(length / 7.0 - length / 14.0)
    assert jam["pubMillis"] == int((NOW - 2) * 1000)
    assert "blockingAlertUuid" not in jam


def test_jam_line_runs_through_the_centre_in_the_direction_of_travel() -> None:
    cond = _condition({2: 5.0})
    (jam,) = waze.jams_for(cond, {})
    a, b = jam["line"]
    # Waze points are {x: lon, y: lat}
    assert geo.bearing_deg(a["y"], a["x"], b["y"], b["x"]) == pytest.approx(90.0, abs=0.5)
    assert geo.distance_m(a["y"], a["x"], b["y"], b["x"]) == pytest.approx(jam["length"], rel=0.01)
    mid_lat, mid_lon = (a["y"] + b["y"]) / 2, (a["x"] + b["x"]) / 2
    assert geo.distance_m(mid_lat, mid_lon, cond["lat"], cond["lon"]) < 2.0


def test_res9_cell_length_is_the_spacing_of_neighbouring_centres() -> None:
    (nb, *_) = [c for c in h3.grid_disk(CELL, 1) if c != CELL]
    spacing = geo.distance_m(*geo.cell_center(CELL), *geo.cell_center(nb))
    assert waze.cell_length_m(CELL) == pytest.approx(spacing, rel=0.05)


def test_delay() -> None:
    assert waze.jam_delay_s(300.0, 5.0, 15.0, 2) == 40
    assert waze.jam_delay_s(300.0, 0.0, 15.0, 4) == 580  # a standing queue counts at 0.5 m/s, not "closed"
    assert waze.jam_delay_s(300.0, 0.0, 15.0, 5) == -1
    assert waze.jam_delay_s(300.0, 16.0, 15.0, 1) == 0


def test_closed_cell_jam_names_the_blocking_closure() -> None:
    closure = _alert("closure", id="i-closed", heading_deg=180.0)
    cond = _condition({4: 3.0}, incidents=("i-closed",), closed=True)
    (jam,) = waze.jams_for(cond, {"i-closed": closure})
    assert (jam["level"], jam["delay"], jam["blockingAlertUuid"]) == (5, -1, "i-closed")


def test_closed_cell_without_traffic_gets_a_jam_along_the_closure() -> None:
    closure = _alert("closure", id="i-closed", heading_deg=180.0)
    cond = _condition({}, incidents=("i-closed",), closed=True)
    assert cond["sectors"] == [] and cond["level"] == 5
    (jam,) = waze.jams_for(cond, {"i-closed": closure})
    assert (jam["level"], jam["speed"], jam["delay"]) == (5, 0.0, -1)
    a, b = jam["line"]
    assert geo.bearing_deg(a["y"], a["x"], b["y"], b["x"]) == pytest.approx(180.0, abs=0.5)
    assert waze.jams_for(cond, {}) == []  # no known closure: no direction to draw


def test_feed_document() -> None:
    slow = _condition({2: 3.0})
    free = _condition({2: 14.0}, cell=geo.cell(*geo.destination(LAT, LON, 0.0, 2000.0), 9))
    alerts = {
        "i-crash": _alert("crash", id="i-crash"),
        "i-gone": _alert("hazard", id="i-gone", state="cleared"),
        "i-lapsed": _alert("hazard", id="i-lapsed", expires_at=NOW - 1),
        "i-forever": _alert("closure", id="i-forever", expires_at=None),
    }
    doc = waze.feed([slow, free], alerts, NOW)
    assert sorted(a["uuid"] for a in doc["alerts"]) == ["i-crash", "i-forever"]
    assert [j["uuid"] for j in doc["jams"]] == [f"{CELL}-2"]
    assert doc["endTimeMillis"] == int(NOW * 1000)
    assert doc["startTimeMillis"] == doc["endTimeMillis"] - 300_000
    assert doc["endTime"] == "2025-10-09 08:53:20:000"
    orjson.dumps(doc)  # serialisable as it is


def test_feed_bbox_filters_alerts_by_position_and_jams_by_cell_centre() -> None:
    far = geo.destination(LAT, LON, 0.0, 5000.0)
    far_cell = geo.cell(*far, 9)
    conds = [_condition({2: 3.0}), _condition({2: 3.0}, cell=far_cell)]
    alerts = {"near": _alert(id="near"), "far": _alert(id="far", lat=far[0], lon=far[1])}
    box = BBox(LAT - 0.01, LON - 0.01, LAT + 0.01, LON + 0.01)
    doc = waze.feed(conds, alerts, NOW, box)
    assert [a["uuid"] for a in doc["alerts"]] == ["near"]
    assert [j["uuid"] for j in doc["jams"]] == [f"{CELL}-2"]


def test_feed_has_no_device_ids() -> None:
    doc = waze.feed([_condition({2: 3.0})], {"i-crash": _alert()}, NOW)
    text = orjson.dumps(doc).decode()
    assert "device" not in text


def test_parse_bbox() -> None:
    assert parse_bbox("52.4,13.3,52.6,13.5") == BBox(52.4, 13.3, 52.6, 13.5)
    for bad in ("1,2,3", "a,b,c,d", "52.6,13.3,52.4,13.5", "0,-181,1,0", "nan,0,1,1"):
        with pytest.raises(ValueError, match="bbox"):
            parse_bbox(bad)


def test_bbox_across_the_antimeridian() -> None:
    box = parse_bbox("-20,170,-10,-170")
    assert box.contains(-15.0, 179.0) and box.contains(-15.0, -175.0)
    assert not box.contains(-15.0, 0.0)


def test_push_worker_keeps_the_latest_open_alerts_and_jammed_cells() -> None:
    from pipeline.push.app import PushService
    from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS, Settings

    svc = PushService(Settings())
    key = CELL.encode()
    jam, free = _condition({2: 3.0}), _condition({2: 14.0})
    free_older = {**free, "version": jam["version"] - 1}
    free_newer = {**free, "version": jam["version"] + 1}
    svc._apply(TOPIC_CONDITIONS, key, orjson.dumps(jam), live=True)
    assert set(svc.jammed) == {CELL}
    svc._apply(TOPIC_CONDITIONS, key, orjson.dumps(free_older), live=True)  # replayed: ignored
    assert set(svc.jammed) == {CELL}
    svc._apply(TOPIC_CONDITIONS, key, orjson.dumps(free_newer), live=True)
    assert svc.jammed == {}
    svc._apply(TOPIC_CONDITIONS, key, orjson.dumps({**jam, "version": jam["version"] + 2}), live=True)
    svc._apply(TOPIC_CONDITIONS, key, None, live=True)  # tombstone
    assert svc.jammed == {}

    opened = _alert("crash", id="i-1")
    svc._apply(TOPIC_ALERTS, key, orjson.dumps(opened), live=True)
    assert set(svc.open_alerts) == {"i-1"}
    cleared = {**_alert("crash", id="i-1", state="cleared"), "version": opened["version"] + 1}
    svc._apply(TOPIC_ALERTS, key, orjson.dumps({**opened, "version": opened["version"] - 1}), live=True)
    assert svc.open_alerts["i-1"]["version"] == opened["version"]
    svc._apply(TOPIC_ALERTS, key, orjson.dumps(cleared), live=True)
    assert svc.open_alerts == {}

    svc._apply(TOPIC_ALERTS, key, orjson.dumps(opened), live=True)
    svc._apply(TOPIC_CONDITIONS, key, orjson.dumps({**jam, "version": jam["version"] + 3}), live=True)
    doc = orjson.loads(svc.waze_feed(f"{LAT - 0.01},{LON - 0.01},{LAT + 0.01},{LON + 0.01}"))
    assert [j["uuid"] for j in doc["jams"]] == [f"{CELL}-2"]
    # the fixture's expires_at is long past by the wall clock the service reads: a lapsed alert the
    # worker did not clear (it may be down) is not in the feed
    assert doc["alerts"] == []
    with pytest.raises(ValueError, match="bbox"):
        svc.waze_feed("1,2,3")
