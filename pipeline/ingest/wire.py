"""Pings as the proxy carries them: a body checked, keyed and encoded in C; records joined from bytes.

In Python a 50-ping body cost the proxy ~110 µs of its own (msgspec decode and checks, an
H3 call per ping, the record encode) against the bare handler's ``orjson.loads``.
``_fastpings.scan`` reads the body once and returns its pings in runs of one Kafka key as
ready JSON fragments (``Group``), so a record is ``b",".join`` of its groups' fragments:
no Python object per ping on the way from the socket to Kafka. A ping inside the
previous ping's cell (by a margin, tested against the cell's edges) is given that cell
without an H3 call: ~3 in 4 of a moving phone's pings (``_fastpings.cell_stats``).

The fast path only ever *accepts*, and only whole bodies of the restricted JSON phones
send (see ``_fastpings.c``). Anything else — a refused ping, 360°, an unknown key, an
escape, non-ASCII bytes — sends the body down the reference path (``body.parse_json`` +
``accept.sort_pings``), which names the reasons; its accepted pings become groups through
``group``. The unit tests hold both paths equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import h3.api.basic_int as h3int
import orjson
from h3 import _cy as h3cy

from pipeline import pings
from pipeline.ingest import _fastpings

# A run of consecutive pings of one request with one Kafka key: (the key cell's H3 index, pings, the
# pings as JSON objects joined by commas). Runs, not one group per key: records joined from them keep
# the order pings arrived in within a partition, as the stream side's per-device state expects.
Group = tuple[int, int, bytes]

# H3's integer API wraps its Cython core in a Python function (~0.3 µs a call); the core
# returns the same integer (the unit tests hold the keys equal to ``geo.key_cell``)
_latlng_to_cell = getattr(h3cy, "latlng_to_cell", h3int.latlng_to_cell)
_RES_BITS = 0xF << 52  # an H3 index's resolution field


@dataclass(frozen=True, slots=True)
class Keying:
    """How pings are keyed (``key_res`` parent of the ``cell_res`` cell) and how many go in one group."""

    key_res: int = 7
    cell_res: int = 9
    max_pings: int = pings.MAX_BATCH

    def __post_init__(self) -> None:
        if not 0 <= self.key_res <= self.cell_res <= 15:
            raise ValueError(f"need 0 <= key_res <= cell_res <= 15, not {self.key_res}, {self.cell_res}")
        if self.max_pings < 1:
            raise ValueError("max_pings must be at least 1")

    def key(self, lat: float, lon: float) -> int:
        """The key cell's H3 index: the parent of the point's ``cell_res`` cell, by bit operations.

        The parent of an H3 cell is the cell with the resolution field set to ``key_res`` and the
        digits below ``key_res`` set to 7 (unused) — what the C path does too.
        """
        put = (self.key_res << 52) | ((1 << (3 * (15 - self.key_res))) - 1)
        return int(_latlng_to_cell(lat, lon, self.cell_res)) & ~_RES_BITS | put


def device_json(device_id: str) -> bytes:
    """The device id as the C path inserts it into every ping: a JSON string."""
    return orjson.dumps(device_id)


def scan(body: bytes, device: bytes, now: float, keying: Keying) -> tuple[int, list[Group]] | None:
    """``(pings, groups)`` of a body the fast path takes whole, each ping carrying ``device``.

    ``device`` is ``device_json(device_id)``. None when the reference path must decide
    (anything refused or unusual, an empty array, more than ``pings.MAX_BATCH`` pings).
    """
    return _fastpings.scan(
        body,
        device,
        now - pings.MAX_AGE_S,
        now + pings.MAX_FUTURE_S,
        keying.cell_res,
        keying.key_res,
        keying.max_pings,
        pings.MAX_BATCH,
    )


def group(accepted: list[pings.Ping], keying: Keying) -> list[Group]:
    """The reference path's accepted pings as ``scan`` groups them: runs of one key, capped, in order."""
    out: list[Group] = []
    run: list[pings.Ping] = []
    run_key = -1
    for p in accepted:
        k = keying.key(p["lat"], p["lon"])
        if run and (k != run_key or len(run) >= keying.max_pings):
            out.append((run_key, len(run), b",".join(map(orjson.dumps, run))))
            run = []
        run_key = k
        run.append(p)
    if run:
        out.append((run_key, len(run), b",".join(map(orjson.dumps, run))))
    return out


def encode_record(key_cell: str, fragments: list[bytes], ingest_ts: float) -> bytes:
    """``{"v": 1, "cell", "ingest_ts", "pings": [...]}`` from the groups' fragments, as ``pings.encode_record``."""
    return b'{"v":%d,"cell":"%s","ingest_ts":%s,"pings":[%s]}' % (
        pings.RECORD_VERSION,
        key_cell.encode(),
        orjson.dumps(ingest_ts),
        b",".join(fragments),
    )
