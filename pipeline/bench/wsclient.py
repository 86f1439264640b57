"""A minimal WebSocket client on a bare asyncio protocol: many connections, little CPU.

For ``traverz bench push`` (10,000 sockets from a few processes) and for tests that need a
client the ``websockets`` library would not give: one that stops reading with a tiny
receive buffer. It speaks just enough RFC 6455: the upgrade, masked text frames out,
unmasked frames in (server frames are never masked), close frames.

``Tally`` is the load client's side: frames are found from their headers only, and each
one's ``updated_at`` is read with a byte search (no JSON decode, which would make the
client, not the server, the bottleneck) into a per-millisecond histogram.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import cast

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def client_frame(text: str | bytes, opcode: int = OP_TEXT) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    payload = text.encode() if isinstance(text, str) else text
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big") if n else 0
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return head + mask + masked


def upgrade_request(host: str, port: int, path: str, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


class Tally:
    """Text frames received by every connection of a process, and the published → received latency
    of every one of them: ``hist[ms]`` counts frames by whole milliseconds (the last bucket: that or more)."""

    MAX_MS = 10_000

    def __init__(self) -> None:
        self.on = False
        self.frames = 0
        self.hist = [0] * (self.MAX_MS + 1)

    def reset(self) -> None:
        self.frames = 0
        self.hist = [0] * (self.MAX_MS + 1)


class WsClient(asyncio.Protocol):
    """Counts text frames; ``on_text(payload, now)`` sees each one, or ``tally`` counts them."""

    def __init__(
        self, request: bytes, on_text: Callable[[bytes, float], None] | None = None, tally: Tally | None = None
    ) -> None:
        self.request = request
        self.on_text = on_text
        self.tally = tally
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.texts = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.transport.write(self.request)

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(text))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[: buf.find(b"\r\n")]
            if b" 101 " not in status:
                self.upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
            buf = buf[end + 4 :]
        if self.tally is not None:
            self._count(buf)
            return
        pos, size = 0, len(buf)
        now = time.time()
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            hdr = 2
            if b1 == 126:
                if size - pos < 4:
                    break
                b1, hdr = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif b1 == 127:
                if size - pos < 10:
                    break
                b1, hdr = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if size - pos < hdr + b1:
                break
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                self.texts += 1
                if self.on_text is not None:
                    self.on_text(buf[pos + hdr : pos + hdr + b1], now)
            elif opcode == OP_PING and self.transport is not None:  # unanswered, uvicorn closes after 20 s
                self.transport.write(client_frame(bytes(buf[pos + hdr : pos + hdr + b1]), OP_PONG))
            elif opcode == OP_CLOSE and not self.closed.done():
                self.close_code = struct.unpack_from("!H", buf, pos + hdr)[0] if b1 >= 2 else 1005
            pos += hdr + b1
        self.buf = buf[pos:]

    def _count(self, buf: bytes) -> None:
        """Skip from frame to frame by the headers, count text frames, and while counting read each one's
        ``updated_at`` (stamped when it was published) against the time of this read."""
        tally = self.tally
        assert tally is not None
        on, hist, top = tally.on, tally.hist, tally.MAX_MS
        now_ms = time.time() * 1000.0
        find = buf.find
        pos, size, n = 0, len(buf), 0
        while size - pos >= 2:
            ln, hdr = buf[pos + 1], 2
            if ln == 126:
                if size - pos < 4:
                    break
                ln, hdr = (buf[pos + 2] << 8) | buf[pos + 3], 4
            elif ln == 127:
                if size - pos < 10:
                    break
                ln, hdr = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            end = pos + hdr + ln
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == OP_TEXT:
                n += 1
                if on and (i := find(b'"updated_at":', pos + hdr, end)) >= 0:
                    j = i + 13
                    k = find(b",", j, end)
                    ms = int(now_ms - float(buf[j : k if k >= 0 else end - 1]) * 1000.0)
                    hist[ms if 0 <= ms < top else (top if ms >= top else 0)] += 1
            elif opcode == OP_PING and self.transport is not None:  # unanswered, uvicorn closes after 20 s
                self.transport.write(client_frame(bytes(buf[pos + hdr : end]), OP_PONG))
            elif opcode == OP_CLOSE and not self.closed.done():
                self.close_code = struct.unpack_from("!H", buf, pos + hdr)[0] if ln >= 2 else 1005
            pos = end
        self.buf = buf[pos:] if pos < size else b""
        self.texts += n
        if on:
            tally.frames += n

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)


async def connect(
    host: str,
    port: int,
    token: str,
    path: str = "/v1/stream",
    on_text: Callable[[bytes, float], None] | None = None,
    rcvbuf: int = 0,
    tally: Tally | None = None,
) -> WsClient:
    """An upgraded connection; ``rcvbuf`` > 0 shrinks the kernel receive buffer (a slow phone)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    _, proto = await loop.create_connection(
        lambda: WsClient(upgrade_request(host, port, path, token), on_text, tally), sock=sock
    )
    await asyncio.wait_for(proto.upgraded, 60.0)
    return proto
