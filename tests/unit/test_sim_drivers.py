"""Drivers at incidents: who sees what, who reports it, and what a driver does at a closed road."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline import geo
from pipeline.sim.drivers import SIGHT_M, Drivers
from pipeline.sim.inject import TrueIncident
from pipeline.sim.phones import Phone
from pipeline.sim.sumo import Vehicle

BARRIER = (52.4335, 13.5375)


@dataclass
class FakeRoad:
    """Metres to the closed edge per vehicle (absent: not on its route); who has a way round."""

    ahead: dict[str, float]
    no_way_round: set[str] = field(default_factory=set)
    detoured: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)

    def driving_distance(self, vid: str, edge: str) -> float:
        return self.ahead.get(vid, -1e9)

    def detour(self, vid: str, closed: str) -> bool:
        self.detoured.append(vid)
        return vid not in self.no_way_round

    def end_trip(self, vid: str) -> None:
        self.parked.append(vid)


@dataclass
class FakeUplink:
    sent: list[tuple[str, str]] = field(default_factory=list)

    def report(self, token: str, type_: str, lat: float, lon: float, heading: float, ts: float) -> None:
        self.sent.append((token, type_))


def car(vid: str, metres_before: float, edge: str = "approach") -> Vehicle:
    lat, lon = geo.destination(*BARRIER, 225.0, metres_before)
    return Vehicle(vid, lat, lon, 0.0, 45.0, edge, 0, 10.0)


def phones(*ids: str) -> dict[str, Phone]:
    return {v: Phone(v, f"tok-{v}", 0.0, 0.0) for v in ids}


def closure() -> TrueIncident:
    return TrueIncident(1, "closure", "closed", 0, 60.0, *BARRIER, 45.0, start_s=60.0, injected=True)


def test_drivers_at_the_barrier_report_the_closure_once_and_turn_off_the_others_not_yet() -> None:
    road = FakeRoad({"front": 20.0, "second": SIGHT_M - 5, "back": SIGHT_M + 80})
    up = FakeUplink()
    d = Drivers(road, up, report_share=1.0, salt="s")
    cars = {c.id: c for c in (car("front", 20), car("second", SIGHT_M - 5), car("back", SIGHT_M + 80), car("x", 30))}
    d.tick(cars, phones(*cars), [closure()], ts=1000.0, t=100.0)
    d.tick(cars, phones(*cars), [closure()], ts=1001.0, t=101.0)  # seen once: one report, one turn each
    assert sorted(up.sent) == [("tok-front", "closure"), ("tok-second", "closure")]
    assert sorted(road.detoured) == ["front", "second"] and d.detours == {"front": 100.0, "second": 100.0}
    # the one further back reaches the barrier later, and then does the same
    road.ahead["back"] = 10.0
    d.tick(cars, phones(*cars), [closure()], ts=1010.0, t=110.0)
    assert road.detoured[-1] == "back" and len(up.sent) == 3


def test_report_share_picks_reporters_but_every_driver_turns_off() -> None:
    ids = [f"v{i}" for i in range(200)]
    road = FakeRoad(dict.fromkeys(ids, 10.0))
    up = FakeUplink()
    d = Drivers(road, up, report_share=0.3, salt="s")
    d.tick({v: car(v, 10) for v in ids}, phones(*ids), [closure()], ts=0.0, t=100.0)
    assert len(road.detoured) == 200
    assert 40 <= len(up.sent) <= 80  # ~30 %


def test_a_driver_whose_destination_lies_past_the_barrier_parks_and_is_left_out() -> None:
    road = FakeRoad({"home": 5.0}, no_way_round={"home"})
    d = Drivers(road, FakeUplink(), report_share=0.0, salt="s")
    d.tick({"home": car("home", 5)}, phones("home"), [closure()], ts=0.0, t=100.0)
    assert road.parked == ["home"] and d.stranded == {"home"} and d.detours == {}


def test_a_crash_is_seen_by_those_passing_it_on_its_edge_but_not_by_the_crashed_cars() -> None:
    crash = TrueIncident(2, "crash", "main", 0, 60.0, *BARRIER, 45.0, start_s=60.0, injected=True, vehicles=["c1"])
    cars = {
        "c1": car("c1", 0, "main"),
        "near": car("near", 100, "main"),
        "far": car("far", 300, "main"),
        "side": car("side", 50, "cross"),
    }
    up = FakeUplink()
    road = FakeRoad({})
    Drivers(road, up, report_share=1.0, salt="s").tick(cars, phones(*cars), [crash], ts=0.0, t=100.0)
    assert up.sent == [("tok-near", "crash")] and road.detoured == []
