"""``traverz tail conditions|alerts``: follow the output topics in a terminal or a pipe.

Readable lines by default; ``--json`` prints one JSON document per line for piping:
the message value as published (so it validates against its schema and ``jq .level``
works), and for a condition tombstone ``{"cell": ..., "value": null}`` (it keeps the
``cell`` every condition line has).

Filters: ``--bbox S,W,N,E`` on the cell centre (conditions) or the alert's position;
``--cell`` on the res-9 cell, or on every res-9 cell inside a coarser cell given;
``--min-level`` on a condition's level. The formatting and filtering are the pure
:class:`Tail`; :func:`follow` only moves bytes from Kafka to stdout.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline import geo
from pipeline.feeds.bbox import BBox
from pipeline.settings import TOPIC_ALERTS, TOPIC_CONDITIONS, Settings

KINDS = ("conditions", "alerts")
COMPASS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")


def parse_cell(text: str, res: int) -> str:
    """A cell for ``--cell``: an H3 index at ``res`` or coarser (finer would match nothing)."""
    cell = text.strip().lower()
    if not geo.is_cell(cell):
        raise ValueError(f"--cell: {text!r} is not an H3 cell index")
    if geo.cell_resolution(cell) > res:
        raise ValueError(f"--cell: resolution {geo.cell_resolution(cell)} is finer than the conditions' {res}")
    return cell


@dataclass(frozen=True)
class Filter:
    bbox: BBox | None = None
    cell: str | None = None
    min_level: int = 0

    def place(self, cell: str, lat: float, lon: float) -> bool:
        """Whether a message at ``cell`` (res-9) and ``lat, lon`` passes --cell and --bbox."""
        if self.cell is not None and cell != self.cell:
            res = geo.cell_resolution(self.cell)
            if geo.cell_resolution(cell) <= res or geo.parent(cell, res) != self.cell:
                return False
        return self.bbox is None or self.bbox.contains(lat, lon)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def render_condition(doc: Mapping[str, Any]) -> str:
    """``12:00:01 89…fff L2 jam 4.5  E 25km/h L2 (free 50), N 48km/h L0 (free 50)  incidents i-…``"""
    secs = ", ".join(
        f"{COMPASS[int(s['sector']) % 8]} {float(s['median_mps']) * 3.6:.0f}km/h L{s['level']}"
        f" (free {float(s['free_flow_mps']) * 3.6:.0f})"
        for s in doc["sectors"]
    )
    incidents = doc.get("incidents") or []
    line = f"{_clock(float(doc['updated_at']))} {doc['cell']} L{doc['level']} jam {float(doc['jam_factor']):.1f}"
    if secs:
        line += f"  {secs}"
    if incidents:
        line += f"  incidents {' '.join(str(i) for i in incidents)}"
    return line


def render_alert(doc: Mapping[str, Any]) -> str:
    """``12:00:01 opened   crash           x-3f… at 52.51550,13.49900 heading 90 conf 0.75``"""
    line = (
        f"{_clock(float(doc['updated_at']))} {doc['state']:<8} {doc['type']:<15} {doc['id']} "
        f"at {float(doc['lat']):.5f},{float(doc['lon']):.5f} heading {float(doc['heading_deg']):.0f} "
        f"conf {float(doc['confidence']):.2f}"
    )
    if doc.get("reason"):
        line += f" ({doc['reason']})"
    return line


def render_cleared(cell: str, at: float) -> str:
    return f"{_clock(at)} {cell} cleared"


def render(kind: str, doc: Mapping[str, Any]) -> str:
    """One readable line per message."""
    return render_condition(doc) if kind == "conditions" else render_alert(doc)


@dataclass
class Tail:
    """Which messages to print, and how.

    With ``--min-level`` a cell that was printed and then drops below the level (or is
    tombstoned) is printed once more, so a watcher sees the jam end instead of the
    last jammed line standing forever; then it is forgotten.
    """

    kind: str
    flt: Filter = field(default_factory=Filter)
    json_lines: bool = False
    shown: set[str] = field(default_factory=set)

    def line(self, key: bytes | None, value: bytes | None, at: float) -> str | None:
        """The line for one record (``at``: its timestamp, epoch s), or None to skip it.

        Raises ValueError/KeyError/TypeError for a value that is not a readable message.
        """
        if value is None:
            return self._tombstone(key, at)
        doc = orjson.loads(value)
        if not isinstance(doc, dict):
            raise TypeError("a message value is a JSON object")
        if self.kind == "conditions":
            cell = str(doc["cell"])
            if not self.flt.place(cell, float(doc["lat"]), float(doc["lon"])):
                return None
            if self.flt.min_level and int(doc["level"]) < self.flt.min_level:
                if cell not in self.shown:
                    return None
                self.shown.discard(cell)  # print the recovery once, then forget the cell
            elif self.flt.min_level:
                self.shown.add(cell)
        elif not self.flt.place(str(doc["cell"]), float(doc["lat"]), float(doc["lon"])):
            return None
        return orjson.dumps(doc).decode() if self.json_lines else render(self.kind, doc)

    def _tombstone(self, key: bytes | None, at: float) -> str | None:
        if key is None:
            return None
        cell = key.decode()
        if not geo.is_cell(cell):
            return None
        lat, lon = geo.cell_center(cell)
        if not self.flt.place(cell, lat, lon):
            return None
        if self.flt.min_level:
            if cell not in self.shown:
                return None
            self.shown.discard(cell)
        return orjson.dumps({"cell": cell, "value": None}).decode() if self.json_lines else render_cleared(cell, at)


async def follow(
    s: Settings,
    what: str,
    json_lines: bool = False,
    from_beginning: bool = False,
    flt: Filter | None = None,
) -> int:
    tail = Tail(what, flt or Filter(), json_lines)
    topic = TOPIC_CONDITIONS if what == "conditions" else TOPIC_ALERTS
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=s.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    try:
        async for msg in consumer:
            try:
                line = tail.line(msg.key, msg.value, msg.timestamp / 1000.0)
            except (ValueError, KeyError, TypeError) as exc:
                # someone else's record on our topic: say so, and keep following
                print(f"traverz tail: skipped {msg.topic}/{msg.partition}@{msg.offset}: {exc!r}", file=sys.stderr)
                continue
            if line is None:
                continue
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # `traverz tail … | head`: the reader has what it wanted; point stdout at
                # /dev/null so the interpreter's final flush does not raise again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
    finally:
        await consumer.stop()
    return 0
