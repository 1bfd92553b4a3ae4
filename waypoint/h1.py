"""HTTP/1.1 on a `BufferedEnd`: one `H1Channel` per connection, either side.

llhttp (through httptools) parses; this module turns its callbacks into events (`Request`,
`Response`, `InformationalResponse`, `Data`, `EndOfMessage`, `ConnectionClosed`), keeps the
few states a proxy hop needs (keep-alive, whose turn it is), and frames what we send
(content-length, chunked, or until close, as RFC 9112 6.3 says for what the peer sent).
h11 did all of this before; its per-event bookkeeping was most of the waypoint's CPU, so the
hot path is now C parsing plus the little below, and h11 stays as the reference the tests
check us against. Header editing for a proxy hop (hop-by-hop headers out, the request's own
framing kept) is pure, at the end.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

from waypoint.streamio import BufferedEnd

Headers = tuple[tuple[str, str], ...]
RawHeaders = list[tuple[bytes, bytes]]  # lower-case names

MAX_HEAD = 64 * 1024  # request or status line and headers, bytes

# RFC 9110 7.6.1: meaningful for one hop only; a proxy drops them (and what Connection
# names). Transfer-Encoding stays: it is how this body is framed, and we frame it again.
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
NO_BODY_STATUSES = frozenset((204, 304))


class H1Error(Exception):
    """The peer broke HTTP/1.1, with the status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class H1LocalError(Exception):
    """We were about to send something HTTP/1.1 does not allow here (h11's
    LocalProtocolError): a body where the framing says none, more than Content-Length..."""


# --- events ------------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    method: bytes
    target: bytes
    headers: RawHeaders
    http_version: bytes = b"1.1"
    keep_alive: bool = True  # as the peer's message asked (parsed ones)


@dataclass(slots=True)
class Response:
    status_code: int
    headers: RawHeaders
    reason: bytes = b""
    http_version: bytes = b"1.1"
    keep_alive: bool = True


@dataclass(slots=True)
class InformationalResponse:
    status_code: int
    headers: RawHeaders = field(default_factory=list)
    reason: bytes = b""


@dataclass(slots=True)
class Data:
    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    headers: RawHeaders = field(default_factory=list)  # trailers (not parsed: llhttp skips them)


@dataclass(slots=True)
class ConnectionClosed:
    pass


Event = Request | Response | InformationalResponse | Data | EndOfMessage | ConnectionClosed


class Role(enum.Enum):
    SERVER = "server"  # we read requests and send responses
    CLIENT = "client"


class State(enum.Enum):
    """One side's place in the current exchange, as h11 names them."""

    IDLE = "idle"  # no message yet
    SEND_RESPONSE = "send_response"  # (our side, server) a request came, no answer started
    SEND_BODY = "send_body"  # the head went, the body is under way
    DONE = "done"  # the message is complete


IDLE, SEND_RESPONSE, SEND_BODY, DONE = State.IDLE, State.SEND_RESPONSE, State.SEND_BODY, State.DONE


class _Framing(enum.Enum):
    NONE = 0  # no body (HEAD, 1xx, 204, 304, a request without length)
    LENGTH = 1
    CHUNKED = 2
    UNTIL_CLOSE = 3  # a response to HTTP/1.0 without a length: the close ends it


# --- parsing: llhttp's callbacks as events --------------------------------------------------


class _SkipBody(Exception):
    """Raised from the head callback of a response to HEAD: llhttp cannot be told."""


