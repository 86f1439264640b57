"""pipeline.detect.crash: hard brake into a standstill, corroborated per res-9 area."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import geo
from pipeline.detect import crash, motion
from pipeline.detect.crash import CrashArea, Stopped
from pipeline.detect.events import IncidentEvent, to_alert
from pipeline.detect.spots import Spots

ORIGIN = (48.8566, 2.3522)
T0 = 1_763_780_000.0
FREE = 13.9
JAMMED = 2.0
FLOWING = 13.0
Ping = dict[str, Any]

HARD_STOP = [20.0] * 4 + [0.0] * 60  # 20 → 0 m/s in 5 s (4 m/s²), then 5 min standing
GENTLE_STOP = [20.0, 15.0, 10.0, 5.0] + [0.0] * 60  # 1 m/s²


def track(
    device: str, speeds: list[float], *, start: tuple[float, float] = ORIGIN, t0: float = T0, heading: float = 90.0
) -> list[Ping]:
    out, dist = [], 0.0
    for i, v in enumerate(speeds):
        if i:
            dist += (speeds[i - 1] + v) / 2 * 5.0
        lat, lon = geo.destination(*start, heading, dist)
        out.append(
            {"device_id": device, "seq": i, "ts": t0 + 5.0 * i, "lat": lat, "lon": lon}
            | {"speed_mps": v, "heading_deg": heading, "accuracy_m": 5.0}
        )
    return out


def beside(pings: list[Ping], metres: float) -> tuple[float, float]:
    """A start point such that a parallel track stops ``metres`` north of where ``pings`` stops."""
    stop = pings[-1]
    end = geo.destination(stop["lat"], stop["lon"], 0.0, metres)
    return end


def parallel(device: str, speeds: list[float], stop_at: tuple[float, float], t0: float = T0) -> list[Ping]:
    """A track with ``speeds`` that ends standing at ``stop_at``."""
    probe = track(device, speeds, t0=t0)
    back = geo.distance_m(*ORIGIN, probe[-1]["lat"], probe[-1]["lon"])
    return track(device, speeds, start=geo.destination(*stop_at, 270.0, back), t0=t0)


def cars_going_past(stop: Ping, t0: float, n: int = 4) -> list[list[Ping]]:
    """``n`` cars in the next lane (4 m south) driving east past ``stop`` at 14 m/s, 10 s apart."""
    lane = geo.destination(stop["lat"], stop["lon"], 180.0, 4.0)
    start = geo.destination(*lane, 270.0, 150.0)
    return [track(f"car-{i}", [14.0] * 10, start=start, t0=t0 + 10.0 * i) for i in range(n)]


class Road:
    """The per-device trackers, spots and per-area detectors of one partition, driven by an explicit clock."""

    def __init__(self) -> None:
        self.trackers: dict[str, motion.MotionTracker] = {}
        self.areas: dict[str, CrashArea] = {}
        self.spots = Spots()
        self.emits: list[IncidentEvent] = []

    def drive(
        self, *tracks: list[Ping], traffic: float | None = FLOWING, reports: int = 0, passing: bool = True
    ) -> list[IncidentEvent]:
        """Step every ping in time order; ``passing``: cars in the next lane go past the first track's stop."""
        if passing:
            tracks = tracks + tuple(cars_going_past(tracks[0][-1], tracks[0][0]["ts"] + 25.0))
        out: list[IncidentEvent] = []
        for p in sorted((p for t in tracks for p in t), key=lambda p: p["ts"]):
            now, dev = p["ts"] + 1.0, p["device_id"]
            c9 = geo.cell(p["lat"], p["lon"], 9)
            if c9 in self.spots.by_cell:
                self.spots.see(c9, dev, p["ts"], p["lat"], p["lon"], p["speed_mps"], p["heading_deg"])
            state, facts = motion.step(self.trackers.get(dev), p, now)
            self.trackers[dev] = state
            if state.still_since is not None:
                self.spots.place(dev, state.still_lat, state.still_lon, state.heading, state.still_since, now)
            else:
                self.spots.lift(dev)
            for f in facts:
                for key in crash.area_keys(f.lat, f.lon):
                    prev = self.areas.get(key)
                    area, new = crash.step(
                        prev,
                        f,
                        now,
                        cell=key,
                        traffic_mps=traffic,
                        free_flow_mps=FREE,
                        reports=reports,
                        standing=self.spots.standing(prev.vehicles) if prev is not None else None,
                    )
                    self.areas[key] = area
                    out += new
        self.emits += out
        return out

    def tick(self, now: float, traffic: float | None, reports: int = 0) -> list[IncidentEvent]:
        out: list[IncidentEvent] = []
        for area in self.areas.values():
            standing = self.spots.standing(area.vehicles)
            out += crash.tick(area, now, traffic_mps=traffic, free_flow_mps=FREE, reports=reports, standing=standing)
        self.emits += out
        return out


