"""The stream engine without Kafka: dict tables, an injected clock (advanced, never slept)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from pipeline import geo
from pipeline.detect import motion
from pipeline.engine import Engine, Output, RecordProblem, Tables
from pipeline.pings import RecordError, decode_record, encode_record, with_cells

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ALERT = jsonschema.Draft7Validator(json.loads((SCHEMAS / "alert.schema.json").read_text()))
CONDITION = jsonschema.Draft7Validator(json.loads((SCHEMAS / "condition.schema.json").read_text()))
T0 = 1_700_000_000.0
LAT, LON = 52.5200, 13.4050
EAST = 90.0


class Run:
    """An engine and a clock; pings go to the partition their key would pick (a stand-in number)."""

    def __init__(self, tables: Tables | None = None, min_devices: int = 3) -> None:
        self.tables = tables or Tables.in_memory()
        self.engine = Engine(self.tables, min_devices=min_devices)
        self.now = T0
        self.alerts: list[dict[str, Any]] = []
        self.conditions: dict[str, dict[str, Any] | None] = {}
        self.seqs: dict[str, int] = {}

    def ping(
        self, dev: str, lat: float, lon: float, speed: float, heading: float = EAST, **extra: Any
    ) -> dict[str, Any]:
        seq = self.seqs[dev] = self.seqs.get(dev, 0) + 1
        return {
            "device_id": dev,
            "seq": seq,
            "ts": self.now,
            "lat": lat,
            "lon": lon,
            "speed_mps": speed,
            "heading_deg": heading,
            "accuracy_m": 5.0,
            **extra,
        }

    def feed(self, batch: list[dict[str, Any]], partition: int = 0) -> Output:
        out = self.engine.on_pings(with_cells(batch), partition, self.now)
        self.engine.flush(partition, self.now)
        self._collect(out)
        return out

    def report(self, rec: dict[str, Any], partition: int = 0) -> Output:
        key7 = geo.key_cell(rec.get("lat", LAT), rec.get("lon", LON), 7, 9)
        out = self.engine.on_report(key7, rec, partition, self.now)
        self.engine.flush(partition, self.now)
        self._collect(out)
        return out

    def tick(self, seconds: float = 0.0) -> Output:
        self.now += seconds
        out = self.engine.tick(self.now)
        self._collect(out)
        return out

    def _collect(self, out: Output) -> None:
        """Keep what the engine published; every message must match its published schema."""
        for k, v in out.alerts:
            assert v is not None
            alert = orjson.loads(v)
            ALERT.validate(alert)
            assert k.decode() == alert["cell"]
            self.alerts.append(alert)
        for k, v in out.conditions:
            cond = orjson.loads(v) if v is not None else None
            if cond is not None:
                CONDITION.validate(cond)
                assert k.decode() == cond["cell"]
            self.conditions[k.decode()] = cond

    def opened(self, type_: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["type"] == type_ and a["state"] == "opened"]


def traffic(run: Run, n: int, speed: float, lat: float = LAT, lon: float = LON, prefix: str = "car") -> None:
    """One ping each from ``n`` devices passing the spot."""
    run.feed([run.ping(f"{prefix}{i}", *geo.destination(lat, lon, EAST, i * 3.0), speed) for i in range(n)])


def passing(run: Run, n: int, speed: float, lat: float = LAT, lon: float = LON, prefix: str = "by") -> None:
    """``n`` devices going east past the spot: each seen behind it, then ahead of it."""
    batch = []
    for i in range(n):
        behind = run.ping(f"{prefix}{i}", *geo.destination(lat, lon, EAST + 180.0, 30.0 + i * 3.0), speed)
        behind["ts"] -= 2.5
        batch += [behind, run.ping(f"{prefix}{i}", *geo.destination(lat, lon, EAST, 10.0 + i * 3.0), speed)]
    run.feed(batch)


# -- speed, dedupe, k threshold ---------------------------------------------------
def test_condition_counts_each_ping_once_and_skips_parked() -> None:
    run = Run()
    batch = [run.ping(f"d{i}", LAT, LON, 10.0 + i) for i in range(4)]
    run.feed(batch)
    run.feed(batch)  # a retried record
    run.feed([run.ping("p", LAT, LON, 0.0, state="parked")])
    run.tick(0.5)
    cond = run.conditions[geo.cell(LAT, LON, 9)]
    assert cond is not None
    (sector,) = cond["sectors"]
    assert (sector["samples"], sector["devices"]) == (4, 4)
    assert run.engine.duplicates == 4
    text = orjson.dumps(cond).decode()
    assert "device_id" not in text and '"d0"' not in text


def test_below_k_devices_nothing_is_published() -> None:
    run = Run()
    run.feed([run.ping("a", LAT, LON, 10.0), run.ping("b", LAT, LON, 10.0)])
    run.tick(0.5)
    assert run.conditions == {}


def test_replay_after_restart_counts_once() -> None:
    """The speed table is written every record: a new engine over it dedupes the replay."""
    first = Run()
    batch = [first.ping(f"d{i}", LAT, LON, 12.0) for i in range(3)]
    first.feed(batch)
    assert first.tables.speed, "windows written back within the record"
    second = Run(first.tables)
    second.now = first.now
    second.feed(batch)
    second.feed([second.ping("d9", LAT, LON, 12.0)])
    second.tick(0.5)
    cond = second.conditions[geo.cell(LAT, LON, 9)]
    assert cond is not None and cond["sectors"][0]["samples"] == 4


def test_quiet_cell_is_tombstoned() -> None:
    run = Run()
    traffic(run, 3, 10.0)
    run.tick(0.5)
    cell = geo.cell(LAT, LON, 9)
    assert run.conditions[cell] is not None
    run.tick(400.0)  # the 5-minute window is over
    assert run.conditions[cell] is None


# -- free flow from the baseline --------------------------------------------------
def test_free_flow_learned_from_observed_speeds_sets_level() -> None:
    run = Run()
    for _ in range(30):  # 90 samples at 20 m/s, this hour of week
        traffic(run, 3, 20.0)
        run.tick(5.0)
    cell = geo.cell(LAT, LON, 9)
    cond = run.conditions[cell]
    assert cond is not None and cond["sectors"][0]["free_flow_mps"] == 13.9  # cold start: nothing learned yet
    run.tick(400.0)  # the buckets leave the window and are folded into the baseline
    for _ in range(3):
        traffic(run, 3, 4.0, prefix="jam")
        run.tick(5.0)
    cond = run.conditions[cell]
    assert cond is not None
    assert cond["sectors"][0]["free_flow_mps"] == pytest.approx(20.25, abs=0.5)
    assert cond["level"] == 4  # 4 / 20 → standstill band
    assert cond["jam_factor"] >= 7.5


def test_replayed_pings_do_not_teach_the_baseline_twice() -> None:
    run = Run()
    batch = [run.ping(f"d{i}", LAT, LON, 20.0) for i in range(60)]
    for _ in range(3):
        run.feed(batch)
    run.tick(400.0)
    learned = run.engine.baselines.values[geo.cell(LAT, LON, 9)]
    assert learned.sectors[geo.sector(EAST)].n == 60


# -- stalled vehicles -------------------------------------------------------------
def _stall_scene(run: Run, others_speed: float, seconds: int = 120) -> None:
    for t in range(0, seconds, 5):
        run.feed([run.ping("stuck", LAT, LON, 0.0, heading=EAST)])
        passing(run, 4, others_speed, prefix=f"t{t}-")
        run.now += 5
        run.tick()


def test_stalled_vehicle_opens_among_moving_traffic_and_clears_when_it_moves() -> None:
    run = Run()
    run.feed([run.ping("stuck", LAT - 0.0005, LON, 12.0)])  # arrives moving
    run.now += 5
    _stall_scene(run, 12.0)
    (opened,) = run.opened("stalled_vehicle")
    assert opened["confidence"] > 0.5 and "stuck" not in orjson.dumps(opened).decode()
    cond = run.conditions[geo.cell(LAT, LON, 9)]
    assert cond is not None and opened["id"] in cond["incidents"]
    run.feed([run.ping("stuck", *geo.destination(LAT, LON, EAST, 60.0), 10.0)])
    cleared = [a for a in run.alerts if a["state"] == "cleared"]
    assert [a["id"] for a in cleared] == [opened["id"]] and cleared[0]["reason"] == "moved_on"
    run.tick(0.5)
    cond = run.conditions[geo.cell(LAT, LON, 9)]
    assert cond is not None and cond["incidents"] == []


def test_everyone_stopped_is_congestion_not_a_stall() -> None:
    run = Run()
    _stall_scene(run, 0.5)
    assert run.opened("stalled_vehicle") == []


def test_stall_cleared_when_the_device_goes_quiet() -> None:
    run = Run()
    _stall_scene(run, 12.0)
    assert run.opened("stalled_vehicle")
    for _ in range(20):
        passing(run, 4, 12.0, prefix="later")
        run.tick(5.0)
    assert [a["reason"] for a in run.alerts if a["state"] == "cleared"] == ["gone_quiet"]


def test_only_stopped_devices_are_stored_and_silent_ones_expire() -> None:
    run = Run()
    traffic(run, 5, 12.0)
    run.feed([run.ping("still", LAT, LON, 0.0)])
    run.tick(5.0)
    run.feed([run.ping("poke", LAT, LON, 12.0)])  # an event of partition 0 lets the lazy flush run
    stored = {k.decode().split("|", 1)[1] for k in run.tables.devices}
    assert stored == {"still"}
    run.tick(400.0)
    run.tick(5.0)
    assert run.engine.device_keys() == {}


# -- crashes ----------------------------------------------------------------------
def test_hard_brake_into_standstill_with_a_second_stopped_vehicle_is_a_crash() -> None:
    run = Run()
    run.feed([run.ping("a", LAT, LON - 0.0006, 16.0), run.ping("b", LAT, LON - 0.0004, 10.0)])
    run.now += 4
    run.feed([run.ping("a", LAT, LON, 0.5), run.ping("b", LAT, LON + 0.0001, 0.5)])  # a: 3.9 m/s² ≈ 0.4 g
    for _ in range(4):
        run.now += 5
        run.feed([run.ping("a", LAT, LON, 0.0), run.ping("b", LAT, LON + 0.0001, 0.0)])
        passing(run, 2, 14.0, prefix=f"p{run.now}-")  # in the next lane: the road is not blocked
        run.tick()
    (crash,) = run.opened("crash")
    # it may open on a's own stop (the traffic collapsed) before b's stop counts: b comes as an update
    latest = [a for a in run.alerts if a["id"] == crash["id"]][-1]
    assert latest["state"] != "cleared" and latest["confidence"] >= 0.6 and latest["evidence"]["probes"] == 2


def test_a_crash_opens_on_its_stop_fact_without_waiting_for_a_sweep() -> None:
    """The candidate's own spot (who passed it) is read when its Stopped fact comes, not a sweep later."""
    run = Run()
    run.feed([run.ping("a", LAT, LON - 0.0006, 16.0), run.ping("b", LAT, LON - 0.0004, 10.0)])
    run.now += 4
    run.feed([run.ping("a", LAT, LON, 0.5), run.ping("b", LAT, LON + 0.0001, 0.5)])
    standing_since = run.now
    opened_at = None
    while opened_at is None and run.now < standing_since + motion.STOP_REFRESH_S:
        run.now += 2.5
        passing(run, 2, 14.0, prefix=f"p{run.now}-")
        # b's fact first: the area exists when a's comes, but does not count a among its vehicles yet
        run.feed([run.ping("b", LAT, LON + 0.0001, 0.0), run.ping("a", LAT, LON, 0.0)])
        if run.opened("crash"):
            opened_at = run.now
    # no tick ran: the first Stopped fact (STOP_MIN_S after the stop) found its passers
    assert opened_at is not None and opened_at - standing_since < motion.STOP_MIN_S + 2.5


