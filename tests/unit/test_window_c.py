"""The native speed window (pipeline/_speedwin.c) against the Python reference (``ReferenceWindow``).

Both run the same random streams — replays, out-of-order and late pings, future-stamped ones,
seqs across the 256-seq window, int and float numbers, readings, expiry and restores at random
times — and must answer the same (return values, readings, ``could_reach``, ``added``, the
devices seen, the merge of the closed buckets) and write the same bytes (``to_bytes``: what
changelogs and restored state hold). Totals are compared bit for bit through those bytes.
"""

from __future__ import annotations

import copy
import gc
import math
import random
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import h3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import pings
from pipeline._records import PingBatch
from pipeline.speed import BUCKET_S, SEQ_WINDOW, WINDOW_S, CellSpeedWindow, ReferenceWindow, add_pings

NOW = 1_700_000_000.0
DEVICES = ["a", "b", "dev-7", 'q"\\/', "é-ü", "\x01\t\n", "😀x"]

numbers = st.one_of(
    st.floats(min_value=0, max_value=90, allow_nan=False),
    st.integers(min_value=0, max_value=90),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 0.49, 0.5, 89.99, 90.0, 45.0, 22.5, 22.499999999999996, 337.5, 359.99, 360.0,
                     1e-7, 2.5e-5, 1.5e-300, 5e-324, 0.1, 0.2, 1e15]),
)
headings = st.one_of(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), st.integers(-720, 720), numbers)
offsets = st.one_of(  # ts relative to now: late, in the window, future, just over
    st.floats(min_value=-WINDOW_S - 2 * BUCKET_S, max_value=400, allow_nan=False),
    st.sampled_from([-WINDOW_S, -WINDOW_S + 1e-6, 0.0, -BUCKET_S, -2 * BUCKET_S, 300.0]),
)
seqs = st.one_of(
    st.integers(0, 40),
    st.integers(0, 3 * SEQ_WINDOW),
    st.sampled_from([SEQ_WINDOW - 1, SEQ_WINDOW, SEQ_WINDOW + 1, 2 * SEQ_WINDOW, 2**53 - 1, 2**62, -5]),
)
clock = st.one_of(st.floats(min_value=-50, max_value=900), st.integers(0, 900))  # now - NOW (it may go back)
add_op = st.tuples(st.just("add"), st.integers(0, len(DEVICES) - 1), seqs, offsets, st.booleans(), numbers,
                   headings, clock)
op = st.one_of(
    add_op, add_op, add_op, add_op,
    st.tuples(st.just("stats"), clock),
    st.tuples(st.just("expire"), clock),
    st.tuples(st.just("reach"), st.integers(0, 8)),
    st.tuples(st.just("accept"), st.integers(0, len(DEVICES) - 1), seqs, clock),
    st.tuples(st.just("restore")),
)


def _dev(i: int) -> str:
    return "".join(list(DEVICES[i]))  # a new str each time (equal, not identical): the sets compare contents


def _closed(w: ReferenceWindow) -> Any:
    c = w._closed
    return None if c is None else (c[0], c[1], {s: (b.n, b.total, b.hist, b.devices) for s, b in c[2].items()})


def _same(c: CellSpeedWindow, py: ReferenceWindow) -> None:
    assert c.to_bytes() == py.to_bytes()
    assert c.added == py.added
    assert len(c.seen) == len(py.seen) and list(c.seen) == list(py.seen)
    assert c.is_empty() == py.is_empty()
    assert c._closed_state() == _closed(py)


def _when(moved: float) -> float:
    return NOW + moved if isinstance(moved, float) else int(NOW) + moved  # an int now: int last_seen


