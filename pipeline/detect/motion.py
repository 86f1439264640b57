"""Per-device motion: consecutive pings of one device → facts the area detectors use.

Facts: :class:`HardBrake` (≥ 0.3 g averaged over one ping interval of at most
15 s), :class:`Stopped` (≤ 1 m/s within 25 m of the stop's running centroid for
≥ 10 s; repeated every 30 s while it lasts, same ``since_ts``), :class:`Moving`
(a device that was reported Stopped left: > 3 m/s or > 25 m from the centroid).
Between 1 and 3 m/s a stop neither starts nor ends (hysteresis against GPS
speed noise). Everything uses event time (``ts``); ``now`` only marks liveness.

Partitions. Kafka keys are H3 res-7 cells, so when a device crosses a res-7
boundary its next pings are processed by another partition, maybe another
worker, which does not know its previous ping. Hence:

* ``step(None, ping, now)`` only *seeds*: an unknown previous ping never yields
  a deceleration (no false brake from comparing against nothing); a seed ping
  that is already still does start a stop.
* An event-time gap > :data:`GAP_S` also re-seeds: the pings are not consecutive.
* :func:`facts_from_batch` derives facts from one device's consecutive pings of
  one record (ingest groups a phone's backlog by key) without any stored state,
  and gives the same facts as stepping through them.

Agent recipe: per record, group the pings by device and call
``run(table.get(device), those_pings, now)``; whatever the table knew (or not),
the facts within the batch are found, and the state is stored back.

Trade-off: a hard brake exactly across a res-7 boundary between two live
single-ping requests is missed (the braking interval's two pings live in two
partitions). Mitigations: the stop that follows still yields a Stopped fact in
the new partition, which corroborates another vehicle's crash candidate (a
crash usually brakes two vehicles); crash reports open a crash incident on their
own (:mod:`pipeline.detect.incidents`); and a phone's batched backlog is judged
within the batch. A device standing exactly on a boundary with GPS jitter can
likewise split its stop across two partitions; the 25 m radius makes it rare.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import orjson

from pipeline import geo
from pipeline.pings import Ping

HARD_BRAKE_MPS2 = 2.94  # 0.3 g
MAX_BRAKE_DT_S = 15.0  # longer intervals say nothing about how hard someone braked
STILL_MPS = 1.0
MOVE_MPS = 3.0
STILL_RADIUS_M = 25.0  # > 2 × the ~10 m jitter of a phone fix around the centroid
STOP_MIN_S = 10.0
STOP_REFRESH_S = 30.0
BRAKE_TO_STOP_S = 15.0  # a hard brake belongs to a stop that starts at most this long after it
GAP_S = 60.0
TTL_S = 300.0


@dataclass(frozen=True, slots=True)
class HardBrake:
    device: str
    ts: float
    lat: float
    lon: float
    heading_deg: float
    decel_mps2: float


@dataclass(frozen=True, slots=True)
class Stopped:
    """Standing still since ``since_ts`` (as of ``ts``) at the centroid; ``decel_mps2`` if a hard brake led into it."""

    device: str
    since_ts: float
    ts: float
    lat: float
    lon: float
    heading_deg: float  # last heading while moving: the lane it stands in
    decel_mps2: float | None


@dataclass(frozen=True, slots=True)
class Moving:
    device: str
    ts: float
    lat: float
    lon: float


Fact = HardBrake | Stopped | Moving


@dataclass(slots=True)
class MotionTracker:
    """One device's last ping and current stop (if any); :func:`step` advances it."""

    device: str
    seq: int
    ts: float
    lat: float
    lon: float
    speed: float
    heading: float  # last heading while moving: a still phone's heading is noise
    seen_at: float  # `now` of the last ping: liveness only
    still_since: float | None = None
    still_lat: float = 0.0  # running centroid of the stop's still fixes
    still_lon: float = 0.0
    still_n: int = 0
    told_at: float | None = None  # ts of the last Stopped fact of this stop
    brake_ts: float | None = None
    brake_decel: float = 0.0

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> MotionTracker:
        return cls(**orjson.loads(raw))


def seed(ping: Ping, now: float) -> MotionTracker:
    """State from a ping whose predecessor is unknown: no facts can come from it yet."""
    m = MotionTracker(
        device=str(ping["device_id"]),
        seq=int(ping["seq"]),
        ts=float(ping["ts"]),
        lat=float(ping["lat"]),
        lon=float(ping["lon"]),
        speed=float(ping["speed_mps"]),
        heading=float(ping["heading_deg"]),
        seen_at=now,
    )
    if m.speed <= STILL_MPS:
        _start_stop(m, m.ts, m.lat, m.lon)
    return m


