"""The conditions tick is held to a frozen copy of itself (tests/support/reference_conditions.py).

Two engines take the same deterministic city (the stream bench's, smaller): one ticks with
:class:`pipeline.pacing.Pacing`, the other with the reference. Every tick must emit the same
records — keys, value bytes, order — and leave the same pacing state (what was published,
what is pending, when each cell was evaluated and with how many samples, the windows'
wake-ups, the cells marked for write-back). The workload goes through what a tick decides
on: cells filling up to k, busy cells re-read, heartbeats, slowdowns against learned free
flow, quiet cells tombstoned, crash/closure/hazard reports that open and lapse, the rolling
and sparse rescans, a rebalance with stored windows adopted again, and the per-tick budget
cut (on a counting clock, so that it cuts at the same cell in both).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import conditions, geo, pacing, pings
from pipeline.bench.stream import City, Packer
from pipeline.engine import Engine, Tables
from pipeline.speed import SectorStats
from tests.support import reference_conditions as ref

T0 = 1_790_000_000.0
STEP_S = 3.0
CELL = geo.cell(52.52, 13.405, 9)


@dataclass
class Twin:
    """The engine under test and the reference engine, fed the same records."""

    new: Engine
    old: Engine

    @classmethod
    def make(cls) -> Twin:
        new, old = Engine(Tables.in_memory()), Engine(Tables.in_memory())
        old.pacing = ref.ReferencePacing(  # type: ignore[assignment]  # the same attributes and methods
            old.cells, old.baselines, old.active, old.pacing.min_devices
        )
        return cls(new, old)

    def feed(self, part: int, raw: bytes, now: float) -> None:
        a = self.new.on_pings(pings.decode_record(raw, 9)[2], part, now)
        b = self.old.on_pings(pings.decode_record(raw, 9)[2], part, now)
        assert a.alerts == b.alerts

    def report(self, rec: dict[str, Any], part: int, now: float) -> None:
        key7 = geo.key_cell(rec["lat"], rec["lon"], 7, 9)
        a, b = self.new.on_report(key7, rec, part, now), self.old.on_report(key7, rec, part, now)
        assert a.alerts == b.alerts

    def flush(self, parts: range, now: float) -> None:
        for e in (self.new, self.old):
            for part in parts:
                e.flush(part, now)

    def rebalance(self, keep: list[int], back: list[int]) -> None:
        """``keep`` stay, the rest are lost; then ``back`` are assigned again with their stored tables."""
        for e in (self.new, self.old):
            e.forget_partitions(keep)
            for part in back:
                e.adopt(part)

    def tick(self, now: float) -> int:
        a, b = self.new.tick(now), self.old.tick(now)
        assert a.conditions == b.conditions, f"tick at {now}"
        assert a.alerts == b.alerts
        p, q = self.new.pacing, self.old.pacing
        for name in (
            "published",
            "pending",
            "urgent",
            "evaluated_at",
            "evaluated_n",
            "known",
            "maybe_published",
            "slots",
            "slot_at",
            "sparse_at",
        ):
            assert getattr(p, name) == getattr(q, name), f"{name} at {now}"
        assert [part for part, _ in p.adopting] == [part for part, _ in q.adopting]
        assert {c: w.wake_at for c, w in self.new.cells.values.items()} == {
            c: w.wake_at for c, w in self.old.cells.values.items()
        }
        assert self.new.cells.dirty == self.old.cells.dirty
        assert self.new.baselines.dirty == self.old.baselines.dirty
        assert self.new.active.dirty == self.old.active.dirty
        return len(a.conditions)


def _records(city: City, cars: list[Any], ts: float) -> list[tuple[int, bytes]]:
    pk = Packer(city, 64)
    out = [r for r in (pk.add(p) for p in city.step(cars, ts, STEP_S)) if r is not None]
    out.extend(pk.drain())
    return [(city.partition(k.decode()), v) for k, v, _ in out]


def _report(rid: str, dev: str, type_: str, lat: float, lon: float, ts: float) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "report",
        "id": rid,
        "device_id": dev,
        "type": type_,
        "lat": lat,
        "lon": lon,
        "heading_deg": 90.0,
        "ts": ts,
        "ingest_ts": ts,
    }


def _counting_clock(step: float) -> SimpleNamespace:
    """A perf_counter that moves ``step`` per call: the budget cuts at the same call in both engines."""
    t = iter(range(1 << 40))
    return SimpleNamespace(perf_counter=lambda: next(t) * step)


def _city_run(twin: Twin, steps: int, *, lag: Callable[[int], float], seed: int, tick_s: float) -> Iterator[int]:
    """The stream bench's city, small and dense: ``steps`` of 3 s, each step's records then its ticks.

    Roads slow down and recover, cars drop out and come back (cells go quiet and fill up
    again), reports open incidents, and halfway a rebalance drops half the partitions
    and adopts them back from the stored tables. Yields the records each tick emitted.
    """
    rng = random.Random(seed)
    city = City.build(900, 4, seed=seed, roads=12)
    typical = [r.typical for r in city.roads]
    parts = range(city.partitions)
    now = T0
    for i in range(steps):
        ts = T0 + (i + 1) * STEP_S
        if i % 20 == 0:  # some roads jam, the others recover
            for r, road in enumerate(city.roads):
                road.typical = typical[r] * (rng.choice((0.15, 0.4, 0.6)) if rng.random() < 0.3 else 1.0)
        # a few roads go silent for good (their cells empty and are tombstoned after the 300-s
        # window), a fifth of the others for 75 s at a time
        quiet = {r for r in range(len(city.roads)) if (r % 5 == 0 and i >= 40) or (i // 25 + r) % 5 == 1}
        cars = [c for c in city.cars if c.road not in quiet and rng.random() < 0.9]
        recs = _records(city, cars, ts)
        for k in range(3):  # the records of a step arrive over it, ticks between them
            now = max(now, ts + lag(i) + k * STEP_S / 3)
            for part, raw in recs[k::3]:
                twin.feed(part, raw, now)
            if i % 7 == k:
                twin.flush(parts, now)
            yield twin.tick(now)
            now += tick_s
            yield twin.tick(now)
        if i % 9 == 4:  # reports on a busy road: a crash (two devices), a closure (two), a hazard (lapses)
            road = city.roads[rng.randrange(len(city.roads))]
            kind = rng.choice(("crash", "closure", "hazard"))
            for d in range(2):
                rec = _report(f"r{i}-{d}", f"u{i}-{d}", kind, road.lat + d * 1e-4, road.lon, ts)
                twin.report(rec, city.partition(geo.key_cell(rec["lat"], rec["lon"], 7, 9)), now)
        if i == steps // 2:  # a rebalance: half the partitions lost, then (restored tables) assigned again
            twin.flush(parts, now)
            twin.rebalance([0, 1], [2, 3])


@pytest.fixture
def no_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tick budget is wall time: out of the way, both engines evaluate everything due."""
    monkeypatch.setattr(pacing, "TICK_BUDGET_S", 1e9)
    monkeypatch.setattr(ref, "TICK_BUDGET_S", 1e9)


