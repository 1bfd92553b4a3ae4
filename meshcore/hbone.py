"""HBONE, sans I/O: TCP streams tunnelled as HTTP/2 CONNECT inside one mTLS connection.

Bytes in (`receive`), events out, bytes to send out (`data_to_send`), as h2 itself works;
the asyncio code in ztunnel (and later the waypoint) only moves bytes. One class for each
end. A peer that sends garbage, an oversized frame or a malformed CONNECT gets a clear
error event naming what was wrong; the connection is closed, never the process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hyperframe.frame
from h2.stream import StreamState


# h2 logs every received frame with an eagerly computed repr(frame) (h2/connection.py,
# `logger.trace("Received frame: %s", repr(frame))`), and hyperframe's repr of a DATA frame
# hexlifies its whole body: for 1 MiB frames that was a third of a receiving ztunnel's CPU.
# Give DATA frames a repr that costs nothing.
def _data_frame_repr(frame: hyperframe.frame.DataFrame) -> str:
    return f"DataFrame(stream_id={frame.stream_id}, length={len(frame.data)})"


hyperframe.frame.DataFrame.__repr__ = _data_frame_repr  # type: ignore[assignment,method-assign]

HBONE_PORT = 15008
ALPN = "h2"
# Large windows so one stream can run at full speed over a long fat pipe.
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME_SIZE = 1024 * 1024  # what we accept; h2 rejects larger frames as a protocol error
MAX_CONCURRENT_STREAMS = 1000


class HboneError(ValueError):
    """A request or response that breaks HBONE's rules."""


class StreamGone(ConnectionError):
    """Data for a stream that is already closed (reset, or ended both ways)."""


@dataclass(frozen=True)
class Target:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def parse_authority(authority: str) -> Target:
    """`10.0.0.1:8080` or `[fd00::1]:8080` -> Target; anything else is an HboneError."""
    host, sep, port_text = authority.rpartition(":")
    if not sep or not host:
        raise HboneError(f"CONNECT authority {authority!r} is not <ip>:<port>")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise HboneError(f"CONNECT authority {authority!r}: {host!r} is not an IP") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise HboneError(f"CONNECT authority {authority!r}: bad port {port_text!r}")
    return Target(str(ip), int(port_text))


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectRequested:
    stream_id: int
    target: Target
    headers: dict[str, str]


@dataclass(frozen=True)
class BadRequest:
    """A stream the peer opened that is not a valid CONNECT; it has been answered 400."""

    stream_id: int
    reason: str


@dataclass(frozen=True)
class ConnectResponse:
    stream_id: int
    status: int
    headers: dict[str, str]


@dataclass(frozen=True)
class StreamData:
    """Payload for a stream: all or part of a DATA frame. `data` may be a view into the
    bytes given to `receive`; pass it on (write, join) rather than keeping it."""

    stream_id: int
    data: bytes | memoryview
    flow_controlled_length: int


@dataclass(frozen=True)
class StreamEnded:
    """The peer half-closed its side of the stream (the TCP FIN)."""

    stream_id: int


@dataclass(frozen=True)
class StreamReset:
    stream_id: int
    error_code: int


@dataclass(frozen=True)
class WindowOpened:
    """The peer gave flow-control credit (stream 0: the whole connection)."""

    stream_id: int


@dataclass(frozen=True)
class ConnectionClosed:
    """The whole HBONE connection is over (GOAWAY received, or a protocol error)."""

    reason: str
    error: bool = False


Event = (
    ConnectRequested
    | BadRequest
    | ConnectResponse
    | StreamData
    | StreamEnded
    | StreamReset
    | WindowOpened
    | ConnectionClosed
)