def test_gentle_stops_are_never_a_crash() -> None:
    run = Run()
    run.feed([run.ping("a", LAT, LON - 0.0006, 8.0), run.ping("b", LAT, LON - 0.0004, 8.0)])
    for speed in (6.0, 4.0, 2.0, 0.5, 0.0, 0.0, 0.0, 0.0):
        run.now += 5
        run.feed([run.ping("a", LAT, LON, speed), run.ping("b", LAT, LON + 0.0001, speed)])
        run.tick()
    assert run.opened("crash") == []


# -- reports ----------------------------------------------------------------------
def _report(run: Run, rid: str, dev: str, type_: str = "crash", lat: float = LAT, lon: float = LON) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "report",
        "id": rid,
        "device_id": dev,
        "type": type_,
        "lat": lat,
        "lon": lon,
        "heading_deg": EAST,
        "ts": run.now,
        "ingest_ts": run.now,
    }


def _vote(run: Run, rid: str, dev: str, vote: str) -> dict[str, Any]:
    return {"v": 1, "kind": "vote", "report_id": rid, "device_id": dev, "vote": vote, "ts": run.now}


def test_reports_merge_and_not_there_majority_clears() -> None:
    run = Run()
    run.report(_report(run, "r-1", "u1"))
    run.report(_report(run, "r-2", "u2", lat=LAT + 0.0003))  # ~33 m away: the same crash
    opened = run.opened("crash")
    assert len(opened) == 1 and opened[0]["evidence"]["reports"] == 2  # a crash needs two devices
    run.tick(0.5)
    cond = run.conditions[opened[0]["cell"]]
    assert cond is not None and cond["incidents"] == [opened[0]["id"]]
    for dev in ("v1", "v2", "v3", "v4"):
        run.report(_vote(run, "r-1", dev, "not_there"))
    cleared = [a for a in run.alerts if a["state"] == "cleared"]
    assert cleared and cleared[0]["reason"] == "voted_down"


