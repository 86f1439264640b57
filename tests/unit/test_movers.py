"""pipeline/_movers.c (moving devices as C structs) against the engine that keeps them in Python.

Two engines, native and ``Engine(native=False)``, take the same records of mixed traffic —
cruising, hard brakes, stops next to each other, parked phones, replays and reordered pings,
event-time gaps, int and float numbers, devices crossing res-7 keys, expiry sweeps, a
rebalance — and must publish the same, end in the same state (the store's entries
materialised, every field's value *and* type) and write the same rows to every table.
"""

from __future__ import annotations

import collections
import copy
import random
import sys
from dataclasses import astuple
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline import _movers, geo
from pipeline.detect import motion
from pipeline.detect.stall import StallState
from pipeline.engine import Engine, Output, Tables
from pipeline.pings import with_cells

T0 = 1_700_000_000.0
LAT, LON = 52.5200, 13.4050


class Counting:
    """The engine's store, counting the pings its C glide takes, and the watched ones it sees.

    ``seen_taken``: watched pings seen and glided in C, ``seen_run`` the most in a row of one call;
    ``seen_refused``: the calls that saw their last ping and left it to Python (returned ~i).
    """

    def __init__(self, store: _movers.Store) -> None:
        self.store, self.taken = store, 0
        self.seen_taken = self.seen_run = self.seen_refused = 0

    def glide(self, pings: list[Any], start: int, *rest: Any) -> int:
        i = self.store.glide(pings, start, *rest)
        end = ~i if i < 0 else i
        self.taken += end - start
        self.seen_refused += i < 0
        if len(rest) > 4 and rest[4]:  # see: the watched ones it took were seen first
            watched, run = rest[1], 0
            for j in range(start, end):
                run = run + 1 if pings[j]["cell"] in watched else 0
                self.seen_taken += run > 0
                self.seen_run = max(self.seen_run, run)
        return i

    def __len__(self) -> int:
        return len(self.store)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _ping(car: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    p: dict[str, Any] = {
        "device_id": car["dev"],
        "seq": car["seq"],
        "ts": int(car["ts"]) if rng.random() < 0.2 else car["ts"] + rng.uniform(-0.5, 0.0),
        "lat": round(car["lat"], 6),
        "lon": round(car["lon"], 6),
        "speed_mps": int(car["speed"]) if rng.random() < 0.2 else round(car["speed"], 2),
        "heading_deg": int(car["heading"]) if rng.random() < 0.2 else car["heading"],
        "accuracy_m": 5.0,
    }
    if car["speed"] == 0.0 and car["parks"] and rng.random() < 0.3:
        p["state"] = "parked"
    return p


def _traffic(seed: int, devices: int = 60, steps: int = 90) -> list[tuple[float, list[dict[str, Any]]]]:
    """(now, pings of one res-7 key) per record: devices on eight roads, each ping a random turn of its drive."""
    rng = random.Random(seed)
    roads = [(*geo.destination(LAT, LON, 36.0 * r, 400.0 * r), 90.0 * (r % 4)) for r in range(8)]
    cars = []
    for i in range(devices):
        lat, lon, heading = roads[i % len(roads)]
        lat, lon = geo.destination(lat, lon, heading, rng.uniform(0, 300))
        leaves = rng.randint(20, steps) if rng.random() < 0.3 else steps  # goes silent: expires
        cars.append(
            {
                "dev": f"d{i}",
                "lat": lat,
                "lon": lon,
                "heading": heading,
                "speed": 12.0,
                "seq": 0,
                "ts": T0,
                "leaves": leaves,
                "hold": 0,
                "parks": rng.random() < 0.2,
            }
        )
    cars.append(
        {
            "dev": "whole",
            "lat": 52.0,
            "lon": 13.0,
            "heading": 0.0,
            "speed": 0.0,
            "seq": 0,
            "ts": T0,
            "leaves": steps,
            "hold": 0,
            "parks": True,
        }
    )  # a phone at integer coordinates
    records: list[tuple[float, list[dict[str, Any]]]] = []
    late: list[dict[str, Any]] = []
    for step in range(steps):
        now = T0 + 5.0 * (step + 1)
        out, late = late, []
        for car in cars:
            if step >= car["leaves"] or rng.random() < 0.08:
                continue  # no ping this time
            turn = rng.random()
            if car["hold"] > 0:
                car["hold"] -= 1  # a long stop: stalled (if others pass) or parked
            elif turn < 0.02:
                car["speed"], car["hold"] = rng.choice([0.0, 0.5, 0.5, 0.5]), rng.randint(20, 40)
            elif turn < 0.04:
                car["speed"] = max(0.0, car["speed"] - rng.uniform(10.0, 20.0))  # hard brake (or a stop)
            elif turn < 0.06:
                car["speed"] = rng.choice([0.0, 0.3, 1.0])  # standing (1.0 is STILL_MPS itself)
            elif turn < 0.3 and car["speed"] <= 1.0:
                car["speed"] = 10.0  # moving on
            elif car["speed"] > 1.0:
                car["speed"] = max(1.5, car["speed"] + rng.uniform(-2.0, 2.0))
            gap = 5.0 if rng.random() > 0.02 else 70.0  # now and then a gap past motion.GAP_S
            car["ts"] += gap
            if car["speed"] > 0 and car["dev"] != "whole" and not car["hold"]:
                car["lat"], car["lon"] = geo.destination(car["lat"], car["lon"], car["heading"], car["speed"] * 5.0)
            car["seq"] += 1
            p = _ping(car, rng)
            r = rng.random()
            if r < 0.03:
                out.append(dict(p))  # a replay: same seq
            elif r < 0.06:
                late.append(p)  # arrives with the next step's records: reordered
                continue
            out.append(p)
        rng.shuffle(out)
        by_key: dict[str, list[dict[str, Any]]] = {}
        for p in with_cells(out):
            by_key.setdefault(geo.parent(p["cell"], 7), []).append(p)
        for pings in by_key.values():
            while pings:
                size = rng.randint(1, 25)
                records.append((now, pings[:size]))
                pings = pings[size:]
    return records


def _published(out: Output) -> list[tuple[bytes, Any]]:
    return [(k, orjson.loads(v) if v is not None else None) for k, v in out.alerts + out.conditions]


def _fields(s: StallState) -> str:
    return repr((astuple(s.motion), s.stall, s.alerted_since, s.parked_since))  # values and types


def _state(e: Engine) -> dict[str, Any]:
    devices = {k: _fields(v) for k, v in e.devices.values.items()}
    if e.movers is not None:
        held = dict(e.movers.items())
        assert not held.keys() & devices.keys(), "a device is in Python and in the store"
        devices.update({k: _fields(v) for k, v in held.items()})
    spots = {d: (s.lat, s.lon, s.since_ts, sorted(s.passers), sorted(s.behind)) for d, s in e.spots.by_device.items()}
    return {
        "devices": devices,
        "partitions": e.device_keys(),
        "stored": sorted(e.devices.stored),
        "stalled": sorted(e.stalled),
        "spots": spots,
        "pings": (e.pings, e.duplicates),
    }


def _partition(key7: str) -> int:
    return int(key7, 16) % 3


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_native_engine_publishes_stores_and_ends_as_the_python_one(seed: int) -> None:
    c_tables, py_tables = Tables.in_memory(), Tables.in_memory()
    c_eng, py_eng = Engine(c_tables), Engine(py_tables, native=False)
    assert c_eng.movers is not None
    counting = Counting(c_eng.movers)
    c_eng.movers = counting  # type: ignore[assignment]
    records = _traffic(seed)
    rng = random.Random(seed)
    steps = alerts = 0
    kinds: collections.Counter[str] = collections.Counter()
    for n, (now, batch) in enumerate(records):
        part = _partition(geo.parent(batch[0]["cell"], 7))
        a = c_eng.on_pings(copy.deepcopy(batch), part, now)
        b = py_eng.on_pings(copy.deepcopy(batch), part, now)
        assert _published(a) == _published(b)
        alerts += len(a.alerts)
        kinds.update(orjson.loads(v)["type"] + ":" + orjson.loads(v)["state"] for _, v in a.alerts)
        assert c_eng.flush(part, now) >= 0 and py_eng.flush(part, now) >= 0
        assert vars(c_tables) == vars(py_tables)
        if n % 5 == 0:
            assert _published(c_eng.tick(now)) == _published(py_eng.tick(now))
        if rng.random() < 0.01:  # a rebalance keeps every partition: re-adopting reads stale stops' rows
            for eng in (c_eng, py_eng):
                eng.forget_partitions([0, 1, 2])
                for p in range(3):
                    eng.adopt(p)
        steps += 1
    assert _state(c_eng) == _state(py_eng)
    assert py_eng.spots.history, "the traffic never stopped: the test would not reach the slow path"
    # everyone falls silent: the sweeps expire them (moving ones from the store), the flushes tombstone
    for _ in range(8):
        now += 100.0
        assert _published(c_eng.tick(now)) == _published(py_eng.tick(now))
        assert _state(c_eng) == _state(py_eng)
        for part in range(3):
            c_eng.flush(part, now)
            py_eng.flush(part, now)
        assert vars(c_tables) == vars(py_tables)
    assert not c_eng.device_keys() and len(counting) == 0
    # a rebalance drops the store's entries of lost partitions
    for now_, batch in records[:60]:
        part = _partition(geo.parent(batch[0]["cell"], 7))
        for eng in (c_eng, py_eng):
            eng.on_pings(copy.deepcopy(batch), part, now + now_ - T0)
    assert len(counting) > 0
    for eng in (c_eng, py_eng):
        eng.forget_partitions([1])
    assert _state(c_eng) == _state(py_eng)
    assert set(c_eng.device_keys().values()) <= {1}
    total = sum(len(b) for _, b in records)
    # both paths ran: many pings in C, the stops, brakes, seeds and replays in Python
    print("records", steps, "pings", total, "in C", counting.taken, "alerts", alerts, kinds)
    print("seen in C: glided", counting.seen_taken, "in a row", counting.seen_run, "refused", counting.seen_refused)
    assert 0.3 * total < counting.taken < 0.95 * total, (counting.taken, total)
    # watched pings seen in C: glided on, several in a row, and refused (the loop must not see them again)
    assert counting.seen_taken > 0.1 * total and counting.seen_run >= 3 and counting.seen_refused > 100


_numbers = st.one_of(
    st.floats(min_value=-5.0, max_value=70.0, allow_nan=False),
    st.integers(min_value=-5, max_value=70),
    st.sampled_from([motion.STILL_MPS, motion.GAP_S, motion.MAX_BRAKE_DT_S, 0.0, -0.0]),
)


@settings(max_examples=400, deadline=None)
@given(
    speed0=_numbers,
    speed=_numbers,
    dt=_numbers,
    int_ts=st.booleans(),
    decel_edge=st.booleans(),
    heading=st.one_of(st.integers(0, 360), st.floats(0.0, 360.0)),
)
@example(speed0=70.0, speed=2.0, dt=16, int_ts=False, decel_edge=False, heading=0)  # braking over > 15 s: glides
@example(speed0=70, speed=2, dt=15, int_ts=True, decel_edge=False, heading=0.0)  # over 15 s: a hard brake
def test_one_ping_as_motion_glide(
    speed0: float, speed: float, dt: float, int_ts: bool, decel_edge: bool, heading: float
) -> None:
    """The C refusals and updates are glide()'s, numbers at their thresholds and their types included."""
    if decel_edge and isinstance(dt, float) and dt > 0:
        speed = speed0 - motion.HARD_BRAKE_MPS2 * dt  # exactly the hard-brake boundary (as floats round)
    ts0 = 1_700_000_000 if int_ts else T0
    seed = {"device_id": "d", "seq": 1, "ts": ts0, "lat": LAT, "lon": LON, "speed_mps": speed0, "heading_deg": 10.0}
    p = {
        "device_id": "d",
        "seq": 2,
        "ts": ts0 + dt,
        "lat": LAT,
        "lon": 13,
        "speed_mps": speed,
        "heading_deg": heading,
        "cell": "c",
    }
    ref = motion.seed(seed, T0)
    ref.still_since = None  # glide's first refusal is a stop: tested with the engine
    store = _movers.Store()
    assert store.put("d", "k", "k|d", StallState(copy.copy(ref)), 0)
    now = T0 + 5 if int_ts else int(T0) + 5
    got = store.glide([p], 0, now, {"c": "k"}, {}, {})
    want = motion.glide(ref, p, now)
    assert got == int(want)
    back = store.take("d", "k")
    assert back is not None and _fields(back) == _fields(StallState(ref))


def test_leaves_to_python_every_ping_the_loop_must_see() -> None:
    """A watched cell, an uncached key, another key, a standing spot, a stop, odd numbers: refused, unchanged."""
    first = {"device_id": "d", "seq": 1, "ts": T0, "lat": LAT, "lon": LON, "speed_mps": 10.0, "heading_deg": 90.0}
    p = {**first, "seq": 2, "ts": T0 + 5, "lon": LON + 0.001, "cell": "c"}

    def run(ping: dict[str, Any] = p, still: float | None = None, **over: Any) -> tuple[int, StallState | None]:
        store = _movers.Store()
        st = StallState(motion.seed(first, T0))
        st.motion.still_since = still
        assert store.put("d", "k", "k|d", st, 0)
        args: dict[str, Any] = {"parents": {"c": "k"}, "watched": {}, "standing": {}, **over}
        got = store.glide([ping], 0, T0 + 5, args["parents"], args["watched"], args["standing"])
        return got, store.take("d", "k")

    got, st = run()
    assert got == 1 and st is not None and st.motion.seq == 2  # the usual ping: taken
    for ping, still, over in (
        (p, None, {"watched": {"c": {}}}),
        (p, None, {"parents": {}}),
        (p, None, {"parents": {"c": "k2"}}),  # its key has no state of it
        (p, None, {"standing": {"d": object()}}),
        (p, T0, {}),  # standing still
        ({**p, "seq": 2**63}, None, {}),  # not an int64
        ({**p, "ts": 2**53 + 1}, None, {}),  # not exact as a double
        ({**p, "speed_mps": True}, None, {}),  # a bool is not a number here
        ({**p, "device_id": 7}, None, {}),
    ):
        got, st = run(ping, still, **over)
        assert got == 0 and st is not None, (ping, over)
        want = StallState(motion.seed(first, T0))
        want.motion.still_since = still
        assert _fields(st) == _fields(want), over


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(allow_nan=False), st.integers(-(2**53) + 1, 2**53 - 1)), min_size=14, max_size=14
    ),
    nones=st.lists(st.booleans(), min_size=5, max_size=5),
    seq=st.integers(0, 2**63 - 1),
)
def test_put_then_take_gives_the_state_back_bit_for_bit(values: list[float], nones: list[bool], seq: int) -> None:
    ts, lat, lon, speed, heading, seen, still, slat, slon, told, brake, decel, alerted, parked = values
    opt = [None if n else v for n, v in zip(nones, (still, told, brake, alerted, parked), strict=True)]
    m = motion.MotionTracker(
        "dev", seq, ts, lat, lon, speed, heading, seen, opt[0], slat, slon, 3, opt[1], opt[2], decel
    )
    s = StallState(m, None, opt[3], opt[4])
    store = _movers.Store()
    assert store.put("dev", "k", "k|dev", s, 2)
    assert store.keys() == {"k|dev": 2}
    got = store.take("dev", "k")
    assert got is not None and _fields(got) == _fields(s) and len(store) == 0


