"""pipeline.detect.motion: facts from consecutive pings, seeding across partitions, batches."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geo
from pipeline.detect import motion
from pipeline.detect.motion import HardBrake, MotionTracker, Moving, Stopped

ORIGIN = (48.8566, 2.3522)
T0 = 1_763_780_000.0
Ping = dict[str, Any]


def track(speeds: list[float], period: float = 5.0, device: str = "dev-a", heading: float = 90.0) -> list[Ping]:
    """Pings every ``period`` s along ``heading`` at the given speeds (positions integrate them)."""
    out, dist = [], 0.0
    for i, v in enumerate(speeds):
        if i:
            dist += (speeds[i - 1] + v) / 2 * period
        lat, lon = geo.destination(*ORIGIN, heading, dist)
        out.append(
            {
                "device_id": device,
                "seq": i,
                "ts": T0 + period * i,
                "lat": lat,
                "lon": lon,
                "speed_mps": v,
                "heading_deg": heading if v > 1 else 250.0,  # a still phone's heading is noise
                "accuracy_m": 5.0,
            }
        )
    return out


def step_all(pings: list[Ping]) -> tuple[MotionTracker | None, list[motion.Fact]]:
    state: MotionTracker | None = None
    facts: list[motion.Fact] = []
    for p in pings:
        state, new = motion.step(state, p, p["ts"] + 1.0)
        facts += new
    return state, facts


HARD_STOP = [20.0] * 4 + [0.0] * 8  # 20 → 0 m/s in 5 s: 4 m/s², then 35 s standing


def test_hard_brake_then_stop() -> None:
    _, facts = step_all(track(HARD_STOP))
    brakes = [f for f in facts if isinstance(f, HardBrake)]
    stops = [f for f in facts if isinstance(f, Stopped)]
    assert len(brakes) == 1 and brakes[0].decel_mps2 == 4.0 and brakes[0].heading_deg == 90.0
    assert stops and stops[0].since_ts == T0 + 20 and stops[0].ts == T0 + 30  # told after 10 s
    assert stops[0].decel_mps2 == 4.0 and stops[0].heading_deg == 90.0


def test_gentle_stop_has_no_brake() -> None:
    _, facts = step_all(track([20.0, 15.0, 10.0, 5.0, 0.0, 0.0, 0.0, 0.0]))  # 1 m/s²
    assert not any(isinstance(f, HardBrake) for f in facts)
    assert [f.decel_mps2 for f in facts if isinstance(f, Stopped)] == [None]


def test_a_long_interval_says_nothing_about_braking() -> None:
    _, facts = step_all(track([20.0, 0.0, 0.0, 0.0, 0.0], period=20.0))  # 1 m/s² over 20 s > 15 s
    assert not any(isinstance(f, HardBrake) for f in facts)


def test_stopped_repeats_with_the_same_since_and_moving_follows() -> None:
    _, facts = step_all(track([10.0] + [0.0] * 20 + [5.0, 10.0]))
    stops = [f for f in facts if isinstance(f, Stopped)]
    assert [s.ts - T0 for s in stops] == [15.0, 45.0, 75.0]
    assert {s.since_ts for s in stops} == {T0 + 5}
    assert isinstance(facts[-1], Moving) and facts[-1].ts == T0 + 105


def test_unknown_previous_ping_only_seeds() -> None:
    """First ping in this partition at 0 m/s, after 20 m/s elsewhere: no decel fact from nothing."""
    pings = track(HARD_STOP)
    state, facts = motion.step(None, pings[4], pings[4]["ts"])
    assert facts == [] and state.still_since == pings[4]["ts"]
    for p in pings[5:]:
        state, new = motion.step(state, p, p["ts"])
        facts += new
    assert not any(isinstance(f, HardBrake) for f in facts)
    assert [f.decel_mps2 for f in facts if isinstance(f, Stopped)] == [None]  # still a Stopped fact


def test_gap_reseeds() -> None:
    pings = track([20.0, 20.0])
    pings[1]["ts"] = pings[0]["ts"] + motion.GAP_S + 1
    pings[1]["speed_mps"] = 0.0
    assert step_all(pings)[1] == []


def test_batch_facts_match_stepping_in_any_order() -> None:
    pings = track([15.0, 18.0, 20.0, 20.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 12.0])
    stepped = step_all(pings)[1]
    assert stepped  # a brake, stops and a move
    shuffled = pings[7:] + pings[:7]
    assert motion.facts_from_batch(shuffled, T0 + 100) == stepped


def test_duplicates_and_reordered_pings_are_ignored() -> None:
    pings = track(HARD_STOP)
    state, facts = step_all(pings)
    assert state is not None
    for p in pings:
        state, new = motion.step(state, p, T0 + 500)
        assert new == []
    assert step_all([p for p in pings for _ in range(3)])[1] == facts


def test_expire_after_silence() -> None:
    state, _ = step_all(track([10.0, 10.0]))
    assert state is not None
    assert not motion.expire(state, state.seen_at + motion.TTL_S)
    assert motion.expire(state, state.seen_at + motion.TTL_S + 1)


def test_bytes_round_trip() -> None:
    state, _ = step_all(track(HARD_STOP[:6]))
    assert state is not None
    assert MotionTracker.from_bytes(state.to_bytes()) == state


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(min_value=1.5, max_value=40.0), min_size=1, max_size=60))
def test_a_device_that_never_stops_yields_no_stop_facts(speeds: list[float]) -> None:
    facts = motion.facts_from_batch(track(speeds), T0)
    assert not any(isinstance(f, Stopped | Moving) for f in facts)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=40.0), min_size=1, max_size=60), st.integers(0, 59))
def test_batch_split_anywhere_matches_one_batch(speeds: list[float], cut: int) -> None:
    """A backlog handled as two records of one partition gives the facts of one record."""
    pings = track(speeds)
    state, first = motion.run(None, pings[:cut], T0)
    _, second = motion.run(state, pings[cut:], T0)
    assert first + second == motion.facts_from_batch(pings, T0)


_gaps = st.sampled_from([0.0, -1.0, 1.0, 5.0, 14.99, 15.0, 15.01, 59.9, 60.0, 60.01, 120.0])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            _gaps,
            st.one_of(st.floats(min_value=0.0, max_value=45.0), st.sampled_from([0.0, 1.0, 1.0001, 3.0, 3.01])),
            st.floats(min_value=0.0, max_value=360.0),
            st.floats(min_value=0.0, max_value=40.0),  # metres moved
        ),
        min_size=2,
        max_size=40,
    )
)
def test_glide_is_step_for_the_pings_it_takes(moves: list[tuple[float, float, float, float]]) -> None:
    """glide() either leaves the tracker untouched, or leaves it as step() does and step() tells no fact."""
    lat, lon, ts = *ORIGIN, T0
    stepped: MotionTracker | None = None
    glided: MotionTracker | None = None
    for i, (gap, speed, heading, metres) in enumerate(moves):
        ts += gap
        lat, lon = geo.destination(lat, lon, heading, metres)
        p = {"device_id": "d", "seq": i, "ts": ts, "lat": lat, "lon": lon, "speed_mps": speed, "heading_deg": heading}
        stepped, facts = motion.step(stepped, p, T0 + i)
        if glided is None:
            glided = motion.seed(p, T0 + i)
            continue
        before = copy.copy(glided)
        if motion.glide(glided, p, T0 + i):
            assert facts == []
        else:
            assert glided == before  # refused: nothing changed
            glided, _ = motion.step(glided, p, T0 + i)
        assert glided == stepped


def test_glide_takes_the_next_ping_of_a_moving_device_only() -> None:
    pings = track([10.0, 11.0, 12.0, 0.5])
    m = motion.seed(pings[0], T0)
    assert motion.glide(m, pings[1], T0) and m.ts == pings[1]["ts"] and m.speed == 11.0
    assert not motion.glide(m, pings[1], T0)  # a replay
    assert motion.glide(m, pings[2], T0)
    assert not motion.glide(m, pings[3], T0)  # stopping: step() starts the stop
    braking = track([30.0, 10.0])  # 4 m/s² over 5 s: a hard brake is a fact
    m = motion.seed(braking[0], T0)
    assert not motion.glide(m, braking[1], T0)