def test_closure_needs_two_devices_and_closes_the_cell() -> None:
    run = Run()
    run.report(_report(run, "c-1", "u1", "closure"))
    assert run.opened("closure") == []
    run.report(_report(run, "c-2", "u2", "closure"))
    (opened,) = run.opened("closure")
    run.tick(0.5)
    cond = run.conditions[opened["cell"]]
    assert cond is not None and cond["level"] == 5 and cond["jam_factor"] == 10.0


def test_report_lapses_after_its_lifetime() -> None:
    run = Run()
    run.report(_report(run, "h-1", "u1", "hazard"))
    assert run.opened("hazard")
    run.tick(3601.0)
    assert [a["reason"] for a in run.alerts if a["state"] == "cleared"] == ["expired"]


@pytest.mark.parametrize(
    "rec",
    [
        {
            "kind": "report",
            "id": "r",
            "device_id": "u",
            "type": "crash",
            "lat": "x",
            "lon": 1,
            "heading_deg": 0,
            "ts": 1,
        },
        {
            "kind": "report",
            "id": "r",
            "device_id": "u",
            "type": "crash",
            "lat": 95,
            "lon": 1,
            "heading_deg": 0,
            "ts": 1,
        },
        {"kind": "vote", "report_id": 7, "device_id": "u", "vote": "not_there", "ts": 1},
        {"kind": "nonsense"},
        [1, 2, 3],
    ],
)
def test_poison_report_records_are_refused_without_touching_state(rec: Any) -> None:
    run = Run()
    with pytest.raises(RecordProblem):
        run.engine.on_report("871f1d489ffffff", rec, 0, run.now)
    assert run.alerts == []


