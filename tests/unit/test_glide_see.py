"""The movers' glide sees a watched cell's pings itself (pipeline/_movers.c calling _spots.c's see).

``Spots.see`` adds to the passer sets that later pings' decisions read, so it must run once per
watched ping, in the order the engine's loop ran it: before that ping glides, after the pings
before it, before Python handles the pings after it. These hold the native engine (fed dicts and
PingBatches) to ``Engine(native=False)`` see for see, and ``Store.glide(..., see=True)`` to the
two calls it replaces (``spots.see``, then the glide as if nobody watched).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import _movers, geo, pings
from pipeline._records import PingBatch
from pipeline.detect import motion, spots
from pipeline.detect.spots import Spots
from pipeline.detect.stall import StallState
from pipeline.engine import Engine, Tables
from tests.unit.test_movers import Counting, _fields, _partition, _published, _state, _traffic
from tests.unit.test_pingbatch import _raw

T0 = 1_700_000_000.0
LAT, LON = 52.5200, 13.4050
EAST = 90.0


class Looked(set[str]):
    """A spot's passers and behind, counting the looks into them: a see that reaches a spot looks at least once."""

    looks = 0
    fail_after: int | None = None  # raise at that look (an error inside see)

    def __contains__(self, device: object) -> bool:
        Looked.looks += 1
        if Looked.fail_after is not None and Looked.looks > Looked.fail_after:
            raise RuntimeError("planted")
        return super().__contains__(device)


@pytest.fixture(autouse=True)
def _looked(monkeypatch: pytest.MonkeyPatch) -> None:
    # spots.place makes a new spot's passers with the module's `set`
    monkeypatch.setattr(spots, "set", Looked, raising=False)
    monkeypatch.setattr(Looked, "looks", 0)
    monkeypatch.setattr(Looked, "fail_after", None)


@pytest.mark.parametrize("feed", ["dicts", "batches"])
@pytest.mark.parametrize("seed", [5, 6])
def test_the_native_engine_sees_each_watched_ping_once_as_the_python_one(seed: int, feed: str) -> None:
    """Per record the same sees (count), outputs and tables; the same passers and state all along."""
    c_tables, py_tables = Tables.in_memory(), Tables.in_memory()
    c_eng, py_eng = Engine(c_tables), Engine(py_tables, native=False)
    assert c_eng.movers is not None
    counting = Counting(c_eng.movers)
    c_eng.movers = counting  # type: ignore[assignment]
    looks = 0
    for n, (now, batch) in enumerate(_traffic(seed)):
        part = _partition(geo.parent(batch[0]["cell"], 7))
        fed: list[dict[str, Any]] | PingBatch = copy.deepcopy(batch)
        if feed == "batches":
            raw = _raw(batch, now)
            got = pings.decode_batch(raw)[2]
            assert isinstance(got, PingBatch)
            fed, batch = got, pings.decode_record(raw)[2]
        before = Looked.looks
        a = c_eng.on_pings(fed, part, now)
        mid = Looked.looks
        b = py_eng.on_pings(copy.deepcopy(batch), part, now)
        assert mid - before == Looked.looks - mid, n  # see for see
        looks += mid - before
        assert _published(a) == _published(b)
        assert c_eng.flush(part, now) >= 0 and py_eng.flush(part, now) >= 0
        assert vars(c_tables) == vars(py_tables)
        if n % 4 == 0:
            assert _published(c_eng.tick(now)) == _published(py_eng.tick(now))
            assert _state(c_eng) == _state(py_eng)  # the spots' passers and behind among them
    assert _state(c_eng) == _state(py_eng)
    assert looks > 1000
    assert any(s.passers for s in py_eng.spots.by_device.values()) or py_eng.stalled
    assert counting.seen_taken > 500 and counting.seen_run >= 3 and counting.seen_refused > 100


# -- the Store on its own ------------------------------------------------------------------------