@settings(max_examples=300, deadline=None)
@given(st.lists(op, min_size=1, max_size=70))
def test_native_window_answers_and_writes_what_the_reference_does(ops: list[tuple[Any, ...]]) -> None:
    c, py = CellSpeedWindow(), ReferenceWindow()
    for o in ops:
        kind = o[0]
        if kind == "add":
            _, d, seq, off, int_ts, speed, heading, moved = o
            now = _when(moved)
            ts: float = math.floor(now + off) if int_ts else now + off
            dev = _dev(d)
            assert c.add(dev, seq, ts, speed, heading, now) == py.add(_dev(d), seq, ts, speed, heading, now)
        elif kind == "stats":
            assert c.stats(_when(o[1])) == py.stats(_when(o[1]))
        elif kind == "expire":
            assert c.expire(_when(o[1])) == py.expire(_when(o[1]))
        elif kind == "reach":
            assert c.could_reach(o[1]) == py.could_reach(o[1])
        elif kind == "accept":
            assert c.accept(_dev(o[1]), o[2], _when(o[3])) == py.accept(_dev(o[1]), o[2], _when(o[3]))
        else:  # a restart: both restored from the bytes
            raw = c.to_bytes()
            c, py = CellSpeedWindow.from_bytes(raw), ReferenceWindow.from_bytes(raw)
            assert c.to_bytes() == raw
        _same(c, py)
    for dev in py.seen:
        assert c.seen[dev] == py.seen[dev]
    assert c.buckets == py.buckets
    assert c.stats(NOW + 400) == py.stats(NOW + 400)


def test_odd_values_raise_what_the_reference_raises() -> None:
    for ts, speed, heading in [(float("nan"), 5.0, 0.0), (NOW, float("inf"), 0.0), (NOW, 5.0, float("nan")),
                               (float("inf"), 5.0, 0.0), (NOW, float("nan"), float("inf"))]:
        py, c = ReferenceWindow(), CellSpeedWindow()
        with pytest.raises(Exception) as e_py:
            py.add("a", 1, ts, speed, heading, NOW)
        with pytest.raises(type(e_py.value)):
            c.add("a", 1, ts, speed, heading, NOW)
        assert list(c.seen) == list(py.seen)  # the dedupe recorded it, as the reference's did
    c = CellSpeedWindow()
    assert not c.add("a", 1, float("-inf"), float("nan"), 0.0, NOW)  # over before anything is read
    with pytest.raises(OverflowError):  # past what ingest lets through: refused, not rounded
        c.add("a", 1, 2**60, 5.0, 0.0, NOW)
    with pytest.raises(TypeError):
        c.add(b"a", 1, NOW, 5.0, 0.0, NOW)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CellSpeedWindow(buckets={})  # type: ignore[call-arg]


def test_restoring_reads_the_reference_bytes_and_keeps_counting_the_same() -> None:
    py = ReferenceWindow()
    for i in range(400):
        py.add(f"d{i % 13}", i, NOW - i % 290 + 0.25, (i * 7 % 61) / 3, i * 37 % 360, NOW)
    raw = py.to_bytes()
    c = CellSpeedWindow.from_bytes(raw)
    assert c.to_bytes() == raw and c.stats(NOW) == py.stats(NOW)
    assert not any(c.add(f"d{i % 13}", i, NOW - i % 290 + 0.25, 1.0, 0.0, NOW) for i in range(400))  # replays
    assert c.add("d1", 400, NOW, 3.0, 0.0, NOW) and py.add("d1", 400, NOW, 3.0, 0.0, NOW)
    assert c.to_bytes() == py.to_bytes()


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


def _reference_add_pings(
    pings: list[dict[str, Any]],
    windows: dict[str, ReferenceWindow],
    make: Callable[[], ReferenceWindow],
    now: float,
    touched: set[str],
    wake: set[str],
) -> int:
    """The engine's loop before the C one (pipeline/engine.py, on_pings), a new cell's window made fresh."""
    return _reference_count(pings, windows, lambda _cell, _partition: make(), now, touched, wake)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(ping, max_size=12), min_size=1, max_size=6), st.integers(0, 4))