@pytest.mark.parametrize(
    "ping",
    [
        {"lat": 91.0},
        {"lon": -200.0},
        {"speed_mps": -1.0},
        {"heading_deg": 400.0},
        {"seq": "1"},
    ],
)
def test_poison_ping_records_are_refused(ping: dict[str, Any]) -> None:
    good = {"device_id": "d", "seq": 1, "ts": T0, "lat": LAT, "lon": LON, "speed_mps": 1.0, "heading_deg": 0.0}
    with pytest.raises(RecordError):
        decode_record(encode_record("k", [{**good, **ping}], T0))
    assert decode_record(encode_record("k", [good], T0))[2] == [{**good, "cell": geo.cell(LAT, LON, 9)}]


# -- a vehicle crossing a partition key boundary ------------------------------------
def _boundary() -> tuple[tuple[float, float], tuple[float, float]]:
    """Two points 30 m apart, driving east, whose res-7 keys differ."""
    lat, lon = LAT, LON
    key = geo.key_cell(lat, lon, 7, 9)
    for _ in range(2000):
        nxt = geo.destination(lat, lon, EAST, 30.0)
        if geo.key_cell(*nxt, 7, 9) != key:
            return (lat, lon), nxt
        lat, lon = nxt
    raise AssertionError("no boundary within 60 km")


