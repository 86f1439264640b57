"""The baseline for the ingest benchmark: a bare ASGI app that only reads and parses the body.

Served by the same uvicorn configuration as the proxy, so the ratio between the two
is the cost of everything Traverz adds: auth, validation, H3 keys, Kafka acks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    doc = orjson.loads(body) if body else None
    n = len(doc) if isinstance(doc, list) else 1
    out = orjson.dumps({"accepted": n, "rejected": []})
    # the proxy's answer, byte for byte: with content-length (without, uvicorn chunks the body —
    # more bytes and work than the proxy's answer costs)
    headers = [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": out})