_NOBODY: dict[str, Any] = {}


def _world(devices: int) -> tuple[Spots, _movers.Store, dict[str, str]]:
    """A device standing at (LAT, LON) facing east and ``devices`` others stored, moving east behind it."""
    sp = Spots()
    sp.place("s", LAT, LON, EAST, T0 - 100.0, T0)
    store = _movers.Store()
    for k in range(devices):
        lat, lon = geo.destination(LAT, LON, EAST + 180.0, 150.0)
        first = {
            "device_id": f"m{k}",
            "seq": 0,
            "ts": T0,
            "lat": lat,
            "lon": lon,
            "speed_mps": 10.0,
            "heading_deg": EAST,
        }
        assert store.put(f"m{k}", "k", f"k|m{k}", StallState(motion.seed(first, T0)), 0)
    return sp, store, {c: "k" for c in sp.by_cell}


def _ping(dev: str, seq: int, ts: float, along: float, speed: float, heading: float = EAST) -> dict[str, Any]:
    lat, lon = geo.destination(LAT, LON, EAST, along) if along >= 0 else geo.destination(LAT, LON, -EAST, -along)
    p = {"device_id": dev, "seq": seq, "ts": ts, "lat": lat, "lon": lon, "speed_mps": speed, "heading_deg": heading}
    return {**p, "accuracy_m": 5.0, "cell": geo.cell(lat, lon, spots.CELL_RES)}


def _as_the_loop(
    sp: Spots, store: _movers.Store, parents: dict[str, str], ps: list[dict[str, Any]], standing: dict[str, Any]
) -> list[int]:
    """The engine's loop before: the pings it handled in Python (the rest glided)."""
    left = []
    for i, p in enumerate(ps):
        if p["cell"] in sp.by_cell:
            sp.see(p["cell"], p["device_id"], p["ts"], p["lat"], p["lon"], p["speed_mps"], p["heading_deg"])
            taken = store.glide([p], 0, T0, parents, _NOBODY, standing)
        else:
            taken = store.glide([p], 0, T0, parents, sp.by_cell, standing)
        if not taken:
            left.append(i)
    return left


def _seeing(
    sp: Spots, store: _movers.Store, parents: dict[str, str], ps: list[dict[str, Any]], standing: dict[str, Any]
) -> list[int]:
    """The engine's loop now: the pings it handles in Python, seen unless the glide said it saw them."""
    left, i = [], 0
    while i < len(ps):
        got = store.glide(ps, i, T0, parents, sp.by_cell, standing, True)
        if got >= 0 and got == len(ps):
            break
        i = ~got if got < 0 else got
        p = ps[i]
        if got >= 0 and p["cell"] in sp.by_cell:
            sp.see(p["cell"], p["device_id"], p["ts"], p["lat"], p["lon"], p["speed_mps"], p["heading_deg"])
            store.glide([p], 0, T0, parents, _NOBODY, standing)
        left.append(i)
        i += 1
    return left


def _spot(sp: Spots) -> tuple[list[str], list[str]]:
    s = sp.by_device["s"]
    return sorted(s.passers), sorted(s.behind)


def _stored(store: _movers.Store) -> list[tuple[str, str]]:
    return sorted((k, _fields(v)) for k, v in store.items())


def test_watched_pings_seen_then_glided_or_left_seen() -> None:
    """Behind, past (a passer), then a hard brake: seen three times, the brake left to Python as ~2."""
    sp, store, parents = _world(1)
    ps = [_ping("m0", 1, T0 + 5, -40.0, 10.0), _ping("m0", 2, T0 + 10, 20.0, 12.0), _ping("m0", 3, T0 + 12, 40.0, 1.5)]
    assert all(p["cell"] in sp.by_cell for p in ps)
    assert store.glide(ps, 0, T0, parents, sp.by_cell, {}, True) == ~2
    assert _spot(sp) == (["m0"], ["m0"]) and Looked.looks == 4  # passers thrice, behind once (ahead)
    st = store.get("m0", "k")
    assert st is not None and st.motion.seq == 2  # the brake did not glide
    assert store.glide(ps, 0, T0, parents, sp.by_cell, {}) == 0  # without see: stops at a watched ping
    assert Looked.looks == 4


