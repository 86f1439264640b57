"""``POST /v1/pings`` as a plain ASGI handler: what ``IngestService.guarded`` + a handler would do.

Nearly every request of the proxy is this one, so it skips Starlette (router, middleware,
``Request``/``Response``: per request those cost more than auth, validation and the
Kafka hand-off together). Per request it does: the five headers it reads, one dict look-up
for a token seen before, the rate limit, the body, the pings checked, keyed and encoded
by ``wire.scan`` in C (the reference path for anything else), one ``Coalescer.submit``
whose shared future it awaits, and a prebuilt answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from pipeline import pings
from pipeline.ingest import wire
from pipeline.ingest.accept import sort_pings
from pipeline.ingest.body import (
    MAX_BODY,
    BodyError,
    Disconnected,
    check_content_type,
    inflate,
    parse_json,
    receive_limited,
)
from pipeline.ingest.coalesce import KafkaUnavailable
from pipeline.ingest.responses import encode_json, retry_after
from pipeline.ingest.service import IngestService
from pipeline.tokens import CACHE_SIZE, DeviceIdentity, TokenError, bearer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = ((b"content-type", b"application/json"),)


class PingsRoute:
    """The handler, bound to one ``IngestService`` (its verifier, limits, metrics, coalescer)."""

    def __init__(self, svc: IngestService) -> None:
        self.svc = svc
        # Authorization header value → (identity, its device id as JSON): a token seen before
        # costs one look-up. Only verified tokens get in, and the expiry is checked on every hit
        # (the verifier decides again once it passed). Cleared when full, like a restart would.
        self._idents: dict[bytes, tuple[DeviceIdentity, bytes]] = {}
        self._status_series: dict[int, tuple[tuple[str, str], ...]] = {}
        self._accepted_answers: dict[int, tuple[list[tuple[bytes, bytes]], bytes]] = {}

    def _identify(self, authorization: bytes | None, now: float) -> tuple[DeviceIdentity, bytes]:
        if authorization is not None:
            hit = self._idents.get(authorization)
            if hit is not None:
                if hit[0].expires_at > now:
                    return hit
                del self._idents[authorization]  # the verifier says why (expired)
        header = None if authorization is None else authorization.decode("latin-1")
        ident = self.svc.verifier.verify(bearer(header), now)
        found = ident, wire.device_json(ident.device_id)
        if authorization is not None:
            if len(self._idents) >= CACHE_SIZE:
                self._idents.clear()
            self._idents[authorization] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = ctype = clen = cenc = accept = None
        for name, value in scope["headers"]:  # the first occurrence wins, as in Starlette's Headers.get
            if name == b"authorization":
                if auth is None:
                    auth = value
            elif name == b"content-type":
                if ctype is None:
                    ctype = value
            elif name == b"content-length":
                if clen is None:
                    clen = value
            elif name == b"content-encoding":
                if cenc is None:
                    cenc = value
            elif name == b"accept-encoding" and accept is None:
                accept = value
        svc = self.svc
        extra: dict[str, str] = {}
        doc: dict[str, Any]
        now = svc.clock()  # one reading per request: auth, rate limit and the pings' time bounds
        try:
            ident, device = self._identify(auth, now)
        except TokenError as exc:
            status, doc = 401, {"error": "unauthorized", "detail": str(exc)}
        else:
            wait = svc.limits.take(ident.device_id, now)
            if wait > 0:
                status, doc = 429, {"error": "rate_limited", "detail": "slow down"}
                extra["retry-after"] = retry_after(wait)
            else:
                # the accepting path inline, not a coroutine of its own: each suspended frame is
                # resumed again when the flush's ack wakes the ~100 requests waiting on it
                try:
                    if ctype != b"application/json":
                        check_content_type(None if ctype is None else ctype.decode("latin-1"))
                    if clen is not None and clen.isdigit() and int(clen) <= MAX_BODY:
                        msg = await receive()  # the usual small body: whole in one message
                        raw = msg.get("body", b"")
                        if msg["type"] != "http.request" or msg.get("more_body", False) or len(raw) > MAX_BODY:
                            raw = await _rest(msg, receive)
                    else:
                        raw = await receive_limited(receive, None if clen is None else clen.decode("latin-1"))
                    if cenc is not None:
                        raw = inflate(raw, cenc.decode("latin-1"))
                    fast = wire.scan(raw, device, now, svc.coalescer.keying)
                    if fast is None:
                        status, doc = await self._accept_reference(raw, ident.device_id, now)
                    else:
                        count, groups = fast
                        svc.batch_sizes.observe(count)
                        # 202, its count, the pings and the wait are told by the coalescer per flush
                        await svc.coalescer.submit(groups, count)
                        out, body = self._accepted_answer(count)
                        await send({"type": "http.response.start", "status": 202, "headers": out})
                        await send({"type": "http.response.body", "body": body})
                        return
                except BodyError as exc:
                    status, doc = exc.status, {"error": exc.reason, "detail": exc.detail}
                except (TimeoutError, KafkaUnavailable) as exc:
                    status, doc = 503, {"error": "kafka_unavailable", "detail": str(exc) or "retry"}
                    extra["retry-after"] = "1"
                except Disconnected:
                    return  # nobody left to answer
        if status != 202:  # a 202 is counted with its flush's acknowledgement
            series = self._status_series.get(status)
            if series is None:
                series = self._status_series[status] = svc.requests.series(route="pings", status=str(status))
            svc.requests.inc_series(series)
        if status == 202 and not doc["rejected"]:
            out, body = self._accepted_answer(doc["accepted"])
        else:
            body, enc = encode_json(doc, "" if accept is None else accept.decode("latin-1"))
            out = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
            for name, text in (*extra.items(), *enc.items()):
                out.append((name.encode(), text.encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    def _accepted_answer(self, accepted: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body of ``202 {"accepted": n, "rejected": []}``, built once per ``n``.

        Nearly every answer is one of these, and all of them are under the gzip threshold.
        """
        hit = self._accepted_answers.get(accepted)
        if hit is None:
            body = orjson.dumps({"accepted": accepted, "rejected": []})
            headers = [(b"content-length", str(len(body)).encode()), *_JSON_HEADERS]
            hit = self._accepted_answers[accepted] = (headers, body)
        return hit

    async def _accept_reference(self, raw: bytes, device_id: str, now: float) -> tuple[int, dict[str, Any]]:
        """Every body the fast path does not take whole: per-ping reasons, 403 for a foreign device."""
        svc = self.svc
        doc = parse_json(raw)
        items = doc if isinstance(doc, list) else [doc]
        if isinstance(doc, list) and not doc:
            raise BodyError(400, "empty_batch", "send at least one ping")
        if len(items) > pings.MAX_BATCH:
            raise BodyError(413, "batch_too_large", f"at most {pings.MAX_BATCH} pings per request")
        good, refused, foreign = sort_pings(items, device_id, now)
        if foreign is not None:
            return 403, {"error": "forbidden", "detail": "a ping names another device", "index": foreign}
        bad = [{"index": i, "reason": reason} for i, reason in refused]
        for _, reason in refused:
            svc.rejected.inc(reason=reason.split(":", 1)[0])
        svc.batch_sizes.observe(len(items))
        if not good:
            return 400, {"error": "invalid_pings", "accepted": 0, "rejected": bad}
        groups = wire.group(good, svc.coalescer.keying)
        await svc.coalescer.submit(groups, len(good))  # counted per flush, as the fast path
        return 202, {"accepted": len(good), "rejected": bad}


async def _rest(first: Message, receive: Receive) -> bytes:
    """The body after a first message that did not hold all of it (or said the client left)."""
    if first["type"] != "http.request":
        raise Disconnected()
    parts = [first.get("body", b"")]
    size = len(parts[0])
    more = first.get("more_body", False)
    while True:
        if size > MAX_BODY:
            raise BodyError(413, "body_too_large", f"limit is {MAX_BODY} bytes")
        if not more:
            return b"".join(parts)
        msg = await receive()
        if msg["type"] != "http.request":
            raise Disconnected()
        chunk = msg.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        more = msg.get("more_body", False)
