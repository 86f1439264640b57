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

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import geo
from pipeline.speed import WINDOW_S, SectorStats

# Cold start: an urban arterial at 50 km/h until the baseline has learned the cell.
DEFAULT_FREE_FLOW_MPS = 13.9
MATERIAL_SPEED_CHANGE = 0.15
HEARTBEAT_S = 60.0
_NO_FREE_FLOW: Mapping[int, float] = {}  # read only
_DEFAULT_FREE_FLOW_R2 = round(DEFAULT_FREE_FLOW_MPS, 2)  # not a quarter: round2 would round it each time


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


def round2(x: float) -> float:
    """``round(x, 2)``, without its decimal conversion (~1 µs) for quarters, which it returns unchanged.

    Medians, 85th percentiles and learned free flows are 0.5-m/s bin centres, i.e. quarters
    (k/4 is exact in binary and has at most two decimals, so ``round`` gives k/4 back). A
    tick rounds several per cell; most of its rounding was this.
    """
    return x if (x * 4.0).is_integer() else round(x, 2)


# jam_factor_for by (median, free flow): both come from a few hundred bin values, and its
# round(…, 1) cost more than the rest of a sector's reading. A pure function: the same floats.
_jams: dict[tuple[float, float], float] = {}
_JAMS_MAX = 1 << 16


def _jam(median: float, free_flow: float) -> float:
    key = (median, free_flow)
    jam = _jams.get(key)
    if jam is None:
        if len(_jams) >= _JAMS_MAX:
            _jams.clear()
        jam = _jams[key] = jam_factor_for(median / free_flow)
    return jam


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
    ffs = free_flow or _NO_FREE_FLOW
    for sec in sorted(stats):
        s = stats[sec]
        if s.devices < min_devices:
            continue
        ff = ffs.get(sec) or DEFAULT_FREE_FLOW_MPS
        if closed:
            out.append((s, ff, 5, 10.0))
            continue
        m = s.median_mps
        ratio = m / ff
        # level_for, inline: a tick reads ~3 sectors of each of ~1,000 cells
        level = 0 if ratio >= 0.9 else 1 if ratio >= 0.7 else 2 if ratio >= 0.5 else 3 if ratio >= 0.3 else 4
        out.append((s, ff, level, _jam(m, ff)))
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
    rs = (
        readings(stats, min_devices=min_devices, free_flow=free_flow, closed=closed)
        if sector_readings is None
        else sector_readings
    )
    if not rs and not incidents:
        return None
    headings = _HEADINGS
    sectors = []
    total = 0
    level_top: int = 5 if closed else 0
    jam_top: float = 10.0 if closed else 0.0
    for i, (s, ff, level, jam) in enumerate(rs):  # one pass: max() and sum() each walked it again
        m, p85 = s.median_mps, s.p85_mps
        sectors.append(
            {
                "sector": s.sector,
                "heading_deg": headings.get(s.sector) or geo.sector_heading(s.sector),
                "mean_mps": round(s.mean_mps, 2),
                "median_mps": m if (m * 4.0).is_integer() else round(m, 2),  # round2, inline
                "p85_mps": p85 if (p85 * 4.0).is_integer() else round(p85, 2),
                "samples": s.samples,
                "devices": s.devices,
                "free_flow_mps": _DEFAULT_FREE_FLOW_R2 if ff == DEFAULT_FREE_FLOW_MPS else round2(ff),
                "level": level,
                "jam_factor": jam,
            }
        )
        total += int(s.samples)
        if i == 0 or level > level_top:  # max(): the first of the largest
            level_top = level
        if i == 0 or jam > jam_top:
            jam_top = jam
    lat, lon = _center(cell)
    return {
        "cell": cell,
        "version": version,
        "updated_at": now,
        "lat": lat,
        "lon": lon,
        "level": level_top,
        "jam_factor": jam_top,
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
        m = s.median_mps
        if abs((m if (m * 4.0).is_integer() else round(m, 2)) - base) / base > MATERIAL_SPEED_CHANGE:  # round2
            return False
    return True


# What :func:`unchanged` reads of a published condition, read once when it is published:
# (updated_at, incidents, level, ((sector, level, max(median, 0.5)), ...) by sector)
Digest = tuple[float, list[str], int, tuple[tuple[int, int, float], ...]]


def digest(cond: Mapping[str, Any]) -> Digest:
    """The parts of a published condition that decide whether a new reading of its cell is material."""
    return (
        float(cond["updated_at"]),
        list(cond["incidents"]),
        cond["level"],
        tuple([(o["sector"], o["level"], _at_least_half(float(o["median_mps"]))) for o in cond["sectors"]]),
    )


def _at_least_half(m: float) -> float:
    return 0.5 if m < 0.5 else m  # max(m, 0.5), the same float (a NaN too)


def settled(
    prev: Digest,
    stats: Mapping[int, SectorStats],
    min_devices: int,
    free_flow: Mapping[int, float] | None,
    closed: bool,
    incidents: Sequence[str],
    now: float,
) -> bool:
    """``unchanged(prev, readings(stats, ...), incidents, now)``, read off ``stats`` and ``digest(prev)``.

    The same conjunction of the same tests: most re-evaluations of a busy cell are not
    material, and this answers them without building a reading per sector (nor its jam
    factor, nor rounding a median that is a quarter). Positional: the tick calls it
    ~1,000 times.
    """
    updated_at, was_incidents, was_level, old = prev
    if (incidents if type(incidents) is list else list(incidents)) != was_incidents or now - updated_at >= HEARTBEAT_S:
        return False
    ffs = free_flow or _NO_FREE_FLOW
    i, top, n_old = 0, -1, len(old)
    for sec in sorted(stats):  # readings() order
        s = stats[sec]
        if s.devices < min_devices:
            continue
        if i == n_old:
            return False  # more sectors than published
        o_sector, o_level, base = old[i]
        i += 1
        if closed:
            level = 5
        else:
            ratio = s.median_mps / (ffs.get(sec) or DEFAULT_FREE_FLOW_MPS)
            level = 0 if ratio >= 0.9 else 1 if ratio >= 0.7 else 2 if ratio >= 0.5 else 3 if ratio >= 0.3 else 4
        if o_sector != s.sector or o_level != level:
            return False
        m = s.median_mps
        if abs((m if (m * 4.0).is_integer() else round(m, 2)) - base) / base > MATERIAL_SPEED_CHANGE:  # round2
            return False
        if level > top:
            top = level
    return i > 0 and i == n_old and top == was_level


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


_HEADINGS = {sec: geo.sector_heading(sec) for sec in range(1, geo.SECTORS)}  # 0.0 (sector 0) falls through


@functools.lru_cache(maxsize=1 << 14)  # ~3 MB at most: the busy cells, re-published every minute
def _center(cell: str) -> tuple[float, float]:
    """geo.cell_center, remembered: a busy cell is published again every minute or sooner."""
    return geo.cell_center(cell)
