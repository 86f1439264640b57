"""pipeline.detect.spots (C loops and their Python twins) answers exactly as the original module.

tests/support/reference_spots.py is spots.py as it was before the C loops. Random sequences of
the calls the engine and the detectors make (devices stopping and going at a few junctions,
passers, queues, cross traffic, stops restarted within 5 m and beyond, quiet devices expiring)
go to both; every answer and every spot's state must be the same after every call.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geo
from pipeline.detect import spots
from tests.support import reference_spots as ref

T0 = 1_800_000_000.0
# a junction in Berlin, one on a res-9 cell edge (its watched cells differ with the side), one far north
JUNCTIONS = ((52.4300, 13.5300), (52.51795, 13.37617), (69.6492, 18.9553))
DEVICES = tuple(f"d{i}" for i in range(10))
HEADINGS = (0.0, 90.0, 180.0, 270.0, 45.0, 359.5)
# metres along / aside: the boundaries of the rules (behind 100, ahead 5..100, aside 15, queue 3..40
# aside 10, usual 25, restart 5) and both sides of them
ALONG = (0.0, 2.0, 3.0, 4.9, 5.0, 5.1, 10.0, 12.0, 20.0, 24.9, 25.0, 25.1, 39.9, 40.0, 60.0, 99.9, 100.0, 100.1)
ASIDE = (0.0, 0.0, 0.0, 1.5, 3.5, 3.5, 9.9, 10.1, 14.9, 15.1, 30.0)  # mostly its lane or the next


def position(j: int, along: float, aside: float, heading: float) -> tuple[float, float]:
    """A point ``along`` metres in ``heading``'s direction from junction j and ``aside`` to its right."""
    lat, lon = JUNCTIONS[j]
    h = math.radians(heading)
    north = along * math.cos(h) - aside * math.sin(h)
    east = along * math.sin(h) + aside * math.cos(h)
    return lat + north / 111_320.0, lon + east / (111_320.0 * math.cos(math.radians(lat)))


along_m = st.sampled_from(ALONG).flatmap(lambda m: st.sampled_from((m, -m)))
aside_m = st.sampled_from(ASIDE).flatmap(lambda m: st.sampled_from((m, -m)))
junction = st.sampled_from((0, 0, 0, 1, 2))  # mostly one: the devices meet
jitter = st.one_of(st.just(0.0), st.floats(-3.0, 3.0, allow_nan=False))
place_op = st.tuples(
    st.just("place"),
    st.sampled_from(DEVICES),
    junction,
    along_m,
    aside_m,
    jitter,
    st.sampled_from(HEADINGS),
    st.integers(0, 4),  # since: one of the last few stops' starts (the same stop again, or a new one)
)
see_op = st.tuples(
    st.just("see"),
    st.sampled_from(DEVICES),
    junction,
    along_m,
    aside_m,
    jitter,
    st.sampled_from(HEADINGS),
    st.sampled_from((0.0, 4.9, 5.0, 14.0)),  # speed
)
device_op = st.tuples(st.sampled_from(("lift", "around", "queue_tail")), st.sampled_from(DEVICES))
other_op = st.one_of(
    st.tuples(st.just("standing"), st.lists(st.sampled_from(DEVICES), max_size=4)),
    st.tuples(st.just("expire"), st.sampled_from((5.0, 30.0, 90.0))),
    st.tuples(st.just("tick"), st.sampled_from((1.0, 20.0, 300.0, 700.0))),  # time goes by
    st.tuples(st.just("clear")),
)
ops = st.lists(st.one_of(place_op, place_op, see_op, see_op, see_op, device_op, other_op), max_size=120)


def state(s: Any) -> Any:
    """Everything a Spots holds that the engine, the detectors or later calls can see."""
    by_cell = {c: [(d, here[d] is s.by_device.get(d)) for d in here] for c, here in s.by_cell.items()}
    return by_cell, {d: spot_state(spot) for d, spot in s.by_device.items()}, s.history


def spot_state(spot: Any) -> Any:
    return (
        spot.device,
        spot.lat,
        spot.lon,
        spot.heading,
        spot.since_ts,
        spot.cells,
        spot.seen,
        spot.usual,
        set(spot.passers),
        set(spot.behind),
    )


def answer(result: Any) -> Any:
    if isinstance(result, dict):
        return {d: spot_state(spot) for d, spot in result.items()}
    if isinstance(result, ref.Around | spots.Around):
        return (result.passers, result.queued, result.usual)
    return result


