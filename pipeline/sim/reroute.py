"""Reroutes offered over ``/v1/stream``, taken (or not) by SUMO vehicles, and what they gained.

A vehicle decides once, at its first offer, with a stable draw of ``accept_reroute_share``:
the takers follow every offer, the others none, so the two groups differ only by the
draw. Taking an offer: the ``polyline`` (``[lat, lon]`` pairs) is matched to SUMO edges the
way they are driven (:mod:`pipeline.sim.follow`), joined to the vehicle's current edge and
destination by shortest paths, and set with ``setRoute``. An offer whose way leaves from a
junction the vehicle has already passed (it was a step or two late) is not applied: the
driver missed the turn, and the next subscribe plans from where it is. A polyline that
cannot be driven is counted, not applied.

The closure group (the score's rerouting benefit): the first offer that names a closure
(``reason`` an alert id, or ``blocked``) while the vehicle's route crosses a road that is
really closed then. From that offer on, its time to arrival is what the score compares.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.sim.follow import Matcher
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
    closure_s: float | None = None  # first offer about a closure its route crossed (the closure group)
    closure_free_s: float = 0.0  # free-flow time of the route it had then


class Rerouter:
    def __init__(self, sim: Sumo, matcher: Matcher | None = None) -> None:
        self.sim = sim
        self.matcher = matcher or Matcher(sim.net.path)
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
        self,
        subs: dict[str, Subscriber],
        vehicles: dict[str, Vehicle],
        t: float,
        *,
        chosen_share: float,
        salt: str,
        closed: frozenset[str] = frozenset(),
    ) -> list[str]:
        """Offers received since the last step: recorded, and followed by the takers.

        ``closed``: the edges closed in SUMO now (an offer about a closure counts for the
        closure group only when the vehicle's route really crosses one of them).
        """
        news: list[str] = []
        for vid, sub in subs.items():
            if not sub.offers or vid not in vehicles:
                continue
            offers, sub.offers = sub.offers, []
            taken = self.vehicles.get(vid)
            remaining: list[str] | None = None
            if taken is None:
                remaining = self.sim.remaining_route(vid)
                taken = self.vehicles[vid] = Taken(
                    chosen(vid, chosen_share, salt + "reroute"), t, self._free(remaining)
                )
            if taken.closure_s is None and closed and any(o.about_closure for o in offers):
                remaining = remaining or self.sim.remaining_route(vid)
                if not closed.isdisjoint(remaining):
                    taken.closure_s, taken.closure_free_s = t, self._free(remaining)
            if not taken.accepted:
                continue
            if self._follow(vid, vehicles[vid], offers[-1].polyline):
                taken.applied += 1
                saved = offers[-1].saved_s
                news.append(f"reroute accepted by {vid}" + (f" (saves {saved:.0f}s)" if saved is not None else ""))
            else:
                taken.unusable += 1
        return news

    def _free(self, edges: list[str]) -> float:
        return sum(self.sim.net.free_s(e) for e in edges if not e.startswith(":"))

    def waiting(self, left_out: set[str]) -> set[str]:
        """Vehicles of the closure group still driving."""
        return {
            vid
            for vid, k in self.vehicles.items()
            if k.closure_s is not None and k.arrived_s is None and vid not in left_out
        }

    def _follow(self, vid: str, v: Vehicle, line: list[tuple[float, float]]) -> bool:
        if v.edge.startswith(":"):
            return False  # on a junction: SUMO wants the route from the next edge; the next offer will do
        matched = self.matcher.edges(line)
        if v.edge in matched:
            matched = matched[matched.index(v.edge) + 1 :]
        elif matched and not self.sim.net.leads_to(v.edge, matched[0]):
            return False  # the way leaves from behind the vehicle: joining it would mean a loop back
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

    def outcomes(self, end_s: float, left_out: set[str]) -> list[RerouteOutcome]:
        """Per vehicle offered a reroute: from its first offer, and (closure group) from its closure offer.

        A vehicle still driving at ``end_s`` counts until then (a lower bound); ``left_out``: trips
        that ended at a barrier (no way round) are not counted."""
        out = []
        for vid, k in self.vehicles.items():
            if vid in left_out:
                continue
            arrived = k.arrived_s is not None
            end = k.arrived_s if k.arrived_s is not None else end_s
            if k.free_s > 0:
                out.append(RerouteOutcome(vid, k.accepted, (end - k.offer_s) / k.free_s, arrived=arrived))
            if k.closure_s is not None and k.closure_free_s > 0:
                ratio = (end - k.closure_s) / k.closure_free_s
                out.append(RerouteOutcome(vid, k.accepted, ratio, closure=True, arrived=arrived))
        return out
