"""Reports and votes: what a valid one looks like, and which Kafka key (partition) it gets."""

from __future__ import annotations

import math
import re
from typing import Any

from pipeline import geo, pings

REPORT_TYPES = frozenset({"crash", "road_work", "stalled_vehicle", "hazard", "closure"})
VOTES = frozenset({"still_there", "not_there"})
MAX_TEXT = 280


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def report_problem(doc: dict[str, Any], now: float) -> str:
    """Why a report document is refused, or "" when it is fine."""
    kind = doc.get("type")
    if not isinstance(kind, str) or kind not in REPORT_TYPES:
        return "type: must be one of " + ", ".join(sorted(REPORT_TYPES))
    for name in ("lat", "lon", "heading_deg", "ts"):
        if not _num(doc.get(name)):
            return f"{name}: must be a finite number"
    if not -90 <= doc["lat"] <= 90 or not -180 <= doc["lon"] <= 180:
        return "lat/lon: out of range"
    if not 0 <= doc["heading_deg"] <= 360:
        return "heading_deg: out of range 0..360"
    if not now - pings.MAX_AGE_S <= doc["ts"] <= now + pings.MAX_FUTURE_S:
        return "ts: out of range"
    text = doc.get("text")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT):
        return f"text: a string of at most {MAX_TEXT} characters"
    return ""


_REPORT_ID = re.compile(r"r-([0-9a-f]{15})-[0-9a-f]{16}")


def report_key(report_id: str, res: int = 7) -> str | None:
    """The Kafka key (the res-``res`` cell) of a report id as ``post_report`` makes them, else None.

    A vote must land in the partition of its report: an id naming a cell of another
    resolution (or an upper-case spelling of the cell) would key it elsewhere.
    """
    m = _REPORT_ID.fullmatch(report_id)
    if m is None or not geo.is_cell(m[1]) or geo.cell_resolution(m[1]) != res:
        return None
    return m[1]
