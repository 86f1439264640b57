"""A taker drives the way the app offered: the reroute polyline matched to SUMO edges, the way they are driven.

Real SUMO (libsumo) and the push worker's own router on the Adlershof net, around the
blocking scenario's closed road. A nearest-road lookup picked wrong-way edges (both directions
of an OpenStreetMap road share one centre line), and joining them made takers drive loops:
the way they took was 2.1x the free-flow time of the way offered.
"""

from __future__ import annotations

from pipeline import geo
from pipeline.routing import network
from pipeline.routing.router import Router
from pipeline.sim.follow import Matcher
from pipeline.sim.reroute import Rerouter
from pipeline.sim.sumo import Network, Sumo, Vehicle, net_path

CLOSED = "143308549#1"  # Rudower Chaussee (scenarios/blocking.toml)
ENTRY, EXIT = "46039050#0", "40191607#1"


def test_a_taker_drives_the_offered_way_round_the_closure_not_a_loop() -> None:
    net = Network(net_path("DRT"))
    router = Router(network.load(net.path, "DRT"))
    lat, lon, heading = net.point(CLOSED, 0, 0.0)
    router.on_alert({"id": "i-1", "type": "closure", "cell": geo.cell(lat, lon, 9), "heading_deg": heading})
    ids = [e.sumo_id for e in router.net.edges]
    start = router.net.edges[ids.index(ENTRY)].target
    sim = Sumo(net, seed=1, step_s=1.0)
    try:
        route = sim.via((ENTRY, EXIT))
        assert CLOSED in route
        end = Rerouter(sim, Matcher(net.path)).polyline([EXIT])[0]
        offer = router.route_nodes(start, router.nearest(*end)[0])
        assert offer is not None
        offered = [ids[i] for i in offer.edges]
        matched = Matcher(net.path).edges(offer.polyline)
        assert set(matched) <= set(offered)  # no wrong-way edge, nothing beside the way
        assert len(matched) >= 0.9 * len(offered)
        sim.add("taker", route, depart=0.0, from_outside=True)
        vehicles, _ = sim.step()
        v = vehicles["taker"]
        assert v.edge == ENTRY
        rr = Rerouter(sim, Matcher(net.path))
        assert rr._follow("taker", v, list(offer.polyline))
        taken = sim.remaining_route("taker")
        assert taken == [ENTRY, *offered, EXIT]  # the way offered, edge for edge, then its destination edge
        assert CLOSED not in taken
        # an offer whose way starts from a junction the vehicle has passed is not joined by a loop back
        behind = Vehicle("taker", v.lat, v.lon, v.speed, v.heading, EXIT, 0, 0.0)
        assert not rr._follow("taker", behind, list(offer.polyline))
    finally:
        sim.close()
