"""JSON answers of the ingest proxy: gzip when the client allows it and the body is worth it."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

GZIP_MIN = 512  # smaller answers are not worth compressing


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (``gzip;q=0`` refuses it)."""
    for item in accept_encoding.lower().split(","):
        name, _, params = item.partition(";")
        if name.strip() != "gzip":
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def encode_json(doc: Any, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
    """The body of a JSON answer and the headers that its encoding needs."""
    body = orjson.dumps(doc)
    hdrs: dict[str, str] = {}
    if len(body) >= GZIP_MIN:
        hdrs["vary"] = "accept-encoding"
        if accepts_gzip(accept_encoding):
            body = gzip.compress(body, 5)
            hdrs["content-encoding"] = "gzip"
    return body, hdrs


def retry_after(seconds: float) -> str:
    return str(max(1, int(seconds + 0.999)))


def json_response(request: Request, status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    body, hdrs = encode_json(doc, request.headers.get("accept-encoding", ""))
    return Response(body, status_code=status, media_type="application/json", headers={**(headers or {}), **hdrs})


def error(request: Request, status: int, reason: str, detail: str = "", **extra: Any) -> Response:
    headers = {}
    if "retry_after" in extra:
        headers["retry-after"] = retry_after(extra.pop("retry_after"))
    return json_response(request, status, {"error": reason, "detail": detail, **extra}, headers)