def test_vehicle_stalling_just_after_a_key_boundary_is_detected_in_the_new_partition() -> None:
    """Its state before the boundary lives under the old key (another partition): the new one seeds afresh."""
    before, after = _boundary()
    run = Run()
    run.feed([run.ping("v", *before, 12.0)], partition=1)
    run.now += 3
    for _ in range(24):
        run.feed([run.ping("v", *after, 0.0)], partition=2)
        passing(run, 4, 12.0, *after, prefix=f"o{run.now}-")
        run.now += 5
        run.tick()
    (opened,) = run.opened("stalled_vehicle")
    assert geo.distance_m(opened["lat"], opened["lon"], *after) < 5
    keys = {k.split("|")[0] for k in run.engine.device_keys() if k.endswith("|v")}
    assert keys == {geo.key_cell(*before, 7, 9), geo.key_cell(*after, 7, 9)}
    assert run.engine.device_keys()[geo.key_cell(*before, 7, 9) + "|v"] == 1
    # the stale state under the old key expires without an alert
    for _ in range(70):
        run.tick(5.0)
    assert not any(k.endswith("|v") for k in run.engine.device_keys())
    assert len(run.opened("stalled_vehicle")) == 1


def test_state_is_bounded_everything_expires_after_silence() -> None:
    """Windows, devices, crash areas and report books all go (memory and tables) once quiet."""
    run = Run()
    _stall_scene(run, 12.0)
    run.report(_report(run, "h-9", "u9", "hazard"))
    assert run.tables.speed and run.tables.books and run.engine.device_keys()
    for _ in range(80):  # over 3 hours of silence: lifetime (1 h) + tombstone (1 h) are over
        run.tick(150.0)
    e = run.engine
    # write-backs happen inside an event of the partition: one more record lets them run
    run.feed([run.ping("late", 10.0, 10.0, 5.0)])
    run.tick(400.0)
    run.feed([run.ping("late", 10.0, 10.0, 5.0)])
    far = geo.cell(10.0, 10.0, 9)
    assert set(e.cells.values) <= {far}
    assert {k.decode() for k in run.tables.speed} <= {far}
    assert not run.tables.books and not e.books.values
    assert not run.tables.areas and not run.tables.active
    assert all(k.endswith("|late") for k in e.device_keys())


def test_a_rescan_rewrites_only_cells_that_changed() -> None:
    """Every cell is re-evaluated every RESCAN_S; rewriting them all would flood the changelog."""
    from pipeline import pacing

    run = Run()
    traffic(run, 3, 10.0)
    run.tick(0.5)
    run.tick(pacing.RESCAN_S + 1.0)  # a rescan: nothing expired yet
    assert run.engine.cells.dirty == {}
    run.tick(400.0)  # now the buckets close: the cell changed and is written back
    assert run.engine.cells.dirty == {0: {geo.cell(LAT, LON, 9)}}