def test_add_pings_counts_a_record_as_the_engine_loop_did(records: list[list[dict[str, Any]]], wake_at: int) -> None:
    ref: dict[str, ReferenceWindow] = {}
    got: dict[str, CellSpeedWindow] = {}
    ref_touched: set[str] = set()
    ref_wake: set[str] = set()
    touched: set[str] = set()
    wake: set[str] = set()
    loads: list[tuple[str, int]] = []

    def make() -> ReferenceWindow:
        w = ReferenceWindow()
        w.wake_at = wake_at
        return w

    def load(cell: str, partition: int) -> CellSpeedWindow:
        loads.append((cell, partition))
        w = CellSpeedWindow()
        w.wake_at = wake_at
        return w

    for rec in records:
        for w in ref.values():
            w.wake_at = wake_at
        for c in got.values():
            c.wake_at = wake_at
        want = _reference_add_pings(copy.deepcopy(rec), ref, make, NOW, ref_touched, ref_wake)
        assert add_pings(copy.deepcopy(rec), got, load, 3, NOW, touched, wake) == want
    assert got.keys() == ref.keys()
    for cell, w in ref.items():
        _same(got[cell], w)
    assert touched == ref_touched
    assert wake == ref_wake
    assert all(part == 3 for _, part in loads)


def test_add_pings_refuses_what_is_not_a_record() -> None:
    with pytest.raises(TypeError):
        add_pings((), {}, lambda c, p: CellSpeedWindow(), 0, NOW, set(), set())  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        add_pings([{"cell": "x"}], {}, lambda c, p: CellSpeedWindow(), 0, NOW, set(), set())
    p = {"cell": "x", "device_id": "a", "seq": 1, "ts": NOW, "speed_mps": 1.0, "heading_deg": 0.0}
    with pytest.raises(TypeError):  # the Python reference is not what the worker keeps
        add_pings([p], {}, lambda c, p: ReferenceWindow(), 0, NOW, set(), set())  # type: ignore[arg-type,return-value]


# -- references and memory ----------------------------------------------------------------
def _busy(dev: str, rounds: int) -> CellSpeedWindow:
    w = CellSpeedWindow()
    for i in range(rounds):
        w.add(dev, i, NOW - i % 280, 10.0 + i % 9, i * 45 % 360, NOW)
        w.add("".join(["other", str(i % 50)]), i, NOW - i % 280, 5.0, 180.0, NOW)
    return w


def test_a_window_holds_its_devices_while_it_needs_them_and_lets_go() -> None:
    dev = "".join(["refcounted-", "device"])
    before = sys.getrefcount(dev)
    w = _busy(dev, 300)
    assert sys.getrefcount(dev) > before  # the dedupe entry and the buckets' sets hold it
    w.stats(NOW)
    w2 = CellSpeedWindow.from_bytes(w.to_bytes())  # restored: its own strs
    w.expire(NOW + 3600)  # every bucket dropped and every device swept
    assert w.is_empty() and sys.getrefcount(dev) == before
    _busy(dev, 50)  # dropped with everything in it
    assert sys.getrefcount(dev) == before
    assert w2.stats(NOW) and not w2.is_empty()


def test_many_windows_leave_no_memory_behind() -> None:
    def rounds(n: int) -> None:
        for r in range(n):
            w = _busy(f"d{r}", 200)
            w.stats(NOW)
            w.add("late", 1, NOW - 200, 3.0, 0.0, NOW)  # into the merge too
            w2 = CellSpeedWindow.from_bytes(w.to_bytes())
            w2.expire(NOW + 200)
            w2.expire(NOW + 3600)
            assert len(list(w.seen)) == len(w.seen) and w.buckets

    rounds(20)  # warm: allocator pools, interned ints
    gc.collect()
    tracemalloc.start()
    try:
        rounds(5)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        rounds(100)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 20_000, grown  # a leak of one device str per round would be ~5 kB... per 100: far more


@pytest.mark.parametrize("window", [CellSpeedWindow, ReferenceWindow])
def test_boundaries_of_the_seq_window_and_of_expiry(window: type[CellSpeedWindow]) -> None:
    w = window()
    assert w.add("a", 0, NOW, 1.0, 0.0, NOW) and w.add("a", SEQ_WINDOW - 1, NOW, 1.0, 0.0, NOW)
    assert not w.add("a", 0, NOW, 1.0, 0.0, NOW)  # 255 below the hwm: still known
    assert w.add("a", 2 * SEQ_WINDOW - 1, NOW, 1.0, 0.0, NOW)
    assert not w.add("a", SEQ_WINDOW - 1, NOW, 1.0, 0.0, NOW) and not w.add("a", SEQ_WINDOW - 2, NOW, 1.0, 0.0, NOW)
    assert w.add("a", 2 * SEQ_WINDOW - 2, NOW, 1.0, 0.0, NOW)
    start = NOW // BUCKET_S * BUCKET_S
    w.expire(start + BUCKET_S + WINDOW_S + BUCKET_S - 0.5)  # the bucket is not over yet; sweeps: all seen at NOW
    assert len(w.buckets) == 1 and len(w.seen) == 1
    assert w.expire(NOW + 360.0 + 60.0) and len(w.seen) == 0  # one sweep later, past the 360-s TTL
    w = window()
    w.add("b", 1, NOW, 1.0, 0.0, NOW)
    w.expire(NOW + 360.0)  # exactly the TTL: kept
    assert len(w.seen) == 1


