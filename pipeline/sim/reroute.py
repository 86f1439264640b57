"""Reroutes offered over ``/v1/stream``, taken (or not) by SUMO vehicles, and what they gained.

A vehicle decides once, at its first offer, with a stable draw of ``accept_reroute_share``:
the takers follow every offer, the others none, so the two groups differ only by the
draw. Taking an offer: the ``polyline`` (``[lat, lon]`` pairs) is matched to SUMO edges
(``convertRoad``), joined to the vehicle's current edge and destination by shortest paths,
and set with ``setRoute``; a polyline that cannot be driven is counted, not applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.sim.listen import Subscriber
from pipeline.sim.phones import chosen
from pipeline.sim.score import RerouteOutcome
from pipeline.sim.sumo import Sumo, TraCIError, Vehicle


@dataclass
class Taken:
    accepted: bool
    offer_s: float
    free_s: float  # free-flow time of the route the vehicle had at its first offer
    applied: int = 0
    unusable: int = 0
    arrived_s: float | None = None


class Rerouter:
    def __init__(self, sim: Sumo) -> None:
        self.sim = sim
        self.shapes: dict[str, list[tuple[float, float]]] = {}
        self.vehicles: dict[str, Taken] = {}

    def polyline(self, edges: Iterable[str]) -> list[tuple[float, float]]:
        """A route's (lat, lon) polyline: each edge's start and end (shapes cached)."""
        out: list[tuple[float, float]] = []
        for e in edges:
            if e.startswith(":"):
                continue
            shape = self.shapes.get(e)
            if shape is None:
                full = self.sim.net.edge_shape(e)
                shape = self.shapes[e] = [full[0], full[-1]] if len(full) > 1 else full
            out += shape
        return out

    def apply(
        self, subs: dict[str, Subscriber], vehicles: dict[str, Vehicle], t: float, *, chosen_share: float, salt: str
    ) -> list[str]:
        news: list[str] = []
        for vid, sub in subs.items():
            if not sub.offers or vid not in vehicles:
                continue
            offers, sub.offers = sub.offers, []
            taken = self.vehicles.get(vid)
            if taken is None:
                remaining = self.sim.remaining_route(vid)
                free = sum(self.sim.net.free_s(e) for e in remaining if not e.startswith(":"))
                taken = self.vehicles[vid] = Taken(chosen(vid, chosen_share, salt + "reroute"), t, free)
            if not taken.accepted:
                continue
            if self._follow(vid, vehicles[vid], offers[-1].polyline):
                taken.applied += 1
                saved = offers[-1].saved_s
                news.append(f"reroute accepted by {vid}" + (f" (saves {saved:.0f}s)" if saved is not None else ""))
            else:
                taken.unusable += 1
        return news

    def _follow(self, vid: str, v: Vehicle, line: list[tuple[float, float]]) -> bool:
        if v.edge.startswith(":"):
            return False  # on a junction: SUMO wants the route from the next edge; the next offer will do
        matched: list[str] = []
        for lat, lon in line:
            try:
                e = self.sim.road_at(lat, lon)
            except TraCIError:
                continue
            if e and not e.startswith(":") and (not matched or matched[-1] != e):
                matched.append(e)
        if v.edge in matched:
            matched = matched[matched.index(v.edge) + 1 :]
        dest = self.sim.destination(vid)
        route = [v.edge]
        try:
            for e in [*matched, dest]:
                if e == route[-1]:
                    continue
                part, _ = self.sim.route(route[-1], e)
                if not part:
                    return False
                route += part[1:]
            self.sim.set_route(vid, route)
        except TraCIError:
            return False
        return True

    def arrived(self, ids: Iterable[str], t: float) -> None:
        for vid in ids:
            taken = self.vehicles.get(vid)
            if taken is not None:
                taken.arrived_s = t

    def outcomes(self, end_s: float) -> list[RerouteOutcome]:
        """Per vehicle offered a reroute; one still driving at the end counts until then (a lower bound)."""
        return [
            RerouteOutcome(vid, k.accepted, ((k.arrived_s or end_s) - k.offer_s) / k.free_s)
            for vid, k in self.vehicles.items()
            if k.free_s > 0
        ]