@pytest.mark.usefixtures("no_budget")
def test_a_live_city_ticks_the_same_records_as_the_reference() -> None:
    """Pings a few seconds old, ~150 steps (450 s: buckets close, baselines learn, cells go quiet)."""
    emitted = sum(_city_run(Twin.make(), 150, lag=lambda i: 2.0 + (i % 4), seed=3, tick_s=0.25))
    assert emitted > 2000  # the workload publishes, re-publishes and tombstones


@pytest.mark.usefixtures("no_budget")
def test_a_catching_up_worker_ticks_the_same_records_as_the_reference() -> None:
    """The bench's case: event times far behind the clock (a backlog), ticks a second apart."""
    emitted = sum(_city_run(Twin.make(), 60, lag=lambda i: 150.0 - 2 * i, seed=5, tick_s=1.0))
    assert emitted > 500


def test_the_budget_cuts_at_the_same_cell_as_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """An overloaded tick leaves the rest pending: the same rest, on a clock that counts calls."""
    # 0.01 a call against the 0.025-s budget: a tick re-reads 48 busy cells (the third check is late)
    monkeypatch.setattr(pacing, "time", _counting_clock(0.01))
    monkeypatch.setattr(ref, "time", _counting_clock(0.01))
    busiest: list[int] = []
    triage = ref.ReferencePacing._triage

    def spy(self: ref.ReferencePacing, due: set[str], now: float) -> tuple[set[str], list[str]]:
        news, busy = triage(self, due, now)
        busiest.append(len(busy))
        return news, busy

    monkeypatch.setattr(ref.ReferencePacing, "_triage", spy)
    counts = list(_city_run(Twin.make(), 40, lag=lambda i: 2.0, seed=11, tick_s=1.5))
    assert sum(counts) > 300
    assert max(busiest) > 48  # the budget did cut


# -- the pure functions, against their frozen copies -------------------------------------------
_speeds = st.floats(0.0, 40.0, allow_nan=False)


