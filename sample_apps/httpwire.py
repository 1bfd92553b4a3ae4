"""Server side of HTTP/1.1 (h11) and HTTP/2 (h2): bytes in, typed requests out, no sockets.

The echo server's socket code feeds received bytes into `H1Server` or `H2Server`, gets
`Request` values back, and writes whatever `data_to_send()` returns. That keeps every
protocol case testable with plain bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Headers = tuple[tuple[str, str], ...]


class Protocol(enum.Enum):
    HTTP1 = "HTTP/1.1"
    HTTP2 = "HTTP/2"


class HttpProtocolError(Exception):
    """The peer broke the protocol; `status` is the answer to try before closing (HTTP/1.1)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    # Lowercased names in arrival order; HTTP/2 pseudo-headers are not included.
    headers: Headers
    body_bytes: int
    protocol: str
    stream_id: int | None = None

    def header_map(self) -> dict[str, str]:
        """Headers as one value per name, repeated ones joined as RFC 9110 allows."""
        merged: dict[str, str] = {}
        for name, value in self.headers:
            if name in merged:
                # Cookie crumbs (split by HTTP/2 clients) are rejoined with "; " (RFC 9113 8.2.3).
                sep = "; " if name == "cookie" else ", "
                merged[name] = merged[name] + sep + value
            else:
                merged[name] = value
        return merged


@dataclass(frozen=True)
class Response:
    status: int
    headers: Headers = ()  # content-length is added by the wire layer
    body: bytes = b""


def sniff_protocol(prefix: bytes) -> Protocol | None:
    """Pick the protocol from a connection's first bytes; None means "read more first"."""
    if prefix.startswith(H2_PREFACE):
        return Protocol.HTTP2
    if H2_PREFACE.startswith(prefix):
        return None
    return Protocol.HTTP1


def body_allowed(method: str, status: int) -> bool:
    return method != "HEAD" and status >= 200 and status not in (204, 304)


def _decode(raw: bytes) -> str:
    # Header bytes are not guaranteed UTF-8; never fail a request over a stray byte.
    return raw.decode("utf-8", errors="replace")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""  # unregistered codes (e.g. /status/299) go out without a phrase


def _wire_headers(response: Response) -> list[tuple[str, str]]:
    # A HEAD answer keeps the length a GET would have had (RFC 9110 9.3.2).
    headers = list(response.headers)
    if response.status >= 200 and response.status not in (204, 304):
        headers.append(("content-length", str(len(response.body))))
    return headers


