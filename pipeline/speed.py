"""Speed per cell and heading sector over an event-time window.

One :class:`CellSpeedWindow` per H3 res-9 cell. Speeds go into 30-s event-time
buckets of per-sector histograms (0.5 m/s bins), so mean, median and 85th
percentile come out of bounded state however many pings a busy cell sees.

Idempotence: a ping is identified by ``(device_id, seq)`` and always lands in
the same res-9 cell (the cell is a function of its position), so a per-device
sliding seq window kept *in the cell* recognises every retry or replay of a
ping that cell already counted. This is what makes at-least-once delivery count
each ping once.

:class:`CellSpeedWindow` is a native type (``pipeline._window``, pipeline/_speedwin.c): the
worker is memory-bound and the Python objects a window was made of were its largest block.
:class:`ReferenceWindow` is the same window in Python: the reference the tests hold the native
one equal to (results, bytes, float totals bit for bit), and the raw baseline's aggregate in
``traverz bench stream``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from pipeline import _window, geo

BUCKET_S = 30
WINDOW_S = 300
BIN_PER_MPS = 2  # 0.5 m/s histogram bins
SEQ_WINDOW = 256  # reordering a device may show inside one cell and still be deduped
DEVICE_TTL_S = WINDOW_S + 2 * BUCKET_S
SEEN_SWEEP_S = 60.0  # dedupe entries are dropped this long after their TTL at most
_HALF_SECTOR = geo.SECTOR_WIDTH / 2
_SEQ_MASK = (1 << SEQ_WINDOW) - 1


@dataclass(slots=True)
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


class SectorStats(NamedTuple):
    """What a sector's window says; carries counts, never device ids.

    A named tuple, not a frozen dataclass: the conditions tick reads every sector of every
    cell it looks at, and a frozen dataclass's ``__init__`` (``object.__setattr__`` per
    field) cost ~2 µs a sector, most of a reading; the native window fills the tuple directly.
    """

    sector: int
    mean_mps: float
    median_mps: float
    p85_mps: float
    samples: int
    devices: int


def _copy(b: SectorBucket) -> SectorBucket:
    return SectorBucket(b.n, b.total, dict(b.hist), set(b.devices))


def _merge_into(merged: dict[int, SectorBucket], sec: int, b: SectorBucket) -> None:
    m = merged.get(sec)
    if m is None:
        merged[sec] = _copy(b)
        return
    m.n += b.n
    m.total += b.total
    hist = m.hist
    for k, v in b.hist.items():
        hist[k] = hist.get(k, 0) + v
    m.devices |= b.devices


def _quantiles(hist: dict[int, int], n: int, qs: tuple[float, ...]) -> list[float]:
    """Quantiles ``qs`` (ascending) of a histogram in one sorted pass (a reading needs two)."""
    out: list[float] = []
    ranks = iter([q * (n - 1) for q in qs])
    rank = next(ranks)
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        while seen > rank:
            out.append((b + 0.5) / BIN_PER_MPS)
            nxt = next(ranks, None)
            if nxt is None:
                return out
            rank = nxt
    top = (max(hist) + 0.5) / BIN_PER_MPS
    return out + [top] * (len(qs) - len(out))


@dataclass(slots=True)
class ReferenceWindow:
    """Event-time speed window of one cell, with the per-device dedupe state (the reference)."""

    buckets: dict[int, dict[int, SectorBucket]] = field(default_factory=dict)
    seen: dict[str, SeqWindow] = field(default_factory=dict)
    added: int = 0  # pings counted by this copy (not persisted): how much changed since a reading
    # merged buckets before the open one, for stats(): (window key, open bucket start, per sector);
    # it holds the buckets with ``key < start // BUCKET_S < open start // BUCKET_S``. Closed buckets
    # change only by a late ping, the open one always does: a reading merges two things instead of
    # ten. A late ping is added to the merge as well; not persisted; dropped when a bucket expires.
    _closed: tuple[int, int, dict[int, SectorBucket]] | None = field(default=None, compare=False, repr=False)
    _swept_at: float = field(default=0.0, compare=False, repr=False)  # last sweep of ``seen`` (not persisted)
    # the ``added`` count from which the conditions side wants to hear of this cell again
    # (pipeline.pacing); 0: at every ping. Not persisted.
    wake_at: int = field(default=0, compare=False, repr=False)

    def accept(self, device: str, seq: int, now: float) -> bool:
        """Record ``(device, seq)``; False if it was already counted here."""
        w = self.seen.get(device)
        if w is None:
            self.seen[device] = SeqWindow(seq, 1, now)
            return True
        w.last_seen = now
        if seq > w.hwm:
            shift = seq - w.hwm
            w.mask = ((w.mask << shift) | 1) & _SEQ_MASK if shift < SEQ_WINDOW else 1
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
        alive = ts if ts > now else now
        w = self.seen.get(device)
        if w is not None and seq > w.hwm:  # accept()'s usual case, inlined: the next seq of a known device
            shift = seq - w.hwm
            w.mask = ((w.mask << shift) | 1) & _SEQ_MASK if shift < SEQ_WINDOW else 1
            w.hwm, w.last_seen = seq, alive
        elif not self.accept(device, seq, alive):
            return False
        start = int(ts // BUCKET_S) * BUCKET_S
        sectors = self.buckets.get(start)
        if sectors is None:
            sectors = self.buckets[start] = {}
        sec = int(((heading + _HALF_SECTOR) % 360.0) // geo.SECTOR_WIDTH)  # geo.sector, inlined: hot path
        closed = self._closed
        if closed is not None and start < closed[1] and start > closed[0] * BUCKET_S:
            # a late ping in a bucket the merge holds: counted there too, so a reading does not
            # merge the whole window again (catching up after lag or a restart, every ping is late)
            merged = closed[2].get(sec)
            if merged is None:
                merged = closed[2][sec] = SectorBucket()
            merged.add(speed, device)
        bucket = sectors.get(sec)
        if bucket is None:
            bucket = sectors[sec] = SectorBucket()
        bucket.n += 1  # SectorBucket.add, inlined
        bucket.total += speed
        hist = bucket.hist
        b = int(speed * BIN_PER_MPS)
        hist[b] = hist.get(b, 0) + 1
        bucket.devices.add(device)
        self.added += 1
        return True

    def expire(self, now: float) -> list[tuple[int, dict[int, SectorBucket]]]:
        """Drop buckets and dedupe entries that can no longer matter; returns the dropped buckets.

        Cheap when nothing is due — a busy cell is expired at every rescan (every 25 s): the
        merged closed buckets are kept unless one was dropped (rebuilding them copied
        every device set of the window), and the dedupe entries (one per device seen
        in 6 min: thousands) are swept at most every :data:`SEEN_SWEEP_S`.
        """
        oldest = now - WINDOW_S - BUCKET_S
        dropped = [(start, self.buckets.pop(start)) for start in [s for s in self.buckets if s + BUCKET_S <= oldest]]
        if dropped:
            self._closed = None
        if now - self._swept_at >= SEEN_SWEEP_S:
            self._swept_at = now
            for dev in [d for d, e in self.seen.items() if e.last_seen < now - DEVICE_TTL_S]:
                del self.seen[dev]
        return dropped

    def could_reach(self, k: int) -> bool:
        """Whether some sector may have ``k`` distinct devices: a bound, without a reading.

        The sum of a sector's per-bucket device counts bounds its distinct devices from
        above (buckets past the window included), so False means no sector can be published.
        """
        if len(self.seen) < k:
            return False
        per: dict[int, int] = {}
        for sectors in self.buckets.values():
            for sec, b in sectors.items():
                n = per.get(sec, 0) + len(b.devices)
                if n >= k:
                    return True
                per[sec] = n
        return False

    def is_empty(self) -> bool:
        return not self.buckets and not self.seen

    def stats(self, now: float) -> dict[int, SectorStats]:
        """Per-sector statistics over the window ending at ``now``.

        A bucket counts while it overlaps the window and has begun (a phone with a
        fast clock stamps pings ahead of ``now``).
        """
        lo = now - WINDOW_S
        open_start = int(now // BUCKET_S) * BUCKET_S
        key = int((lo - BUCKET_S) // BUCKET_S)  # which bucket starts overlap: start > lo - BUCKET_S
        c = self._closed
        if c is None or c[0] != key or c[1] != open_start:
            closed: dict[int, SectorBucket] = {}
            for start, sectors in self.buckets.items():
                if start + BUCKET_S > lo and start < open_start:
                    for sec, bucket in sectors.items():
                        _merge_into(closed, sec, bucket)
            c = self._closed = (key, open_start, closed)
        closed = c[2]
        now_open = self.buckets.get(open_start) or {}
        out: dict[int, SectorStats] = {}
        for sec in closed.keys() | now_open.keys():
            a, b = closed.get(sec), now_open.get(sec)
            if a is None or b is None:
                m = a or b
                assert m is not None
                n, total, hist, devices = m.n, m.total, m.hist, len(m.devices)
            else:
                n, total, hist = a.n + b.n, a.total + b.total, dict(a.hist)
                for k, v in b.hist.items():
                    hist[k] = hist.get(k, 0) + v
                devices = len(a.devices) + len(b.devices - a.devices)
            if n:
                median, p85 = _quantiles(hist, n, (0.5, 0.85))
                out[sec] = SectorStats(
                    sector=sec, mean_mps=total / n, median_mps=median, p85_mps=p85, samples=n, devices=devices
                )
        return out

    # -- persistence: compact JSON, int keys as strings --------------------
    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "b": {
                start: {sec: [b.n, b.total, b.hist, sorted(b.devices)] for sec, b in sectors.items()}
                for start, sectors in self.buckets.items()
            },
            "d": {dev: [w.hwm, hex(w.mask), w.last_seen] for dev, w in self.seen.items()},
        }
        # int keys written as strings by orjson itself: the same bytes as before, without a
        # str() per key in Python (every touched cell is rewritten at each write-back)
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> ReferenceWindow:
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


_window.bind(
    SeqWindow, SectorBucket, SectorStats, orjson.loads,
    BUCKET_S, WINDOW_S, BIN_PER_MPS, SEQ_WINDOW, geo.SECTOR_WIDTH, DEVICE_TTL_S, SEEN_SWEEP_S,
)
# the window the worker keeps: ReferenceWindow's methods and bytes, in compact native storage
CellSpeedWindow = _window.CellSpeedWindow
# ``CellSpeedWindow.add`` for every ping of a record (parked phones skipped), in C
add_pings = _window.add_pings
