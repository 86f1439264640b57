"""Detection quality on SUMO scenarios, detectors only (``traverz simulate --offline``).

SUMO drives the scenario's vehicles and the phones sample them exactly as in a live run; the
pings go straight into the engine, on simulated time. The live run through ingest, Kafka and
the worker is ``tests/integration/test_simulate.py``; this one holds the detectors to the
score on many more vehicle-hours than a live run can afford in CI.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.sim import offline
from pipeline.sim.scenario import load

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_ci_scenario_detects_the_stall_and_the_crash_from_probes_alone_without_false_alarm() -> None:
    res = offline.result(*offline.simulate(load(SCENARIOS / "ci.toml")))
    det = res["score"]["detection"]
    assert det["crash"]["detected"] == det["crash"]["incidents"] == 1
    assert det["stalled_vehicle"]["detected"] == det["stalled_vehicle"]["incidents"] == 1
    assert det["crash"]["ttd_median_s"] <= 30 and det["stalled_vehicle"]["ttd_median_s"] <= 120
    assert res["score"]["false_alarms"]["count"] == 0, res["score"]["false_alarms"]


def test_rush_hour_without_an_incident_raises_no_alert() -> None:
    """Queues at lights, cars waiting to turn, stop-and-go: ~65 vehicle-hours, every alert would be false."""
    res = offline.result(*offline.simulate(load(SCENARIOS / "congestion.toml")))
    assert res["score"]["vehicle_hours"] > 50
    assert res["pings"] > 40_000
    assert res["score"]["false_alarms"]["count"] == 0, res["score"]["false_alarms"]