class H1Server:
    """One HTTP/1.1 server connection, one request at a time (keep-alive, no pipelining)."""

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.SERVER)
        self._out = bytearray()
        self._current: h11.Request | None = None
        self._body_bytes = 0
        self._peer_closed = False

    @property
    def closed(self) -> bool:
        """True once no further request can arrive on this connection."""
        return self._peer_closed or self._conn.our_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket; b"" means the peer closed its side."""
        self._conn.receive_data(data)

    def next_request(self) -> Request | None:
        """The next complete request, or None when more bytes are needed (or `closed`)."""
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpProtocolError(str(exc), exc.error_status_hint) from exc
            if event is h11.NEED_DATA:
                if self._conn.they_are_waiting_for_100_continue:
                    self._out += (
                        self._conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                        or b""
                    )
                return None
            if event is h11.PAUSED:
                return None
            if isinstance(event, h11.Request):
                self._current = event
                self._body_bytes = 0
            elif isinstance(event, h11.Data):
                self._body_bytes += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return self._finish_request()
            elif isinstance(event, h11.ConnectionClosed):
                self._peer_closed = True
                return None

    def _finish_request(self) -> Request:
        assert self._current is not None
        event = self._current
        return Request(
            method=_decode(event.method),
            path=_decode(event.target),
            headers=tuple((_decode(k), _decode(v)) for k, v in event.headers),
            body_bytes=self._body_bytes,
            protocol="HTTP/" + _decode(event.http_version),
        )

    def send_response(self, request: Request, response: Response) -> None:
        headers = _wire_headers(response)
        event = h11.Response(
            status_code=response.status, headers=headers, reason=_reason(response.status)
        )
        out = self._conn.send(event)
        self._out += out or b""
        if body_allowed(request.method, response.status) and response.body:
            self._out += self._conn.send(h11.Data(data=response.body)) or b""
        self._out += self._conn.send(h11.EndOfMessage()) or b""
        self._current = None
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()

    def send_error(self, status: int) -> None:
        """Answer a request we could not parse, if the state machine still allows an answer."""
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"bad request: HTTP/1.1 protocol error ({status})\n".encode()
        headers = [
            ("content-type", "text/plain"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            event = h11.Response(status_code=status, headers=headers, reason=_reason(status))
            self._out += self._conn.send(event) or b""
            self._out += self._conn.send(h11.Data(data=body)) or b""
            self._out += self._conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return  # h11 refused (e.g. the request line never arrived); just close

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out


@dataclass
class _PendingStream:
    method: str = ""
    path: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body_bytes: int = 0


class H2Server:
    """One HTTP/2 server connection (prior knowledge); streams are answered in any order."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._conn = h2.connection.H2Connection(config=config)
        self._streams: dict[int, _PendingStream] = {}
        self._outbound: dict[int, bytes] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def initiate(self) -> None:
        self._conn.initiate_connection()

    def receive_data(self, data: bytes) -> list[Request]:
        """Feed bytes from the socket (b"" = peer closed); returns requests now complete."""
        if not data:
            self._closed = True
            return []
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has already queued a GOAWAY; the caller flushes it and closes.
            self._closed = True
            raise HttpProtocolError(f"HTTP/2 protocol error: {exc}") from exc
        done: list[Request] = []
        for event in events:
            request = self._on_event(event)
            if request is not None:
                done.append(request)
        return done

    def _on_event(self, event: h2.events.Event) -> Request | None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            self._streams[event.stream_id] = _stream_from_headers(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.body_bytes += len(event.data or b"")
            # Give the window back at once: the body is counted, never kept.
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                return Request(
                    method=stream.method,
                    path=stream.path,
                    headers=tuple(stream.headers),
                    body_bytes=stream.body_bytes,
                    protocol=Protocol.HTTP2.value,
                    stream_id=event.stream_id,
                )
        elif isinstance(event, h2.events.StreamReset):
            self._streams.pop(event.stream_id, None)
            self._outbound.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated):
            targets = list(self._outbound) if event.stream_id == 0 else [event.stream_id]
            for stream_id in targets:
                self._flush(stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._closed = True
        return None

    def send_response(self, request: Request, response: Response) -> None:
        """Queue the answer to `request`; a stream the client already reset is skipped."""
        stream_id = request.stream_id
        assert stream_id is not None, "HTTP/2 requests always carry their stream id"
        body = response.body if body_allowed(request.method, response.status) else b""
        headers = [(":status", str(response.status)), *_wire_headers(response)]
        try:
            self._conn.send_headers(stream_id, headers, end_stream=not body)
        except h2.exceptions.StreamClosedError:
            return
        except h2.exceptions.ProtocolError:
            return  # connection already closing (GOAWAY sent or received)
        if body:
            self._outbound[stream_id] = body
            self._flush(stream_id)

    def _flush(self, stream_id: int) -> None:
        """Send what flow control allows of a stream's body; the rest waits for WINDOW_UPDATE."""
        body = self._outbound.pop(stream_id, b"")
        try:
            while body:
                size = min(
                    self._conn.local_flow_control_window(stream_id),
                    self._conn.max_outbound_frame_size,
                    len(body),
                )
                if size <= 0:
                    self._outbound[stream_id] = body
                    return
                chunk, body = body[:size], body[size:]
                self._conn.send_data(stream_id, chunk, end_stream=not body)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return

    def close(self) -> None:
        """Say goodbye with GOAWAY(NO_ERROR), e.g. on server shutdown."""
        if not self._closed:
            self._conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
            self._closed = True

    def data_to_send(self) -> bytes:
        return self._conn.data_to_send()


def _stream_from_headers(raw: list[tuple[bytes, bytes]] | list[tuple[str, str]]) -> _PendingStream:
    stream = _PendingStream()
    authority = ""
    for raw_name, raw_value in raw:
        name = raw_name if isinstance(raw_name, str) else _decode(raw_name)
        value = raw_value if isinstance(raw_value, str) else _decode(raw_value)
        if name == ":method":
            stream.method = value
        elif name == ":path":
            stream.path = value
        elif name == ":authority":
            authority = value
        elif not name.startswith(":"):
            stream.headers.append((name, value))
    # HTTP/1.1 clients send Host; give HTTP/2 requests the same view (RFC 9113 8.3.1).
    if authority and not any(name == "host" for name, _ in stream.headers):
        stream.headers.insert(0, ("host", authority))
    return stream


@dataclass(frozen=True)
class HttpTarget:
    """An `http://host[:port]/path` URL, split the way a client needs it."""

    host: str
    port: int
    path: str  # with the query, never empty
    authority: str  # host[:port] as written, for Host / :authority

    @property
    def url(self) -> str:
        return f"http://{self.authority}{self.path}"

    @classmethod
    def parse(cls, url: str) -> HttpTarget:
        """Raises ValueError naming what is wrong (scheme, host, port)."""
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"{url!r}: only http:// URLs are supported (got {parts.scheme!r})")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host")
        if "@" in parts.netloc:
            raise ValueError(f"{url!r}: user info in URLs is not supported")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise ValueError(f"{url!r}: bad port") from exc
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(host=parts.hostname, port=port, path=path, authority=parts.netloc)
