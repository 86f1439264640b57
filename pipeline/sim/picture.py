"""The result picture (PNG): the network, true incidents, detected alerts, false alarms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.collections import LineCollection

from pipeline.sim.sumo import Network

COLOURS = {"crash": "#d62728", "stalled_vehicle": "#ff7f0e", "road_work": "#8c564b", "closure": "#000000"}


def draw(net: Network, res: dict[str, Any], path: Path) -> Path:
    """Roads in grey; a true incident is a ring, a detecting alert a dot, a false alarm a cross."""
    fig, ax = plt.subplots(figsize=(9, 9), dpi=110)
    segs = [[(lon, lat) for lat, lon in shape] for shape in net.shapes()]
    ax.add_collection(LineCollection(segs, colors="#c8c8c8", linewidths=0.6))
    false_ids = {a["id"] for a in res["score"]["false_alarms"]["alerts"]}
    for t in res["truth"]:
        if not t["injected"]:
            continue
        c = COLOURS.get(t["type"], "#1f77b4")
        ax.scatter([t["lon"]], [t["lat"]], s=320, facecolors="none", edgecolors=c, linewidths=2.2, zorder=3)
        ax.annotate(
            f"true {t['type']} @{t['start_s']:.0f}s",
            (t["lon"], t["lat"]),
            xytext=(8, 8),
            textcoords="offset points",
            fontsize=8,
            color=c,
        )
    for a in res["alerts"]:
        c = COLOURS.get(a["type"], "#1f77b4")
        if a["id"] in false_ids:
            ax.scatter([a["lon"]], [a["lat"]], s=90, marker="x", color=c, linewidths=2.0, zorder=4)
            ax.annotate(
                f"false {a['type']}",
                (a["lon"], a["lat"]),
                xytext=(6, -12),
                textcoords="offset points",
                fontsize=7,
                color=c,
            )
        else:
            ax.scatter([a["lon"]], [a["lat"]], s=40, color=c, zorder=4)
    s, w, n, e = net.bbox()
    ax.set_xlim(w, e)
    ax.set_ylim(s, n)
    ax.set_aspect(1.0 / 0.61)  # ~cos(52.4°): metres look square
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    det = ", ".join(f"{ty} {r['detected']}/{r['incidents']}" for ty, r in res["score"]["detection"].items())
    ax.set_title(
        f"{res['scenario']} — ring: true incident, dot: alert, x: false alarm\n"
        f"{det or 'no incidents'}; false alarms {res['score']['false_alarms']['count']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