def _headers(raw: list[tuple[bytes | str, bytes | str]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw or []:
        n = name.decode() if isinstance(name, bytes) else name
        v = value.decode() if isinstance(value, bytes) else value
        out[n.lower()] = v
    return out


# --- the DATA fast path ------------------------------------------------------------------
#
# h2 costs several microseconds of Python per DATA frame (frame objects, two state machines,
# events), and a small request crosses four of them per round trip through the mesh. So DATA
# frames, the only frames on the hot path, are framed and parsed here, and everything else
# (preface, SETTINGS, HEADERS/CONTINUATION, WINDOW_UPDATE, RST_STREAM, GOAWAY, PING, DATA that
# ends a stream or is padded, DATA on a stream in any other state) still goes through h2,
# frame by frame and in order. h2 stays the single source of truth for flow control: a fast
# DATA frame debits h2's windows exactly as h2's own send_data/receive_data would. Those are
# h2 internals; tests/unit/meshcore/test_hbone_fast_path.py pins them, so an h2 release that
# moves them fails the tests rather than the mesh.

_FRAME_HEADER = struct.Struct(">HBBBL")  # 24-bit length as 16+8 bits, type, flags, stream id
_DATA, _HEADERS, _PUSH_PROMISE, _CONTINUATION = 0x0, 0x1, 0x5, 0x9
_END_STREAM, _END_HEADERS, _PADDED = 0x1, 0x4, 0x8
_CAN_RECEIVE = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)
_CAN_SEND = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_JOIN_BELOW = 16 * 1024


def data_frame_header(length: int, stream_id: int) -> bytes:
    return _FRAME_HEADER.pack(length >> 8, length & 0xFF, _DATA, 0, stream_id)


@dataclass
class _Base:
    client_side: bool
    conn: h2.connection.H2Connection = field(init=False)
    closed: bool = field(default=False, init=False)
    _rx: bytearray = field(default_factory=bytearray, init=False)
    _preface_left: int = field(default=0, init=False)
    _in_header_block: bool = field(default=False, init=False)
    _data_left: int = field(default=0, init=False)  # payload bytes still due in a fast DATA
    _data_stream: int = field(default=0, init=False)
    _out: list[bytes | memoryview] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        config = h2.config.H2Configuration(
            client_side=self.client_side, header_encoding=None, validate_inbound_headers=True
        )
        self.conn = h2.connection.H2Connection(config=config)
        # a server's h2 checks the client's 24-byte preface itself: hand it over as is
        self._preface_left = 0 if self.client_side else 24

    def initiate(self) -> bytes:
        self.conn.initiate_connection()
        self.conn.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            }
        )
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        return self.data_to_send()

    def chunks_to_send(self) -> list[bytes | memoryview]:
        """What to write to the peer, in order, as a list (for writelines: large payloads
        stay views of what `send` was given)."""
        out = self._out
        if self.conn._data_to_send:
            out.append(self.conn.data_to_send())
        self._out = []
        return out

    def data_to_send(self) -> bytes:
        return b"".join(self.chunks_to_send())

    def receive(self, data: bytes) -> list[Event]:
        """Bytes from the peer in, events out. A fast DATA frame's payload is handed on as
        it arrives, as views of `data` (no copy, no waiting for the whole frame); any other
        frame is gathered whole and given to h2."""
        if self.closed:
            return []
        if not isinstance(data, bytes):
            data = bytes(data)  # events hold views of it: it must not change under them
        view = memoryview(data)
        events: list[Event] = []
        pos, end = 0, len(data)
        rx = self._rx
        if self._preface_left:
            pos = min(self._preface_left, end)
            self._preface_left -= pos
            events += self._h2_receive(data[:pos])
        while pos < end and not self.closed:
            if self._data_left:  # inside a fast DATA frame
                n = min(self._data_left, end - pos)
                events.append(StreamData(self._data_stream, view[pos : pos + n], n))
                self._data_left -= n
                pos += n
                continue
            if len(rx) < 9:
                take = min(9 - len(rx), end - pos)
                rx += view[pos : pos + take]
                pos += take
                if len(rx) < 9:
                    break
            high, low, ftype, flags, stream_id = _FRAME_HEADER.unpack_from(rx)
            length = high << 8 | low
            if length > self.conn.max_inbound_frame_size:
                # h2 refuses it (FRAME_SIZE_ERROR) and says so
                events += self._h2_receive(bytes(rx) + data[pos:])
                rx.clear()
                break
            stream_id &= 0x7FFFFFFF
            if len(rx) == 9 and self._fast_data(ftype, flags, stream_id):
                stream = self.conn.streams[stream_id]
                if not self._consume_window(stream, length):
                    events.append(self._flow_control_violated(stream_id, length))
                    break
                rx.clear()
                self._data_left, self._data_stream = length, stream_id
                continue
            take = min(9 + length - len(rx), end - pos)
            rx += view[pos : pos + take]
            pos += take
            if len(rx) < 9 + length:
                break
            frame = bytes(rx)
            rx.clear()
            if ftype in (_HEADERS, _PUSH_PROMISE, _CONTINUATION):
                self._in_header_block = not flags & _END_HEADERS
            events += self._h2_receive(frame)
        return events

    def _fast_data(self, ftype: int, flags: int, stream_id: int) -> bool:
        if ftype != _DATA or flags & (_END_STREAM | _PADDED) or self._in_header_block:
            return False
        stream = self.conn.streams.get(stream_id)
        return stream is not None and stream.state_machine.state in _CAN_RECEIVE

    def _consume_window(self, stream: h2.stream.H2Stream, length: int) -> bool:
        """Debit both inbound windows for a fast DATA frame, as h2 would; False if the peer
        sent more than its window."""
        try:
            self.conn._inbound_flow_control_window_manager.window_consumed(length)
            stream._inbound_window_manager.window_consumed(length)
        except h2.exceptions.FlowControlError:
            return False
        return True

    def _flow_control_violated(self, stream_id: int, length: int) -> ConnectionClosed:
        self.conn.close_connection(error_code=h2.errors.ErrorCodes.FLOW_CONTROL_ERROR)
        self.closed = True
        return ConnectionClosed(
            f"protocol error from peer: {length} bytes of DATA on stream {stream_id} "
            "exceed its flow-control window",
            error=True,
        )

    def _h2_receive(self, data: bytes) -> list[Event]:
        if self.closed:
            return []
        try:
            raw_events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            self.closed = True
            return [
                ConnectionClosed(
                    f"protocol error from peer: {type(err).__name__}: {err}", error=True
                )
            ]
        events: list[Event] = []
        for ev in raw_events:
            events.extend(self._translate(ev))
        return events

    def _translate(self, ev: h2.events.Event) -> list[Event]:
        if isinstance(ev, h2.events.DataReceived):
            assert ev.stream_id is not None and ev.data is not None
            return [StreamData(ev.stream_id, bytes(ev.data), ev.flow_controlled_length or 0)]
        if isinstance(ev, h2.events.StreamEnded):
            assert ev.stream_id is not None
            return [StreamEnded(ev.stream_id)]
        if isinstance(ev, h2.events.StreamReset):
            assert ev.stream_id is not None
            return [StreamReset(ev.stream_id, int(ev.error_code or 0))]
        if isinstance(ev, h2.events.WindowUpdated):
            return [WindowOpened(int(ev.stream_id or 0))]
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            return [WindowOpened(0)]  # a new initial window changes every stream's credit
        if isinstance(ev, h2.events.ConnectionTerminated):
            self.closed = True
            return [
                ConnectionClosed(
                    f"peer closed the connection (GOAWAY, "
                    f"{h2.errors.ErrorCodes(ev.error_code or 0).name})",
                    error=bool(ev.error_code),
                )
            ]
        return []

    # --- per stream -------------------------------------------------------------------

    def acknowledge(self, stream_id: int, length: int) -> None:
        """Give flow-control credit back once `length` bytes were delivered onwards. A no-op
        on a stream or connection that is already closed (so are `end` and `reset`)."""
        if length and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(length, stream_id)

    def send(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue as much of `data` as flow control allows, as DATA frames; returns how much
        was queued. StreamGone if the stream can no longer carry data. Large payloads are
        queued as views of `data`, not copied: hand over bytes that will not change."""
        if self.closed:
            raise StreamGone(f"stream {stream_id}: the connection is closed")
        stream = self.conn.streams.get(stream_id)
        if stream is None or stream.state_machine.state not in _CAN_SEND:
            raise StreamGone(f"stream {stream_id} is closed for sending")
        window = min(
            self.conn.outbound_flow_control_window, stream.outbound_flow_control_window, len(data)
        )
        if window <= 0:
            return 0
        out = self._out
        if self.conn._data_to_send:  # h2's own frames (a HEADERS, say) go out first
            out.append(self.conn.data_to_send())
        max_frame = self.conn.max_outbound_frame_size
        view = memoryview(data)
        sent = 0
        while sent < window:
            n = min(max_frame, window - sent)
            if n <= _JOIN_BELOW:  # one small write (one TLS record) for a small payload
                out.append(b"".join((data_frame_header(n, stream_id), view[sent : sent + n])))
            else:
                out.append(data_frame_header(n, stream_id))
                out.append(view[sent : sent + n])
            sent += n
        self.conn.outbound_flow_control_window -= sent
        stream.outbound_flow_control_window -= sent
        return sent

    def window(self, stream_id: int) -> int:
        try:
            return int(self.conn.local_flow_control_window(stream_id))
        except h2.exceptions.ProtocolError:
            return 0

    def end(self, stream_id: int) -> None:
        """Half-close our side of the stream (the TCP FIN)."""
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.end_stream(stream_id)

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(stream_id, error_code=code)

    def close(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        if not self.closed:
            self.conn.close_connection(error_code=code)
            self.closed = True


class HboneServer(_Base):
    """The accepting end (ztunnel's 15008, a waypoint)."""

    def __init__(self) -> None:
        super().__init__(client_side=False)

    def _translate(self, ev: h2.events.Event) -> list[Event]:
        if isinstance(ev, h2.events.RequestReceived):
            assert ev.stream_id is not None
            headers = _headers(ev.headers)  # type: ignore[arg-type]
            method = headers.get(":method")
            if method != "CONNECT":
                return [self._bad(ev.stream_id, f"method {method!r} is not CONNECT", 405)]
            if ":path" in headers or ":scheme" in headers:
                return [self._bad(ev.stream_id, "CONNECT must not carry :path or :scheme", 400)]
            try:
                target = parse_authority(headers.get(":authority", ""))
            except HboneError as err:
                return [self._bad(ev.stream_id, str(err), 400)]
            return [ConnectRequested(ev.stream_id, target, headers)]
        return super()._translate(ev)

    def _bad(self, stream_id: int, reason: str, status: int) -> BadRequest:
        self.refuse(stream_id, status, reason)
        return BadRequest(stream_id, reason)

    def accept(self, stream_id: int) -> None:
        self.conn.send_headers(stream_id, [(":status", "200")])

    def refuse(self, stream_id: int, status: int, reason: str) -> None:
        """Answer a CONNECT with an error status and end the stream."""
        try:
            self.conn.send_headers(
                stream_id,
                [(":status", str(status)), ("weft-reason", reason[:200])],
                end_stream=True,
            )
        except h2.exceptions.ProtocolError:
            self.reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)


class HboneClient(_Base):
    """The connecting end (ztunnel's outbound side)."""

    def __init__(self) -> None:
        super().__init__(client_side=True)

    def connect(self, target: Target, headers: dict[str, str] | None = None) -> int:
        """Open a CONNECT stream to `target`; returns its stream id."""
        stream_id = int(self.conn.get_next_available_stream_id())
        self.conn.send_headers(
            stream_id,
            [
                (":method", "CONNECT"),
                (":authority", str(target)),
                *((k, v) for k, v in (headers or {}).items()),
            ],
        )
        return stream_id

    def _translate(self, ev: h2.events.Event) -> list[Event]:
        if isinstance(ev, h2.events.ResponseReceived):
            assert ev.stream_id is not None
            headers = _headers(ev.headers)  # type: ignore[arg-type]
            status_text = headers.get(":status", "0")
            status = int(status_text) if status_text.isdigit() else 0
            return [ConnectResponse(ev.stream_id, status, headers)]
        return super()._translate(ev)

    @property
    def open_streams(self) -> int:
        return int(self.conn.open_outbound_streams)

    @property
    def can_open_stream(self) -> bool:
        return (
            not self.closed and self.open_streams < self.conn.remote_settings.max_concurrent_streams
        )