def test_what_does_not_fit_stays_in_python() -> None:
    m = motion.MotionTracker("dev", 1, T0, LAT, LON, 10.0, 0.0, T0)
    assert not _movers.Store().put("dev", "k", "k|dev", StallState(m, stall=object()), 0)  # type: ignore[arg-type]
    for field, v in (("ts", 2**53), ("seq", 2**64), ("still_n", 1.0), ("lat", "52")):
        odd = copy.copy(m)
        setattr(odd, field, v)
        assert not _movers.Store().put("dev", "k", "k|dev", StallState(odd), 0), field


def test_many_devices_grow_expire_and_release_their_strings() -> None:
    """Growth and removals keep every entry findable; expiry, take and clear release the store's references."""
    store = _movers.Store()
    devs = [f"dev-{i}-{'x' * (i % 3)}" for i in range(5000)]  # not interned: their own objects
    key = "k" + str(7)
    dkeys = [key + "|" + d for d in devs]
    base = [sys.getrefcount(d) for d in devs]
    base_keys = [sys.getrefcount(k) for k in dkeys]
    for i, d in enumerate(devs):
        m = motion.MotionTracker(d, 1, T0, LAT, LON, 10.0, 0.0, T0 + (i % 2) * 1000.0)
        assert store.put(d, key, dkeys[i], StallState(m), i % 3)
    del d, m  # the loop's own references
    assert len(store) == 5000
    assert [sys.getrefcount(d) for d in devs] == [b + 2 for b in base]  # the key's and the tracker's device
    gone = store.expire(T0 + 301.0)  # the even ones were last seen at T0
    assert sorted(gone) == sorted(dkeys[0::2])
    assert len(store) == 2500
    assert [sys.getrefcount(d) for d in devs] == [b + 2 * (i % 2) for i, b in enumerate(base)]
    for i, dev in enumerate(devs):
        assert (store.get(dev, key) is None) == (i % 2 == 0), i
    del dev
    assert sorted(store.forget({0, 1})) == sorted(k for i, k in enumerate(dkeys) if i % 2 and i % 3 == 2)
    st = store.take(devs[1], key)
    assert st is not None and st.motion.device is devs[1]
    del st
    store.clear()
    del gone
    assert [sys.getrefcount(d) for d in devs] == base
    assert [sys.getrefcount(k) for k in dkeys] == base_keys


