"""Request bodies with hard limits: size on the wire, size after gzip, JSON shape."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson

MAX_BODY = 256 * 1024
MAX_INFLATED = 2 * 1024 * 1024


class BodyError(Exception):
    """A client mistake in the body; carries the HTTP status and a reason code."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail


def check_content_type(value: str | None) -> None:
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise BodyError(415, "unsupported_media_type", "send Content-Type: application/json")


class Disconnected(Exception):
    """The client went away before its body arrived: there is nobody to answer."""


def _check_declared(declared: str | None) -> None:
    if declared is not None:
        try:
            if int(declared) > MAX_BODY:
                raise BodyError(413, "body_too_large", f"limit is {MAX_BODY} bytes")
        except ValueError as exc:
            raise BodyError(400, "bad_content_length") from exc


async def read_limited(chunks: AsyncIterator[bytes], declared: str | None) -> bytes:
    """The raw body, refused with 413 as soon as it passes MAX_BODY bytes."""
    _check_declared(declared)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyError(413, "body_too_large", f"limit is {MAX_BODY} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def receive_limited(receive: Callable[[], Awaitable[MutableMapping[str, Any]]], declared: str | None) -> bytes:
    """``read_limited`` straight from ASGI ``receive``: the ingest fast path has no Request object.

    Most bodies arrive in one message, so that case allocates nothing beyond the message itself.
    """
    _check_declared(declared)
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise Disconnected()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyError(413, "body_too_large", f"limit is {MAX_BODY} bytes")
        if not msg.get("more_body", False):
            if not parts:
                return bytes(chunk)
            parts.append(chunk)
            return b"".join(parts)
        parts.append(chunk)


def inflate(raw: bytes, encoding: str | None) -> bytes:
    """Undo ``Content-Encoding: gzip``, stopping early past MAX_INFLATED (gzip bombs)."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("identity", ""):
        return raw
    if enc != "gzip":
        raise BodyError(415, "unsupported_encoding", "only gzip is accepted")
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(raw, MAX_INFLATED + 1)
    except zlib.error as exc:
        raise BodyError(400, "bad_gzip", str(exc)) from exc
    if len(out) > MAX_INFLATED or d.unconsumed_tail:
        raise BodyError(413, "inflated_too_large", f"limit is {MAX_INFLATED} bytes decompressed")
    if not d.eof:
        raise BodyError(400, "bad_gzip", "truncated gzip stream")
    return out


def parse_json(data: bytes) -> Any:
    """The JSON document; non-finite numbers become floats so that validation refuses their ping alone.

    orjson refuses ``NaN``, ``Infinity`` and numbers past the double range (``1e400``), which
    lenient phone encoders do send for a bad GPS fix. Only for a body orjson refused, the standard
    parser reads those as ``nan``/``inf`` (and, like orjson, integers past 64 bits as floats); the
    result must still be something orjson can write back (no lone surrogates, no deep nesting), so
    nothing else that orjson refuses slips through.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        first = exc
    if _NON_FINITE.search(data) is None:
        raise BodyError(400, "malformed_json", str(first))
    try:
        doc = json.loads(data.decode("utf-8"), parse_int=_integer)
        orjson.dumps(doc)
    except (ValueError, TypeError, RecursionError, orjson.JSONEncodeError):
        raise BodyError(400, "malformed_json", str(first)) from None
    return doc


# what orjson refuses and the standard parser reads as non-finite: the constants, big exponents, long integers
_NON_FINITE = re.compile(rb"NaN|Infinity|[0-9][eE][+-]?[0-9]{3}|[0-9]{309}")


def _integer(text: str) -> int | float:
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)  # as orjson does: a float, here inf
