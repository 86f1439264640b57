"""Scenario files: every file in scenarios/ loads, and a broken one says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.sim.scenario import INCIDENT_KINDS, ScenarioError, load, parse, repo_scenarios


def test_every_repo_scenario_loads_and_the_ci_one_has_a_crash_and_a_stall() -> None:
    files = repo_scenarios()
    names = {p.stem for p in files}
    assert {"ci", "city", "congestion", "blocking"} <= names
    for p in files:
        sc = load(p)
        assert sc.duration_s > 0 and sc.network
    ci = load(next(p for p in files if p.stem == "ci"))
    assert sorted(e.kind for e in ci.incidents()) == ["crash", "stall"]
    assert load(next(p for p in files if p.stem == "congestion")).incidents() == []


def test_fields_and_defaults() -> None:
    sc = parse(
        {
            "name": "x",
            "duration_s": 100,
            "demand": {"corridor": ["a", "b"], "corridor_vehicles_per_hour": 10},
            "events": [{"kind": "stall", "edge": "e1", "at_s": 5, "duration_s": 50}],
        },
        Path("x.toml"),
    )
    assert sc.demand.corridor == ("a", "b")
    assert sc.phones.ping_interval_s == 5.0
    assert sc.events[0].ends_s == 55
    assert [e.kind for e in sc.incidents()] == ["stall"] and "stall" in INCIDENT_KINDS


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"events": [{"kind": "meteor", "edge": "e"}]}, "kind must be one of"),
        ({"events": [{"kind": "crash", "duration_s": 10}]}, "needs an edge"),
        ({"events": [{"kind": "stall", "edge": "e"}]}, "duration_s > 0"),
        ({"events": [{"kind": "gps_noise", "share": 2, "sigma_m": 5}]}, "share"),
        ({"events": [{"kind": "congestion", "route": ["a"], "duration_s": 5, "vehicles_per_hour": 5}]}, "route"),
        ({"demand": {"vehicles": 3}}, "unknown keys"),
        ({"speedup": 0.5}, "speedup"),
    ],
)
def test_broken_scenarios_are_refused_with_a_reason(doc: dict[str, object], why: str) -> None:
    with pytest.raises(ScenarioError, match=why):
        parse({"name": "bad", **doc}, Path("bad.toml"))


def test_a_file_that_is_not_toml(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text("name = \n")
    with pytest.raises(ScenarioError):
        load(p)