def test_a_watched_ping_the_store_cannot_read_is_left_unseen() -> None:
    """A dict number no struct holds (an int past 2**53): the loop sees it, as before."""
    sp, store, parents = _world(1)
    ps = [_ping("m0", 1, T0 + 5, -40.0, 10.0), {**_ping("m0", 2, T0 + 10, 20.0, 12.0), "ts": 2**53 + 1}]
    assert store.glide(ps, 0, T0, parents, sp.by_cell, {}, True) == 1
    assert Looked.looks == 1


def test_an_error_in_see_is_raised_before_its_ping_glides() -> None:
    sp, store, parents = _world(1)
    ps = [_ping("m0", 1, T0 + 5, -40.0, 10.0), _ping("m0", 2, T0 + 10, 20.0, 12.0)]
    Looked.fail_after = 1
    with pytest.raises(RuntimeError, match="planted"):
        store.glide(ps, 0, T0, parents, sp.by_cell, {}, True)
    st = store.get("m0", "k")
    assert st is not None and st.motion.seq == 1  # the first glided, the second not
    assert _spot(sp) == ([], ["m0"])


_steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # device
        st.floats(-160.0, 160.0),  # along the standing one's heading (metres)
        st.sampled_from([0.0, 0.5, 3.0, 6.0, 12.0, 30.0]),  # speed
        st.sampled_from([1.0, 5.0, 20.0, 70.0, 0.0]),  # since its last ping (s)
        st.sampled_from([EAST, EAST + 10.0, EAST + 180.0]),  # heading
    ),
    min_size=1,
    max_size=25,
)


def _both_loops(
    steps: list[tuple[int, float, float, float, float]], standing: bool = False, new_cell: bool = False
) -> list[Any]:
    """The same pings of three movers around a stop through the loop's see-then-glide and the seeing glide."""
    ps, clock = [], [T0] * 3
    for seq, (k, along, speed, dt, heading) in enumerate(steps, 1):
        clock[k] += dt
        ps.append(_ping(f"m{k}", seq, clock[k], along, speed, heading))
    results = []
    for loop in (_as_the_loop, _seeing):
        sp, store, parents = _world(3)
        if new_cell:
            parents.pop(ps[len(ps) // 2]["cell"], None)  # a cell whose key Python has not cached
        Looked.looks = 0
        left = loop(sp, store, parents, ps, {"m1": object()} if standing else {})
        results.append((left, _spot(sp), Looked.looks, _stored(store)))
    return results


@settings(max_examples=300, deadline=None)
@given(steps=_steps, standing=st.booleans(), new_cell=st.booleans())
def test_glide_with_see_is_the_loops_see_then_glide(
    steps: list[tuple[int, float, float, float, float]], standing: bool, new_cell: bool
) -> None:
    """Random pings of three movers around a stop: the same passers, looks, stored states and Python's pings."""
    results = _both_loops(steps, standing, new_cell)
    assert results[0] == results[1]


def test_many_records_keep_the_looks_equal_across_loops() -> None:
    """Seeded longer runs than hypothesis's: several watched pings in a row, refusals between."""
    rng = random.Random(11)
    for _ in range(40):
        steps = [
            (rng.randrange(3), rng.uniform(-160, 160), rng.choice([0.0, 3.0, 12.0]), rng.choice([1.0, 5.0]), EAST)
            for _ in range(60)
        ]
        results = _both_loops(steps)
        assert results[0] == results[1]
        assert len(results[0][0]) < len(steps)  # one ping a step: some were left to Python
