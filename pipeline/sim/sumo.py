"""Eclipse SUMO through libsumo: the road network, the demand, and where every vehicle is.

The networks are the OpenStreetMap-derived Berlin areas the ``eclipse-sumo`` package ships
(``sumo/tools/game/<name>/osm.net.xml``: ``DRT`` = Adlershof, 50 km/h city streets with
traffic lights; ``A10KW`` = the southern Berliner Ring near Königs Wusterhausen, motorway and
70 km/h roads). Coordinates are projected metres; :mod:`pipeline.sim.net` (sumolib)
un-projects them.

libsumo runs SUMO in-process (no TraCI socket): ~130× real time with ~1,000 vehicles on this
2-core machine (``DRT``, 1-s steps), so the simulator is never what limits a run.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import libsumo  # type: ignore[import-untyped]

from pipeline.sim.net import Network as Network  # re-exported: the runner builds both
from pipeline.sim.net import net_path as net_path
from pipeline.sim.scenario import Demand, Event

_POS, _SPEED, _ANGLE, _ROAD, _LANE, _LANEPOS = (
    libsumo.VAR_POSITION,
    libsumo.VAR_SPEED,
    libsumo.VAR_ANGLE,
    libsumo.VAR_ROAD_ID,
    libsumo.VAR_LANE_INDEX,
    libsumo.VAR_LANEPOSITION,
)
TraCIError = libsumo.TraCIException
STALL_DECEL = 1.5  # m/s²: a broken-down car coasting and braking to the kerb


@dataclass(frozen=True, slots=True)
class Vehicle:
    """One vehicle at one step, as its phone would see it (exact: noise is the phone's business)."""

    id: str
    lat: float
    lon: float
    speed: float
    heading: float  # degrees clockwise from north (SUMO's angle convention is the same)
    edge: str
    lane: int
    pos: float  # metres along the lane


class Sumo:
    """A running libsumo simulation (one per process: libsumo is a singleton)."""

    def __init__(self, net: Network, seed: int, step_s: float) -> None:
        self.net = net
        self.step_s = step_s
        self.t = 0.0
        self.vtype = "DEFAULT_VEHTYPE"
        libsumo.start(
            [
                "sumo",
                "-n",
                str(net.path),
                "--step-length",
                str(step_s),
                "--seed",
                str(seed),
                "--no-step-log",
                "true",
                "--no-warnings",
                "true",
                "--ignore-route-errors",
                "true",
                "--time-to-teleport",
                "900",  # SUMO's gridlock breaker, beyond any blockage of the scenarios: a car stuck
                # behind a closure must wait, not jump past it (that would flatter the decliners)
                "--collision.action",
                "warn",
            ]
        )

    def close(self) -> None:
        libsumo.close()

    # -- demand ----------------------------------------------------------------------
    def route(self, a: str, b: str) -> tuple[list[str], float]:
        r = libsumo.simulation.findRoute(a, b, vType="DEFAULT_VEHTYPE")
        return list(r.edges), float(r.length)

    def add(self, vid: str, edges: list[str], depart: float, *, from_outside: bool = False) -> None:
        """A vehicle: a trip inside the network starts from a parked position (speed 0, anywhere on its
        first edge); a flow from outside the network drives in at speed."""
        libsumo.route.add(f"r-{vid}", edges)
        libsumo.vehicle.add(
            vid,
            f"r-{vid}",
            typeID=self.vtype,
            depart=f"{depart:.1f}",
            departLane="best",
            departPos="base" if from_outside else "random_free",
            departSpeed="max" if from_outside else "0",
        )

    def add_demand(self, demand: Demand, events: Iterable[Event], duration_s: float, rng: random.Random) -> int:
        """Trips over the whole run: random ones, the corridor flow and congestion bursts (Poisson departures)."""
        self.vtype = "car"
        libsumo.vehicletype.copy("DEFAULT_VEHTYPE", self.vtype)
        libsumo.vehicletype.setDecel(self.vtype, demand.decel)
        n = 0
        edges = self.net.car_edges
        t = rng.expovariate(demand.vehicles_per_hour / 3600.0) if demand.vehicles_per_hour > 0 else duration_s
        while t < duration_s:
            for _ in range(20):  # a random pair may be unconnected or too short: draw again
                route, length = self.route(rng.choice(edges), rng.choice(edges))
                if route and length >= demand.min_trip_m:
                    self.add(f"v{n}", route, t)
                    n += 1
                    break
            t += rng.expovariate(demand.vehicles_per_hour / 3600.0)
        flows: list[tuple[str, tuple[str, ...], float, float, float]] = []
        if demand.corridor and demand.corridor_vehicles_per_hour > 0:
            flows.append(("c", demand.corridor, demand.corridor_vehicles_per_hour, 0.0, duration_s))
        flows += [("g", e.route, e.vehicles_per_hour, e.at_s, e.ends_s) for e in events if e.kind == "congestion"]
        for prefix, via, vph, start, end in flows:
            route = self.via(via)
            t = start + rng.expovariate(vph / 3600.0)
            while t < min(end, duration_s):
                self.add(f"{prefix}{n}", route, t, from_outside=True)
                n += 1
                t += rng.expovariate(vph / 3600.0)
        return n

    def via(self, edges: tuple[str, ...]) -> list[str]:
        """A route through ``edges`` in order (shortest paths between them)."""
        out = [edges[0]]
        for nxt in edges[1:]:
            part, _ = self.route(out[-1], nxt)
            if not part:
                raise ValueError(f"no route from {out[-1]} to {nxt}")
            out += part[1:]
        return out

    # -- stepping ----------------------------------------------------------------------
    def step(self) -> tuple[dict[str, Vehicle], list[str]]:
        """Advance one step; every vehicle in the network now, and those that arrived in this step."""
        self.t += self.step_s
        libsumo.simulationStep(self.t)
        for vid in libsumo.simulation.getDepartedIDList():
            libsumo.vehicle.subscribe(vid, (_POS, _SPEED, _ANGLE, _ROAD, _LANE, _LANEPOS))
        arrived = list(libsumo.simulation.getArrivedIDList())
        res = libsumo.vehicle.getAllSubscriptionResults()
        # a teleporting vehicle (SUMO's gridlock breaker) is nowhere: no road, an invalid position
        ids = [v for v, r in res.items() if r[_ROAD] and r[_POS][0] > -1e6]
        if not ids:
            return {}, arrived
        xs = [res[v][_POS][0] for v in ids]
        ys = [res[v][_POS][1] for v in ids]
        lat, lon = self.net.to_latlon(xs, ys)
        out = {}
        for i, v in enumerate(ids):
            r = res[v]
            out[v] = Vehicle(
                v,
                float(lat[i]),
                float(lon[i]),
                float(r[_SPEED]),
                float(r[_ANGLE]) % 360.0,
                r[_ROAD],
                r[_LANE],
                r[_LANEPOS],
            )
        return out, arrived

    # -- what the scenario and the drivers do to vehicles -----------------------------------
    def remaining_route(self, vid: str) -> list[str]:
        route = libsumo.vehicle.getRoute(vid)
        return list(route[max(0, libsumo.vehicle.getRouteIndex(vid)) :])

    def destination(self, vid: str) -> str:
        return str(libsumo.vehicle.getRoute(vid)[-1])

    def set_route(self, vid: str, edges: list[str]) -> None:
        libsumo.vehicle.setRoute(vid, edges)

    def road_at(self, lat: float, lon: float) -> str:
        edge, _, _ = libsumo.simulation.convertRoad(lon, lat, True, "passenger")
        return str(edge)

    def leader_follower(self, edge: str, lane: int, pos: float, gap_m: float) -> tuple[str, str] | None:
        """A vehicle on the lane before ``pos`` with a follower within ``gap_m``: a rear-end pair."""
        lane_id = f"{edge}_{lane}"
        cands = sorted(
            ((libsumo.vehicle.getLanePosition(v), v) for v in libsumo.lane.getLastStepVehicleIDs(lane_id)),
            reverse=True,
        )
        for p, v in cands:
            if p > pos + 30.0 or libsumo.vehicle.getSpeed(v) < 3.0:
                continue
            fol, gap = libsumo.vehicle.getFollower(v, gap_m)
            if fol and 0.0 <= gap <= gap_m and libsumo.vehicle.getLaneID(fol) == lane_id:
                return v, fol
        return None

    def stop_dead(self, vid: str) -> None:
        """Stand still at once, ignoring comfort limits (a collision), and stay in the lane."""
        libsumo.vehicle.setSpeedMode(vid, 0)
        libsumo.vehicle.setLaneChangeMode(vid, 0)
        libsumo.vehicle.setSpeed(vid, 0.0)

    def keep_lane(self, vid: str) -> None:
        libsumo.vehicle.setLaneChangeMode(vid, 0)

    def release(self, vid: str) -> None:
        libsumo.vehicle.setSpeed(vid, -1.0)
        libsumo.vehicle.setSpeedMode(vid, 31)
        libsumo.vehicle.setLaneChangeMode(vid, 1621)

    def stall_candidate(self, edge: str, lane: int, pos: float) -> str | None:
        """A vehicle on the lane that, rolling to a stop at :data:`STALL_DECEL`, stands near ``pos``."""
        best: tuple[float, str] | None = None
        for v in libsumo.lane.getLastStepVehicleIDs(f"{edge}_{lane}"):
            p, speed = libsumo.vehicle.getLanePosition(v), libsumo.vehicle.getSpeed(v)
            room = pos - p - speed * speed / (2 * STALL_DECEL)
            if room > 0 and (best is None or room < best[0]):
                best = (room, v)
        return best[1] if best else None

    def stall(self, vid: str) -> None:
        """An engine failure: the car rolls to a stop in its lane (gently: it is no crash) and stays."""
        libsumo.vehicle.setLaneChangeMode(vid, 0)
        speed = libsumo.vehicle.getSpeed(vid)
        libsumo.vehicle.slowDown(vid, 0.0, max(1.0, speed / STALL_DECEL))

    def hold(self, vid: str) -> None:
        libsumo.vehicle.setSpeed(vid, 0.0)

    def close_lanes(self, edge: str, lanes: Iterable[int]) -> dict[str, list[str]]:
        """Close lanes to every vehicle class but authorities; returns what to restore."""
        before = {}
        for i in lanes:
            lid = f"{edge}_{i}"
            before[lid] = list(libsumo.lane.getAllowed(lid))
            libsumo.lane.setAllowed(lid, ["authority"])
        return before

    def close_edge(self, edge: str) -> dict[str, list[str]]:
        """A closed road (police, barriers): no vehicle may enter any lane of it; returns what to restore.

        SUMO keeps every vehicle on the route it has: one whose next edge is closed stops at the
        end of its lane and waits there (no rerouting of its own; no teleport before
        ``--time-to-teleport``). What a driver does about it is the runner's business
        (:meth:`detour`). Vehicles already on the edge drive on and leave it.
        """
        return self.close_lanes(edge, range(self.lane_count(edge)))

    def driving_distance(self, vid: str, edge: str) -> float:
        """Metres along the vehicle's route to the start of ``edge`` (< 0: not on its route ahead)."""
        return float(libsumo.vehicle.getDrivingDistance(vid, edge, 0.0))

    def detour(self, vid: str, closed: str) -> bool:
        """The driver's own new way to the destination: the fastest by the map (free-flow times), the
        roads closed to cars left out. No live traffic: that is what a driver without the app knows.
        False when there is none (the destination lies past the closure): the route is kept."""
        libsumo.vehicle.rerouteTraveltime(vid, False)  # False: never load SUMO's live edge times
        return closed not in self.remaining_route(vid)

    def end_trip(self, vid: str) -> None:
        """The driver parks where it is (leaves the road)."""
        libsumo.vehicle.unsubscribe(vid)  # else the next step reports on a vehicle SUMO no longer knows
        libsumo.vehicle.remove(vid, libsumo.constants.REMOVE_PARKING)

    def reopen_lanes(self, before: dict[str, list[str]]) -> None:
        for lid, allowed in before.items():
            libsumo.lane.setAllowed(lid, allowed)

    def lane_count(self, edge: str) -> int:
        return int(libsumo.edge.getLaneNumber(edge))

    def vehicle_ids(self) -> list[str]:
        return list(libsumo.vehicle.getIDList())
