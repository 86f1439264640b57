"""Speed per cell and heading sector over an event-time window.

One :class:`CellSpeedWindow` per H3 res-9 cell. Speeds go into 30-s event-time
buckets of per-sector histograms (0.5 m/s bins), so mean, median and 85th
percentile come out of bounded state however many pings a busy cell sees.

Idempotence: a ping is identified by ``(device_id, seq)`` and always lands in
the same res-9 cell (the cell is a function of its position), so a per-device
sliding seq window kept *in the cell* recognises every retry or replay of a
ping that cell already counted. This is what makes at-least-once delivery count
each ping once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import geo

BUCKET_S = 30
WINDOW_S = 300
BIN_PER_MPS = 2  # 0.5 m/s histogram bins
SEQ_WINDOW = 256  # reordering a device may show inside one cell and still be deduped
DEVICE_TTL_S = WINDOW_S + 2 * BUCKET_S
_HALF_SECTOR = geo.SECTOR_WIDTH / 2


@dataclass
class SectorBucket:
    """Samples of one sector in one 30-s bucket."""

    n: int = 0
    total: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)

    def add(self, speed: float, device: str) -> None:
        self.n += 1
        self.total += speed
        b = int(speed * BIN_PER_MPS)
        self.hist[b] = self.hist.get(b, 0) + 1
        self.devices.add(device)


@dataclass(slots=True)
class SeqWindow:
    """Which seqs of one device a cell has counted: a high-water mark and a bitmask below it."""

    hwm: int
    mask: int
    last_seen: float


@dataclass(frozen=True)
class SectorStats:
    """What a sector's window says; carries counts, never device ids."""

    sector: int
    mean_mps: float
    median_mps: float
    p85_mps: float
    samples: int
    devices: int


def _quantile(hist: dict[int, int], n: int, q: float) -> float:
    rank = q * (n - 1)
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen > rank:
            return (b + 0.5) / BIN_PER_MPS
    return (max(hist) + 0.5) / BIN_PER_MPS


@dataclass
class CellSpeedWindow:
    """Event-time speed window of one cell, with the per-device dedupe state."""

    buckets: dict[int, dict[int, SectorBucket]] = field(default_factory=dict)
    seen: dict[str, SeqWindow] = field(default_factory=dict)

    def accept(self, device: str, seq: int, now: float) -> bool:
        """Record ``(device, seq)``; False if it was already counted here."""
        w = self.seen.get(device)
        if w is None:
            self.seen[device] = SeqWindow(seq, 1, now)
            return True
        w.last_seen = now
        if seq > w.hwm:
            shift = seq - w.hwm
            w.mask = ((w.mask << shift) | 1) & ((1 << SEQ_WINDOW) - 1) if shift < SEQ_WINDOW else 1
            w.hwm = seq
            return True
        off = w.hwm - seq
        if off >= SEQ_WINDOW or (w.mask >> off) & 1:
            return False
        w.mask |= 1 << off
        return True

    def add(self, device: str, seq: int, ts: float, speed: float, heading: float, now: float) -> bool:
        """Count one ping; False for a duplicate or a ping whose window is over."""
        if ts <= now - WINDOW_S:
            return False  # already over: it cannot change what drivers are told now
        # a future-stamped ping stays countable until its own window ends: keep its
        # dedupe entry alive that long, or a later replay would count twice
        if not self.accept(device, seq, max(now, ts)):
            return False
        start = int(ts // BUCKET_S) * BUCKET_S
        sectors = self.buckets.get(start)
        if sectors is None:
            sectors = self.buckets[start] = {}
        sec = int(((heading + _HALF_SECTOR) % 360.0) // geo.SECTOR_WIDTH)  # geo.sector, inlined: hot path
        bucket = sectors.get(sec)
        if bucket is None:
            bucket = sectors[sec] = SectorBucket()
        bucket.n += 1  # SectorBucket.add, inlined
        bucket.total += speed
        hist = bucket.hist
        b = int(speed * BIN_PER_MPS)
        hist[b] = hist.get(b, 0) + 1
        bucket.devices.add(device)
        return True

    def expire(self, now: float) -> list[tuple[int, dict[int, SectorBucket]]]:
        """Drop buckets and dedupe entries that can no longer matter; returns the dropped buckets."""
        oldest = now - WINDOW_S - BUCKET_S
        dropped = [(start, self.buckets.pop(start)) for start in [s for s in self.buckets if s + BUCKET_S <= oldest]]
        for dev in [d for d, e in self.seen.items() if e.last_seen < now - DEVICE_TTL_S]:
            del self.seen[dev]
        return dropped

    def is_empty(self) -> bool:
        return not self.buckets and not self.seen

    def stats(self, now: float) -> dict[int, SectorStats]:
        """Per-sector statistics over the window ending at ``now``."""
        lo = now - WINDOW_S
        merged: dict[int, SectorBucket] = {}
        for start, sectors in self.buckets.items():
            if start + BUCKET_S <= lo or start > now:
                continue  # over, or stamped ahead of now by a phone's fast clock
            for sec, b in sectors.items():
                m = merged.get(sec)
                if m is None:
                    m = merged[sec] = SectorBucket()
                m.n += b.n
                m.total += b.total
                for k, v in b.hist.items():
                    m.hist[k] = m.hist.get(k, 0) + v
                m.devices |= b.devices
        return {
            sec: SectorStats(
                sector=sec,
                mean_mps=m.total / m.n,
                median_mps=_quantile(m.hist, m.n, 0.5),
                p85_mps=_quantile(m.hist, m.n, 0.85),
                samples=m.n,
                devices=len(m.devices),
            )
            for sec, m in merged.items()
            if m.n
        }

    # -- persistence: compact JSON, int keys as strings --------------------
    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "b": {
                str(start): {
                    str(sec): [b.n, b.total, {str(k): v for k, v in b.hist.items()}, sorted(b.devices)]
                    for sec, b in sectors.items()
                }
                for start, sectors in self.buckets.items()
            },
            "d": {dev: [w.hwm, hex(w.mask), w.last_seen] for dev, w in self.seen.items()},
        }
        return orjson.dumps(doc)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CellSpeedWindow:
        doc = orjson.loads(raw)
        buckets = {
            int(start): {
                int(sec): SectorBucket(n=v[0], total=v[1], hist={int(k): c for k, c in v[2].items()}, devices=set(v[3]))
                for sec, v in sectors.items()
            }
            for start, sectors in doc["b"].items()
        }
        seen = {dev: SeqWindow(e[0], int(e[1], 16), e[2]) for dev, e in doc["d"].items()}
        return cls(buckets=buckets, seen=seen)
