"""A closed road in real SUMO (libsumo, the Adlershof net): what SUMO does by itself, and what drivers do.

SUMO alone keeps a car whose route crosses the closed edge waiting at the barrier (no
rerouting of its own, no teleport): the runner's drivers (pipeline/sim/drivers.py) are
what makes them turn off, each on the map's way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libsumo  # type: ignore[import-untyped]

from pipeline.sim.drivers import Drivers
from pipeline.sim.inject import TrueIncident
from pipeline.sim.phones import Phone
from pipeline.sim.sumo import Network, Sumo, net_path

CLOSED = "143308549#1"  # Rudower Chaussee (scenarios/blocking.toml)
THROUGH = ("46039050#0", "40191607#1")


@dataclass
class Reports:
    sent: list[str] = field(default_factory=list)

    def report(self, token: str, type_: str, lat: float, lon: float, heading: float, ts: float) -> None:
        self.sent.append(type_)


def test_sumo_keeps_cars_at_a_closed_road_and_drivers_turn_off_round_it() -> None:
    net = Network(net_path("DRT"))
    sim = Sumo(net, seed=1, step_s=1.0)
    try:
        route = sim.via(THROUGH)
        assert CLOSED in route
        for i in range(4):  # with the runner's drivers
            sim.add(f"driver{i}", route, depart=float(i * 4), from_outside=True)
        for i in range(4):  # left alone, later (they block the lanes at the barrier): SUMO's own behaviour
            sim.add(f"alone{i}", route, depart=float(60 + i * 4), from_outside=True)
        sim.close_edge(CLOSED)
        lat, lon, heading = net.point(CLOSED, 0, 0.0)
        tr = TrueIncident(0, "closure", CLOSED, 0, 0.0, lat, lon, heading, start_s=0.0, injected=True)
        up = Reports()
        drivers = Drivers(sim, up, report_share=1.0, salt="t")
        phones = {f"driver{i}": Phone(f"d{i}", f"tok{i}", 0.0, 0.0) for i in range(4)}
        arrived: set[str] = set()
        teleports = 0
        mine_all = set(phones)
        while sim.t < 700 and not mine_all <= arrived:
            vehicles, done = sim.step()
            arrived |= set(done)
            teleports += libsumo.simulation.getStartingTeleportNumber()
            assert not any(v.edge == CLOSED for v in vehicles.values()), "a car got onto the closed road"
            mine = {vid: v for vid, v in vehicles.items() if vid.startswith("driver")}
            drivers.tick(mine, phones, [tr], ts=0.0, t=sim.t)
        assert teleports == 0
        alone = [f"alone{i}" for i in range(4)]
        assert not arrived & set(alone)  # still at the barrier, routes unchanged: SUMO did not reroute them
        assert all(CLOSED in sim.remaining_route(v) for v in alone)
        assert {f"driver{i}" for i in range(4)} <= arrived  # every driver found the way round and got there
        assert set(drivers.detours) == set(phones) and up.sent == ["closure"] * 4
    finally:
        sim.close()
