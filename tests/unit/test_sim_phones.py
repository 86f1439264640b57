"""A phone: pings from its vehicle with GPS error, a backlog kept through gaps and failures."""

from __future__ import annotations

import random

from pipeline import geo
from pipeline.sim.phones import MAX_BATCH, Phone, chosen
from pipeline.sim.sumo import Vehicle

CAR = Vehicle("v1", 52.43, 13.53, 13.9, 90.0, "e1", 1, 10.0)


def test_a_ping_is_the_vehicle_with_its_gps_error_and_increasing_seq() -> None:
    rng = random.Random(1)
    exact = Phone("d", "tok", sigma_m=0.0, next_ping_s=0.0)
    p1, p2 = exact.sample(CAR, 1000.0, rng), exact.sample(CAR, 1005.0, rng)
    assert (p1["seq"], p2["seq"]) == (1, 2) and p2["ts"] == 1005.0
    assert (p1["lat"], p1["lon"], p1["heading_deg"]) == (52.43, 13.53, 90.0)
    assert set(p1) == {"seq", "ts", "lat", "lon", "speed_mps", "heading_deg", "accuracy_m"}
    noisy = Phone("n", "tok", sigma_m=12.0, next_ping_s=0.0)
    errs = [
        geo.distance_m(CAR.lat, CAR.lon, q["lat"], q["lon"]) for q in (noisy.sample(CAR, 0, rng) for _ in range(400))
    ]
    assert 10.0 < sum(errs) / len(errs) < 20.0  # ~1.25 σ for a 2-D normal error
    assert noisy.sample(CAR, 0, rng)["accuracy_m"] == 18.0


def test_backlog_goes_up_in_batches_of_the_api_limit_in_order() -> None:
    ph = Phone("d", "tok", 0.0, 0.0)
    rng = random.Random(2)
    ph.backlog = [ph.sample(CAR, float(t), rng) for t in range(MAX_BATCH + 20)]  # a long gap
    first = ph.take(ph.sample(CAR, 9999.0, rng))
    assert len(first) == MAX_BATCH and first[0]["seq"] == 1
    rest = ph.take(None)
    assert len(rest) == 21 and rest[-1]["ts"] == 9999.0
    ph.give_back(rest)  # the post failed: kept, in order, for the next try
    assert [p["seq"] for p in ph.take(None)] == [p["seq"] for p in rest]


def test_draws_are_stable_and_proportional() -> None:
    keys = [f"v{i}" for i in range(5000)]
    share = sum(chosen(k, 0.3, "s") for k in keys) / len(keys)
    assert 0.27 < share < 0.33
    assert [chosen(k, 0.3, "s") for k in keys[:50]] == [chosen(k, 0.3, "s") for k in keys[:50]]
    assert not any(chosen(k, 0.0) for k in keys[:100]) and all(chosen(k, 1.0) for k in keys[:100])