class _Parse:
    """httptools' protocol object: appends events for one connection's messages."""

    def __init__(self, events: deque[Event], role: Role) -> None:
        self.events = events
        self.requests = role is Role.SERVER
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser = (
            httptools.HttpRequestParser(self)
            if self.requests
            else httptools.HttpResponseParser(self)
        )
        self.in_message = False  # begun, not complete
        self.in_head = True  # no head complete yet for the current (or next) message
        self.completed = False  # a message completed in the feed under way
        self.head_only = False  # (client) the message under way answers a HEAD
        self.until_close = False  # (client) the body under way ends when the peer closes
        self.informational = False
        self._url = b""
        self._reason = b""
        self._headers: RawHeaders = []

    def on_message_begin(self) -> None:
        self.in_message = True
        self.in_head = True
        self._url = self._reason = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        version = parser.get_http_version().encode()
        keep_alive = parser.should_keep_alive()
        if isinstance(parser, httptools.HttpRequestParser):
            method = parser.get_method()
            self.events.append(Request(method, self._url, self._headers, version, keep_alive))
            return
        status = parser.get_status_code()
        if status < 200:
            self.informational = True
            self.events.append(InformationalResponse(status, self._headers, self._reason))
            return
        self.informational = False
        self.events.append(
            Response(
                status, self._headers, self._reason, version, keep_alive and not self.head_only
            )
        )
        if self.head_only:
            self.events.append(EndOfMessage())
            self.in_message = False
            self.completed = True
            raise _SkipBody
        self.until_close = status not in NO_BODY_STATUSES and not any(
            n in (b"content-length", b"transfer-encoding") for n, _ in self._headers
        )

    def on_body(self, body: bytes) -> None:
        self.events.append(Data(body))

    def on_message_complete(self) -> None:
        self.in_message = False
        self.completed = True
        self.until_close = False
        if self.informational:
            self.informational = False
            return
        self.events.append(EndOfMessage())


# --- the channel ---------------------------------------------------------------------------


