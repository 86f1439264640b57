"""pipeline.detect.stall: a stalled vehicle among moving traffic, and everything that is not one."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geo
from pipeline.detect import stall
from pipeline.detect.events import IncidentEvent, to_alert
from pipeline.detect.spots import Around, Spots
from pipeline.detect.stall import StallState

ORIGIN = (48.8566, 2.3522)
T0 = 1_763_780_000.0
EAST = 90.0
MOVING = Around(passers=5, queued=False, usual=False)  # the traffic goes round it
Ping = dict[str, Any]


def ping(seq: int, ts: float, lat: float, lon: float, speed: float, heading: float = EAST, **extra: Any) -> Ping:
    p: Ping = {"device_id": "dev-a", "seq": seq, "ts": ts, "lat": lat, "lon": lon, "speed_mps": speed}
    p.update(heading_deg=heading, accuracy_m=8.0, **extra)
    return p


def trip(drive_s: float, stop_s: float, *, jitter_m: float = 0.0, period: float = 5.0, **extra: Any) -> list[Ping]:
    """Drive east at 15 m/s for ``drive_s``, then stand for ``stop_s`` (fixes jittered by up to ``jitter_m``)."""
    rng = random.Random(7)
    out: list[Ping] = []
    t = 0.0
    while t < drive_s:
        lat, lon = geo.destination(*ORIGIN, EAST, 15.0 * t)
        out.append(ping(len(out), T0 + t, lat, lon, 15.0))
        t += period
    stop = geo.destination(*ORIGIN, EAST, 15.0 * drive_s)
    while t <= drive_s + stop_s:
        lat, lon = geo.destination(*stop, rng.uniform(0, 360), rng.uniform(0, jitter_m)) if jitter_m else stop
        out.append(ping(len(out), T0 + t, lat, lon, rng.uniform(0.0, 0.4), rng.uniform(0, 360), **extra))
        t += period
    return out


def run(pings: list[Ping], around: Around | None = MOVING) -> tuple[StallState | None, list[IncidentEvent]]:
    state: StallState | None = None
    emits: list[IncidentEvent] = []
    for p in pings:
        state, new = stall.step(state, p, p["ts"] + 1.0, around)
        emits += new
    return state, emits


def states(emits: list[IncidentEvent]) -> list[str]:
    return [e.state for e in emits]


def test_stall_among_moving_traffic_opens_once() -> None:
    _, emits = run(trip(30, 600))
    assert states(emits)[0] == "opened"
    assert states(emits).count("opened") == 1 and "cleared" not in states(emits)
    opened = emits[0].incident
    assert opened.type == "stalled_vehicle"
    assert opened.updated_at - 1.0 - (T0 + 30) >= stall.STALL_MIN_S  # not before 90 s of standing
    assert geo.distance_m(opened.lat, opened.lon, *geo.destination(*ORIGIN, EAST, 450.0)) < 1.0
    assert opened.heading_deg == EAST  # the lane it drove in, not a still phone's random heading
    assert opened.evidence.probes == 1
    assert all(e.incident.id == opened.id for e in emits)
    assert [e.version for e in emits] == sorted({e.version for e in emits})


def test_long_stall_is_refreshed_not_reopened() -> None:
    _, emits = run(trip(30, 3600))
    assert states(emits)[0] == "opened" and set(states(emits)[1:]) == {"updated"}
    for e in emits:
        assert e.incident.expires_at is not None and e.incident.expires_at > e.incident.updated_at


def test_nobody_going_past_is_congestion_not_a_stall() -> None:
    assert run(trip(30, 600), around=Around(passers=0, queued=False, usual=False))[1] == []
    assert run(trip(30, 600), around=Around(passers=stall.PASSERS_MIN - 1, queued=False, usual=False))[1] == []
    assert run(trip(30, 600), around=Around(passers=stall.PASSERS_MIN, queued=False, usual=False))[1] != []


def test_queued_behind_someone_or_where_others_stop_is_not_a_stall() -> None:
    assert run(trip(30, 600), around=Around(passers=9, queued=True, usual=False))[1] == []
    assert run(trip(30, 600), around=Around(passers=9, queued=False, usual=True))[1] == []


def through_traffic(stop: tuple[float, float], t0: float, n: int = 6) -> list[Ping]:
    """``n`` cars of its own road driving east past ``stop`` in the next lane (3.5 m aside), 15 s apart."""
    lane = geo.destination(*stop, 180.0, 3.5)
    out: list[Ping] = []
    for i in range(n):
        for k in range(8):  # from 60 m behind it to 45 m ahead, a fix a second at 15 m/s
            lat, lon = geo.destination(*lane, EAST if k >= 4 else EAST + 180.0, abs(15.0 * (k - 4)))
            out.append(ping(k, t0 + 15.0 * i + 1.0 * k, lat, lon, 15.0) | {"device_id": f"car-{i}"})
    return out


def with_spots(spots: Spots, pings: list[Ping]) -> list[IncidentEvent]:
    """The engine's loop in small: passers seen, ``around`` looked up, the stop placed; stalls of every device."""
    states: dict[str, StallState] = {}
    emits: list[IncidentEvent] = []
    for p in sorted(pings, key=lambda p: p["ts"]):
        dev, c9 = p["device_id"], geo.cell(p["lat"], p["lon"], 9)
        if c9 in spots.by_cell:
            spots.see(c9, dev, p["ts"], p["lat"], p["lon"], p["speed_mps"], p["heading_deg"])
        st = states.get(dev)
        around = spots.around(dev) if stall.needs_around(st, p) else None
        states[dev], new = stall.step(st, p, p["ts"] + 1.0, around)
        emits += new
        m = states[dev].motion
        if m.still_since is not None:
            spots.place(dev, m.still_lat, m.still_lon, m.heading, m.still_since, p["ts"] + 1.0)
        else:
            spots.lift(dev)
    return emits