def test_a_rescan_is_spread_over_the_ticks_of_its_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """All cells' rescan in one tick stopped the loop for ~0.5 s every 10 s; each tick does its share."""
    from pipeline import pacing

    run = Run()
    spots = [geo.destination(LAT, LON, 0.0, 400.0 * i) for i in range(40)]
    for j, (lat, lon) in enumerate(spots):  # 40 published cells
        traffic(run, 3, 10.0, lat, lon, prefix=f"c{j}-")
    run.tick(0.5)
    published = {c for c, v in run.conditions.items() if v is not None}
    assert len(published) >= 35  # (a spot's three cars may straddle a cell border)
    rescanned: list[list[str]] = []
    real = pacing.Pacing._evaluate

    def counting(self: pacing.Pacing, cell: str, now: float, out: Any, rescan: bool) -> None:
        if rescan:
            rescanned[-1].append(cell)
        real(self, cell, now, out, rescan)

    monkeypatch.setattr(pacing.Pacing, "_evaluate", counting)
    for _ in range(int(2 * pacing.RESCAN_S / 0.5)):  # two periods of 0.5-s ticks
        rescanned.append([])
        run.tick(0.5)
    # a share per tick, never the lot: a cell's slot is its str hash (seeded per process), so 40 cells
    # over 50 two-slot ticks put 5 in one tick for some seeds (PYTHONHASHSEED=21); 1/4 holds for any
    assert max(len(t) for t in rescanned) <= len(published) // 4
    assert published <= {c for t in rescanned for c in t}  # each once a period (≤ 2 periods apart)
    rescanned.append([])
    run.tick(pacing.RESCAN_S)  # a tick after a whole period without one: everything at once
    assert published <= set(rescanned[-1])


def test_a_rescan_only_expires_a_busy_cell_read_since_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy cell is read by the pacing anyway; the rescan reads it again only if it was not, or buckets closed."""
    from pipeline import pacing

    run = Run()
    traffic(run, 3, 10.0)
    run.tick(0.5)
    run.tick(pacing.RESCAN_S)  # the next period's rescan begins
    reads: list[bool] = []
    real = pacing.Pacing._evaluate

    def counting(self: pacing.Pacing, cell: str, now: float, out: Any, rescan: bool) -> None:
        reads.append(rescan)
        real(self, cell, now, out, rescan)

    monkeypatch.setattr(pacing.Pacing, "_evaluate", counting)
    for i in range(int(2 * pacing.RESCAN_S)):  # busy: new cars every second, read as they come
        traffic(run, 3, 10.0, prefix=f"t{i}-")
        run.tick(1.0)
    assert reads and not any(reads)  # two periods: the rescans read nothing more
    reads.clear()
    for _ in range(int(2 * pacing.RESCAN_S)):  # quiet: only the rescan reads it
        run.tick(1.0)
    assert 1 <= len(reads) <= 3 and all(reads)


def test_published_cells_are_reevaluated_at_most_every_second_new_ones_at_once() -> None:
    run = Run()
    traffic(run, 3, 10.0)
    run.tick(0.5)
    cell = geo.cell(LAT, LON, 9)
    first = run.conditions[cell]
    assert first is not None
    traffic(run, 3, 2.0, prefix="slow")  # a material change...
    run.tick(0.5)
    assert run.conditions[cell] == first  # ...waits for the cell's next evaluation slot
    other = geo.destination(LAT, LON, 0.0, 2000.0)
    traffic(run, 3, 10.0, *other, prefix="far")
    run.tick(0.5)
    assert run.conditions[geo.cell(*other, 9)] is not None  # news goes at once
    latest = run.conditions[cell]
    assert latest is not None and latest["version"] > first["version"]  # 1 s after the first: re-evaluated


def test_a_published_cell_is_pending_again_only_once_enough_of_its_window_is_new() -> None:
    """Triaging every touched busy cell at every tick cost a tenth of the worker; the window says when."""
    from pipeline import pacing

    run = Run()
    traffic(run, 20, 10.0)
    run.tick(0.5)
    cell = geo.cell(LAT, LON, 9)
    assert run.conditions[cell] is not None
    window = run.engine.cells.values[cell]
    assert window.wake_at == window.added + math.ceil(pacing.REEVALUATE_SHARE * 20)
    run.tick(1.0)
    assert cell not in run.engine.pacing.pending
    traffic(run, 1, 10.0, prefix="one")  # 1 new of 20: too little to matter
    assert cell not in run.engine.pacing.pending
    traffic(run, 1, 2.0, prefix="two")  # 2 new of 20: the share is reached
    assert cell in run.engine.pacing.pending
    run.tick(1.0)
    assert run.engine.pacing.evaluated_at[cell] == run.now  # re-evaluated with them
    assert window.wake_at == window.added + math.ceil(pacing.REEVALUATE_SHARE * 22)


def test_sparse_cells_cost_no_reading_and_still_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick's cost follows the busy cells: a cell with fewer than k devices is never read."""
    from pipeline import pacing
    from pipeline.speed import CellSpeedWindow

    run = Run()
    spots = [geo.destination(LAT, LON, 0.0, 400.0 * i) for i in range(50)]  # 50 cells, one car each
    run.feed([run.ping(f"lone{i}", lat, lon, 12.0) for i, (lat, lon) in enumerate(spots)])
    traffic(run, 3, 10.0)  # and one busy cell
    reads: list[str] = []
    real = CellSpeedWindow.stats

    def counting(self: CellSpeedWindow, now: float) -> Any:
        reads.append("x")
        return real(self, now)

    monkeypatch.setattr(CellSpeedWindow, "stats", counting)
    for _ in range(3):
        run.tick(pacing.RESCAN_S + 1.0)  # rescans
    assert len(reads) == 3  # the busy cell only, once per rescan
    assert run.conditions[geo.cell(LAT, LON, 9)] is not None
    run.tick(400.0)  # the sparse pass expires the lone cars' windows...
    run.feed([run.ping("late", 10.0, 10.0, 5.0)])  # ...and the next write-back drops them
    lone = {geo.cell(lat, lon, 9) for lat, lon in spots}
    assert not lone & set(run.engine.cells.values)
    assert not lone & {k.decode() for k in run.tables.speed}


