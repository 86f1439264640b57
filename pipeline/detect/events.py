"""What every detector emits: incident lifecycle events, and their alert payload.

The lifecycle is ``opened → updated* → cleared``. An :class:`IncidentEvent`
carries a snapshot of the incident as drivers may see it: no device ids, only
counts of evidence. :func:`to_alert` turns it into the value of a record on
``traverz.alerts.v1`` (``schemas/alert.schema.json``), keyed by ``alert["cell"]``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from pipeline import geo

ALERT_RES = 9
LifecycleState = Literal["opened", "updated", "cleared"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """Counts behind an incident; never who."""

    probes: int = 0
    reports: int = 0
    votes_up: int = 0
    votes_down: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An incident as it may be published."""

    id: str
    type: str
    lat: float
    lon: float
    heading_deg: float
    confidence: float
    opened_at: float
    updated_at: float
    expires_at: float | None
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One lifecycle step of one incident; ``version`` strictly increases per incident id."""

    state: LifecycleState
    incident: Snapshot
    version: int
    reason: str | None = None


def next_version(prev: int, now: float) -> int:
    """Epoch milliseconds, bumped past ``prev``: strictly increasing without extra state."""
    return max(prev + 1, int(now * 1000))


def incident_id(prefix: str, *parts: object) -> str:
    """A stable id derived from ``parts``; hashed so a device id never shows through."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:20]
    return f"{prefix}-{digest}"


def to_alert(event: IncidentEvent) -> dict[str, Any]:
    """The alert record value; exactly the keys of ``alert.schema.json``."""
    inc = event.incident
    ev = inc.evidence
    alert: dict[str, Any] = {
        "id": inc.id,
        "type": inc.type,
        "state": event.state,
        "lat": inc.lat,
        "lon": inc.lon,
        "heading_deg": round(inc.heading_deg % 360.0, 1),
        "cell": geo.cell(inc.lat, inc.lon, ALERT_RES),
        "confidence": round(min(1.0, max(0.0, inc.confidence)), 3),
        "opened_at": inc.opened_at,
        "updated_at": inc.updated_at,
        # a cleared alert no longer lapses: it is over
        "expires_at": None if event.state == "cleared" else inc.expires_at,
        "version": event.version,
        "evidence": {
            "probes": ev.probes,
            "reports": ev.reports,
            "votes_up": ev.votes_up,
            "votes_down": ev.votes_down,
        },
    }
    if event.reason is not None:
        alert["reason"] = event.reason
    return alert