@st.composite
def _stats(draw: st.DrawFn) -> dict[int, SectorStats]:
    out = {}
    for sec in draw(st.sets(st.integers(0, 7), max_size=8)):
        # quarters (the window's bin centres) and eighths, which round(…, 2) does change (12.125 → 12.12)
        binned = st.sampled_from([0.0, 0.25, 4.2, 9.73, 12.51, 13.9, 12.125, 3.375, 0.625])
        med = draw(st.one_of(_speeds, binned))
        out[sec] = SectorStats(
            sec,
            draw(_speeds),
            med,
            draw(st.one_of(_speeds, binned)),
            draw(st.integers(1, 400)),
            draw(st.integers(1, 8)),
        )
    return out


_free_flow = st.one_of(st.none(), st.dictionaries(st.integers(0, 7), st.sampled_from([0.0, 5.0, 13.9, 17.3, 40.0])))
_incidents = st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(
    _stats(),
    _stats(),
    st.sampled_from([None, 1.0, 1.05, 1.149, 1.151, 0.85, 0.851, 0.2]),
    _free_flow,
    st.booleans(),
    _incidents,
    _incidents,
    st.floats(0.0, 90.0),
    st.integers(1, 4),
)
def test_readings_unchanged_and_the_message_match_the_reference(
    before: dict[int, SectorStats],
    after: dict[int, SectorStats],
    drift: float | None,
    free_flow: dict[int, float] | None,
    closed: bool,
    inc0: list[str],
    inc1: list[str],
    dt: float,
    k: int,
) -> None:
    """``after`` is either other sectors or ``before``'s moved by ``drift`` (around the 15 % rule)."""
    if drift is not None:
        after = {sec: s._replace(median_mps=s.median_mps * drift) for sec, s in before.items()}
        inc1 = inc0 if dt < 80 else inc1
    now = T0 + dt
    prev = ref.build_condition(
        CELL, before, now=T0, version=1, min_devices=k, free_flow=free_flow, closed=closed, incidents=inc0
    )
    rs = conditions.readings(after, min_devices=k, free_flow=free_flow, closed=closed)
    assert rs == ref.readings(after, min_devices=k, free_flow=free_flow, closed=closed)
    kw: dict[str, Any] = {"now": now, "version": 2, "min_devices": k, "incidents": inc1, "closed": closed}
    new = conditions.build_condition(CELL, after, free_flow=free_flow, **kw)
    assert new == ref.build_condition(CELL, after, free_flow=free_flow, **kw)
    assert conditions.build_condition(CELL, after, sector_readings=rs, **kw) == new
    if prev is not None:
        same = ref.unchanged(prev, rs, inc1, now)
        assert conditions.unchanged(prev, rs, inc1, now) == same
        seen = conditions.digest(prev)
        assert conditions.settled(seen, after, k, free_flow, closed, inc1, now) == same
        backwards = dict(reversed(after.items()))  # not the window's ascending order
        assert conditions.settled(seen, backwards, k, free_flow, closed, tuple(inc1), now) == same
        if new is not None:
            assert conditions.is_material(prev, new, now) == ref.is_material(prev, new, now)


@given(st.floats(-1.0, 3.0, allow_nan=False))
def test_level_and_jam_factor_match_the_reference(ratio: float) -> None:
    assert conditions.level_for(ratio) == ref.level_for(ratio)
    assert conditions.jam_factor_for(ratio) == ref.jam_factor_for(ratio)


@given(st.one_of(st.floats(allow_nan=False), st.integers(-400, 400).map(lambda q: q / 8)))
def test_round2_is_round_to_two_decimals(x: float) -> None:
    r = conditions.round2(x)
    assert r == round(x, 2) and str(r) == str(round(x, 2))  # the same float, sign of zero included


def test_the_drifted_cases_do_reach_unchanged() -> None:
    """The property above sees both answers of ``unchanged`` (it would pass vacuously otherwise)."""
    before = {2: SectorStats(2, 15.0, 15.0, 17.0, 40, 4)}  # level 3 against 40 m/s, and with each drift
    prev = ref.build_condition(CELL, before, now=T0, version=1, min_devices=3, free_flow={2: 40.0})
    assert prev is not None
    for drift, same in ((1.149, True), (1.151, False), (0.851, True), (0.849, False)):
        rs = conditions.readings(
            {2: before[2]._replace(median_mps=15.0 * drift)}, min_devices=3, free_flow={2: 40.0}, closed=False
        )
        assert conditions.unchanged(prev, rs, [], T0 + 1.0) is same
