"""From a cell's sector statistics to the published condition message.

Congestion scale (documented in the README):

* ratio = current median speed / free-flow speed of that cell, sector and hour;
* level (Waze-like 0..5): ratio >= 0.9 → 0 free flow, >= 0.7 → 1 light,
  >= 0.5 → 2 moderate, >= 0.3 → 3 heavy, < 0.3 → 4 standstill; 5 = closed, set
  only by an active closure incident, never inferred from speeds alone;
* jam factor (HERE-like 0..10): 10 × (1 − ratio), clipped, one decimal.

A sector is published only once ``min_devices`` distinct devices contributed
(k-anonymity); a message never carries device ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import geo
from pipeline.speed import WINDOW_S, SectorStats

# Cold start: an urban arterial at 50 km/h until the baseline has learned the cell.
DEFAULT_FREE_FLOW_MPS = 13.9
MATERIAL_SPEED_CHANGE = 0.15
HEARTBEAT_S = 60.0


def level_for(ratio: float) -> int:
    if ratio >= 0.9:
        return 0
    if ratio >= 0.7:
        return 1
    if ratio >= 0.5:
        return 2
    if ratio >= 0.3:
        return 3
    return 4


def jam_factor_for(ratio: float) -> float:
    return round(min(10.0, max(0.0, 10.0 * (1.0 - ratio))), 1)


def sample_bucket(samples: int) -> str:
    if samples < 10:
        return "3-9"
    if samples < 30:
        return "10-29"
    if samples < 100:
        return "30-99"
    return "100+"


Reading = tuple[SectorStats, float, int, float]  # stats, free flow, level, jam factor


def readings(
    stats: Mapping[int, SectorStats], *, min_devices: int, free_flow: Mapping[int, float] | None, closed: bool
) -> list[Reading]:
    """The sectors that pass the k threshold, with their free flow, level and jam factor, by sector."""
    out = []
    for sec in sorted(stats):
        s = stats[sec]
        if s.devices < min_devices:
            continue
        ff = (free_flow or {}).get(sec) or DEFAULT_FREE_FLOW_MPS
        ratio = s.median_mps / ff
        out.append((s, ff, 5 if closed else level_for(ratio), 10.0 if closed else jam_factor_for(ratio)))
    return out


def build_condition(
    cell: str,
    stats: Mapping[int, SectorStats],
    *,
    now: float,
    version: int,
    min_devices: int,
    free_flow: Mapping[int, float] | None = None,
    incidents: Sequence[str] = (),
    closed: bool = False,
    sector_readings: list[Reading] | None = None,
) -> dict[str, Any] | None:
    """The condition for ``cell``, or None when no sector passes the k threshold."""
    rs = readings(stats, min_devices=min_devices, free_flow=free_flow, closed=closed) if sector_readings is None \
        else sector_readings
    sectors = [
        {
            "sector": s.sector,
            "heading_deg": geo.sector_heading(s.sector),
            "mean_mps": round(s.mean_mps, 2),
            "median_mps": round(s.median_mps, 2),
            "p85_mps": round(s.p85_mps, 2),
            "samples": s.samples,
            "devices": s.devices,
            "free_flow_mps": round(ff, 2),
            "level": level,
            "jam_factor": jam,
        }
        for s, ff, level, jam in rs
    ]
    if not sectors and not incidents:
        return None
    lat, lon = geo.cell_center(cell)
    total = sum(int(s["samples"]) for s in sectors)
    return {
        "cell": cell,
        "version": version,
        "updated_at": now,
        "lat": lat,
        "lon": lon,
        "level": max((s["level"] for s in sectors), default=5 if closed else 0),
        "jam_factor": max((s["jam_factor"] for s in sectors), default=10.0 if closed else 0.0),
        "sectors": sectors,
        "incidents": list(incidents),
        "sample_bucket": sample_bucket(max(total, 3)),
        "window_s": WINDOW_S,
    }


def unchanged(prev: Mapping[str, Any], rs: list[Reading], incidents: Sequence[str], now: float) -> bool:
    """True when a condition built from ``rs`` would not be material against ``prev``.

    The same rules as :func:`is_material`, read off the sector readings, so a cell
    whose news is not material costs no message build (most re-evaluations).
    """
    if not rs or list(incidents) != prev["incidents"] or now - float(prev["updated_at"]) >= HEARTBEAT_S:
        return False
    old = prev["sectors"]
    if len(old) != len(rs) or max(level for _, _, level, _ in rs) != prev["level"]:
        return False
    for (s, _, level, _), o in zip(rs, old, strict=True):  # both sorted by sector
        if o["sector"] != s.sector or o["level"] != level:
            return False
        base = max(float(o["median_mps"]), 0.5)
        if abs(round(s.median_mps, 2) - base) / base > MATERIAL_SPEED_CHANGE:
            return False
    return True


def is_material(prev: Mapping[str, Any] | None, new: Mapping[str, Any], now: float) -> bool:
    """Publish on a level or incident change, a >15 % speed move, or a heartbeat."""
    if prev is None:
        return True
    if prev["level"] != new["level"] or prev["incidents"] != new["incidents"]:
        return True
    if now - float(prev["updated_at"]) >= HEARTBEAT_S:
        return True
    before = {s["sector"]: s for s in prev["sectors"]}
    for s in new["sectors"]:
        old = before.get(s["sector"])
        if old is None or old["level"] != s["level"]:
            return True
        base = max(float(old["median_mps"]), 0.5)
        if abs(float(s["median_mps"]) - base) / base > MATERIAL_SPEED_CHANGE:
            return True
    return len(before) != len(new["sectors"])


def next_version(prev: int, now: float) -> int:
    """Versions are publication epoch-milliseconds, strictly increasing per cell."""
    return max(prev + 1, int(now * 1000))