def test_a_stored_stop_left_behind_is_tombstoned_and_not_adopted_again() -> None:
    """A stopped device is written; moving on takes it into the store, and its row still goes."""
    engines = [Engine(Tables.in_memory()), Engine(Tables.in_memory(), native=False)]
    key = ""
    for e in engines:
        now = T0
        for i in range(6):  # standing 25 s: a stop, written at the next due flush
            p = {
                "device_id": "v",
                "seq": i,
                "ts": now,
                "lat": LAT,
                "lon": LON,
                "speed_mps": 0.0,
                "heading_deg": 90.0,
                "accuracy_m": 5.0,
            }
            e.on_pings(with_cells([p]), 0, now)
            e.flush(0, now)
            now += 5.0
        key = next(iter(e.device_keys()))
        assert e.devices.table.read(0, key.encode()) is not None  # type: ignore[attr-defined]
        lat, lon = geo.destination(LAT, LON, 90.0, 60.0)
        p = {
            "device_id": "v",
            "seq": 9,
            "ts": now,
            "lat": lat,
            "lon": lon,
            "speed_mps": 12.0,
            "heading_deg": 90.0,
            "accuracy_m": 5.0,
        }
        e.on_pings(with_cells([p]), 0, now)  # moves on: nothing open
        e.adopt(0)  # a rebalance before the flush: the row is the stop it left
        assert e.device_keys() == {key: 0}
    native, python = engines
    assert native.movers is not None and len(native.movers) == 1 and not native.devices.values
    assert _state(native) == _state(python)
    for e in engines:
        e.flush(0, now + 5.0)
        assert e.devices.table.read(0, key.encode()) is None  # type: ignore[attr-defined]
    assert _state(native) == _state(python)