class H1Channel:
    """HTTP/1.1 on a stream: `next_event()` reads as the parser needs, `send()` frames,
    writes and drains."""

    def __init__(self, end: BufferedEnd, role: Role) -> None:
        self.end = end
        self.role = role
        self.our_state = IDLE
        self.their_state = IDLE
        self._events: deque[Event] = deque()
        self._parse = _Parse(self._events, role)
        self._error: H1Error | None = None  # raised once the events before it are taken
        self._eof = False
        self._head_bytes = 0  # of the head being received, so far
        self._out: list[bytes] = []  # sent with flush=False, not written yet
        self._framing = _Framing.NONE  # of what we are sending
        self._remaining = 0  # bytes of a LENGTH body still to send
        self._must_close = False  # this exchange ends the connection
        self._peer_method = b""  # (server) of the request being answered
        self._peer_version = b"1.1"
        self._expect_continue = False  # (server) the request asked for a 100 Continue
        self._body_seen = False

    # --- receiving ---------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event; reads from the stream while the parser needs more. H1Error for a
        protocol error; EndClosed (from the end) if the stream is reset; TimeoutError if
        `timeout` seconds go by before the whole event is in.

        The timeout is a deadline for the reads only (an event already parsed costs no
        timer), kept by the end itself: `asyncio.wait_for` would make a task per event, and
        `asyncio.timeout` costs several loop lookups."""
        deadline = None
        while True:
            if self._events:
                return self._took(self._events.popleft())
            if self._error is not None:
                raise self._error
            if self._eof:
                return self._at_eof()
            if timeout is not None and deadline is None:
                deadline = self.end.time() + timeout
            data = await self.end.read(deadline)
            if data:
                self._feed(data)
            else:
                self._eof = True

    def _feed(self, data: bytes) -> None:
        parse = self._parse
        parse.completed = False
        try:
            parse.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            if not isinstance(err.__context__, _SkipBody):
                raise
            # A HEAD's response ends at its head, which llhttp cannot be told: a new parser
            # for what follows, and the connection is not reused (what came after the head
            # in this read is not looked at).
            self._parse = _Parse(self._events, self.role)
            self._must_close = True
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: a proxy hop drops Upgrade, and tunnels are not ours
            self._error = H1Error("protocol upgrades and CONNECT are not proxied", 501)
        except httptools.HttpParserError as err:
            self._error = H1Error(f"malformed HTTP/1.1: {err}")
        if parse.in_head and parse.in_message:
            # the head is not complete yet: count it (not when another message completed
            # in this read: then its bytes are in `data` too, and the next read counts)
            self._head_bytes = 0 if parse.completed else self._head_bytes + len(data)
            if self._head_bytes > MAX_HEAD and self._error is None:
                self._error = H1Error(f"request head over {MAX_HEAD} bytes", 431)
        else:
            self._head_bytes = 0

    def _at_eof(self) -> Event:
        parse = self._parse
        if parse.in_message:
            if parse.until_close and not parse.in_head:
                parse.in_message = parse.until_close = False
                self._must_close = True
                self._events.append(EndOfMessage())
                return self._took(self._events.popleft())
            raise H1Error("connection closed in the middle of a message")
        return ConnectionClosed()

    def _took(self, event: Event) -> Event:
        """The states move as events are taken, not as they are parsed (a pipelined
        request waits in the queue for its turn)."""
        if isinstance(event, Data):
            self._body_seen = True
            return event
        if isinstance(event, EndOfMessage):
            self.their_state = DONE
        elif isinstance(event, Request):
            self.their_state = SEND_BODY
            self.our_state = SEND_RESPONSE
            self._peer_method = event.method
            self._peer_version = event.http_version
            self._must_close = self._must_close or not event.keep_alive
            self._expect_continue = _says_100_continue(event)
            self._body_seen = False
        elif isinstance(event, Response):
            self.their_state = SEND_BODY
            self._must_close = self._must_close or not event.keep_alive
        return event

    def ready(self) -> bool:
        """Whether the next event is parsed already (`next_event()` would not read): a relay
        then sends what it has with `flush=False` and writes once."""
        return self.their_state is not DONE and bool(self._events)

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        if not self._expect_continue or self._body_seen:
            return False
        if self._events and isinstance(self._events[0], Data | EndOfMessage):
            return False
        return self.our_state is SEND_RESPONSE

    # --- sending -----------------------------------------------------------------------

    async def send(self, event: Event, flush: bool = True) -> None:
        """Frame and queue `event`; with `flush` write it (and what was held) and drain.
        Held bytes (`flush=False`) go out with the next flushed send: one write, so one
        HBONE DATA frame and one TLS record, for a whole small message. H1LocalError if
        HTTP/1.1 does not allow it here."""
        data = self._framed(event)
        if not flush:
            if data:
                self._out.append(data)
            return
        if self._out:
            self._out.append(data)
            data = b"".join(self._out)
            self._out.clear()
        if data:
            self.end.write(data)
            await self.end.drain()

    def _framed(self, event: Event) -> bytes:
        if isinstance(event, Data):
            return self._framed_data(event.data)
        if isinstance(event, EndOfMessage):
            return self._framed_end()
        if isinstance(event, Response):
            return self._framed_response(event)
        if isinstance(event, Request):
            return self._framed_request(event)
        if isinstance(event, InformationalResponse):
            if self.role is not Role.SERVER or self.our_state is not SEND_RESPONSE:
                raise H1LocalError("a 1xx answers a request we have not answered yet")
            self._body_seen = True  # asked once
            return _head(b"HTTP/1.1 %d %s\r\n" % (event.status_code, event.reason), event.headers)
        raise H1LocalError(f"cannot send {event!r}")

    def _framed_request(self, request: Request) -> bytes:
        if self.role is not Role.CLIENT or self.our_state is not IDLE:
            raise H1LocalError("a request while another is under way")
        if b" " in request.target or not request.target:
            raise H1LocalError(f"request target {request.target!r} is not one token")
        headers = request.headers
        self._framing, self._remaining = _sender_framing(headers, body_allowed=True)
        if self._framing is _Framing.UNTIL_CLOSE:  # a request has no length: no body
            self._framing = _Framing.NONE
        self._parse.head_only = request.method == b"HEAD"
        self.our_state = SEND_BODY
        self.their_state = IDLE
        return _head(b"%s %s HTTP/1.1\r\n" % (request.method, request.target), headers)

    def _framed_response(self, response: Response) -> bytes:
        if self.role is not Role.SERVER or self.our_state not in (IDLE, SEND_RESPONSE):
            raise H1LocalError("a response with none due")
        status = response.status_code
        headers = response.headers
        body_allowed = self._peer_method != b"HEAD" and status not in NO_BODY_STATUSES
        framing, remaining = _sender_framing(headers, body_allowed)
        http10 = self._peer_version == b"1.0"
        if framing is _Framing.CHUNKED and http10:  # 1.0 knows no chunks: until close
            headers = [(n, v) for n, v in headers if n != b"transfer-encoding"]
            framing = _Framing.UNTIL_CLOSE
        elif framing is _Framing.UNTIL_CLOSE and not http10:
            headers = [*headers, (b"transfer-encoding", b"chunked")]
            framing = _Framing.CHUNKED
        if framing is _Framing.UNTIL_CLOSE or any(
            n == b"connection" and v.lower() == b"close" for n, v in headers
        ):
            self._must_close = True
        if self._must_close and not any(n == b"connection" for n, _ in headers):
            headers = [*headers, (b"connection", b"close")]
        self._framing, self._remaining = framing, remaining
        self.our_state = SEND_BODY
        self._body_seen = True
        return _head(b"HTTP/1.1 %d %s\r\n" % (status, response.reason), headers)

    def _framed_data(self, data: bytes) -> bytes:
        if self.our_state is not SEND_BODY:
            raise H1LocalError("body data outside a message")
        if not data:
            return b""
        framing = self._framing
        if framing is _Framing.CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if framing is _Framing.LENGTH:
            if len(data) > self._remaining:
                raise H1LocalError("more body than Content-Length says")
            self._remaining -= len(data)
            return data
        if framing is _Framing.UNTIL_CLOSE:
            return data
        raise H1LocalError("a body where the framing allows none")

    def _framed_end(self) -> bytes:
        if self.our_state is not SEND_BODY:
            raise H1LocalError("the end of a message not under way")
        self.our_state = DONE
        if self._framing is _Framing.CHUNKED:
            return b"0\r\n\r\n"
        if self._framing is _Framing.LENGTH and self._remaining:
            raise H1LocalError(f"the body ended {self._remaining} bytes short of Content-Length")
        return b""

    def reusable(self) -> bool:
        """Both sides finished a message and the connection stays open: start the next."""
        if self.our_state is not DONE or self.their_state is not DONE or self._must_close:
            return False
        self.our_state = self.their_state = IDLE
        return True


def _says_100_continue(request: Request) -> bool:
    return request.http_version != b"1.0" and any(
        n == b"expect" and v.lower() == b"100-continue" for n, v in request.headers
    )


def _sender_framing(headers: RawHeaders, body_allowed: bool) -> tuple[_Framing, int]:
    """How the body of a message with these headers is framed (RFC 9112 6.3)."""
    if not body_allowed:
        return _Framing.NONE, 0
    length: int | None = None
    for name, value in headers:
        if name == b"transfer-encoding":
            if value.lower().rsplit(b",", 1)[-1].strip() == b"chunked":
                return _Framing.CHUNKED, 0
            return _Framing.UNTIL_CLOSE, 0
        if name == b"content-length":
            if not value.isdigit():
                raise H1LocalError(f"Content-Length {value!r}")
            length = int(value)
    if length is None:
        return _Framing.UNTIL_CLOSE, 0
    return (_Framing.LENGTH, length) if length else (_Framing.NONE, 0)


def _head(start_line: bytes, headers: RawHeaders) -> bytes:
    """A message head. A CR or LF inside a line (from a route's header value, say) would
    split it into two: such a head is refused whole, never sent."""
    parts = [start_line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    lines = len(headers) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise H1LocalError("a CR or LF inside a header or the start line")
    return head


# --- header editing ----------------------------------------------------------------------


def decode_headers(raw: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Parsed headers (lower-case names) as text; latin-1 keeps every byte."""
    return tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)


def encode_headers(headers: Headers) -> RawHeaders:
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
