"""Pure incident detectors the faust agents wrap; no Kafka, no clock (``now`` is a parameter).

* :mod:`~pipeline.detect.baseline` — free-flow speed per cell, sector and hour of week.
* :mod:`~pipeline.detect.motion` — per-device facts: hard brake, stopped, moving.
* :mod:`~pipeline.detect.stall` — stalled vehicle among moving traffic (per device).
* :mod:`~pipeline.detect.crash` — crash from a hard brake into a standstill, corroborated (per res-9 area).
* :mod:`~pipeline.detect.incidents` — user reports merged into incidents, votes, lifetimes.
* :mod:`~pipeline.detect.events` — the lifecycle events they emit and :func:`to_alert`.

Detectors decide on event time (the pings' and reports' ``ts``); ``now`` only
drives expiry and the timestamps of what is published.
"""

from pipeline.detect.events import Evidence, IncidentEvent, Snapshot, to_alert

__all__ = ["Evidence", "IncidentEvent", "Snapshot", "to_alert"]