# -- a record as the worker counts it: a PingBatch, its windows looked up and fetched ahead --------
# the centre of a res-9 cell and of its six neighbours: pings of a few cells, interleaved or in runs
_HOME = "891f1d48a3bffff"
_SPOTS = [h3.cell_to_latlng(c) for c in h3.grid_disk(_HOME, 1)]


def _plain(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi).map(lambda x: round(x, 7))  # what the fast decode takes (no 1e-300)


batch_ping = st.fixed_dictionaries(
    {
        "device_id": st.sampled_from(["a", "b", "c", "dev-7", "x"]),
        "seq": st.one_of(st.integers(0, 40), st.sampled_from([SEQ_WINDOW - 1, SEQ_WINDOW, 300, 2**53 - 1])),
        "ts": st.one_of(_plain(-WINDOW_S - 60, 60), st.integers(-WINDOW_S - 60, 60)),  # from NOW
        "at": st.integers(0, len(_SPOTS) - 1),
        "speed_mps": st.one_of(_plain(0, 90), st.integers(0, 90)),
        "heading_deg": st.one_of(_plain(0, 359.9), st.integers(0, 359)),
    },
    optional={"state": st.sampled_from(["parked", "driving", "stopped"])},
)


def _record(drawn: list[dict[str, Any]]) -> bytes:
    items = []
    for d in drawn:
        p = {k: v for k, v in d.items() if k != "at"}
        p["ts"] = NOW + d["ts"] if isinstance(d["ts"], float) else int(NOW) + d["ts"]
        p["lat"], p["lon"] = _SPOTS[d["at"]]
        p["accuracy_m"] = 5.0
        items.append(p)
    return pings.encode_record(_HOME, items, NOW)


class _Load:
    """``load(cell, partition)`` as the engine's may behave, the same on both sides (the same seeded
    choices, call after call): a new window; or one restored from the "table" that it also puts in
    ``windows`` itself (PartitionedState.get does); it may first evict another cell's window (kept
    alive here: a count into it would show), or raise."""

    def __init__(self, cls: Any, windows: dict[str, Any], seed: int, wake_at: int) -> None:
        self.cls, self.windows, self.rng, self.wake_at = cls, windows, random.Random(seed), wake_at
        self.calls: list[tuple[str, int]] = []
        self.table: dict[str, bytes] = {}
        self.evicted: list[Any] = []

    def __call__(self, cell: str, partition: int) -> Any:
        self.calls.append((cell, partition))
        roll = self.rng.random()
        if roll < 0.05:
            raise RuntimeError("the table is down")
        if roll < 0.4 and self.windows:
            gone = sorted(self.windows)[self.rng.randrange(len(self.windows))]
            self.evicted.append(self.windows[gone])
            self.table[gone] = self.windows.pop(gone).to_bytes()
        raw = self.table.get(cell)
        w = self.cls() if raw is None else self.cls.from_bytes(raw)
        w.wake_at = self.wake_at
        if raw is not None and roll < 0.7:
            self.windows[cell] = w
        return w


def _reference_count(pings_: list[dict[str, Any]], windows: dict[str, Any], load: Callable[[str, int], Any], now: float,
                     touched: set[str], wake: set[str]) -> int:
    """The engine's loop before the C one, with its load call (pipeline/engine.py, on_pings)."""
    duplicates = 0
    for p in pings_:
        if p.get("state") != "parked":
            c9 = p["cell"]
            window = windows.get(c9) or load(c9, 3)
            if window.add(p["device_id"], p["seq"], p["ts"], p["speed_mps"], p["heading_deg"], now):
                windows[c9] = window
                touched.add(c9)
                if window.added >= window.wake_at:
                    wake.add(c9)
            else:
                duplicates += 1
    return duplicates


