"""WebSocket frames written straight to the transport: encoded once, the same bytes for every subscriber.

A server frame is not masked (RFC 6455 §5.1), so an update's frame is identical for all
its subscribers: the hub encodes it once, and delivery writes it — several frames joined
into one ``transport.write`` when a driver has several pending — to the socket uvicorn's
websockets-sansio protocol holds. That skips, per message and driver, starlette's and
uvicorn's ASGI send (an await, the sans-I/O framing, a join) that the profile showed
dominating the push worker. One message per frame, as the protocol documents.

The websockets state machine is not bypassed for anything it tracks: these are complete,
final data frames (no fragmentation state), uncompressed (RSV1 clear, valid whether or
not permessage-deflate was negotiated), and never written after a close frame was sent.
Under another server (or a test client) ``raw_socket`` returns None and delivery uses the
ASGI send.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

try:  # the implementation `traverz push` runs (pipeline/cli.py: ws="websockets-sansio")
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - uvicorn without the websockets package
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class RawSocket:
    """The transport of one accepted WebSocket, for pre-encoded frames."""

    __slots__ = ("proto", "transport", "write")

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.transport = proto.transport
        # ``write(data)``: the transport's own, bound once (a C call per write, no Python frame)
        self.write: Callable[[bytes], None] = proto.transport.write

    def open(self) -> bool:
        """Frames may still be written: no close sent or received, transport not closing."""
        p = self.proto
        return not (p.close_sent or p.disconnected or self.transport.is_closing())

    def ready(self) -> bool:
        """Open and under the high-water mark: a write now goes out without growing a backlog."""
        t = self.transport
        # An empty buffer (the common case, checked in C) is under any mark; else ask uvicorn's flow
        # control. A lost connection's transport is closing too (uvicorn's ``disconnected``).
        return (t.get_write_buffer_size() == 0 or bool(self.proto.writable.is_set())) and not (
            self.proto.close_sent or t.is_closing()
        )

    def writable(self) -> bool:
        """The transport's buffer is under its high-water mark (uvicorn's flow control)."""
        return bool(self.proto.writable.is_set())

    async def wait_writable(self) -> None:
        await self.proto.writable.wait()


def raw_socket(ws: WebSocket) -> RawSocket | None:
    """The accepted socket's transport when uvicorn's websockets-sansio protocol serves it, else None."""
    # Starlette wraps ``send`` but hands the server's ``receive`` through: a bound method of the protocol.
    proto = getattr(getattr(ws, "_receive", None), "__self__", None)
    if WebSocketsSansIOProtocol is None or not isinstance(proto, WebSocketsSansIOProtocol):
        return None
    if not proto.handshake_complete or proto.transport is None:
        return None
    return RawSocket(proto)