def _start_stop(m: MotionTracker, ts: float, lat: float, lon: float) -> None:
    m.still_since, m.still_lat, m.still_lon, m.still_n, m.told_at = ts, lat, lon, 1, None


def step(state: MotionTracker | None, ping: Ping, now: float) -> tuple[MotionTracker, list[Fact]]:
    """Advance one device by one ping; older or repeated pings change nothing."""
    if state is None:
        return seed(ping, now), []
    # the record decoder checked every field's type (pings.decode_record): no float() per field here
    ts = ping["ts"]
    if ts <= state.ts:
        state.seen_at = max(state.seen_at, now)
        return state, []  # a retry, a replay or reordered: the facts of that interval are told
    if ts - state.ts > GAP_S:
        fresh = seed(ping, now)
        fresh.heading = state.heading if fresh.speed <= STILL_MPS else fresh.heading
        return fresh, []
    m = state
    lat, lon, speed = ping["lat"], ping["lon"], ping["speed_mps"]
    facts: list[Fact] = []
    decel = (m.speed - speed) / (ts - m.ts)
    if ts - m.ts <= MAX_BRAKE_DT_S and decel >= HARD_BRAKE_MPS2:
        facts.append(HardBrake(m.device, ts, lat, lon, m.heading, decel))
        m.brake_ts, m.brake_decel = ts, decel
    if m.still_since is not None:
        away = geo.distance_m(m.still_lat, m.still_lon, lat, lon)
        if speed > MOVE_MPS or away > STILL_RADIUS_M:
            if m.told_at is not None:
                facts.append(Moving(m.device, ts, lat, lon))
            m.still_since, m.told_at = None, None
        elif speed <= STILL_MPS:
            m.still_n += 1
            m.still_lat += (lat - m.still_lat) / m.still_n
            m.still_lon += (lon - m.still_lon) / m.still_n
    if m.still_since is None and speed <= STILL_MPS:
        _start_stop(m, ts, lat, lon)
    if (
        m.still_since is not None
        and ts - m.still_since >= STOP_MIN_S
        and (m.told_at is None or ts - m.told_at >= STOP_REFRESH_S)
    ):
        braked = m.brake_ts is not None and 0.0 <= m.still_since - m.brake_ts <= BRAKE_TO_STOP_S
        facts.append(
            Stopped(m.device, m.still_since, ts, m.still_lat, m.still_lon, m.heading, m.brake_decel if braked else None)
        )
        m.told_at = ts
    if speed > STILL_MPS:
        m.heading = ping["heading_deg"]
    m.seq, m.ts, m.lat, m.lon, m.speed, m.seen_at = ping["seq"], ts, lat, lon, speed, now
    return m, facts


def glide(m: MotionTracker, ping: Ping, now: float) -> bool:
    """:func:`step` for the usual ping, applied in place: True if it was one, else nothing changed.

    The usual ping is the next one of a device that moves (> STILL_MPS), was moving, and
    did not brake hard: no stop begins or ends and no fact comes of it. The engine tries
    this first for a tracked device with nothing open (most pings); :func:`step` decides
    everything else. tests/unit/test_detect_motion.py holds the two equal.
    """
    ts = ping["ts"]
    speed = ping["speed_mps"]
    dt = ts - m.ts
    if (
        m.still_since is not None
        or speed <= STILL_MPS
        or not 0 < dt <= GAP_S
        or (dt <= MAX_BRAKE_DT_S and (m.speed - speed) / dt >= HARD_BRAKE_MPS2)
    ):
        return False
    m.heading = ping["heading_deg"]
    m.seq, m.ts, m.lat, m.lon, m.speed, m.seen_at = ping["seq"], ts, ping["lat"], ping["lon"], speed, now
    return True


def run(state: MotionTracker | None, pings: Iterable[Ping], now: float) -> tuple[MotionTracker | None, list[Fact]]:
    """Step through one device's pings in event-time order."""
    facts: list[Fact] = []
    for p in sorted(pings, key=lambda p: (p["ts"], p["seq"])):
        state, new = step(state, p, now)
        facts.extend(new)
    return state, facts


def facts_from_batch(pings: Iterable[Ping], now: float) -> list[Fact]:
    """Facts within one device's batch of consecutive pings, needing no stored state."""
    return run(None, pings, now)[1]


def expire(state: MotionTracker, now: float) -> bool:
    """True when the device has been silent for :data:`TTL_S` (drop its state)."""
    return now - state.seen_at > TTL_S