def crash_scene(second: list[float] = GENTLE_STOP) -> tuple[list[Ping], list[Ping]]:
    a = track("dev-a", HARD_STOP)
    b = parallel("dev-b", second, beside(a, 8.0), t0=T0 + 10)
    return a, b


def test_hard_brake_standstill_and_a_second_stopped_vehicle_open_a_crash() -> None:
    road = Road()
    emits = road.drive(*crash_scene(), traffic=JAMMED)
    assert [e.state for e in emits][:1] == ["opened"]
    assert [e.state for e in emits].count("opened") == 1
    inc = emits[0].incident
    assert inc.type == "crash" and inc.confidence >= 0.6
    assert inc.evidence.probes == 2
    stop = track("dev-a", HARD_STOP)[-1]
    assert geo.distance_m(inc.lat, inc.lon, stop["lat"], stop["lon"]) < 1.0
    assert inc.heading_deg == 90.0
    alert = to_alert(emits[0])
    assert "dev-a" not in repr(alert) and "dev-b" not in repr(alert)


def test_hard_brake_alone_is_no_crash() -> None:
    road = Road()
    assert road.drive(track("dev-a", HARD_STOP), traffic=FLOWING) == []
    assert road.drive(track("dev-c", HARD_STOP, t0=T0 + 1000), traffic=None) == []


def test_hard_brake_into_a_jam_alone_is_no_crash() -> None:
    assert Road().drive(track("dev-a", HARD_STOP), traffic=JAMMED, passing=False) == []


def test_a_red_light_with_its_queue_is_no_crash() -> None:
    """A hard stop, a second car stopped behind, traffic collapsed, but nothing in its direction goes past."""
    assert Road().drive(*crash_scene(), traffic=JAMMED, passing=False) == []


def test_a_hard_stop_where_others_stopped_just_before_is_no_crash() -> None:
    """A stop line or a jam's stop-and-go: two cars stopped at the same place shortly before."""
    a, b = crash_scene()
    earlier = [
        track(f"early-{i}", HARD_STOP[:6], start=geo.destination(*ORIGIN, 0.0, 2.0 * i), t0=T0 - 200 + 30 * i)
        for i in range(2)
    ]
    road = Road()
    road.drive(*earlier, passing=False)
    assert road.drive(a, b, traffic=JAMMED) == []
    assert Road().drive(a, b, traffic=JAMMED) != []  # the same crash where nobody stopped before


def test_hard_brake_with_collapse_and_a_report_opens() -> None:
    emits = Road().drive(track("dev-a", HARD_STOP), traffic=JAMMED, reports=1, passing=False)
    assert [e.state for e in emits] == ["opened"]
    assert emits[0].incident.confidence == 0.7


def test_gentle_stop_beside_a_stopped_vehicle_is_no_crash() -> None:
    """Two vehicles standing together without a hard brake is a queue, a light or a car park."""
    a = track("dev-a", GENTLE_STOP)
    b = parallel("dev-b", GENTLE_STOP, beside(a, 8.0), t0=T0 + 10)
    assert Road().drive(a, b, traffic=JAMMED, reports=0) == []


def test_reports_raise_confidence_and_emit_updated() -> None:
    road = Road()
    opened = road.drive(*crash_scene(), traffic=FLOWING)
    assert [e.state for e in opened] == ["opened"] and opened[0].incident.confidence == 0.8
    now = T0 + 320  # both vehicles still stand there
    up = road.tick(now, FLOWING, reports=1)
    assert [e.state for e in up] == ["updated"] and up[0].incident.confidence == 0.95
    assert up[0].version > opened[0].version
    assert road.tick(now + 1, FLOWING, reports=1) == []  # nothing new
    assert road.tick(now + 2, JAMMED, reports=3) == []  # capped at 0.99: less than a step up
    assert road.tick(now + 4, FLOWING, reports=0) == []  # confidence never falls back while open


