"""Scenario files: every file in scenarios/ loads, and a broken one says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import build_parser
from pipeline.sim.command import pick
from pipeline.sim.scenario import INCIDENT_KINDS, ScenarioError, load, parse, repo_scenarios, seeds, vary


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


def test_seed_specs_single_range_and_list() -> None:
    assert seeds("7") == [7]
    assert seeds("1-3") == [1, 2, 3]
    assert seeds("1,5-6") == [1, 5, 6]
    for bad in ("x", "5-3", "1-"):
        with pytest.raises(ValueError):
            seeds(bad)
    args = build_parser().parse_args(["simulate", "--offline", "--seed", "1-2", "--seed", "9", "--duration", "900"])
    assert args.seed == [1, 2, 9] and args.duration == 900.0
    assert build_parser().parse_args(["simulate"]).duration is None  # --synthetic's 60 s applies only to it


def test_vary_renames_reseeds_and_stretches_only_events_lasting_to_the_end() -> None:
    sc = parse(
        {
            "name": "x",
            "seed": 4,
            "duration_s": 480,
            "events": [
                {"kind": "congestion", "route": ["a", "b"], "vehicles_per_hour": 9, "at_s": 0, "duration_s": 480},
                {"kind": "stall", "edge": "e", "at_s": 60, "duration_s": 100},
                {"kind": "crash", "edge": "e", "at_s": 300, "duration_s": 50},
                {"kind": "gps_noise", "share": 0.2, "sigma_m": 12},
            ],
        },
        Path("x.toml"),
    )
    assert vary(sc) == sc
    longer = vary(sc, seed=11, duration_s=1800)
    assert (longer.name, longer.seed, longer.duration_s) == ("x-s11-d1800", 11, 1800)
    assert [(e.kind, e.at_s, e.ends_s) for e in longer.events] == [
        ("congestion", 0, 1800),  # a burst over the whole run lasts the whole longer run
        ("stall", 60, 160),
        ("crash", 300, 350),
        ("gps_noise", 0, 0),
    ]
    shorter = vary(sc, duration_s=200)
    assert [e.kind for e in shorter.events] == ["congestion", "stall", "gps_noise"]  # the crash would start at 300
    assert shorter.events[0].ends_s == 200 and sc.events[0].ends_s == 480  # the original is left alone


def test_pick_runs_each_scenario_once_per_seed() -> None:
    path = str(next(p for p in repo_scenarios() if p.stem == "congestion"))
    own = pick([path], all_=False)
    assert [(s.name, s.seed) for s in own] == [("congestion", load(path).seed)]
    runs = pick([path], all_=False, seeds=[1, 2], duration_s=600)
    assert [(s.name, s.seed, s.duration_s) for s in runs] == [
        ("congestion-s1-d600", 1, 600),
        ("congestion-s2-d600", 2, 600),
    ]