def run(sequence: list[tuple[Any, ...]], native: bool) -> Counter[str]:
    """Both modules through ``sequence``; how often each rule spoke (to know the test reaches them)."""
    reached: Counter[str] = Counter()
    new, old = spots.Spots(native=native), ref.Spots()
    now = T0
    starts = {d: [T0 - 50.0 * k for k in range(5)] for d in DEVICES}
    for op in sequence:
        now += 3.0
        kind, *args = op
        calls: list[tuple[str, tuple[Any, ...]]] = []
        if kind == "place":
            device, j, along, aside, jit, heading, k = args
            lat, lon = position(j, along + jit, aside, heading)
            if k == 0:  # a new stop, started now
                starts[device].insert(0, now)
            calls.append(("place", (device, lat, lon, heading, starts[device][k], now)))
        elif kind == "see":
            device, j, along, aside, jit, heading, speed = args
            lat, lon = position(j, along + jit, aside, heading)
            cell = geo.cell(lat, lon, spots.CELL_RES)
            assert (cell in new.by_cell) == (cell in old.by_cell)
            if cell in old.by_cell:  # as the engine calls it
                calls.append(("see", (cell, device, now, lat, lon, speed, heading)))
        elif kind == "expire":
            calls.append(("expire", (now, args[0])))
        elif kind == "tick":
            now += args[0]
        else:
            calls.append((kind, tuple(args)))
        for name, call in calls:
            got, want = getattr(new, name)(*call), getattr(old, name)(*call)
            assert answer(got) == answer(want), (name, call)
            assert state(new) == state(old), (name, call)
            if isinstance(want, ref.Around):
                reached.update(passers=want.passers > 0, queued=want.queued, usual=want.usual)
            reached.update(queue_tail=want is True)
        reached.update(
            behind=sum(bool(p.behind) for p in old.by_device.values()),
            passed=sum(bool(p.passers) for p in old.by_device.values()),
            usual_at_start=sum(p.usual for p in old.by_device.values()),
        )
    return reached


