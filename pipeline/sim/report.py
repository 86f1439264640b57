"""A finished run → the result document (JSON), the score table, and the targets next to it."""

from __future__ import annotations

from typing import Any

from pipeline.sim import score
from pipeline.sim.run import Run


def opened_alerts(run: Run) -> list[score.Opened]:
    """First sighting of every alert id, its ``opened_at`` mapped to sim time."""
    out: dict[str, score.Opened] = {}
    for seen in run.tap.alerts:
        a = seen.alert
        aid = str(a["id"])
        if aid in out or a.get("state") == "cleared":
            continue
        wall = float(a.get("opened_at") or seen.wall)
        out[aid] = score.Opened(aid, str(a["type"]), float(a["lat"]), float(a["lon"]), run.clock.sim_at(wall), wall)
    return list(out.values())


def result(run: Run) -> dict[str, Any]:
    sc, end = run.sc, run.sc.duration_s
    truths = [t for t in run.inj.truth if t.injected and t.start_s is not None]
    inputs = score.Inputs(
        truths=[score.Truth(t.alert_type, t.lat, t.lon, float(t.start_s or 0), t.end_s or end, t.edge) for t in truths],
        opened=opened_alerts(run),
        vehicle_hours=run.vehicle_s / 3600.0,
        warmup_s=sc.warmup_s,
        reroutes=run.rerouter.outcomes(run.end_s, run.drivers.stranded),
    )
    by_index = {t.index: i for i, t in enumerate(truths)}
    for idx, ups in run.upstream.items():
        if idx not in by_index:
            continue
        tr = run.inj.by_index(idx)
        ids = [
            a.id
            for a in inputs.opened
            if a.type == tr.alert_type and score._near(a, inputs.truths[by_index[idx]], score.MATCH_M)
        ]
        rows = []
        for vid, reached in ups.items():
            sub_rx = [
                run.subs_seen[vid].received[i] for i in ids if vid in run.subs_seen and i in run.subs_seen[vid].received
            ]
            rx = min(sub_rx) if sub_rx else None
            rows.append(score.Upstream(vid, rx, None if rx is None else run.clock.sim_at(rx), reached))
        inputs.upstream[by_index[idx]] = rows
    scored = score.score(inputs)
    n = run.uplink.n
    return {
        "scenario": sc.name,
        "file": str(sc.path),
        "network": sc.network,
        "description": sc.description,
        "seed": sc.seed,
        "duration_s": sc.duration_s,
        "speedup": run.clock.speedup,
        "lag_s": round(run.clock.lag_s, 1),
        "wall_s": round(run.wall_s, 1),
        "loop_behind_max_s": round(run.behind_s, 1),
        "vehicles": run.vehicles_seen,
        "subscribers": len(run.subs_seen),
        "phones": {
            "pings_accepted": n.pings_accepted,
            "pings_rejected": n.pings_rejected,
            "batch_uploads": n.batches,
            "throttled": n.throttled,
            "failed_requests": n.failed,
            "reports": n.reports,
            "votes": n.votes,
        },
        "drivers": {  # at closures: turned off by themselves; parked (no way round, not scored)
            "closure_detours": len(run.drivers.detours),
            "stranded": len(run.drivers.stranded),
            "sim_end_s": run.end_s,
        },
        "truth": [t.as_dict() for t in run.inj.truth],
        "alerts": [
            {"id": a.id, "type": a.type, "lat": round(a.lat, 6), "lon": round(a.lon, 6), "sim_s": round(a.sim_s, 1)}
            for a in inputs.opened
        ],
        "score": scored,
        "targets": score.TARGETS,
        "verdicts": score.verdicts(scored),
    }