def test_cleared_once_vehicles_moved_and_traffic_recovered() -> None:
    road = Road()
    a, b = crash_scene()
    road.drive(a, b, traffic=JAMMED)
    t_end = a[-1]["ts"]
    away_a = track("dev-a", [0.0, 8.0, 12.0], start=(a[-1]["lat"], a[-1]["lon"]), t0=t_end + 5)
    away_b = track("dev-b", [0.0, 8.0, 12.0], start=(b[-1]["lat"], b[-1]["lon"]), t0=b[-1]["ts"] + 5)
    for p in away_a + away_b:
        p["seq"] += 1000
    assert [e.state for e in road.drive(away_a, away_b, traffic=JAMMED)] == []  # traffic still collapsed
    cleared = road.tick(t_end + 60, FLOWING)
    assert [e.state for e in cleared] == ["cleared"] and cleared[0].reason == "flow_restored"
    assert to_alert(cleared[0])["expires_at"] is None
    assert road.tick(t_end + 120, FLOWING) == []


def test_silent_vehicles_count_as_gone() -> None:
    road = Road()
    a, b = crash_scene()
    road.drive(a, b, traffic=JAMMED)
    last = max(v.seen_at for area in road.areas.values() for v in area.vehicles.values())
    assert road.tick(last + crash.VEHICLE_SILENCE_S - 1, FLOWING) == []
    assert [e.reason for e in road.tick(last + crash.VEHICLE_SILENCE_S + 1, FLOWING)] == ["flow_restored"]


def test_cleared_after_max_age() -> None:
    road = Road()
    emits = road.drive(*crash_scene(), traffic=JAMMED)
    opened_at = emits[0].incident.opened_at
    assert emits[0].incident.expires_at == opened_at + crash.MAX_AGE_S
    assert road.tick(opened_at + crash.MAX_AGE_S - 1, JAMMED) == []
    late = road.tick(opened_at + crash.MAX_AGE_S, JAMMED)
    assert [(e.state, e.reason) for e in late] == [("cleared", "expired")]


def test_a_candidate_that_drives_on_is_dropped() -> None:
    a = track("dev-a", [20.0] * 4 + [0.0] * 4 + [6.0, 12.0, 15.0])  # brakes hard, waits 15 s, drives on
    b = parallel("dev-b", GENTLE_STOP, beside(a, 8.0), t0=T0 + 200)
    road = Road()
    assert road.drive(a, b, traffic=JAMMED) == []
    assert all(area.crash is None for area in road.areas.values())


def test_boundary_unseen_brake_still_corroborates() -> None:
    """dev-a's brake happened in another partition: its stop is seeded, but dev-b braked hard here too."""
    a = track("dev-a", HARD_STOP)[4:]  # the first ping this partition sees is already standing
    b = parallel("dev-b", HARD_STOP, beside(track("dev-a", HARD_STOP), 8.0), t0=T0 + 10)
    assert Road().drive(a, traffic=JAMMED) == []  # alone it is no candidate: no brake is known
    emits = Road().drive(a, b, traffic=JAMMED)
    assert [e.state for e in emits][:1] == ["opened"] and emits[0].incident.evidence.probes == 2


def test_area_keys_start_at_home_and_respect_the_partition() -> None:
    keys = crash.area_keys(*ORIGIN)
    assert keys[0] == geo.cell(*ORIGIN, 9) and len(keys) == len(set(keys))
    home7 = geo.parent(keys[0], 7)
    assert all(geo.parent(k, 7) == home7 for k in crash.area_keys(*ORIGIN, key7=home7))
    # a point next to a cell edge reaches the neighbour
    c = geo.cell(*ORIGIN, 9)
    lat, lon = ORIGIN
    for d in range(0, 400, 5):
        lat, lon = geo.destination(*ORIGIN, 90.0, float(d))
        if geo.cell(lat, lon, 9) != c:
            break
    edge = geo.destination(lat, lon, 270.0, 5.0)
    assert len(crash.area_keys(*edge)) >= 2


