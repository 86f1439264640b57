"""What drivers do about an incident they meet: report it, and turn off a closed road.

A driver *sees* an incident it passes: a stall, a crash or road work on its own edge
within :data:`WITNESS_M`. Nobody passes a closure: a driver sees it on arriving at the
barrier, i.e. when the closed edge is next on its route within :data:`SIGHT_M` (the head of
the queue, or approaching a junction whose exit is shut). A share of drivers who see an
incident report it (``report_share``, ``POST /v1/reports`` with the incident's type: a
closure is reported as ``closure``), once each, from where they are.

Facing a closure, every driver does what a driver without the app does: turns off and
takes the way the map suggests with that road left out (:meth:`~pipeline.sim.sumo.Sumo.detour`,
free-flow times, no live traffic). SUMO itself would keep them waiting at the barrier until
it reopens. One whose destination lies past the barrier with no other way in parks there
(its trip ends; it is left out of the score). Drivers who took the app's reroute before
never get there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pipeline import geo
from pipeline.sim.inject import TrueIncident
from pipeline.sim.phones import Phone, chosen
from pipeline.sim.sumo import Vehicle

WITNESS_M = 150.0  # a driver this close to an incident on its edge may report it
SIGHT_M = 100.0  # a closed road this far ahead along the route is in sight (barrier, police) in city traffic
NEAR_M = 400.0  # straight-line pre-filter: only vehicles this close are asked for their route


class Road(Protocol):
    def driving_distance(self, vid: str, edge: str) -> float: ...

    def detour(self, vid: str, closed: str) -> bool: ...

    def end_trip(self, vid: str) -> None: ...


class Reporter(Protocol):
    def report(self, token: str, type_: str, lat: float, lon: float, heading: float, ts: float) -> None: ...


@dataclass
class Drivers:
    road: Road
    uplink: Reporter
    report_share: float
    salt: str
    witnessed: set[tuple[str, int]] = field(default_factory=set)  # (vehicle, incident) seen once
    detours: dict[str, float] = field(default_factory=dict)  # vehicle → sim time it turned off at a closure
    stranded: set[str] = field(default_factory=set)  # no way round: parked at the barrier (out of the score)

    def tick(
        self, vehicles: dict[str, Vehicle], phones: dict[str, Phone], active: list[TrueIncident], ts: float, t: float
    ) -> None:
        """Every vehicle that sees an active incident now: reports it (a share) and, at a closure, turns off."""
        for tr in active:
            for vid, v in vehicles.items():
                key = (vid, tr.index)
                if key in self.witnessed or geo.distance_m(v.lat, v.lon, tr.lat, tr.lon) > NEAR_M:
                    continue
                if tr.kind == "closure":
                    ahead = self.road.driving_distance(vid, tr.edge)
                    if not 0.0 <= ahead <= SIGHT_M:
                        continue
                    self.witnessed.add(key)
                    self._report(vid, v, tr, phones, ts)
                    if self.road.detour(vid, tr.edge):
                        self.detours.setdefault(vid, t)
                    else:  # its destination lies past the barrier: waiting there would block the lane for all
                        self.road.end_trip(vid)
                        self.stranded.add(vid)
                elif v.edge == tr.edge and geo.distance_m(v.lat, v.lon, tr.lat, tr.lon) <= WITNESS_M:
                    self.witnessed.add(key)
                    if vid not in tr.vehicles:  # the crashed or stalled ones do not report themselves
                        self._report(vid, v, tr, phones, ts)

    def _report(self, vid: str, v: Vehicle, tr: TrueIncident, phones: dict[str, Phone], ts: float) -> None:
        phone = phones.get(vid)
        if phone is not None and chosen(vid, self.report_share, f"{self.salt}rep{tr.index}"):
            self.uplink.report(phone.token, tr.alert_type, v.lat, v.lon, v.heading, ts)
