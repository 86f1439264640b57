"""The detection-quality score: SUMO's ground truth against what Traverz published.

Pure functions over plain data (the runner gathers it), so every rule here is unit-tested.

* **Detected**: an alert of the incident's type opened within :data:`MATCH_M` of where it
  happened, between its start (− :data:`EARLY_S`, the clock's mapping tolerance) and
  its end + :data:`LATE_S`. Time to detect = the alert's ``opened_at`` mapped to sim time
  − the true start (so the worker's wall-clock latency counts ×speedup: pessimistic).
* **False alarm**: an opened alert that no true incident (any type) explains: none within
  :data:`EXPLAIN_M` (the queue behind a crash is the crash's doing) during it or
  :data:`LATE_S` after. Alerts of the warm-up are not scored. Rate per 1,000 vehicle-hours
  of simulated driving; split by source (probe detectors ``s-``/``x-`` ids, reports ``i-``).
* **Delivery**: for each detected incident, the subscribed vehicles whose remaining route
  crossed its edge when it was detected; wall seconds from ``opened_at`` to receipt, and the
  share that had it before they reached the edge.
* **Rerouting benefit** (the closure group): vehicles whose route crossed a closed road
  when the app offered them a way around it: an offer naming a closure alert (or saying the
  route is blocked), received while the closure was in force in SUMO and the vehicle's
  remaining SUMO route crossed the closed edge. Split by whether the vehicle takes the
  app's reroutes (a stable random draw per vehicle, so the groups differ by nothing else).
  Per vehicle: time from that offer to arrival over the free-flow time of the route it had
  then; benefit = 1 − median(accepted) / median(declined). Decliners drive what a driver
  without the app drives: their route up to the barrier, then the map's way round it
  (:mod:`pipeline.sim.drivers`); nobody waits for the reopening or is teleported. The run
  steps SUMO on after the scenario's end until the group has arrived (at most a few
  minutes: one still driving counts until then, a lower bound; ``faster_arrived`` leaves
  them out, so a gridlock on one side's way cannot set the figure alone). Offers for any reason
  (congestion included; from each vehicle's first offer) are shown apart as ``all_offers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline import geo

MATCH_M = 150.0
EXPLAIN_M = 400.0
EARLY_S = 5.0  # the clock's mapping of wall to sim time is good to a step or two; nothing precedes the truth
LATE_S = 300.0
DETECTION_TARGET = {"crash": 0.95, "stalled_vehicle": 0.95}
TTD_TARGET_S = {"crash": 30.0, "stalled_vehicle": 120.0}
FALSE_ALARM_TARGET = 1.0  # per 1,000 vehicle-hours
REROUTE_TARGET = 0.20  # accepting vehicles this much faster
TARGETS = {
    "detection_rate": DETECTION_TARGET,
    "ttd_median_s": TTD_TARGET_S,
    "false_alarms_per_1000_vh": FALSE_ALARM_TARGET,
    "reroute_faster": REROUTE_TARGET,
}


@dataclass(frozen=True)
class Truth:
    type: str  # alert type: crash, stalled_vehicle, road_work, closure
    lat: float
    lon: float
    start_s: float
    end_s: float
    edge: str = ""


@dataclass(frozen=True)
class Opened:
    id: str
    type: str
    lat: float
    lon: float
    sim_s: float  # opened_at mapped to sim time
    wall: float  # opened_at (worker wall clock)


@dataclass
class Upstream:
    vehicle: str
    received_wall: float | None
    received_sim: float | None
    reached_sim: float | None


@dataclass
class RerouteOutcome:
    vehicle: str
    accepted: bool
    ratio: float  # (arrival − offer) / free-flow time of the remaining route at the offer
    closure: bool = False  # the closure group (from its closure offer), else from its first offer of any kind
    arrived: bool = True  # False: still driving when the run ended (the ratio is a lower bound)


@dataclass
class Inputs:
    truths: list[Truth]
    opened: list[Opened]
    vehicle_hours: float
    warmup_s: float = 0.0
    upstream: dict[int, list[Upstream]] = field(default_factory=dict)  # truth index → subscribers upstream
    reroutes: list[RerouteOutcome] = field(default_factory=list)


def quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(len(s) - 1, int(k) + 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _near(a: Opened, t: Truth, radius: float) -> bool:
    return geo.distance_m(a.lat, a.lon, t.lat, t.lon) <= radius


def detection(t: Truth, opened: list[Opened]) -> Opened | None:
    """The first alert that detects ``t``."""
    hits = [
        a
        for a in opened
        if a.type == t.type and _near(a, t, MATCH_M) and t.start_s - EARLY_S <= a.sim_s <= t.end_s + LATE_S
    ]
    return min(hits, key=lambda a: a.sim_s) if hits else None


def explained(a: Opened, truths: list[Truth]) -> bool:
    return any(_near(a, t, EXPLAIN_M) and t.start_s - EARLY_S <= a.sim_s <= t.end_s + LATE_S for t in truths)


def source(alert_id: str) -> str:
    return "report" if alert_id.startswith("i-") else "probe"


def score(inp: Inputs) -> dict[str, Any]:
    per_type: dict[str, dict[str, Any]] = {}
    detections: dict[int, Opened] = {}
    probes = [a for a in inp.opened if source(a.id) == "probe"]
    for i, t in enumerate(inp.truths):
        d = detection(t, inp.opened)
        row = per_type.setdefault(t.type, {"incidents": 0, "detected": 0, "ttd_s": [], "probe_ttd_s": []})
        row["incidents"] += 1
        if d is not None:
            detections[i] = d
            row["detected"] += 1
            row["ttd_s"].append(round(d.sim_s - t.start_s, 1))
        p = detection(t, probes)  # the probe detectors alone (drivers' reports often come first)
        if p is not None:
            row["probe_ttd_s"].append(round(p.sim_s - t.start_s, 1))
    for row in per_type.values():
        _summary(row)
    scored = [a for a in inp.opened if a.sim_s >= inp.warmup_s]
    false = [a for a in scored if not explained(a, inp.truths)]
    vh = inp.vehicle_hours
    fa = {
        "count": len(false),
        "per_1000_vh": round(1000.0 * len(false) / vh, 2) if vh > 0 else None,
        "by_source": {s: sum(1 for a in false if source(a.id) == s) for s in ("probe", "report")},
        "by_type": {ty: sum(1 for a in false if a.type == ty) for ty in sorted({a.type for a in false})},
        "alerts": [{"id": a.id, "type": a.type, "lat": a.lat, "lon": a.lon, "sim_s": round(a.sim_s, 1)} for a in false],
    }
    return {
        "detection": per_type,
        "false_alarms": fa,
        "vehicle_hours": round(vh, 2),
        "delivery": _delivery(inp, detections),
        "reroute": _reroute(inp.reroutes),
    }


def _summary(row: dict[str, Any]) -> None:
    row["rate"] = row["detected"] / row["incidents"]
    row["ttd_median_s"] = quantile(row["ttd_s"], 0.5)
    row["ttd_p90_s"] = quantile(row["ttd_s"], 0.9)
    row["probe_detected"] = len(row["probe_ttd_s"])
    row["probe_ttd_median_s"] = quantile(row["probe_ttd_s"], 0.5)


def _delivery(inp: Inputs, detections: dict[int, Opened]) -> dict[str, Any]:
    latencies: list[float] = []
    upstream = in_time = 0
    for i, d in detections.items():
        for u in inp.upstream.get(i, []):
            upstream += 1
            if u.received_wall is not None:
                latencies.append(max(0.0, u.received_wall - d.wall))
            if u.received_sim is not None and (u.reached_sim is None or u.received_sim <= u.reached_sim):
                in_time += 1
    return {
        "upstream_vehicles": upstream,
        "received": len(latencies),
        "share_before_reaching": round(in_time / upstream, 3) if upstream else None,
        "latency_median_s": quantile(latencies, 0.5),
        "latency_p90_s": quantile(latencies, 0.9),
    }


def _faster(took: list[float], kept: list[float]) -> float | None:
    mt, mk = quantile(took, 0.5), quantile(kept, 0.5)
    return None if mt is None or not mk else round(1.0 - mt / mk, 3)


def _benefit(outcomes: list[RerouteOutcome]) -> dict[str, Any]:
    took = [o.ratio for o in outcomes if o.accepted]
    kept = [o.ratio for o in outcomes if not o.accepted]
    mt, mk = quantile(took, 0.5), quantile(kept, 0.5)
    arrived = [o for o in outcomes if o.arrived]
    return {
        "offered": len(outcomes),
        "accepted": len(took),
        "declined": len(kept),
        "still_driving": sum(1 for o in outcomes if not o.arrived),
        "still_driving_accepted": sum(1 for o in outcomes if not o.arrived and o.accepted),  # which side's bound
        "median_ratio_accepted": None if mt is None else round(mt, 3),
        "median_ratio_declined": None if mk is None else round(mk, 3),
        "faster": _faster(took, kept),
        # those still driving left out (a gridlock on one side's way would otherwise set the figure)
        "faster_arrived": _faster(
            [o.ratio for o in arrived if o.accepted], [o.ratio for o in arrived if not o.accepted]
        ),
    }


def _reroute(outcomes: list[RerouteOutcome]) -> dict[str, Any]:
    """The closure group's figures at the top level (the target), every offer under ``all_offers``."""
    return {
        **_benefit([o for o in outcomes if o.closure]),
        "all_offers": _benefit([o for o in outcomes if not o.closure]),
    }


