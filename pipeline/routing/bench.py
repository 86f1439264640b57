"""Route query time: ``python -m pipeline.routing.bench [DRT A10KW] [--pairs 2000] [--rounds 3]``.

The method of the router's table: random pairs of routable junctions, and before each
query one random cell's live speeds change (as condition updates do between queries);
only ``route_nodes`` is timed. Only the public API is used, so the same file times an
older checkout: ``PYTHONPATH=<checkout> python pipeline/routing/bench.py``. ``--arrived``:
from the end of a random edge, ``arrived_by`` it (a driver mid-route; this checkout only).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from pipeline.routing import network
from pipeline.routing.router import Router


def one_round(r: Router, pairs: int, rng: random.Random, arrived: bool = False) -> tuple[float, float]:
    """Median and p95 of one round, in µs."""
    nodes = [int(n) for n in r._snap_nodes]
    ins = [i for i, e in enumerate(r.net.edges) if e.target in set(nodes)]
    cells = sorted(r.by_cell)
    times = []
    for _ in range(pairs):
        a, b = rng.sample(nodes, 2)
        sectors = [{"sector": s, "median_mps": rng.uniform(1.0, 15.0), "level": 2} for s in range(8)]
        r.on_condition(rng.choice(cells), {"sectors": sectors})
        if arrived:
            came = rng.choice(ins)
            a = r.net.edges[came].target
            b = b if b != a else nodes[0] if a != nodes[0] else nodes[1]
            t0 = time.perf_counter_ns()
            r.route_nodes(a, b, arrived_by=came)
        else:
            t0 = time.perf_counter_ns()
            r.route_nodes(a, b)
        times.append((time.perf_counter_ns() - t0) / 1000.0)
    times.sort()
    return statistics.median(times), times[int(0.95 * len(times))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nets", nargs="*", default=list(network.BERLIN_NETS))
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--arrived", action="store_true", help="route on from the end of a random edge, arrived_by it")
    args = ap.parse_args(argv)
    for name in args.nets:
        r = Router(network.load(network.sumo_net_path(name)))
        rng = random.Random(args.seed)
        rounds = [one_round(r, args.pairs, rng, args.arrived) for _ in range(args.rounds)]
        shown = ", ".join(f"{m:.0f}/{p:.0f}" for m, p in rounds)
        med = statistics.median(m for m, _ in rounds)
        p95 = statistics.median(p for _, p in rounds)
        print(f"{name}: median/p95 µs per round {shown}; median of rounds {med:.0f}/{p95:.0f}", flush=True)


if __name__ == "__main__":
    main()
