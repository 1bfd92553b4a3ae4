"""HTTP/1.1 with h11 on a `BufferedEnd`: one `H1Channel` per connection, either side.

h11 does all the parsing and framing (keep-alive, chunked, content-length, what a HEAD
answer carries); this module only feeds it bytes from the stream and writes what it produces.
Header editing for a proxy hop (hop-by-hop headers out, the request's own framing kept) is
pure, below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import h11
from h11._readers import ContentLengthReader

from waypoint.streamio import BufferedEnd

Headers = tuple[tuple[str, str], ...]

MAX_HEAD = 64 * 1024  # request line and headers (h11's default is 16 KiB)

# RFC 9110 7.6.1: meaningful for one hop only; a proxy drops them (and what Connection
# names). Transfer-Encoding stays: it is how this body is framed, and h11 frames it again.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    )
)


class H1Error(Exception):
    """The peer broke HTTP/1.1 (h11's RemoteProtocolError), with the status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class H1Channel:
    """h11 on a stream: `next_event()` reads as h11 needs, `send()` writes and drains."""

    def __init__(self, end: BufferedEnd, role: type[h11.CLIENT] | type[h11.SERVER]) -> None:
        self.end = end
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
        self._eof_fed = False
        self._out: list[bytes] = []  # sent with flush=False, not written yet

    async def next_event(self, timeout: float | None = None) -> h11.Event | type[h11.PAUSED]:
        """The next event; reads from the stream while h11 needs data. H1Error for a
        protocol error; EndClosed (from the end) if the stream is reset; TimeoutError if
        `timeout` seconds go by before the whole event is in.

        The timeout is a deadline for the reads only (an event h11 already holds costs no
        timer), in this task: `asyncio.wait_for` would make a task per event, and a request
        is about five events through the waypoint."""
        deadline = None
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as err:
                raise H1Error(str(err), err.error_status_hint) from None
            if event is not h11.NEED_DATA:
                return cast(h11.Event | type[h11.PAUSED], event)
            if self._eof_fed:  # h11 wants more after the end: it says ConnectionClosed
                raise H1Error("connection closed in the middle of a message")
            if timeout is None:
                data = await self.end.read()
            else:
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + timeout
                async with asyncio.timeout_at(deadline):
                    data = await self.end.read()
            if not data:
                self._eof_fed = True
            self.conn.receive_data(data)

    def ready(self) -> bool:
        """Whether h11 holds the next event whole already (`next_event()` would not read):
        a relay then sends what it has with `flush=False` and writes once."""
        return self.conn.their_state is not h11.DONE and _ready(self.conn)

    async def send(self, event: h11.Event, flush: bool = True) -> None:
        """Serialize `event`; with `flush` write it (and what was held) and drain. Held
        bytes (`flush=False`) go out with the next flushed send: one write, so one HBONE
        DATA frame and one TLS record, for a whole small message."""
        data = self.conn.send(event)
        if not flush:
            if data:
                self._out.append(data)
            return
        if self._out:
            self._out.append(data or b"")
            data = b"".join(self._out)
            self._out.clear()
        if data:
            self.end.write(data)
            await self.end.drain()

    def reusable(self) -> bool:
        """Both sides finished a message and the connection stays open: start the next."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


def _ready(conn: h11.Connection) -> bool:
    """Whether h11 can make an event out of what it holds, without reading, told without
    consuming it. Conservative: False when unsure (the caller then flushes, as always)."""
    reader = conn._reader  # (h11 has no public "would next_event read?")
    if isinstance(reader, ContentLengthReader):
        # body bytes are a Data event; a body read whole is an EndOfMessage
        return reader._remaining == 0 or bool(conn.trailing_data[0])
    if conn.their_state in (h11.IDLE, h11.SEND_RESPONSE):
        return b"\r\n\r\n" in conn.trailing_data[0]  # a whole head
    return False


def decode_headers(raw: Sequence[tuple[bytes, bytes]]) -> Headers:
    """h11's headers (lowercased names) as text; latin-1 keeps every byte."""
    return tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)


def encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def hop_headers_removed(headers: Headers) -> Headers:
    """Drop hop-by-hop headers, and any header the Connection header names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
    }
    return tuple(
        (n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named and n != "expect"
    )


def header(headers: Headers, name: str) -> str | None:
    return next((v for n, v in headers if n == name), None)