def random_ops(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    """Long sequences like ``ops`` draws (hypothesis keeps its own short)."""

    def pick_junction() -> int:
        return rng.choice((0, 0, 0, 1, 2))

    def signed(values: tuple[float, ...]) -> float:
        return rng.choice(values) * rng.choice((1.0, -1.0)) + rng.choice((0.0, 0.0, rng.uniform(-3.0, 3.0)))

    out: list[tuple[Any, ...]] = []
    for _ in range(n):
        r = rng.random()
        device, heading = rng.choice(DEVICES), rng.choice(HEADINGS)
        j, aside = pick_junction(), signed(ASIDE[:6])
        if r < 0.05:  # a car drives through along a road: behind the stops there, then past them
            for along in (-90.0, -50.0, -10.0, 8.0, 30.0, 70.0):
                out.append(("see", device, j, along + rng.uniform(-2.0, 2.0), aside, 0.0, heading, 14.0))
        elif r < 0.08:  # a queue forms along a road, and is looked at
            line = rng.sample(DEVICES, 3)
            start = rng.choice((0.0, 20.0, -30.0))
            for i, d in enumerate(line):
                out.append(("place", d, j, start - 9.0 * i, aside, rng.uniform(-1.0, 1.0), heading, 0))
            out += [("queue_tail", line[-1]), ("around", line[-1]), ("around", line[0])]
        elif r < 0.3:
            out.append(("place", device, pick_junction(), signed(ALONG), signed(ASIDE), 0.0, heading, rng.randrange(5)))
        elif r < 0.8:
            speed = rng.choice((0.0, 4.9, 5.0, 14.0))
            out.append(("see", device, pick_junction(), signed(ALONG), signed(ASIDE), 0.0, heading, speed))
        elif r < 0.93:
            out.append((rng.choice(("lift", "around", "around", "around", "queue_tail")), device))
        elif r < 0.96:
            out.append(("standing", rng.sample(DEVICES, 4)))
        elif r < 0.99:
            out.append(rng.choice((("expire", 30.0), ("expire", 90.0), ("tick", 20.0), ("tick", 700.0))))
        else:
            out.append(("clear",))
    return out


@pytest.mark.parametrize("native", [True, False], ids=["C", "python"])
def test_long_random_sequences_reach_every_rule_and_agree(native: bool) -> None:
    rng = random.Random(20261123)
    reached: Counter[str] = Counter()
    for _ in range(40):
        reached += run(random_ops(rng, 300), native)
    # the sequences are only worth their name if the rules answered yes often enough
    for rule in ("passers", "queued", "usual", "queue_tail", "behind", "passed", "usual_at_start"):
        assert reached[rule] >= 10, (rule, reached)


@pytest.mark.parametrize("native", [True, False], ids=["C", "python"])
@settings(max_examples=300, deadline=None)
@given(sequence=ops)
def test_the_same_answers_and_state_as_the_reference(native: bool, sequence: list[tuple[Any, ...]]) -> None:
    run(sequence, native)


def queue_at_a_junction() -> list[tuple[Any, ...]]:
    """A red light: a queue forms eastbound, cross traffic stops, then the queue drives past a stall."""
    out: list[tuple[Any, ...]] = []
    for i, d in enumerate(DEVICES[:4]):
        out.append(("place", d, 0, -8.0 * i, 0.0, 0.0, 90.0, 0))
    out.append(("place", DEVICES[4], 0, 6.0, 3.0, 0.0, 0.0, 0))  # the cross road
    out.append(("place", DEVICES[5], 0, -4.0, -3.0, 0.0, 180.0, 0))
    for d in DEVICES[:4]:
        out.append(("place", d, 0, -8.0 * DEVICES.index(d) + 2.0, 0.0, 0.0, 90.0, 1))  # centroid settles
        out.append(("around", d))
        out.append(("queue_tail", d))
    out.append(("place", DEVICES[6], 0, 20.0, 0.0, 0.0, 90.0, 0))  # a stall ahead of the line
    for along in (-90.0, -40.0, -10.0, 10.0, 40.0, 80.0):
        for d in DEVICES[7:]:
            out.append(("see", d, 0, along, 3.5, 0.0, 90.0, 14.0))
    out += [("around", DEVICES[6]), ("standing", list(DEVICES)), ("expire", 5.0), ("around", DEVICES[6])]
    return out


@pytest.mark.parametrize("native", [True, False], ids=["C", "python"])
def test_a_junction_scene_is_the_same_and_has_passers_queues_and_usual_stops(native: bool) -> None:
    sequence = queue_at_a_junction()
    run(sequence, native)
    s = spots.Spots(native=native)
    run_into(s, sequence[:-2])  # before the expiry
    stall = s.around(DEVICES[6])
    assert stall is not None and stall.passers == 3  # the scene reaches the branches it should test
    assert any((a := s.around(d)) is not None and a.queued for d in DEVICES[:4])
    assert any((a := s.around(d)) is not None and a.usual for d in DEVICES[:6])


def run_into(s: spots.Spots, sequence: list[tuple[Any, ...]]) -> None:
    now = T0
    starts = {d: [T0] for d in DEVICES}
    for kind, *args in sequence:
        now += 3.0
        if kind == "place":
            device, j, along, aside, jit, heading, k = args
            if k == 0:
                starts[device].insert(0, now)
            s.place(device, *position(j, along + jit, aside, heading), heading, starts[device][k], now)
        elif kind == "see":
            device, j, along, aside, jit, heading, speed = args
            lat, lon = position(j, along + jit, aside, heading)
            if (cell := geo.cell(lat, lon, spots.CELL_RES)) in s.by_cell:
                s.see(cell, device, now, lat, lon, speed, heading)


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(-89.9, 89.9, allow_nan=False),
    st.floats(-180.0, 180.0, allow_nan=False),
    st.floats(0.0, 360.0, allow_nan=False),
)
def test_the_watched_cells_are_the_references_anywhere(lat: float, lon: float, heading: float) -> None:
    # the antimeridian, the poles' surroundings, every heading: the C trigonometry is CPython's
    from pipeline import _spots

    assert _spots.cells(lat, lon, heading) == spots._cells(lat, lon, heading) == ref._cells(lat, lon, heading)


@settings(max_examples=500, deadline=None)
@given(
    st.floats(-89.0, 89.0, allow_nan=False),
    st.floats(-179.0, 179.0, allow_nan=False),
    st.floats(0.0, 360.0, allow_nan=False),
    st.floats(-30.0, 30.0, allow_nan=False),
    st.floats(-30.0, 30.0, allow_nan=False),
)
def test_usual_around_the_25_m_circle_anywhere(lat: float, lon: float, heading: float, n: float, e: float) -> None:
    """Stops just inside and outside USUAL_M (the latitude band's margin) count as the reference's."""
    s, r = spots.Spots(), ref.Spots()
    k = 111_320.0 * max(0.05, math.cos(math.radians(lat)))
    for i, (dn, de) in enumerate(((n, e), (n * 0.8, e * 0.8), (-n, e), (n, -e))):
        for t in (s, r):
            t.place(f"o{i}", lat + dn / 111_320.0, lon + de / k, heading + 90.0 * (i % 2), T0 - 100.0 - i, T0)
    s.place("me", lat, lon, heading, T0, T0)
    r.place("me", lat, lon, heading, T0, T0)
    assert s.by_device["me"].usual == r.by_device["me"].usual
    assert spots.offset(s.by_device["me"], lat + n / 111_320.0, lon) == ref.offset(
        r.by_device["me"], lat + n / 111_320.0, lon
    )
