"""User reports → incidents: merging, confidence, lifetime, votes, recovery.

State: one :class:`Book` per key of ``traverz.reports.v1`` (res-7 cell). A
report merges into the nearest live incident of the same type within
:data:`MERGE_M` (150 m) whose heading is within :data:`MERGE_DEG` (45°);
otherwise it starts one with the stable id ``i-<sha256(first report id)>``.
Votes name a report id or the incident id. Reports and votes are idempotent
(a replayed report id is ignored; a device's latest vote counts once).

Confidence, evaluated at ``now``::

    score = Σ weight of each distinct reporting device + 1.0 × probes
            + 0.5 × still_there − 1.0 × not_there
    confidence = (1 − 0.5 ** score) × decay, capped at 0.99, 0 if score ≤ 0
    decay = 1 − 0.5 × min(1, (now − last confirmation) / lifetime)  (1 for closure)

so one report gives 0.5, two devices 0.75, a report plus a probe detection
(``probes``: probe-based detections nearby, passed in) 0.75. An incident opens
once confidence ≥ :data:`OPEN_AT` of its type: 0.45 for hazard, stalled_vehicle
and road_work, so a single fresh report opens at once (a road_work opens with
modest confidence); 0.7 for crash and closure: a second device, or one report
and a probe detection (a hard brake into a standstill near it opens the probe
side at once, :mod:`pipeline.detect.crash`). A crash alert makes drivers brake
and routes bend; one prankster must not (the city scenario's spam device, four
crash reports in four minutes, opened one before). A closure turns a road black
on every map. Spam is further held off by the rate limit and ``not_there`` votes.

Rate limit per device (per book): more than :data:`RATE_MAX` (5) reports in
:data:`RATE_WINDOW_S` (10 min, server time: the phone picks ``ts``) → further
reports ignored; the n-th report in the window weighs 1 / (1 + max(0, n − 3)).

Lifetime (:data:`LIFETIME_S`) from the last confirmation (report or
``still_there``): crash and hazard 60 min, stalled_vehicle 30 min, road_work
24 h, closure until cleared (votes or :func:`clear`). Ended by a ``not_there``
majority (≥ 2 and more than ``still_there`` + distinct reporters), or for crash,
stalled_vehicle and hazard by :func:`on_speed`: ratio to free flow ≥ 0.85 for
≥ 5 min once the incident is ≥ 10 min old.

An opened incident emits ``updated`` only on a material change against what
its last alert told (kept on the :class:`Incident` as ``told_*``): confidence
moved by ≥ :data:`CONF_STEP` (0.1) either way, the mean position moved
≥ :data:`MOVE_M` (30 m), the first ``not_there`` vote (or the last one
withdrawn), a probe detection appearing or going (probes 0 ↔ > 0), or a stale
expiry. The engine keeps an open incident in ``active`` until the
``expires_at`` it was told, so an extension (a report or ``still_there``) that
changed nothing else is told by :func:`expire` (the engine's 5-s sweep) once the
told ``expires_at`` is within :data:`REFRESH_S` (5 min): a stalled vehicle kept
alive by votes costs one ``updated`` per ~25 min, and never lapses early. A
burst of reports at one spot tells 0.5 → 0.75 → 0.875 → 0.98: three updates,
then nothing until something changes. Confidence decay alone emits nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from pipeline import geo
from pipeline.detect.events import Evidence, IncidentEvent, LifecycleState, Snapshot, incident_id, next_version

LIFETIME_S: dict[str, float | None] = {
    "crash": 3600.0,
    "hazard": 3600.0,
    "stalled_vehicle": 1800.0,
    "road_work": 86_400.0,
    "closure": None,
}
OPEN_AT = {"crash": 0.7, "hazard": 0.45, "stalled_vehicle": 0.45, "road_work": 0.45, "closure": 0.7}
PENDING_TTL_S = 3600.0  # an unopened closure is forgotten after this without more evidence
TOMBSTONE_S = 3600.0  # an ended incident is remembered this long so replays do not revive it
MERGE_M = 150.0
MERGE_DEG = 45.0
RATE_WINDOW_S = 600.0
RATE_MAX = 5
RATE_FREE = 3
PROBE_WEIGHT = 1.0
UP_WEIGHT = 0.5
DOWN_WEIGHT = 1.0
CAP = 0.99
DOWN_MIN = 2
RECOVERABLE = frozenset({"crash", "stalled_vehicle", "hazard"})
RECOVERED_RATIO = 0.85
RECOVERED_FOR_S = 300.0
RECOVERY_MIN_AGE_S = 600.0
CONF_STEP = 0.1  # an ``updated`` only for a change drivers would notice (as crash.UPDATE_STEP)
MOVE_M = 30.0  # reports' GPS noise moves the mean by metres: not news
REFRESH_S = 300.0  # tell an extended expiry this long before the told one passes (sweeps are 5 s)


@dataclass
class Incident:
    id: str
    type: str
    lat: float
    lon: float
    heading_deg: float
    first_ts: float
    confirmed_ts: float
    expires_at: float | None
    reporters: dict[str, float] = field(default_factory=dict)  # device → weight; never emitted
    reports: int = 0
    votes: dict[str, int] = field(default_factory=dict)  # device → +1 still_there / −1 not_there
    probes: int = 0
    opened_at: float | None = None
    version: int = 0
    recovered_since: float | None = None
    ended_at: float | None = None
    # what the last alert told (see the module docstring); None until it opened
    told_conf: float | None = None
    told_lat: float | None = None
    told_lon: float | None = None
    told_expires_at: float | None = None
    told_probes: int = 0
    told_down: int = 0

    @property
    def cell(self) -> str:
        return geo.cell(self.lat, self.lon, 9)

    @property
    def sector(self) -> int:
        return geo.sector(self.heading_deg)

    def votes_up(self) -> int:
        return sum(1 for v in self.votes.values() if v > 0)

    def votes_down(self) -> int:
        return sum(1 for v in self.votes.values() if v < 0)

    def confidence(self, now: float) -> float:
        score = (
            sum(self.reporters.values())
            + PROBE_WEIGHT * self.probes
            + UP_WEIGHT * self.votes_up()
            - DOWN_WEIGHT * self.votes_down()
        )
        if score <= 0:
            return 0.0
        life = LIFETIME_S[self.type]
        decay = 1.0 if life is None else 1.0 - 0.5 * min(1.0, max(0.0, now - self.confirmed_ts) / life)
        return min(CAP, (1.0 - math.pow(0.5, score)) * decay)

    def deadline(self) -> float | None:
        """When it lapses: its expiry, or for an unopened closure the pending TTL."""
        if self.expires_at is not None:
            return self.expires_at
        return self.confirmed_ts + PENDING_TTL_S if self.opened_at is None else None


@dataclass
class Book:
    incidents: dict[str, Incident] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # report id or incident id → incident id
    recent: dict[str, list[float]] = field(default_factory=dict)  # device → report times (server)

    def is_empty(self) -> bool:
        return not self.incidents and not self.recent

    def to_bytes(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Book:
        doc = orjson.loads(raw)
        return cls(
            incidents={k: _load_incident(v) for k, v in doc["incidents"].items()},
            aliases=doc["aliases"],
            recent=doc["recent"],
        )


def _load_incident(doc: dict[str, Any]) -> Incident:
    inc = Incident(**doc)
    if "told_conf" not in doc and inc.opened_at is not None:
        # stored before the material-change rule, when every change was told: what it holds was told
        # (confidence as of its last confirmation, undecayed: the nearest to what went out)
        _told(inc, inc.confidence(inc.confirmed_ts))
    return inc


def _told(inc: Incident, confidence: float) -> None:
    inc.told_conf, inc.told_lat, inc.told_lon = confidence, inc.lat, inc.lon
    inc.told_expires_at, inc.told_probes, inc.told_down = inc.expires_at, inc.probes, inc.votes_down()


def _due_refresh(inc: Incident, now: float) -> bool:
    """Its lifetime outgrew the told one, which is near: drivers and ``active`` would drop it early."""
    told, real = inc.told_expires_at, inc.expires_at
    return real is not None and (told is None or (real > told and told - now <= REFRESH_S))


def _material(inc: Incident, now: float) -> bool:
    """Whether an open incident changed enough since its last alert to tell drivers again."""
    if inc.told_conf is None or inc.told_lat is None or inc.told_lon is None:
        return True
    return (
        abs(inc.confidence(now) - inc.told_conf) >= CONF_STEP - 1e-9
        or geo.distance_m(inc.told_lat, inc.told_lon, inc.lat, inc.lon) >= MOVE_M
        or (inc.probes > 0) != (inc.told_probes > 0)
        or (inc.votes_down() > 0) != (inc.told_down > 0)
        or _due_refresh(inc, now)
    )


def _event(inc: Incident, state: LifecycleState, now: float, reason: str | None = None) -> IncidentEvent:
    inc.version = next_version(inc.version, now)
    snap = Snapshot(
        id=inc.id,
        type=inc.type,
        lat=inc.lat,
        lon=inc.lon,
        heading_deg=inc.heading_deg,
        confidence=inc.confidence(now),
        opened_at=inc.opened_at if inc.opened_at is not None else now,
        updated_at=now,
        expires_at=inc.expires_at,
        evidence=Evidence(inc.probes, inc.reports, inc.votes_up(), inc.votes_down()),
    )
    _told(inc, snap.confidence)
    return IncidentEvent(state, snap, inc.version, reason)


def _evaluate(inc: Incident, now: float) -> list[IncidentEvent]:
    """After a change: open once confident enough, else tell the change if already open and material."""
    if inc.ended_at is not None:
        return []
    if inc.opened_at is None:
        if inc.confidence(now) < OPEN_AT[inc.type]:
            return []
        inc.opened_at = now
        return [_event(inc, "opened", now)]
    return [_event(inc, "updated", now)] if _material(inc, now) else []


def _end(inc: Incident, now: float, reason: str) -> list[IncidentEvent]:
    inc.ended_at = now
    return [_event(inc, "cleared", now, reason)] if inc.opened_at is not None else []


def find(book: Book, type_: str, lat: float, lon: float, heading_deg: float) -> Incident | None:
    """The nearest live incident a report of ``type_`` here would merge into."""
    best: tuple[float, Incident] | None = None
    for inc in book.incidents.values():
        if inc.ended_at is not None or inc.type != type_:
            continue
        if geo.angle_diff(inc.heading_deg, heading_deg) > MERGE_DEG:
            continue
        d = geo.distance_m(inc.lat, inc.lon, lat, lon)
        if d <= MERGE_M and (best is None or d < best[0]):
            best = (d, inc)
    return best[1] if best else None


def report(book: Book | None, rep: Mapping[str, Any], now: float) -> tuple[Book, list[IncidentEvent]]:
    """Take one report record (``kind: report``)."""
    book = book if book is not None else Book()
    rid, typ, dev, ts = str(rep["id"]), str(rep["type"]), str(rep["device_id"]), float(rep["ts"])
    if rid in book.aliases or typ not in LIFETIME_S:
        return book, []
    life = LIFETIME_S[typ]
    if life is not None and ts + life <= now:
        return book, []  # it would already be over
    recent = [t for t in book.recent.get(dev, []) if t > now - RATE_WINDOW_S]
    recent.append(now)
    book.recent[dev] = recent[-2 * RATE_MAX :]  # bounded; enough to keep a spammer blocked
    if len(recent) > RATE_MAX:
        return book, []
    weight = 1.0 / (1.0 + max(0, len(recent) - RATE_FREE))
    lat, lon, heading = float(rep["lat"]), float(rep["lon"]), float(rep["heading_deg"]) % 360.0
    inc = find(book, typ, lat, lon, heading)
    if inc is None:
        inc = Incident(incident_id("i", rid), typ, lat, lon, heading, ts, ts, None)
        book.incidents[inc.id] = inc
        book.aliases[inc.id] = inc.id
    book.aliases[rid] = inc.id
    inc.reports += 1
    inc.lat += (lat - inc.lat) / inc.reports  # mean position; the heading stays the first one's
    inc.lon += (lon - inc.lon) / inc.reports
    inc.reporters[dev] = max(inc.reporters.get(dev, 0.0), weight)
    inc.confirmed_ts = max(inc.confirmed_ts, ts)
    inc.first_ts = min(inc.first_ts, ts)
    inc.expires_at = None if life is None else inc.confirmed_ts + life
    return book, _evaluate(inc, now)


def vote(book: Book | None, v: Mapping[str, Any], now: float) -> tuple[Book, list[IncidentEvent]]:
    """Take one vote record (``kind: vote``) on a report or incident id."""
    book = book if book is not None else Book()
    inc = book.incidents.get(book.aliases.get(str(v["report_id"]), ""))
    if inc is None or inc.ended_at is not None:
        return book, []
    dev, value = str(v["device_id"]), 1 if v["vote"] == "still_there" else -1
    if inc.votes.get(dev) == value:
        return book, []
    inc.votes[dev] = value
    life = LIFETIME_S[inc.type]
    if value > 0 and life is not None:
        inc.confirmed_ts = max(inc.confirmed_ts, float(v["ts"]))
        inc.expires_at = inc.confirmed_ts + life
    downs = inc.votes_down()
    if downs >= DOWN_MIN and downs > inc.votes_up() + len(inc.reporters):
        return book, _end(inc, now, "voted_down")
    return book, _evaluate(inc, now)


def set_probes(book: Book, incident: str, probes: int, now: float) -> list[IncidentEvent]:
    """Set the count of probe-based detections near an incident (id or report id)."""
    inc = book.incidents.get(book.aliases.get(incident, ""))
    if inc is None or inc.ended_at is not None or inc.probes == probes:
        return []
    inc.probes = max(0, probes)
    return _evaluate(inc, now)


def on_speed(incident: Incident, ratio_to_free_flow: float | None, now: float) -> IncidentEvent | None:
    """Feed the flow at the incident (median / free flow of its cell and sector); a cleared event once it recovered."""
    if incident.type not in RECOVERABLE or incident.ended_at is not None:
        return None
    if ratio_to_free_flow is None or ratio_to_free_flow < RECOVERED_RATIO:
        incident.recovered_since = None
        return None
    if incident.recovered_since is None:
        incident.recovered_since = now
    if now - incident.recovered_since >= RECOVERED_FOR_S and now - incident.first_ts >= RECOVERY_MIN_AGE_S:
        ended = _end(incident, now, "flow_restored")
        return ended[0] if ended else None
    return None


def clear(book: Book, incident: str, now: float, reason: str = "cleared") -> list[IncidentEvent]:
    """End an incident explicitly (e.g. an operator lifting a closure)."""
    inc = book.incidents.get(book.aliases.get(incident, ""))
    if inc is None or inc.ended_at is not None:
        return []
    return _end(inc, now, reason)


def expire(book: Book, now: float) -> list[IncidentEvent]:
    """Timer: clear lapsed incidents, tell extended lifetimes before the told one passes, forget old state."""
    out: list[IncidentEvent] = []
    for inc in list(book.incidents.values()):
        deadline = inc.deadline()
        if inc.ended_at is None and deadline is not None and deadline <= now:
            out += _end(inc, now, "expired")
        elif inc.ended_at is None and inc.opened_at is not None and _due_refresh(inc, now):
            out.append(_event(inc, "updated", now))
        if inc.ended_at is not None and now - inc.ended_at >= TOMBSTONE_S:
            del book.incidents[inc.id]
    live = set(book.incidents)
    book.aliases = {k: i for k, i in book.aliases.items() if i in live}
    for dev in [d for d, ts in book.recent.items() if not ts or ts[-1] <= now - RATE_WINDOW_S]:
        del book.recent[dev]
    return out