def test_watch_names_the_candidates_cell_and_sector() -> None:
    road = Road()
    road.drive(*crash_scene(), traffic=JAMMED)
    watched = [crash.watch(a) for a in road.areas.values() if a.crash is not None]
    assert len(watched) == 1 and watched[0] is not None and watched[0][1] == geo.sector(90.0)


def test_bytes_round_trip_and_expire() -> None:
    road = Road()
    road.drive(*crash_scene(), traffic=JAMMED)
    for area in road.areas.values():
        assert CrashArea.from_bytes(area.to_bytes()) == area
    area = next(a for a in road.areas.values() if a.crash is not None)
    assert not crash.expire(area, T0 + 10_000)  # an open crash is kept until cleared
    empty = next((a for a in road.areas.values() if a.crash is None), None)
    if empty is not None:
        assert crash.expire(empty, T0 + 10_000)


def test_facts_other_than_stops_do_not_make_candidates() -> None:
    brake = motion.HardBrake("dev-a", T0, *ORIGIN, 90.0, 6.0)
    area, emits = crash.step(None, brake, T0, cell=geo.cell(*ORIGIN, 9), traffic_mps=JAMMED, reports=3)
    assert emits == [] and area.crash is None
    stopped = Stopped("dev-a", T0, T0 + 10, *ORIGIN, 90.0, None)
    area, emits = crash.step(area, stopped, T0 + 11, cell=area.cell, traffic_mps=JAMMED, reports=3)
    assert emits == [] and area.crash is None


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.floats(min_value=1.5, max_value=35.0), min_size=2, max_size=30), min_size=1, max_size=4),
    st.sampled_from([None, JAMMED, FLOWING]),
    st.integers(0, 3),
)
def test_no_crash_from_vehicles_that_never_stood(tracks: list[list[float]], traffic: float | None, n: int) -> None:
    road = Road()
    pings = [track(f"dev-{i}", speeds) for i, speeds in enumerate(tracks)]
    assert road.drive(*pings, traffic=traffic, reports=n) == []


def test_braking_into_the_tail_of_a_queue_is_left_to_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same scene whose candidate stands behind a line of two: its second vehicle is the queue."""
    from functools import partial

    monkeypatch.setattr(crash, "step", partial(crash.step, queue_tail=True))
    road = Road()
    assert road.drive(*crash_scene(), traffic=JAMMED) == []
    reported = Road()
    assert [e.state for e in reported.drive(*crash_scene(), traffic=JAMMED, reports=1)][:1] == ["opened"]


def test_probes_wait_for_the_candidates_own_stop_to_be_known() -> None:
    """Evaluated with the spots of the others only (the candidate's stop not yet among them), nothing opens:
    whether it stands where others stopped is unknown, not "nobody did". With its spot it opens, unless usual."""
    home = geo.cell(*ORIGIN, 9)
    spots = Spots()
    second = geo.destination(*ORIGIN, 0.0, 8.0)
    spots.place("dev-b", *second, 90.0, T0 - 5, T0)
    for car in cars_going_past({"lat": second[0], "lon": second[1]}, T0 + 5):
        for p in car:
            c9 = geo.cell(p["lat"], p["lon"], 9)
            if c9 in spots.by_cell:
                spots.see(c9, p["device_id"], p["ts"], p["lat"], p["lon"], p["speed_mps"], p["heading_deg"])
    assert len(spots.by_device["dev-b"].passers) >= crash.PASSERS_MIN
    area, _ = crash.step(None, Stopped("dev-b", T0 - 5, T0 + 5, *second, 90.0, None), T0 + 100, cell=home)
    candidate = Stopped("dev-a", T0, T0 + 10, *ORIGIN, 90.0, 4.0)

    def opens(standing: dict[str, Any]) -> bool:
        a = CrashArea.from_bytes(area.to_bytes())
        crash.step(a, candidate, T0 + 101, cell=home, traffic_mps=JAMMED, free_flow_mps=FREE, standing=standing)
        return a.crash is not None and a.crash.opened_at is not None

    assert not opens(spots.standing(area.vehicles))  # dev-a not yet in the area: its spot is not looked up
    spots.place("dev-a", *ORIGIN, 90.0, T0, T0 + 10)
    assert opens(spots.standing([*area.vehicles, "dev-a"]))
    spots.by_device["dev-a"].usual = True
    assert not opens(spots.standing([*area.vehicles, "dev-a"]))