def test_waiting_to_turn_at_a_junction_is_not_a_stall() -> None:
    """First in line to turn left for minutes while its own road's through traffic passes it in the next lane.

    Passed like a stalled car, nobody ahead of it; but the cross road's cars stopped at the same
    junction in the minutes before (SUMO's ``congestion``, seeds 1–40: 9 of 15 stall false alarms)."""
    pings = trip(30, 300)
    stop = geo.destination(*ORIGIN, EAST, 450.0)
    traffic = through_traffic(stop, T0 + 60)
    assert states(with_spots(Spots(), pings + traffic)) == ["opened"]  # mid-block, where nobody stopped: a stall

    junction = Spots()
    for i, heading in enumerate((0.0, 180.0)):  # the cross road's cars at their stop lines, 10 m either side
        at = geo.destination(*geo.destination(*stop, EAST, 8.0), heading + 180.0, 10.0)
        junction.place(f"cross-{i}", *at, heading, T0 - 200 + 40 * i, T0 - 200 + 40 * i)
        junction.lift(f"cross-{i}")
    assert with_spots(junction, pings + traffic) == []


def test_unknown_surroundings_never_alert() -> None:
    assert run(trip(30, 600), around=None)[1] == []


def test_parked_is_the_end_of_a_trip() -> None:
    assert run(trip(30, 600, state="parked"))[1] == []


def test_parking_after_the_alert_clears_it() -> None:
    pings = trip(30, 200)
    last = pings[-1]
    pings.append(ping(last["seq"] + 1, last["ts"] + 5, last["lat"], last["lon"], 0.0, state="parked"))
    _, emits = run(pings)
    assert states(emits) == ["opened", "cleared"]
    assert emits[-1].reason == "parked"


def test_quiet_before_the_alert_is_nothing() -> None:
    state, emits = run(trip(30, 50))
    assert emits == [] and state is not None
    assert stall.tick(state, T0 + 80 + 61 + 1) == []


def test_quiet_after_the_alert_clears_it_by_the_clock() -> None:
    state, emits = run(trip(30, 200))
    assert states(emits) == ["opened"] and state is not None
    last_now = state.motion.seen_at
    assert stall.tick(state, last_now + stall.QUIET_S) == []
    cleared = stall.tick(state, last_now + stall.QUIET_S + 1)
    assert states(cleared) == ["cleared"] and cleared[0].reason == "gone_quiet"
    assert stall.tick(state, last_now + 200) == []
    assert stall.expire(state, last_now + 301)


def test_quiet_gap_in_event_time_clears_and_restarts_the_count() -> None:
    pings = trip(30, 200)
    last = pings[-1]
    # the next ping comes 2 min later (a backlog), still standing at the same place
    pings += [ping(last["seq"] + 1 + i, last["ts"] + 120 + 5 * i, last["lat"], last["lon"], 0.0) for i in range(10)]
    _, emits = run(pings)
    assert states(emits) == ["opened", "cleared"]
    assert emits[-1].reason == "gone_quiet"


def test_moving_on_clears() -> None:
    pings = trip(30, 200)
    last = pings[-1]
    for i in range(1, 5):
        lat, lon = geo.destination(last["lat"], last["lon"], EAST, 10.0 * i)
        pings.append(ping(last["seq"] + i, last["ts"] + 5 * i, lat, lon, 8.0))
    _, emits = run(pings)
    assert states(emits) == ["opened", "cleared"]
    assert emits[-1].reason == "moved_on"


def test_gps_jitter_keeps_it_stalled() -> None:
    _, emits = run(trip(30, 900, jitter_m=8.0))
    assert states(emits).count("opened") == 1
    assert "cleared" not in states(emits)


def test_duplicates_change_nothing() -> None:
    pings = trip(30, 200)
    doubled = [p for p in pings for _ in range(2)]
    assert states(run(doubled)[1]) == states(run(pings)[1])


def test_alert_has_no_device_id() -> None:
    _, emits = run(trip(30, 200))
    alert = to_alert(emits[0])
    assert "dev-a" not in repr(alert)
    assert alert["cell"] == geo.cell(alert["lat"], alert["lon"], 9)


def test_bytes_round_trip_mid_stall() -> None:
    pings = trip(30, 300)
    state, _ = run(pings[:20])
    assert state is not None
    back = StallState.from_bytes(state.to_bytes())
    assert back == state
    rest_a = [e.state for p in pings[20:] for e in stall.step(state, p, p["ts"] + 1, MOVING)[1]]
    rest_b = [e.state for p in pings[20:] for e in stall.step(back, p, p["ts"] + 1, MOVING)[1]]
    assert rest_a == rest_b and "opened" in rest_a


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1.5, max_value=40.0), min_size=1, max_size=80), st.integers(0, 30))
def test_never_alerts_for_a_device_that_never_stopped(speeds: list[float], passers: int) -> None:
    pings, dist = [], 0.0
    for i, v in enumerate(speeds):
        dist += v * 5.0
        pings.append(ping(i, T0 + 5.0 * i, *geo.destination(*ORIGIN, EAST, dist), v))
    assert run(pings, Around(passers, False, False))[1] == []
