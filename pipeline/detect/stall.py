"""Stalled vehicles: one device standing still while the traffic around it moves.

Per device (key: device id) on top of :mod:`pipeline.detect.motion`. A stall
opens when the device's current stop (≤ 1 m/s within 25 m of the stop's running
centroid, so ~10 m GPS jitter does not break it) has lasted ≥ :data:`STALL_MIN_S`
of event time and the traffic around it keeps moving *past it*
(:class:`pipeline.detect.spots.Around`): at least :data:`PASSERS_MIN` other devices
went by in its direction since it stopped, no device stands just ahead of it (then
it queues: at a light, behind a turning car, in a jam), and it does not stand where others
stopped shortly before (a stop line, a jam's stop-and-go) or where the cross road's cars stop
(a junction: first in line to turn, its own road's through traffic passes it like a stalled
car). ``around=None`` (unknown) never opens one; when everyone stands it is congestion,
not a stall. (An earlier rule, the median speed of its cell and sector ≥ 5 m/s, alarmed
for cars queued in one lane while the next lane moved: 8 false alarms in 66 vehicle-hours
of the ``congestion`` scenario.)

No alert when the trip ends: a stop in which the phone said ``parked`` never
opens, and an open stall is cleared (``parked``). Nor when the device goes
quiet: no ping for > :data:`QUIET_S` (event-time gap between pings, or ``now``
in :func:`tick`) clears an open stall (``gone_quiet``) and starts counting
afresh. Moving on (> 3 m/s or > 25 m away) clears it (``moved_on``). One stop
opens at most one stall, however long it lasts.

The alert: position = centroid of the still fixes, heading = last moving
heading, confidence :data:`STALL_CONFIDENCE`, evidence probes = 1; it expires
after :data:`LIFETIME_S` unless refreshed (an ``updated`` halfway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson

from pipeline.detect import motion
from pipeline.detect.events import Evidence, IncidentEvent, LifecycleState, Snapshot, incident_id, next_version
from pipeline.detect.spots import Around
from pipeline.pings import Ping

STALL_MIN_S = 90.0
PASSERS_MIN = 2
QUIET_S = 60.0
STALL_CONFIDENCE = 0.7
LIFETIME_S = 1800.0


@dataclass
class OpenStall:
    id: str
    since_ts: float
    lat: float
    lon: float
    heading: float
    opened_at: float
    expires_at: float
    version: int


@dataclass(slots=True)
class StallState:
    motion: motion.MotionTracker
    stall: OpenStall | None = None
    alerted_since: float | None = None  # the stop that already opened one: never twice
    parked_since: float | None = None  # the stop in which the phone said "parked"

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> StallState:
        doc = orjson.loads(raw)
        stall = doc["stall"]
        return cls(
            motion=motion.MotionTracker(**doc["motion"]),
            stall=OpenStall(**stall) if stall is not None else None,
            alerted_since=doc["alerted_since"],
            parked_since=doc["parked_since"],
        )


def _event(s: OpenStall, state: LifecycleState, now: float, reason: str | None = None) -> IncidentEvent:
    s.version = next_version(s.version, now)
    snap = Snapshot(
        id=s.id,
        type="stalled_vehicle",
        lat=s.lat,
        lon=s.lon,
        heading_deg=s.heading,
        confidence=STALL_CONFIDENCE,
        opened_at=s.opened_at,
        updated_at=now,
        expires_at=s.expires_at,
        evidence=Evidence(probes=1),
    )
    return IncidentEvent(state, snap, s.version, reason)


def _clear(st: StallState, now: float, reason: str) -> list[IncidentEvent]:
    if st.stall is None:
        return []
    ev = _event(st.stall, "cleared", now, reason)
    st.stall = None
    return [ev]


def step(
    state: StallState | None, ping: Ping, now: float, around: Around | None
) -> tuple[StallState, list[IncidentEvent]]:
    """Advance one device by one ping; ``around``: what surrounds its stop (None: unknown)."""
    state, emits, _ = step_with_facts(state, ping, now, around)
    return state, emits


def needs_around(state: StallState | None, ping: Ping) -> bool:
    """Whether :func:`step` could open a stall on this ping, i.e. whether to look ``around`` up."""
    if state is None or state.stall is not None:
        return False
    since = state.motion.still_since
    return since is not None and float(ping["ts"]) - since >= STALL_MIN_S - motion.STOP_REFRESH_S


def step_with_facts(
    state: StallState | None, ping: Ping, now: float, around: Around | None
) -> tuple[StallState, list[IncidentEvent], list[motion.Fact]]:
    """:func:`step`, also returning the motion facts (the crash detector's input)."""
    parked = ping.get("state") == "parked"
    if state is None:
        state = StallState(motion.seed(ping, now))
        if parked and state.motion.still_since is not None:
            state.parked_since = state.motion.still_since
        return state, [], []
    ts = ping["ts"]
    if ts <= state.motion.ts:
        return state, [], []
    quiet = ts - state.motion.ts > QUIET_S
    state.motion, facts = motion.step(state.motion, ping, now)
    m = state.motion
    if parked and m.still_since is not None:
        state.parked_since = m.still_since
    if state.stall is None and m.still_since is None:
        return state, [], facts  # moving and nothing open: most pings end here
    emits: list[IncidentEvent] = []
    if state.stall is not None:
        if quiet:
            emits += _clear(state, now, "gone_quiet")
        elif parked:
            emits += _clear(state, now, "parked")
        elif m.still_since != state.stall.since_ts or any(isinstance(f, motion.Moving) for f in facts):
            emits += _clear(state, now, "moved_on")
    if state.stall is not None:
        if now >= state.stall.expires_at - LIFETIME_S / 2:
            state.stall.expires_at = now + LIFETIME_S  # still there: keep it alive for the drivers
            emits.append(_event(state.stall, "updated", now))
        return state, emits, facts
    if (
        m.still_since is not None
        and ts - m.still_since >= STALL_MIN_S
        and state.alerted_since != m.still_since
        and state.parked_since != m.still_since
        and around is not None
        and around.passers >= PASSERS_MIN
        and not around.queued
        and not around.usual
    ):
        state.alerted_since = m.still_since
        state.stall = OpenStall(
            id=incident_id("s", m.device, m.still_since),
            since_ts=m.still_since,
            lat=m.still_lat,
            lon=m.still_lon,
            heading=m.heading,
            opened_at=now,
            expires_at=now + LIFETIME_S,
            version=0,
        )
        emits.append(_event(state.stall, "opened", now))
    return state, emits, facts


def tick(state: StallState, now: float) -> list[IncidentEvent]:
    """Timer: clear an open stall whose device has gone quiet (no ping for > QUIET_S of ``now``)."""
    if state.stall is not None and now - state.motion.seen_at > QUIET_S:
        return _clear(state, now, "gone_quiet")
    return []


def expire(state: StallState, now: float) -> bool:
    """True when the device has been silent long enough to drop its state (call :func:`tick` first)."""
    return state.stall is None and motion.expire(state.motion, now)
