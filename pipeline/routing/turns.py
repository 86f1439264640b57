"""The graph routes are searched on: junctions, split where the net restricts turns.

A plain junction graph lets a route leave a junction by any edge whatever edge it came
in by, so it offered banned left turns and U-turns the net does not build. The turns a
car may take are ``RoadNetwork.turns`` (SUMO's ``<connection>`` elements). The exact
model is the edge graph (vertex = road edge, arc = allowed turn, weight = the entered
edge's time); here its vertices that change nothing are merged, which keeps a query as
cheap as on the junction graph (DRT: 1,530 vertices and 3,100 arcs become 830 and 1,507;
the figures are in the router's docstring):

* at a junction where every turn between its edges is allowed (most: netconvert even
  builds a U-turn at most), "where the car is" needs no more than the junction: one vertex;
* a *restricted* junction (some in/out pair not connected) gets one vertex per edge coming
  in (its arcs: only that edge's turns) and an *arrival* vertex every edge in reaches for
  free (where a route to it ends);
* every junction has a *start* vertex, with an arc to each edge out of it, that nothing
  enters: a route starts there. A driver who arrived by edge X starts there too, with the
  arcs X may not take set to infinity for that query, and the one turning straight back
  made :data:`UTURN_PENALTY_S` dearer (OSRM's car profile uses the same 20 s): on a city
  street that is stopping for oncoming traffic, and a driver mid-route expects to be sent
  on, not back, unless back is clearly quicker. As nothing enters a start vertex, that
  touches no other way through the junction. Further along a route a U-turn appears only
  where the rules force one (a way round a banned turn), and is not charged.

An arc drives one road edge (or none: into an arrival vertex), so a route is the road
edges of its arcs, and an edge's new time rewrites only the arcs that drive it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import igraph  # type: ignore[import-untyped]
import numpy as np

from pipeline.routing.network import RoadNetwork

UTURN_PENALTY_S = 20.0


@dataclass(frozen=True)
class TurnGraph:
    graph: igraph.Graph
    arc_edge: np.ndarray  # int64 per arc: the road edge it drives; -1: into an arrival vertex (free)
    into: list[list[int]]  # per road edge: the arcs that drive it (what a new edge weight rewrites)
    start: list[int]  # per junction: its start vertex
    goal: list[int]  # per junction: the vertex a route to it ends at
    after: list[list[tuple[int, float]]]  # per road edge X: (start arc, added seconds) for a driver off X
    core: np.ndarray  # bool per road edge: in the largest set of edges that all reach each other
    core_in: np.ndarray  # bool per junction: an edge of the core ends there (it can be reached)
    core_out: np.ndarray  # bool per junction: an edge of the core starts there (it reaches the core)

    def arc_weights(self, edge_weights: np.ndarray) -> list[float]:
        """Per-arc weights from per-edge ones (a list: igraph reads it ~3x faster than an array)."""
        out: list[float] = np.append(edge_weights, 0.0)[self.arc_edge].tolist()
        return out


def allowed_turns(net: RoadNetwork) -> tuple[tuple[int, ...], ...]:
    """The net's turns; a net without any (no ``<connection>`` listed) may turn anywhere at a junction."""
    if any(net.turns):
        return net.turns
    leaving: dict[int, list[int]] = {}
    for i, e in enumerate(net.edges):
        leaving.setdefault(e.source, []).append(i)
    return tuple(tuple(leaving.get(e.target, ())) for e in net.edges)


def build(net: RoadNetwork) -> TurnGraph:
    edges, n_nodes = net.edges, len(net.node_ids)
    turns = allowed_turns(net)
    entering: list[list[int]] = [[] for _ in range(n_nodes)]
    leaving: list[list[int]] = [[] for _ in range(n_nodes)]
    for i, e in enumerate(edges):
        entering[e.target].append(i)
        leaving[e.source].append(i)
    restricted = [any(len(turns[a]) < len(leaving[v]) for a in entering[v]) for v in range(n_nodes)]
    # vertices: junction v (where a car may turn anywhere), start vertex n_nodes + v, then the split ones
    start = [n_nodes + v for v in range(n_nodes)]
    ends = [e.target for e in edges]  # the vertex of a car at the end of an edge
    goal = list(range(n_nodes))
    n_vertices = 2 * n_nodes
    for v in range(n_nodes):
        if restricted[v]:
            for a in entering[v]:
                ends[a], n_vertices = n_vertices, n_vertices + 1
            goal[v], n_vertices = n_vertices, n_vertices + 1
    pairs: list[tuple[int, int]] = []
    arc_edge: list[int] = []
    start_arc: dict[int, int] = {}  # road edge -> the arc driving it from its junction's start vertex
    for i, e in enumerate(edges):
        start_arc[i] = len(pairs)
        pairs.append((start[e.source], ends[i]))
        arc_edge.append(i)
        if not restricted[e.source]:
            pairs.append((e.source, ends[i]))
            arc_edge.append(i)
    for v in range(n_nodes):
        if restricted[v]:
            for a in entering[v]:
                pairs += [(ends[a], ends[b]) for b in turns[a]] + [(ends[a], goal[v])]
                arc_edge += [*turns[a], -1]
    into: list[list[int]] = [[] for _ in edges]
    for k, b in enumerate(arc_edge):
        if b >= 0:
            into[b].append(k)
    after: list[list[tuple[int, float]]] = []
    for a, e in enumerate(edges):
        allowed = set(turns[a])
        after.append(
            [(start_arc[b], math.inf) for b in leaving[e.target] if b not in allowed]
            + [(start_arc[b], UTURN_PENALTY_S) for b in turns[a] if edges[b].target == e.source]
        )
    core, core_in, core_out = _core(net, turns)
    return TurnGraph(
        igraph.Graph(n=n_vertices, edges=pairs, directed=True),
        np.array(arc_edge, dtype=np.int64),
        into,
        start,
        goal,
        after,
        core,
        core_in,
        core_out,
    )


def _core(net: RoadNetwork, turns: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The largest strongly connected set of edges under the turn rules, and the junctions it reaches/leaves."""
    n_edges, n_nodes = len(net.edges), len(net.node_ids)
    edge_graph = igraph.Graph(n=n_edges, edges=[(a, b) for a, bs in enumerate(turns) for b in bs], directed=True)
    core = np.zeros(n_edges, dtype=bool)
    if n_edges:
        core[max(edge_graph.connected_components(mode="strong"), key=len)] = True
    core_in = np.zeros(n_nodes, dtype=bool)
    core_out = np.zeros(n_nodes, dtype=bool)
    for i, e in enumerate(net.edges):
        if core[i]:
            core_in[e.target] = core_out[e.source] = True
    return core, core_in, core_out
