"""Pings as the proxy carries them: decoded and range-checked in C, encoded into records in C.

``orjson.loads`` + a per-field check in Python cost ~1.4 µs a ping, most of it in the
checks (measured, 50-ping batches). msgspec decodes a body straight into ``WirePing``
structs and checks every range that does not depend on the clock while it parses (~0.4 µs
a ping); the rest (``ts`` against now, the device id) is one short loop. The record is
encoded from the same structs: no dict per ping on the way from the socket to Kafka.

The fast path only ever *accepts*. Anything it does not take as a whole — a refused ping,
a value needing normalisation (360°), non-ASCII bytes, JSON it cannot read — sends the
body down the reference path (``body.parse_json`` + ``accept.sort_pings``), which names
the reasons; the unit tests hold both paths equal. Non-ASCII goes that way because
msgspec skips unknown fields without checking their UTF-8, where orjson refuses the body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from pipeline import pings

_Lat = Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)]
_Lon = Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)]
_Speed = Annotated[float, msgspec.Meta(ge=0.0, le=pings.MAX_SPEED_MPS)]
# below 360: the reference path turns 360 into 0, so such a ping takes that path
_Heading = Annotated[float, msgspec.Meta(ge=0.0, lt=360.0)]
_Accuracy = Annotated[float, msgspec.Meta(ge=0.0, le=pings.MAX_ACCURACY_M)]
_Seq = Annotated[int, msgspec.Meta(ge=0, lt=2**53)]


class WirePing(msgspec.Struct, omit_defaults=True, gc=False):
    """One accepted ping; encodes as the ping of a ``traverz.pings.v1`` record.

    ``gc=False``: the struct holds only numbers and strings, so the cyclic GC need not track
    the ~50 of them a batch makes.
    """

    seq: _Seq
    ts: float
    lat: _Lat
    lon: _Lon
    speed_mps: _Speed
    heading_deg: _Heading
    accuracy_m: _Accuracy
    state: Literal["driving", "stopped", "parked"] | None = None  # omitted when None, as validate_ping does
    # UNSET while decoding (absent from the body); a JSON null is refused, as a foreign id would be
    device_id: str | msgspec.UnsetType = msgspec.UNSET


_decoder = msgspec.json.Decoder(list[WirePing] | WirePing)
_encoder = msgspec.json.Encoder()


class _Record(msgspec.Struct, gc=False):
    v: int
    cell: str
    ingest_ts: float
    pings: list[WirePing]


def decode_common(body: bytes, device_id: str, now: float) -> list[WirePing] | WirePing | None:
    """The body's pings, each carrying ``device_id``, if the body is one the fast path takes whole.

    Returns a ``WirePing`` for a body that is one object (one ping), a list for an array
    (maybe empty: the caller refuses that), None when the reference path must decide.
    """
    if not body.isascii():
        return None
    try:
        doc: list[WirePing] | WirePing = _decoder.decode(body)
    except msgspec.MsgspecError:  # DecodeError and ValidationError both
        return None
    ts_lo, ts_hi = now - pings.MAX_AGE_S, now + pings.MAX_FUTURE_S
    unset = msgspec.UNSET
    if isinstance(doc, WirePing):
        if not ts_lo <= doc.ts <= ts_hi or (doc.device_id is not unset and doc.device_id != device_id):
            return None
        doc.device_id = device_id
        return doc
    for p in doc:
        if not ts_lo <= p.ts <= ts_hi or (p.device_id is not unset and p.device_id != device_id):
            return None
        p.device_id = device_id
    return doc


def from_dict(p: pings.Ping) -> WirePing:
    """A ping the reference path accepted (``validate_ping``'s or the parsed dict), as a ``WirePing``."""
    return WirePing(
        seq=p["seq"],
        ts=float(p["ts"]),
        lat=float(p["lat"]),
        lon=float(p["lon"]),
        speed_mps=float(p["speed_mps"]),
        heading_deg=float(p["heading_deg"]),
        accuracy_m=float(p["accuracy_m"]),
        state=p.get("state"),
        device_id=p["device_id"],
    )


def encode_record(key_cell: str, batch: list[WirePing], ingest_ts: float) -> bytes:
    """``{"v": 1, "cell", "ingest_ts", "pings": [...]}``, as ``pings.encode_record`` writes it for dicts."""
    return _encoder.encode(_Record(pings.RECORD_VERSION, key_cell, ingest_ts, batch))


def as_dict(p: WirePing) -> dict[str, Any]:
    """The ping as the record's consumers read it (tests, the rare Python-side look)."""
    return msgspec.to_builtins(p)  # type: ignore[no-any-return]
