"""Crashes: a hard brake into a standstill, corroborated by what happens around it.

Per *area*, key = res-9 cell, because corroboration is about several vehicles
at one place. It is fed the per-device facts of :mod:`pipeline.detect.motion`
(:class:`MotionTracker` state, re-exported here with the facts). A :class:`Stopped`
fact carrying ``decel_mps2`` (≥ 0.3 g over ≤ 15 s, then ≤ 1 m/s for ≥ 10 s) is
a crash *candidate* in the area of its own position. A stop without a hard
brake is never a candidate, however many vehicles stand around it: that is a
queue, a light or a car park (a gentle 1 m/s² stop next to another stopped car
is not a crash). Such stops only corroborate.

Confidence (documented formula, capped at 0.99)::

    0.40  hard brake + standstill (the candidate)
  + 0.20  per other vehicle stopped within 30 m that stopped within ±5 min of
          the candidate (Linear Road's accident rule), at most 2
  + 0.20  passed: at least 2 devices went past the standing vehicles in their
          direction (:mod:`pipeline.detect.spots`): a lane is blocked, not the road
  + 0.15  speed collapse: traffic_mps of the candidate's cell and sector
          < 50 % of free_flow_mps
  + 0.15  per crash report nearby (count passed in)

A ``crash`` opens at ≥ 0.6 when a driver reported one nearby, or when the
traffic went past the standing vehicles and either a second vehicle stands with
it or the traffic behind collapsed, unless it stands where others stopped shortly
before (``usual``: a stop line, a junction, a jam; unknown — the candidate's own stop not
yet among ``standing`` — counts as usual until it is known) or braked into the tail of a queue (``queue_tail``:
a device stands ahead of it that itself stands behind another — two vehicles that
collided stand one behind the other, a third ahead of them is a queue; over 12
seeded offline runs of ``congestion``, 748 vehicle-hours, this rule took the
false alarms from 11 to 3, the injected crashes of 10 ``city`` seeds all still
detected, as before). A hard stop at a red light with the queue
behind it (0.4 + 0.4 + 0.15) is *not* a crash: nothing in its direction passes it.
Braking hard into the tail of a jam is not either, for the same reason. (Measured
with ``traverz simulate --offline``: SUMO drivers brake at up to 4.5 m/s² for
lights, so nearly every red light made a candidate, and the earlier rule — open
on confidence alone — raised 10 false crashes in 66 vehicle-hours of the
``congestion`` scenario.) A crash on a one-lane road with no report waits for
one: nothing can pass it. Confidence never falls while open; ``updated`` is
emitted when it rose by ≥ 0.1 since the last emission.
``cleared`` (``flow_restored``) once every involved vehicle moved on or went
silent (no Stopped fact for 90 s) and traffic recovered (unknown, or ≥ 70 % of
free flow), or (``expired``) after :data:`MAX_AGE_S` open.

Agent recipe: send each fact to every key of :func:`area_keys` (stops near a
cell edge matter to the neighbour; keep those of this partition), passing the
traffic of :func:`watch` (median of that cell and sector, baseline free flow)
the crash reports counted nearby and the passers of the standing vehicles; call :func:`tick` from a timer so that
recovery, new reports and max age are seen without new facts. A corroborating
vehicle across a res-7 boundary is in another partition and is missed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import orjson

from pipeline import geo
from pipeline.conditions import DEFAULT_FREE_FLOW_MPS
from pipeline.detect import motion
from pipeline.detect.events import Evidence, IncidentEvent, LifecycleState, Snapshot, incident_id, next_version
from pipeline.detect.motion import Fact as Fact  # re-exported: the facts and tracker areas are fed from
from pipeline.detect.motion import HardBrake as HardBrake
from pipeline.detect.motion import MotionTracker as MotionTracker
from pipeline.detect.motion import Moving as Moving
from pipeline.detect.motion import Stopped as Stopped
from pipeline.detect.spots import Spot

AREA_RES = 9
BASE = 0.4
PER_VEHICLE = 0.2
PASSED = 0.2
PASSERS_MIN = 2
MAX_VEHICLES = 2
COLLAPSE = 0.15
PER_REPORT = 0.15
CAP = 0.99
OPEN_AT = 0.6
UPDATE_STEP = 0.1
NEAR_M = 30.0
SAME_TIME_S = 300.0
COLLAPSE_RATIO = 0.5
RECOVERED_RATIO = 0.7
VEHICLE_SILENCE_S = 90.0  # Stopped repeats every 30 s; three missed means it is gone
MAX_AGE_S = 3600.0
AREA_TTL_S = 600.0


@dataclass
class Vehicle:
    since_ts: float
    lat: float
    lon: float
    seen_at: float
    moved: bool = False
    candidate_done: bool = False  # this stop already made (or was) a candidate


@dataclass
class Crash:
    id: str
    device: str  # internal only, never emitted
    since_ts: float
    lat: float
    lon: float
    heading: float
    involved: list[str] = field(default_factory=list)  # internal only
    confidence: float = 0.0
    opened_at: float | None = None
    version: int = 0


@dataclass
class CrashArea:
    cell: str
    vehicles: dict[str, Vehicle] = field(default_factory=dict)
    crash: Crash | None = None
    seen_at: float = 0.0

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> CrashArea:
        doc = orjson.loads(raw)
        c = doc["crash"]
        return cls(
            cell=doc["cell"],
            vehicles={d: Vehicle(**v) for d, v in doc["vehicles"].items()},
            crash=Crash(**c) if c is not None else None,
            seen_at=doc["seen_at"],
        )


def area_keys(lat: float, lon: float, key7: str | None = None) -> list[str]:
    """The res-9 cell of a fact first, then neighbouring cells within 30 m; only children of ``key7`` if given."""
    home = geo.cell(lat, lon, AREA_RES)
    keys = [home]
    for bearing in range(0, 360, 45):
        c = geo.cell(*geo.destination(lat, lon, float(bearing), NEAR_M), AREA_RES)
        if c not in keys:
            keys.append(c)
    return [k for k in keys if key7 is None or geo.parent(k, 7) == key7]


def watch(state: CrashArea) -> tuple[str, int] | None:
    """(cell, sector) whose traffic the candidate needs, or None without a candidate."""
    if state.crash is None:
        return None
    return state.cell, geo.sector(state.crash.heading)


def _present(state: CrashArea, now: float) -> dict[str, Vehicle]:
    return {d: v for d, v in state.vehicles.items() if not v.moved and now - v.seen_at <= VEHICLE_SILENCE_S}


def _apply(state: CrashArea, fact: Fact, now: float) -> None:
    if isinstance(fact, Moving):
        v = state.vehicles.get(fact.device)
        if v is not None:
            v.moved = True
        return
    if not isinstance(fact, Stopped):
        return  # a brake alone is only a candidate once the vehicle stands: Stopped carries it
    v = state.vehicles.get(fact.device)
    if v is None or v.moved or geo.distance_m(v.lat, v.lon, fact.lat, fact.lon) > motion.STILL_RADIUS_M:
        v = state.vehicles[fact.device] = Vehicle(fact.since_ts, fact.lat, fact.lon, now)
    else:
        v.seen_at, v.lat, v.lon = now, fact.lat, fact.lon
    home = geo.cell(fact.lat, fact.lon, AREA_RES) == state.cell
    if fact.decel_mps2 is not None and home and state.crash is None and not v.candidate_done:
        v.candidate_done = True
        state.crash = Crash(
            id=incident_id("x", state.cell, fact.device, fact.since_ts),
            device=fact.device,
            since_ts=fact.since_ts,
            lat=fact.lat,
            lon=fact.lon,
            heading=fact.heading_deg,
        )


def _event(c: Crash, state: LifecycleState, now: float, reason: str | None = None) -> IncidentEvent:
    c.version = next_version(c.version, now)
    opened = c.opened_at if c.opened_at is not None else now
    snap = Snapshot(
        id=c.id,
        type="crash",
        lat=c.lat,
        lon=c.lon,
        heading_deg=c.heading,
        confidence=c.confidence,
        opened_at=opened,
        updated_at=now,
        expires_at=opened + MAX_AGE_S,
        evidence=Evidence(probes=len(c.involved)),
    )
    return IncidentEvent(state, snap, c.version, reason)


def tick(
    state: CrashArea,
    now: float,
    *,
    traffic_mps: float | None = None,
    free_flow_mps: float = DEFAULT_FREE_FLOW_MPS,
    reports: int = 0,
    standing: Mapping[str, Spot] | None = None,
    queue_tail: bool = False,
) -> list[IncidentEvent]:
    """Re-evaluate the candidate against the current context (new reports, traffic, passers, age).

    ``standing``: the spots of the area's standing devices: who passed them, whether they stand
    where others stopped before (:mod:`pipeline.detect.spots`).
    """
    c = state.crash
    if c is None:
        return []
    present = _present(state, now)
    if c.opened_at is None and c.device not in present:
        state.crash = None  # it drove or went away before anything corroborated it
        return []
    near = [
        d
        for d, v in present.items()
        if d != c.device
        and geo.distance_m(v.lat, v.lon, c.lat, c.lon) <= NEAR_M
        and abs(v.since_ts - c.since_ts) <= SAME_TIME_S
    ]
    for d in [c.device, *near]:
        if d not in c.involved:
            c.involved.append(d)
    collapsed = traffic_mps is not None and traffic_mps < COLLAPSE_RATIO * free_flow_mps
    spots = standing or {}
    went_past = any((s := spots.get(d)) is not None and len(s.passers) >= PASSERS_MIN for d in [c.device, *near])
    own = spots.get(c.device)  # None: its stop is not known to the spots (yet)
    conf = (
        BASE
        + PER_VEHICLE * min(MAX_VEHICLES, len(near))
        + PASSED * went_past
        + COLLAPSE * collapsed
        + PER_REPORT * max(0, reports)
    )
    conf = round(min(CAP, conf), 3)  # sums of tenths compare exactly with OPEN_AT
    if c.opened_at is None:
        # ``queue_tail``: the candidate braked into a queue (Spots.queue_tail): its "second stopped
        # vehicle" is the queue; such a crash is left to drivers' reports. Without the candidate's
        # own spot, whether it stands where others stopped is unknown: probes wait for it (the
        # agent's next tick has it) instead of reading "unknown" as "nobody stopped here"
        probes = own is not None and not own.usual and went_past and not queue_tail and (len(near) > 0 or collapsed)
        corroborated = reports > 0 or probes
        if conf < OPEN_AT or not corroborated:
            return []
        c.confidence, c.opened_at = conf, now
        return [_event(c, "opened", now)]
    if now - c.opened_at >= MAX_AGE_S:
        state.crash = None
        return [_event(c, "cleared", now, "expired")]
    recovered = traffic_mps is None or traffic_mps >= RECOVERED_RATIO * free_flow_mps
    if recovered and not any(d in present for d in c.involved):
        state.crash = None
        return [_event(c, "cleared", now, "flow_restored")]
    if conf >= c.confidence + UPDATE_STEP - 1e-9:
        c.confidence = conf
        return [_event(c, "updated", now)]
    return []


def step(
    state: CrashArea | None,
    fact: Fact,
    now: float,
    *,
    cell: str,
    traffic_mps: float | None = None,
    free_flow_mps: float = DEFAULT_FREE_FLOW_MPS,
    reports: int = 0,
    standing: Mapping[str, Spot] | None = None,
    queue_tail: bool = False,
) -> tuple[CrashArea, list[IncidentEvent]]:
    """Apply one fact to area ``cell`` (a key of :func:`area_keys`) and re-evaluate.

    ``traffic_mps``: median speed of ``watch(state)``, or before there is a
    candidate of the fact's own cell and heading sector; None when unknown.
    """
    if state is None:
        state = CrashArea(cell)
    state.seen_at = max(state.seen_at, now)
    _apply(state, fact, now)
    return state, tick(
        state,
        now,
        traffic_mps=traffic_mps,
        free_flow_mps=free_flow_mps,
        reports=reports,
        standing=standing,
        queue_tail=queue_tail,
    )


def expire(state: CrashArea, now: float) -> bool:
    """Forget vehicles silent for :data:`AREA_TTL_S`; True when nothing is left (drop the area)."""
    for d in [d for d, v in state.vehicles.items() if now - v.seen_at > AREA_TTL_S]:
        del state.vehicles[d]
    return state.crash is None and not state.vehicles