def test_a_restarted_engine_runs_the_timers_of_what_its_tables_hold() -> None:
    """After a restart (or a takeover) an incident still lapses and a quiet cell is tombstoned."""
    before = Run()
    before.report(_report(before, "h-1", "u1", "hazard"))
    traffic(before, 3, 10.0)
    before.tick(0.5)
    cell = geo.cell(LAT, LON, 9)
    assert before.opened("hazard") and before.conditions[cell] is not None

    after = Run(before.tables)  # same tables, nothing in memory: a new process
    after.now = before.now + 30.0
    after.engine.adopt(0)  # without it, the hazard would stay open and the condition stay, forever
    after.tick(0.5)
    republished = after.conditions.get(cell)
    for _ in range(30):
        after.tick(150.0)  # quiet for over an hour: the hazard's lifetime is over
    cleared = [a["reason"] for a in after.alerts if a["state"] == "cleared"]
    assert republished is not None and republished["version"] > before.conditions[cell]["version"]  # type: ignore[index]
    assert cleared == ["expired"] and after.conditions[cell] is None  # a tombstone


def test_the_sweep_ticks_only_open_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many moving devices: the 5-s sweep's timer work is per open stall, not per device."""
    from pipeline.detect import stall

    run = Run()
    run.feed([run.ping("stuck", LAT - 0.0005, LON, 12.0)])
    run.now += 5
    _stall_scene(run, 12.0)
    assert run.opened("stalled_vehicle")
    assert len(run.engine.device_keys()) > 40  # the passers are tracked too
    ticked: list[str] = []
    real = stall.tick

    def counting(st: stall.StallState, now: float) -> Any:
        ticked.append("x")
        return real(st, now)

    monkeypatch.setattr(stall, "tick", counting)
    run.tick(6.0)
    assert len(ticked) == 1
    run.tick(stall.QUIET_S + 6.0)  # the stalled phone goes quiet: its stall still clears
    assert [a["reason"] for a in run.alerts if a["state"] == "cleared"] == ["gone_quiet"]


