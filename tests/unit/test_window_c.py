"""The C count of a ping into its speed window (pipeline/_window.c) against ``CellSpeedWindow.add``.

The engine counts every ping through the C path; the Python method is the reference
(and the raw baseline's aggregate). Both run the same operations on copies of one
window, with readings in between (the merged closed buckets a late ping also goes into),
and must leave identical state: buckets, histograms, device sets, dedupe entries (types
included: an int timestamp stays an int), the ``added`` count and the merge cache.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import _window
from pipeline.speed import BUCKET_S, SEQ_WINDOW, WINDOW_S, CellSpeedWindow, add_pings

NOW = 1_700_000_000.0

numbers = st.one_of(
    st.floats(min_value=0, max_value=90, allow_nan=False),
    st.integers(min_value=0, max_value=90),
    st.sampled_from([0.0, 0.49, 0.5, 89.99, 90.0, 45.0, 22.5, 22.499999999999996, 337.5, 359.99, 360.0]),
)
headings = st.one_of(st.floats(min_value=0, max_value=360, allow_nan=False), st.integers(0, 360), numbers)
offsets = st.one_of(  # ts relative to now: late, in the window, future, just over
    st.floats(min_value=-WINDOW_S - 2 * BUCKET_S, max_value=120, allow_nan=False),
    st.sampled_from([-WINDOW_S, -WINDOW_S + 1e-6, 0.0, -BUCKET_S, -2 * BUCKET_S]),
)
seqs = st.one_of(
    st.integers(0, 40),
    st.integers(0, 3 * SEQ_WINDOW),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, -(2**63), -1]),  # what orjson gives: ints within 64 bits
)
op = st.tuples(
    st.sampled_from(["a", "b", "c", "d"]),
    seqs,
    offsets,
    st.booleans(),  # an int timestamp
    numbers,
    headings,
    st.floats(min_value=0, max_value=400),  # how far the clock moved since the start
    st.booleans(),  # a reading (stats) before this ping: builds the merge cache
)


def _state(w: CellSpeedWindow) -> tuple[Any, ...]:
    closed = w._closed
    merged = None if closed is None else (closed[0], closed[1], {s: (b.n, b.total, b.hist, b.devices)
                                                              for s, b in closed[2].items()})
    return w.to_bytes(), w.added, merged, {d: (type(e.last_seen), type(e.hwm)) for d, e in w.seen.items()}


@settings(max_examples=400, deadline=None)
@given(st.lists(op, min_size=1, max_size=60))
def test_c_add_leaves_the_state_python_add_leaves(ops: list[tuple[Any, ...]]) -> None:
    py, c = CellSpeedWindow(), CellSpeedWindow()
    for dev, seq, off, int_ts, speed, heading, moved, read in ops:
        now = NOW + moved
        ts: float = math.floor(now + off) if int_ts else now + off
        if read:
            assert py.stats(now) == c.stats(now)
        got_py = py.add(dev, seq, ts, speed, heading, now)
        got_c = _window.add(c, dev, seq, ts, speed, heading, now)
        assert got_c == got_py
        assert _state(c) == _state(py)
    assert py.stats(NOW + 400) == c.stats(NOW + 400)


def test_odd_values_take_the_python_rules_not_an_approximation() -> None:
    """NaN, infinities and ints past 2**53 are not the C fast path's: Python decides (and raises)."""
    for args in [(float("nan"), 5.0, 0.0), (NOW, float("inf"), 0.0), (NOW, 5.0, float("nan"))]:
        py, c = CellSpeedWindow(), CellSpeedWindow()
        with pytest.raises(Exception) as e_py:
            py.add("a", 1, args[0], args[1], args[2], NOW)
        with pytest.raises(type(e_py.value)):
            _window.add(c, "a", 1, args[0], args[1], args[2], NOW)
    py, c = CellSpeedWindow(), CellSpeedWindow()
    huge = 2**60 * 3  # a future ts as an exact int: kept exact, not rounded through a double
    assert py.add("a", 1, huge, 5, 10, NOW) == _window.add(c, "a", 1, huge, 5, 10, NOW)
    assert _state(py) == _state(c)


def _reference_add_pings(
    pings: list[dict[str, Any]],
    windows: dict[str, CellSpeedWindow],
    make: Callable[[], CellSpeedWindow],
    now: float,
    touched: set[str],
    wake: set[str],
) -> int:
    """The engine's loop before the C one (pipeline/engine.py, on_pings)."""
    duplicates = 0
    for p in pings:
        if p.get("state") != "parked":
            c9 = p["cell"]
            window = windows.get(c9) or make()
            if window.add(p["device_id"], p["seq"], p["ts"], p["speed_mps"], p["heading_deg"], now):
                windows[c9] = window
                touched.add(c9)
                if window.added >= window.wake_at:
                    wake.add(c9)
            else:
                duplicates += 1
    return duplicates


ping = st.fixed_dictionaries(
    {
        "cell": st.sampled_from(["891f1d48a3bffff", "891f1d48a37ffff", "891f1d48a33ffff"]),
        "device_id": st.sampled_from(["a", "b", "c"]),
        "seq": st.integers(0, 30),
        "ts": st.floats(min_value=NOW - WINDOW_S - 30, max_value=NOW + 10),
        "speed_mps": numbers,
        "heading_deg": headings,
    },
    optional={"state": st.sampled_from(["parked", "driving", "navigating", None])},
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(ping, max_size=12), min_size=1, max_size=6), st.integers(0, 4))
def test_add_pings_counts_a_record_as_the_engine_loop_did(records: list[list[dict[str, Any]]], wake_at: int) -> None:
    ref: dict[str, CellSpeedWindow] = {}
    got: dict[str, CellSpeedWindow] = {}
    ref_touched: set[str] = set()
    ref_wake: set[str] = set()
    touched: set[str] = set()
    wake: set[str] = set()
    loads: list[tuple[str, int]] = []

    def make() -> CellSpeedWindow:
        w = CellSpeedWindow()
        w.wake_at = wake_at
        return w

    def load(cell: str, partition: int) -> CellSpeedWindow:
        loads.append((cell, partition))
        return make()

    for rec in records:
        for w in ref.values():
            w.wake_at = wake_at
        for w in got.values():
            w.wake_at = wake_at
        want = _reference_add_pings(copy.deepcopy(rec), ref, make, NOW, ref_touched, ref_wake)
        assert add_pings(copy.deepcopy(rec), got, load, 3, NOW, touched, wake) == want
    assert {c: _state(w) for c, w in got.items()} == {c: _state(w) for c, w in ref.items()}
    assert touched == ref_touched
    assert wake == ref_wake
    assert all(part == 3 for _, part in loads)


def test_add_pings_refuses_what_is_not_a_record() -> None:
    with pytest.raises(TypeError):
        add_pings((), {}, lambda c, p: CellSpeedWindow(), 0, NOW, set(), set())  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        add_pings([{"cell": "x"}], {}, lambda c, p: CellSpeedWindow(), 0, NOW, set(), set())
