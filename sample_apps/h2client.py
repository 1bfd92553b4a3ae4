"""Client side of h2c for the load client: requests in, replies or failures out, no sockets.

`load_transport.H2Connection` feeds socket bytes to `H2ClientProtocol` and writes what
`data_to_send()` returns; the stream bookkeeping (GOAWAY, resets, flow control) lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from sample_apps.httpwire import Headers
from sample_apps.load_stats import ErrorKind

USER_AGENT = "weft-load-client"


@dataclass(frozen=True)
class Reply:
    stream_id: int
    status: int
    headers: Headers  # lowercased names, no pseudo-headers
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


@dataclass(frozen=True)
class StreamFailed:
    stream_id: int
    kind: ErrorKind
    detail: str


@dataclass
class _Inbound:
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class H2ClientProtocol:
    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._conn = h2.connection.H2Connection(config=config)
        self._streams: dict[int, _Inbound] = {}
        self._goaway = False
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def can_open_stream(self) -> bool:
        """False after GOAWAY, or while the server's MAX_CONCURRENT_STREAMS is reached."""
        if self._closed or self._goaway:
            return False
        limit = self._conn.remote_settings.max_concurrent_streams
        return self._conn.open_outbound_streams < limit

    @property
    def usable(self) -> bool:
        """Whether new requests may still go out on this connection (now or once streams end)."""
        return not (self._closed or self._goaway)

    def initiate(self) -> None:
        self._conn.initiate_connection()

    def send_request(self, method: str, authority: str, path: str) -> int:
        """Start a body-less request; returns its stream id. Check `can_open_stream` first."""
        stream_id = self._conn.get_next_available_stream_id()
        headers = [
            (":method", method),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
            ("user-agent", USER_AGENT),
        ]
        self._conn.send_headers(stream_id, headers, end_stream=True)
        self._streams[stream_id] = _Inbound()
        return stream_id

    def cancel(self, stream_id: int) -> None:
        """Give up on a stream (timeout, run over): RST_STREAM(CANCEL) if it is still open."""
        if self._streams.pop(stream_id, None) is None or self._closed:
            return
        try:
            self._conn.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return

    def close(self) -> None:
        if not self._closed:
            self._conn.close_connection(error_code=h2.errors.ErrorCodes.NO_ERROR)
            self._closed = True

    def data_to_send(self) -> bytes:
        return self._conn.data_to_send()

    def receive_data(self, data: bytes) -> list[Reply | StreamFailed]:
        """Feed socket bytes (b"" = connection lost); returns streams that just finished."""
        if not data:
            self._closed = True
            return self._fail_streams(ErrorKind.DISCONNECTED, "connection closed", above=0)
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._closed = True
            return self._fail_streams(ErrorKind.PROTOCOL, f"HTTP/2 protocol error: {exc}", above=0)
        finished: list[Reply | StreamFailed] = []
        for event in events:
            finished.extend(self._on_event(event))
        return finished

    def _on_event(self, event: h2.events.Event) -> list[Reply | StreamFailed]:
        if isinstance(event, h2.events.ResponseReceived):
            inbound = self._streams.get(event.stream_id or 0)
            if inbound is not None:
                for raw_name, raw_value in event.headers or []:
                    name, value = _text(raw_name), _text(raw_value)
                    if name == ":status":
                        inbound.status = int(value)
                    elif not name.startswith(":"):
                        inbound.headers.append((name, value))
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            inbound = self._streams.get(event.stream_id)
            if inbound is not None:
                inbound.body += event.data or b""
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            inbound = self._streams.pop(event.stream_id or 0, None)
            if inbound is not None and event.stream_id is not None:
                if inbound.status is None:
                    detail = "stream ended without a response"
                    return [StreamFailed(event.stream_id, ErrorKind.PROTOCOL, detail)]
                reply = Reply(
                    event.stream_id, inbound.status, tuple(inbound.headers), bytes(inbound.body)
                )
                return [reply]
        elif isinstance(event, h2.events.StreamReset):
            if self._streams.pop(event.stream_id, None) is not None:
                detail = f"stream reset by server ({_code_name(event.error_code)})"
                return [StreamFailed(event.stream_id, ErrorKind.STREAM_RESET, detail)]
        elif isinstance(event, h2.events.ConnectionTerminated):
            # Streams above last_stream_id were never processed; the rest may still finish.
            self._goaway = True
            detail = f"GOAWAY ({_code_name(event.error_code)})"
            return self._fail_streams(ErrorKind.DISCONNECTED, detail, above=event.last_stream_id)
        return []

    def _fail_streams(
        self, kind: ErrorKind, detail: str, above: int | None
    ) -> list[Reply | StreamFailed]:
        doomed = [sid for sid in self._streams if above is None or sid > above]
        for sid in doomed:
            del self._streams[sid]
        return [StreamFailed(sid, kind, detail) for sid in doomed]


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")


def _code_name(code: h2.errors.ErrorCodes | int | None) -> str:
    return code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)