def _outcome(count: Callable[..., int], *args: Any) -> Any:
    try:
        return count(*args)
    except RuntimeError as exc:
        return str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.lists(batch_ping, min_size=1, max_size=40), st.sampled_from([0.0, 30.0, 200.0, 400.0]),
                       st.booleans()), min_size=1, max_size=5),
    st.integers(0, 4),
    st.integers(0, 2**32),
)
def test_add_pings_counts_a_batch_as_the_engine_loop_did(
    records: list[tuple[list[dict[str, Any]], float, bool]], wake_at: int, seed: int
) -> None:
    """Runs of one cell, cells interleaved, dupes inside a record, replayed records, windows over; a
    load that evicts, restores, puts in the dict or raises: the same counts, windows, sets (in the
    same order), load calls and errors as the Python loop over the same pings."""
    ref: dict[str, ReferenceWindow] = {}
    got: dict[str, CellSpeedWindow] = {}
    ref_load, load = _Load(ReferenceWindow, ref, seed, wake_at), _Load(CellSpeedWindow, got, seed, wake_at)
    ref_touched: set[str] = set()
    ref_wake: set[str] = set()
    touched: set[str] = set()
    wake: set[str] = set()
    for drawn, moved, replay in records:
        raw = _record(drawn)
        for _ in range(2 if replay else 1):
            for w in [*ref.values(), *ref_load.evicted]:
                w.wake_at = wake_at
            for c in [*got.values(), *load.evicted]:
                c.wake_at = wake_at
            batch = pings.decode_batch(raw)[2]
            assert isinstance(batch, PingBatch)
            dicts = pings.decode_record(raw)[2]
            now = NOW + moved
            want = _outcome(_reference_count, dicts, ref, ref_load, now, ref_touched, ref_wake)
            assert _outcome(add_pings, batch, got, load, 3, now, touched, wake) == want
            assert load.calls == ref_load.calls
            assert list(got) == list(ref)
            for cell, w in ref.items():
                _same(got[cell], w)
            for c, w in zip(load.evicted, ref_load.evicted, strict=True):
                _same(c, w)
            assert list(touched) == list(ref_touched) and list(wake) == list(ref_wake)


def test_add_pings_counts_long_runs_of_one_cell_and_a_new_cell_a_ping() -> None:
    """Seeded: records of one cell, of every cell in turn, of a few at random, each also replayed."""
    rng = random.Random(11)
    for layout in ("one cell", "in turn", "random"):
        ref: dict[str, ReferenceWindow] = {}
        got: dict[str, CellSpeedWindow] = {}
        loads: list[str] = []
        ref_loads: list[str] = []

        def load(cell: str, part: int, calls: list[str] = loads) -> CellSpeedWindow:
            calls.append(cell)
            return CellSpeedWindow()

        def ref_load(cell: str, part: int, calls: list[str] = ref_loads) -> ReferenceWindow:
            calls.append(cell)
            return ReferenceWindow()

        touched: set[str] = set()
        ref_touched: set[str] = set()
        for r in range(30):
            drawn = []
            for i in range(64):
                at = 0 if layout == "one cell" else i % len(_SPOTS) if layout == "in turn" else rng.randrange(3)
                drawn.append({"device_id": f"d{rng.randrange(20)}", "seq": rng.randrange(40),
                              "ts": -rng.uniform(0, 200), "at": at, "speed_mps": rng.uniform(0, 40),
                              "heading_deg": rng.uniform(0, 359)})
            raw = _record(drawn)
            for _ in range(2):  # the second time every ping is a replay
                batch = pings.decode_batch(raw)[2]
                assert isinstance(batch, PingBatch)
                want = _reference_count(pings.decode_record(raw)[2], ref, ref_load, NOW + r, ref_touched, set())
                assert add_pings(batch, got, load, 1, NOW + r, touched, set()) == want
        assert loads == ref_loads and list(got) == list(ref) and list(touched) == list(ref_touched)
        for cell, w in ref.items():
            _same(got[cell], w)
