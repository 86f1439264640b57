"""pipeline.tail: what `traverz tail` prints for each record, and which records it skips."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from pipeline import geo
from pipeline.conditions import build_condition
from pipeline.detect.events import Evidence, IncidentEvent, Snapshot, to_alert
from pipeline.feeds.bbox import BBox
from pipeline.speed import SectorStats
from pipeline.tail import Filter, Tail, parse_cell, render_alert, render_condition

NOW = 1_760_000_000.0
LAT, LON = 52.5200, 13.4050
CELL = geo.cell(LAT, LON, 9)
OTHER = geo.cell(*geo.destination(LAT, LON, 90.0, 3000.0), 9)
CLOCK = time.strftime("%H:%M:%S", time.localtime(NOW))


def _cond(cell: str = CELL, speeds: dict[int, float] | None = None, incidents: tuple[str, ...] = ()) -> dict[str, Any]:
    stats = {sec: SectorStats(sec, v, v, v, 12, 4) for sec, v in (speeds or {2: 7.0}).items()}
    doc = build_condition(
        cell,
        stats,
        now=NOW,
        version=1,
        min_devices=3,
        free_flow={s: 14.0 for s in stats},
        incidents=incidents,
    )
    assert doc is not None
    return doc


def _alert(lat: float = LAT, lon: float = LON, state: str = "opened") -> dict[str, Any]:
    snap = Snapshot("x-1f2e", "crash", lat, lon, 90.0, 0.75, NOW - 30, NOW, NOW + 3600, Evidence(probes=2))
    return to_alert(IncidentEvent(state, snap, 3))  # type: ignore[arg-type]


def _b(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def test_condition_line_shows_cell_level_jam_sector_speeds_and_incidents() -> None:
    line = render_condition(_cond(speeds={2: 7.0, 6: 13.0}, incidents=("x-1f2e",)))
    assert line == f"{CLOCK} {CELL} L2 jam 5.0  E 25km/h L2 (free 50), W 47km/h L0 (free 50)  incidents x-1f2e"


def test_alert_line_shows_state_type_id_position_confidence() -> None:
    line = render_alert(_alert())
    assert line == f"{CLOCK} opened   crash           x-1f2e at 52.52000,13.40500 heading 90 conf 0.75"


def test_cleared_alert_line_says_why() -> None:
    snap = Snapshot("x-1", "crash", LAT, LON, 90.0, 0.2, NOW - 30, NOW, None, Evidence())
    doc = to_alert(IncidentEvent("cleared", snap, 4, "voted_down"))
    assert render_alert(doc).endswith("(voted_down)")


def test_json_lines_are_the_published_value() -> None:
    cond = _cond()
    out = Tail("conditions", json_lines=True).line(CELL.encode(), _b(cond), NOW)
    assert out is not None and "\n" not in out
    assert orjson.loads(out) == cond


def test_tombstone_is_a_cleared_line_or_a_null_value() -> None:
    assert Tail("conditions").line(CELL.encode(), None, NOW) == f"{CLOCK} {CELL} cleared"
    out = Tail("conditions", json_lines=True).line(CELL.encode(), None, NOW)
    assert out is not None and orjson.loads(out) == {"cell": CELL, "value": None}
    assert Tail("conditions").line(None, None, NOW) is None


def test_cell_filter_matches_that_res9_cell() -> None:
    t = Tail("conditions", Filter(cell=CELL))
    assert t.line(CELL.encode(), _b(_cond()), NOW) is not None
    assert t.line(OTHER.encode(), _b(_cond(OTHER)), NOW) is None
    assert t.line(CELL.encode(), None, NOW) is not None
    assert t.line(OTHER.encode(), None, NOW) is None


def test_coarser_cell_filter_matches_the_res9_cells_inside() -> None:
    t = Tail("conditions", Filter(cell=geo.parent(CELL, 7)))
    assert t.line(CELL.encode(), _b(_cond()), NOW) is not None
    far = geo.cell(*geo.destination(LAT, LON, 0.0, 20_000.0), 9)
    assert t.line(far.encode(), _b(_cond(far)), NOW) is None


def test_cell_filter_on_alerts_uses_the_alert_cell() -> None:
    t = Tail("alerts", Filter(cell=CELL))
    assert t.line(CELL.encode(), _b(_alert()), NOW) is not None
    away = geo.destination(LAT, LON, 90.0, 3000.0)
    assert t.line(OTHER.encode(), _b(_alert(*away)), NOW) is None


def test_bbox_filter_on_cell_centre_and_alert_position() -> None:
    box = BBox(LAT - 0.005, LON - 0.005, LAT + 0.005, LON + 0.005)
    conds, alerts = Tail("conditions", Filter(bbox=box)), Tail("alerts", Filter(bbox=box))
    assert conds.line(CELL.encode(), _b(_cond()), NOW) is not None
    assert conds.line(OTHER.encode(), _b(_cond(OTHER)), NOW) is None
    assert conds.line(OTHER.encode(), None, NOW) is None
    assert alerts.line(CELL.encode(), _b(_alert()), NOW) is not None
    away = geo.destination(LAT, LON, 90.0, 3000.0)
    assert alerts.line(OTHER.encode(), _b(_alert(*away)), NOW) is None


def test_min_level_prints_jams_and_their_end_once() -> None:
    t = Tail("conditions", Filter(min_level=2))
    free, jam = _cond(speeds={2: 13.5}), _cond(speeds={2: 7.0})
    assert t.line(CELL.encode(), _b(free), NOW) is None  # never shown: nothing to retract
    assert t.line(CELL.encode(), _b(jam), NOW) is not None
    assert t.line(CELL.encode(), _b(free), NOW) is not None  # the jam is over: say so once
    assert t.line(CELL.encode(), _b(free), NOW) is None
    assert t.line(CELL.encode(), None, NOW) is None
    assert t.line(CELL.encode(), _b(jam), NOW) is not None
    assert t.line(CELL.encode(), None, NOW) == f"{CLOCK} {CELL} cleared"


def test_unreadable_values_raise_for_the_caller_to_report() -> None:
    t = Tail("conditions")
    with pytest.raises(ValueError):
        t.line(CELL.encode(), b"{not json", NOW)
    with pytest.raises(TypeError):
        t.line(CELL.encode(), b"[1, 2]", NOW)
    with pytest.raises(KeyError):
        t.line(CELL.encode(), b'{"cell": "x"}', NOW)


def test_parse_cell() -> None:
    assert parse_cell(CELL.upper(), 9) == CELL
    assert parse_cell(geo.parent(CELL, 7), 9) == geo.parent(CELL, 7)
    with pytest.raises(ValueError, match="not an H3 cell"):
        parse_cell("hello", 9)
    with pytest.raises(ValueError, match="finer"):
        parse_cell(geo.cell(LAT, LON, 11), 9)