def test_an_overloaded_tick_defers_busy_cells_but_never_news(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-evaluating published cells stops at the tick's budget; the rest go at the next ticks."""
    from pipeline import pacing

    run = Run()
    spots = [geo.destination(LAT, LON, 0.0, 400.0 * i) for i in range(60)]
    spots = [s for s in spots if geo.cell(*s, 9) == geo.cell(*geo.destination(*s, EAST, 6.0), 9)][:40]
    for i, spot in enumerate(spots):
        traffic(run, 3, 10.0, *spot, prefix=f"c{i}-")
    run.tick(0.5)
    cells = [geo.cell(*spot, 9) for spot in spots]
    assert all(run.conditions[c] is not None for c in cells)
    monkeypatch.setattr(pacing, "TICK_BUDGET_S", -1.0)  # always over budget: 16 cells a tick
    for i, spot in enumerate(spots):
        traffic(run, 3, 2.0, *spot, prefix=f"slow{i}-")  # a material change everywhere...
    fresh = geo.destination(LAT, LON, 180.0, 3000.0)
    traffic(run, 3, 10.0, *fresh, prefix="news")  # ...and a new cell
    before = {c: run.conditions[c] for c in cells}
    run.tick(1.5)
    assert run.conditions[geo.cell(*fresh, 9)] is not None  # news did not wait
    changed = [c for c in cells if run.conditions[c] != before[c]]
    assert len(changed) == 16
    run.tick(0.5)
    run.tick(0.5)
    assert all(run.conditions[c] != before[c] for c in cells)  # the rest followed


def test_an_incident_whose_position_moves_into_another_cell_leaves_the_old_one() -> None:
    # two cells side by side under one res-7 key; a closure reported in the first, then by more
    # devices in the second: its mean position crosses over and the first must not stay closed
    here = geo.cell(LAT, LON, 9)
    step = 0
    while geo.cell(*geo.destination(LAT, LON, EAST, step), 9) == here:
        step += 5
    start, there = geo.destination(LAT, LON, EAST, step - 20.0), geo.destination(LAT, LON, EAST, step + 60.0)
    assert geo.cell(*there, 9) != here and geo.parent(geo.cell(*there, 9), 7) == geo.parent(here, 7)
    run = Run()
    for i in range(2):
        run.report(_report(run, f"c-{i}", f"u{i}", "closure", *start))
    (opened,) = run.opened("closure")
    assert opened["cell"] == here
    run.tick(0.5)
    assert run.conditions[here] is not None and run.conditions[here]["level"] == 5
    for i in range(2, 6):
        run.now += 1.0
        run.report(_report(run, f"c-{i}", f"u{i}", "closure", *there))
    moved = [a for a in run.alerts if a["id"] == opened["id"]][-1]
    assert moved["state"] == "updated" and moved["cell"] != here
    run.tick(0.5)
    assert run.conditions[moved["cell"]] is not None and run.conditions[moved["cell"]]["level"] == 5
    assert run.conditions.get(here) is None or opened["id"] not in run.conditions[here]["incidents"]
    assert opened["id"] not in (run.engine.active.values.get(here) or {})


def test_a_new_cells_window_belongs_to_its_records_partition_and_goes_with_it() -> None:
    """Windows are marked dirty without a per-cell partition look-up (cells.mark_known): the new ones note theirs."""
    run = Run()
    run.feed([run.ping(f"d{i}", LAT, LON, 12.0) for i in range(4)], partition=3)
    cell = geo.cell(LAT, LON, 9)
    eng = run.engine
    assert cell in eng.cells.values and eng.cells.partition_of[cell] == 3
    assert eng.cells.table.read(3, cell.encode()) is not None  # written back to partition 3's table
    eng.forget_partitions([0, 1, 2])  # partition 3 revoked: its windows go with it
    assert cell not in eng.cells.values
