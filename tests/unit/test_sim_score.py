"""The score: matching alerts to SUMO's truth, false alarms, delivery, rerouting benefit."""

from __future__ import annotations

import pytest

from pipeline import geo
from pipeline.sim.score import (
    Inputs,
    Opened,
    RerouteOutcome,
    Truth,
    Upstream,
    merged,
    poisson_upper,
    quantile,
    score,
    verdicts,
)

CRASH = Truth("crash", 52.43, 13.53, start_s=100.0, end_s=400.0)
STALL = Truth("stalled_vehicle", 52.44, 13.55, start_s=50.0, end_s=500.0)


def at(base: Truth, metres: float) -> tuple[float, float]:
    return geo.destination(base.lat, base.lon, 90.0, metres)


def opened(id_: str, type_: str, where: tuple[float, float], sim_s: float) -> Opened:
    return Opened(id_, type_, where[0], where[1], sim_s, wall=1000.0 + sim_s)


def test_detection_rate_and_time_to_detect() -> None:
    res = score(
        Inputs(
            [CRASH, STALL],
            [opened("x-1", "crash", at(CRASH, 40), 115.0), opened("s-1", "stalled_vehicle", at(STALL, 10), 145.0)],
            vehicle_hours=100.0,
        )
    )
    assert res["detection"]["crash"] == {
        "incidents": 1,
        "detected": 1,
        "ttd_s": [15.0],
        "rate": 1.0,
        "ttd_median_s": 15.0,
        "ttd_p90_s": 15.0,
        "probe_ttd_s": [15.0],
        "probe_detected": 1,
        "probe_ttd_median_s": 15.0,
    }
    assert res["detection"]["stalled_vehicle"]["ttd_median_s"] == 95.0
    assert res["false_alarms"]["count"] == 0
    assert all(
        verdicts(res)[k] for k in ("detection_crash", "detection_stalled_vehicle", "ttd_crash", "ttd_stalled_vehicle")
    )


def test_wrong_type_too_far_or_too_early_is_no_detection() -> None:
    alerts = [
        opened("s-9", "stalled_vehicle", at(CRASH, 5), 110.0),  # right place, wrong type
        opened("x-8", "crash", at(CRASH, 300), 110.0),  # right type, 300 m away
        opened("x-7", "crash", at(CRASH, 5), 10.0),  # before it happened
    ]
    res = score(Inputs([CRASH], alerts, vehicle_hours=10.0))
    assert res["detection"]["crash"]["detected"] == 0
    # the first two are explained by the crash (its queue), the early one is a false alarm
    assert [a["id"] for a in res["false_alarms"]["alerts"]] == ["x-7"]
    assert verdicts(res)["detection_crash"] is False


def test_a_report_alert_detects_but_probes_alone_are_counted_apart() -> None:
    alerts = [opened("i-1", "crash", at(CRASH, 20), 101.0), opened("x-1", "crash", at(CRASH, 10), 140.0)]
    row = score(Inputs([CRASH], alerts, vehicle_hours=1.0))["detection"]["crash"]
    assert row["ttd_s"] == [1.0] and row["probe_ttd_s"] == [40.0] and row["probe_detected"] == 1


def test_false_alarms_per_1000_vehicle_hours_by_source_and_warmup() -> None:
    far = at(CRASH, 2000)
    alerts = [
        opened("x-1", "crash", far, 200.0),
        opened("i-2", "crash", far, 250.0),  # from reports (spam)
        opened("s-3", "stalled_vehicle", far, 20.0),  # during the warm-up: not scored
    ]
    res = score(Inputs([CRASH], alerts, vehicle_hours=500.0, warmup_s=60.0))
    fa = res["false_alarms"]
    assert fa["count"] == 2 and fa["per_1000_vh"] == 4.0
    assert fa["by_source"] == {"probe": 1, "report": 1}
    assert verdicts(res)["false_alarms"] is False


def test_delivery_share_before_reaching_and_latency() -> None:
    d = opened("x-1", "crash", at(CRASH, 0), 110.0)  # wall 1110
    ups = [
        Upstream("a", received_wall=1110.5, received_sim=113.0, reached_sim=150.0),  # in time
        Upstream("b", received_wall=1112.0, received_sim=125.0, reached_sim=120.0),  # too late
        Upstream("c", received_wall=None, received_sim=None, reached_sim=None),  # never got it
    ]
    res = score(Inputs([CRASH], [d], vehicle_hours=1.0, upstream={0: ups}))
    dl = res["delivery"]
    assert dl["upstream_vehicles"] == 3 and dl["received"] == 2
    assert dl["share_before_reaching"] == pytest.approx(1 / 3, abs=1e-3)
    assert dl["latency_median_s"] == pytest.approx(1.25)


def test_reroute_benefit_compares_medians_of_takers_and_decliners_round_a_closure() -> None:
    outs = [RerouteOutcome(f"t{i}", True, r, closure=True) for i, r in enumerate([1.1, 1.2, 1.3])] + [
        RerouteOutcome(f"d{i}", False, r, closure=True, arrived=i != 2) for i, r in enumerate([1.5, 1.6, 2.0])
    ]
    # offers for congestion (and everyone's first offer) are shown apart and never set the verdict
    others = [RerouteOutcome("t9", True, 3.0), RerouteOutcome("d9", False, 1.0), RerouteOutcome("d8", False, 1.0)]
    rr = score(Inputs([], [], vehicle_hours=1.0, reroutes=outs + others))["reroute"]
    assert rr["offered"] == 6 and rr["accepted"] == 3 and rr["still_driving"] == 1
    assert rr["still_driving_accepted"] == 0  # the one still driving is a decliner
    assert rr["faster_arrived"] == pytest.approx(1 - 1.2 / 1.55, abs=1e-3)  # without it
    assert rr["faster"] == pytest.approx(1 - 1.2 / 1.6, abs=1e-3)
    assert rr["all_offers"]["offered"] == 3 and rr["all_offers"]["faster"] == pytest.approx(-2.0)
    assert verdicts(score(Inputs([], [], 1.0, reroutes=outs + others)))["reroute"] is True
    assert verdicts(score(Inputs([], [], 1.0, reroutes=others)))["reroute"] is None
    assert score(Inputs([], [], 1.0))["reroute"]["faster"] is None


def test_quantile_and_merged_totals() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([0.0, 10.0], 0.9) == pytest.approx(9.0)
    a = score(Inputs([CRASH], [opened("x-1", "crash", at(CRASH, 0), 120.0)], vehicle_hours=50.0))
    b = score(Inputs([CRASH], [opened("x-2", "crash", at(CRASH, 3000), 120.0)], vehicle_hours=150.0))
    m = merged([a, b])
    assert m["detection"]["crash"]["incidents"] == 2 and m["detection"]["crash"]["detected"] == 1
    assert m["false_alarms"] == 1 and m["per_1000_vh"] == pytest.approx(5.0)


def test_poisson_upper_bound_is_the_rule_of_three_at_zero_events() -> None:
    assert poisson_upper(0) == pytest.approx(2.996, abs=1e-3)  # −ln 0.05
    assert poisson_upper(1) == pytest.approx(4.744, abs=1e-3)  # the chi-square table's values
    assert poisson_upper(2) == pytest.approx(6.296, abs=1e-3)
    assert poisson_upper(0, confidence=0.9) == pytest.approx(2.303, abs=1e-3)
