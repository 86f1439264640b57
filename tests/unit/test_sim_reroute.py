"""The rerouter's closure group: which offer puts a vehicle in it, and what counts for the score."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.sim.listen import Offer, Subscriber
from pipeline.sim.phones import chosen
from pipeline.sim.reroute import Rerouter
from pipeline.sim.sumo import Vehicle


@dataclass
class FakeNet:
    def free_s(self, edge: str) -> float:
        return 10.0

    def leads_to(self, a: str, b: str) -> bool:
        return True


class FakeMatcher:
    def edges(self, line: list[tuple[float, float]]) -> list[str]:
        return ["alt"]


@dataclass
class FakeSim:
    routes: dict[str, list[str]]
    net: FakeNet = field(default_factory=FakeNet)

    def remaining_route(self, vid: str) -> list[str]:
        return self.routes[vid]

    def destination(self, vid: str) -> str:
        return self.routes[vid][-1]

    def route(self, a: str, b: str) -> tuple[list[str], float]:
        return [a, b], 1.0

    def set_route(self, vid: str, edges: list[str]) -> None:
        self.routes[vid] = edges


def offer(reason: str) -> Offer:
    return Offer(0.0, [(52.43, 13.53), (52.44, 13.54)], 60.0, 100.0, reason)


def test_only_an_offer_about_a_closure_on_the_vehicles_real_route_starts_the_closure_group() -> None:
    ids = ["a", "b", "c", "d"]
    sim = FakeSim({v: ["here", "closed", "dest"] for v in ids} | {"d": ["here", "other", "dest"]})
    rr = Rerouter(sim, FakeMatcher())  # type: ignore[arg-type]
    subs = {v: Subscriber(v, "ws://x", "tok") for v in ids}
    cars = {v: Vehicle(v, 52.43, 13.53, 10.0, 0.0, "here", 0, 1.0) for v in ids}
    subs["a"].offers = [offer("i-closure")]
    subs["b"].offers = [offer("congestion")]  # not about the closure
    subs["c"].offers = [offer("i-closure")]
    subs["d"].offers = [offer("i-closure")]  # its route does not cross the closed road
    rr.apply(subs, cars, 100.0, chosen_share=0.5, salt="s", closed=frozenset({"closed"}))
    subs["b"].offers = [offer("congestion")]
    rr.apply(subs, cars, 110.0, chosen_share=0.5, salt="s")  # the closure is over
    assert {v for v, k in rr.vehicles.items() if k.closure_s is not None} == {"a", "c"}
    assert rr.vehicles["a"].closure_s == 100.0 and rr.vehicles["a"].closure_free_s == 30.0
    # the draw decides who follows: takers get the app's route, decliners keep theirs
    for v in ids:
        taken = chosen(v, 0.5, "sreroute")
        assert rr.vehicles[v].accepted is taken
        assert (sim.routes[v] == ["here", "alt", "dest"]) is taken
    rr.arrived(["a"], 160.0)
    assert rr.waiting(set()) == {"c"} and rr.waiting({"c"}) == set()
    outs = rr.outcomes(200.0, left_out={"c"})
    group = [o for o in outs if o.closure]
    assert [(o.vehicle, o.ratio, o.arrived) for o in group] == [("a", 2.0, True)]
    assert {o.vehicle for o in outs if not o.closure} == {"a", "b", "d"}