def _f(x: Any, fmt: str = "{:.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def table(results: list[dict[str, Any]]) -> str:
    """The score table: one block per scenario, then the pooled figures against the targets."""
    lines = []
    head = f"{'scenario':<12} {'type':<16} {'det':>7} {'rate':>6} {'TTD med':>8} {'TTD p90':>8}   probes alone"
    for r in results:
        sc = r["score"]
        lines.append(
            f"== {r['scenario']} ({r['network']}, {r['duration_s']:.0f} s sim, {r['vehicles']} vehicles, "
            f"{sc['vehicle_hours']:.1f} veh-h, ×{r['speedup']:.1f}, wall {r['wall_s']:.0f} s)"
        )
        lines.append(head)
        for ty, row in sorted(sc["detection"].items()):
            lines.append(
                f"{'':<12} {ty:<16} {row['detected']:>3}/{row['incidents']:<3} {row['rate']:>6.0%} "
                f"{_f(row['ttd_median_s']):>7}s {_f(row['ttd_p90_s']):>7}s   "
                f"{row.get('probe_detected', 0)}/{row['incidents']} TTD {_f(row.get('probe_ttd_median_s'))}s"
            )
        fa = sc["false_alarms"]
        lines.append(
            f"{'':<12} false alarms {fa['count']} ({_f(fa['per_1000_vh'], '{:.1f}')}/1000 veh-h; "
            f"probe {fa['by_source']['probe']}, report {fa['by_source']['report']}) {fa['by_type'] or ''}"
        )
        d = sc["delivery"]
        if d["upstream_vehicles"]:
            lines.append(
                f"{'':<12} delivery: {d['received']}/{d['upstream_vehicles']} upstream subscribers got it, "
                f"{_f(d['share_before_reaching'], '{:.0%}')} before reaching it; latency median "
                f"{_f(d['latency_median_s'], '{:.2f}')}s p90 {_f(d['latency_p90_s'], '{:.2f}')}s"
            )
        rr = sc["reroute"]
        for label, g in (("reroute round a closure", rr), ("reroute, any offer", rr.get("all_offers", {}))):
            if g.get("offered"):
                lines.append(
                    f"{'':<12} {label}: {g['offered']} offered, {g['accepted']} took, {g['declined']} declined"
                    f" ({g.get('still_driving', 0)} still driving at the end, {g.get('still_driving_accepted', 0)}"
                    " of them takers); time/free-flow "
                    f"{_f(g['median_ratio_accepted'], '{:.2f}')} vs {_f(g['median_ratio_declined'], '{:.2f}')} "
                    f"→ {_f(g['faster'], '{:.0%}')} faster ({_f(g.get('faster_arrived'), '{:.0%}')} among those"
                    " who arrived)"
                )
    if results:
        m = score.merged([r["score"] for r in results])
        lines.append("== all scenarios vs targets")
        for ty in ("crash", "stalled_vehicle"):
            row = m["detection"].get(ty)
            if row:
                lines.append(
                    f"{ty:<16} detection {row['detected']}/{row['incidents']} = {row['rate']:.0%} "
                    f"(probes alone {row['probe_detected']}/{row['incidents']}, TTD {_f(row['probe_ttd_median_s'])}s) "
                    f"(target ≥{score.DETECTION_TARGET[ty]:.0%}); TTD median {_f(row['ttd_median_s'])}s "
                    f"p90 {_f(row['ttd_p90_s'])}s (target ≤{score.TTD_TARGET_S[ty]:.0f}s)"
                )
        lines.append(
            f"false alarms {m['false_alarms']} in {m['vehicle_hours']:.1f} veh-h = "
            f"{_f(m['per_1000_vh'], '{:.1f}')}/1000 veh-h (target ≤{score.FALSE_ALARM_TARGET:.0f})"
        )
        faster = [r["score"]["reroute"]["faster"] for r in results if r["score"]["reroute"]["faster"] is not None]
        lines.append(
            "reroute benefit "
            + (", ".join(f"{x:.0%}" for x in faster) if faster else "— (no reroute round a closure was offered)")
            + f" (target ≥{score.REROUTE_TARGET:.0%})"
        )
    return "\n".join(lines)