def verdicts(result: dict[str, Any]) -> dict[str, bool | None]:
    """Each target met (True), missed (False) or not measurable in this run (None)."""
    det = result["detection"]
    out: dict[str, bool | None] = {}
    for ty, target in DETECTION_TARGET.items():
        out[f"detection_{ty}"] = det[ty]["rate"] >= target if ty in det else None
    for ty, target in TTD_TARGET_S.items():
        med = det.get(ty, {}).get("ttd_median_s")
        out[f"ttd_{ty}"] = None if med is None else med <= target
    rate = result["false_alarms"]["per_1000_vh"]
    out["false_alarms"] = None if rate is None else rate <= FALSE_ALARM_TARGET
    faster = result["reroute"]["faster"]
    out["reroute"] = None if faster is None else faster >= REROUTE_TARGET
    return out


def poisson_upper(k: int, confidence: float = 0.95) -> float:
    """The upper bound on a Poisson mean after ``k`` events: P(≤ k | mean) = 1 − confidence.

    For k = 0 it is −ln(0.05) ≈ 3.0 (the rule of three); bisection on the Poisson CDF, no SciPy.
    """

    def cdf(mean: float) -> float:
        term = total = math.exp(-mean)
        for i in range(1, k + 1):
            term *= mean / i
            total += term
        return total

    lo, hi = 0.0, 10.0 + 10.0 * k
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1.0 - confidence else (lo, mid)
    return hi


def merged(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over several scenario results (detections pooled, false alarms over all vehicle-hours)."""
    det: dict[str, dict[str, Any]] = {}
    fa = 0
    vh = 0.0
    for r in results:
        for ty, row in r["detection"].items():
            acc = det.setdefault(ty, {"incidents": 0, "detected": 0, "ttd_s": [], "probe_ttd_s": []})
            acc["incidents"] += row["incidents"]
            acc["detected"] += row["detected"]
            acc["ttd_s"] += row["ttd_s"]
            acc["probe_ttd_s"] += row.get("probe_ttd_s", [])
        fa += r["false_alarms"]["count"]
        vh += r["vehicle_hours"]
    for row in det.values():
        _summary(row)
    return {
        "detection": det,
        "false_alarms": fa,
        "vehicle_hours": round(vh, 2),
        "per_1000_vh": (1000.0 * fa / vh) if vh else None,
    }
