"""The offline runs' pooled false-alarm figure: counts over scored vehicle-hours, and its upper bound."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.sim.offline import _around, summary
from pipeline.sim.sumo import Vehicle


def run(name: str, seed: int, vh: float, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    detection = {"crash": {"detected": 1, "incidents": 1}}
    return {
        "scenario": name,
        "seed": seed,
        "duration_s": 480,
        "vehicle_hours_scored": vh,
        "score": {"false_alarms": {"count": len(alerts), "alerts": alerts}, "detection": detection},
    }


def test_summary_pools_scored_vehicle_hours_and_bounds_the_rate() -> None:
    none = summary([run("a-s1", 1, 1000.0, []), run("a-s2", 2, 2000.0, [])])
    assert none["false_alarms"] == 0 and none["vehicle_hours_scored"] == 3000.0
    assert none["per_1000_vh_upper_95"] == pytest.approx(0.9986, abs=1e-3)  # the rule of three
    assert none["runs"][1] == {
        "scenario": "a-s2",
        "seed": 2,
        "duration_s": 480,
        "vehicle_hours_scored": 2000.0,
        "false_alarms": [],
        "detected": {"crash": "1/1"},
    }
    one = summary([run("a-s1", 1, 500.0, [{"id": "s-x", "type": "stalled_vehicle"}])])
    assert one["per_1000_vh"] == 2.0 and one["per_1000_vh_upper_95"] == pytest.approx(9.488, abs=1e-2)


def test_around_says_what_sumo_had_at_an_alert() -> None:
    vehicles = {
        "a": Vehicle("a", 52.43, 13.53, 0.2, 0.0, "e1", 0, 10.0),
        "b": Vehicle("b", 52.4302, 13.53, 8.0, 0.0, "e2", 0, 10.0),  # ~22 m north
        "c": Vehicle("c", 52.44, 13.53, 0.0, 0.0, "e3", 0, 10.0),  # ~1.1 km away
    }
    assert _around(52.43, 13.53, vehicles) == {"vehicles": 2, "standing": 1, "edges": ["e1", "e2"]}
