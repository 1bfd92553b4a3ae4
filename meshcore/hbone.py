"""HBONE, sans I/O: TCP streams tunnelled as HTTP/2 CONNECT inside one mTLS connection.

Bytes in (`receive`), events out, bytes to send out (`data_to_send`), as h2 itself works;
the asyncio code in ztunnel (and later the waypoint) only moves bytes. One class for each
end. A peer that sends garbage, an oversized frame or a malformed CONNECT gets a clear
error event naming what was wrong; the connection is closed, never the process.

What one peer can make us hold or do is bounded here, in bytes and in time, as hardened
HTTP/2 servers do since CVE-2023-44487 (rapid reset) and CVE-2024-27316 (CONTINUATION
flood): see "Limits" below. Going past one gives a `LimitExceeded` event, then (for the
connection-wide ones) GOAWAY ENHANCE_YOUR_CALM and `ConnectionClosed`. Limits that need a
clock take it from `clock` (monotonic seconds); the I/O layer calls `expire()` at
`next_deadline()` so a peer that goes silent mid-way is caught too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h2.windows
import hyperframe.frame
from h2.stream import StreamState

from meshcore.ports import PortError, parse_port


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

# --- Limits (per connection) --------------------------------------------------------------
# A header block (HEADERS + CONTINUATION) may hold this many bytes, and must end within this
# many seconds of its first frame (CVE-2024-27316: 1 MiB CONTINUATIONs held 63 MiB each). A
# CONNECT's headers are a few hundred bytes.
MAX_HEADER_BLOCK = 64 * 1024
HEADER_BLOCK_TIMEOUT_S = 10.0
# The client's preface and first SETTINGS must arrive this soon after TLS is up.
PREFACE_TIMEOUT_S = 10.0
# CONNECTs received but not yet accepted or refused (a stream the peer resets while we set it
# up still counts: the setup work goes on). Past it a new CONNECT is refused (REFUSED_STREAM).
MAX_PENDING_SETUP = 128
# Streams reset by the peer before we answered them (RST_STREAM while pending setup), or
# refused by us for a limit or a bad request, per window (CVE-2023-44487, rapid reset).
# Past it: GOAWAY ENHANCE_YOUR_CALM.
MAX_RESETS = 1000
RESET_WINDOW_S = 10.0
# PING and SETTINGS frames whose ACKs are queued while the peer reads nothing (the I/O layer
# calls `output_drained()` once what was queued has gone out).
MAX_PENDING_ACKS = 1000

# `LimitExceeded.limit` values (the metric's `limit` label)
LIMIT_FRAME_SIZE = "frame_size"
LIMIT_HEADER_BLOCK_SIZE = "header_block_size"
LIMIT_HEADER_BLOCK_TIME = "header_block_time"
LIMIT_PREFACE_TIME = "preface_time"
LIMIT_STREAMS = "streams"  # past SETTINGS_MAX_CONCURRENT_STREAMS: that stream refused
LIMIT_PENDING_SETUP = "pending_setup"
LIMIT_RESETS = "resets"
LIMIT_PENDING_ACKS = "pending_acks"


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
    try:
        port = parse_port(port_text)  # ASCII digits only (not fullwidth, not superscripts)
    except PortError:
        raise HboneError(f"CONNECT authority {authority!r}: bad port {port_text!r}") from None
    return Target(str(ip), port)


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


@dataclass(frozen=True)
class GoingAway:
    """The peer sent a graceful GOAWAY (NO_ERROR; it is draining, e.g. a ztunnel being
    replaced): streams up to `last_stream_id` go on, no new one may be opened here."""

    last_stream_id: int


@dataclass(frozen=True)
class LimitExceeded:
    """The peer went past one of the limits above. `stream_id` 0: the connection is being
    closed (a `ConnectionClosed` follows); otherwise only that stream was refused."""

    limit: str
    detail: str
    stream_id: int = 0


Event = (
    ConnectRequested
    | BadRequest
    | LimitExceeded
    | ConnectResponse
    | StreamData
    | StreamEnded
    | StreamReset
    | WindowOpened
    | ConnectionClosed
    | GoingAway
)


def _headers(
    raw: list[tuple[bytes | str, bytes | str]] | None, errors: str = "strict"
) -> dict[str, str]:
    """Header names and values as text; UnicodeDecodeError for non-UTF-8 unless `errors`."""
    out: dict[str, str] = {}
    for name, value in raw or []:
        n = name.decode("utf-8", errors) if isinstance(name, bytes) else name
        v = value.decode("utf-8", errors) if isinstance(value, bytes) else value
        out[n.lower()] = v
    return out


_PSEUDO_REQUEST_HEADERS = frozenset((b":method", b":authority", b":path", b":scheme", b":protocol"))
_CONNECTION_HEADERS = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te")
)


def _request_problem(raw: list[tuple[bytes, bytes]]) -> str | None:
    """What makes a request's header list malformed (RFC 9113 8.2, 8.3), or None."""
    seen: set[bytes] = set()
    regular = False
    for name, _value in raw:
        if not name:
            return "an empty header name"
        if name != name.lower():
            return f"header name {name!r} is not lowercase"
        if name.startswith(b":"):
            if regular:
                return f"pseudo-header {name!r} after a regular header"
            if name not in _PSEUDO_REQUEST_HEADERS:
                return f"unknown pseudo-header {name!r}"
            if name in seen:
                return f"pseudo-header {name!r} twice"
            seen.add(name)
        else:
            regular = True
            if name in _CONNECTION_HEADERS:
                return f"connection-specific header {name!r}"
    return None


def _header_text(text: str) -> str:
    """Printable ASCII for a header value we send (a reason may quote what the peer sent)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:200]).strip()


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
_DATA, _HEADERS, _RST_STREAM, _SETTINGS = 0x0, 0x1, 0x3, 0x4
_PUSH_PROMISE, _PING, _CONTINUATION = 0x5, 0x6, 0x9
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_HEADER_BLOCK = (_HEADERS, _PUSH_PROMISE, _CONTINUATION)
_GOAWAY = 0x7
_GOAWAY_BODY = struct.Struct(">LL")  # last stream id, error code
MAX_STREAM_ID = 0x7FFFFFFF
_CAN_RECEIVE = (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)
_CAN_SEND = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_JOIN_BELOW = 16 * 1024


def _no_update_due(window: h2.windows.WindowManager, length: int) -> bool:
    """Would h2's WindowManager.process_bytes(length) only count, sending no WINDOW_UPDATE?
    (Its `_maybe_update_window`: an update once half the window is processed, or, with the
    window empty, once more than min(1024, a quarter) is.)"""
    processed = window._bytes_processed + length
    size = window.max_window_size
    if window.current_window_size == 0 and processed > min(1024, size // 4):
        return False
    return processed < size // 2


def data_frame_header(length: int, stream_id: int) -> bytes:
    return _FRAME_HEADER.pack(length >> 8, length & 0xFF, _DATA, 0, stream_id)


def goaway_frame(last_stream_id: int, code: int = 0) -> bytes:
    """A GOAWAY frame (RFC 9113 6.8) with no debug data."""
    return _FRAME_HEADER.pack(0, 8, _GOAWAY, 0, 0) + _GOAWAY_BODY.pack(last_stream_id, code)


class _StreamLimitHeadroom(h2.settings.Settings):
    """Our settings, as h2 enforces them on a server. h2 makes a stream past
    SETTINGS_MAX_CONCURRENT_STREAMS a connection error (a GOAWAY for every stream of the
    peer's); RFC 9113 5.1.2 allows a stream error. So h2 gets headroom, and HboneServer
    refuses that one stream itself (REFUSED_STREAM). The value sent to the peer is not this
    (h2 sends what `update_settings` was given)."""

    @property
    def max_concurrent_streams(self) -> int:
        advertised = int(h2.settings.Settings.max_concurrent_streams.fget(self))  # type: ignore[attr-defined]
        return advertised + MAX_PENDING_SETUP

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


@dataclass
class _Base:
    client_side: bool
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    conn: h2.connection.H2Connection = field(init=False)
    closed: bool = field(default=False, init=False)
    _rx: bytearray = field(default_factory=bytearray, init=False)
    _preface_left: int = field(default=0, init=False)
    _in_header_block: bool = field(default=False, init=False)
    _block_bytes: int = field(default=0, init=False)  # of the header block under way
    _data_left: int = field(default=0, init=False)  # payload bytes still due in a fast DATA
    _data_stream: int = field(default=0, init=False)
    _out: list[bytes | memoryview] = field(default_factory=list, init=False)
    # one deadline at a time: the preface's, then each unfinished header block's
    deadline: float = field(default=0.0, init=False)  # `clock` time; 0.0: none
    _deadline_limit: str = field(default="", init=False)
    # PING/SETTINGS received since the I/O layer last said our output drained (their ACKs)
    acks_pending: int = field(default=0, init=False)
    # A graceful GOAWAY was sent or received: the streams under way go on, no new one is
    # opened. Kept apart from h2, whose connection state after any GOAWAY refuses DATA too.
    draining: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # A server checks a request's headers itself (`_request_problem`): h2 makes a
        # malformed request a connection error, RFC 9113 8.1.1 a stream error (our 400).
        config = h2.config.H2Configuration(
            client_side=self.client_side,
            header_encoding=None,
            validate_inbound_headers=self.client_side,
        )
        self.conn = h2.connection.H2Connection(config=config)
        # h2 enforces 100 streams until the peer ACKs our SETTINGS, but a peer may open as
        # many as we advertise once it has read them (before we see its ACK): start there.
        settings = h2.settings.Settings if self.client_side else _StreamLimitHeadroom
        self.conn.local_settings = settings(
            client=self.client_side,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: (
                    self.conn.local_settings.max_header_list_size or MAX_HEADER_BLOCK
                ),
            },
        )
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
        if not self.client_side:
            self.deadline = self.clock() + PREFACE_TIMEOUT_S
            self._deadline_limit = LIMIT_PREFACE_TIME
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

    # --- limits in time and in what we queue -------------------------------------------

    def next_deadline(self) -> float | None:
        """When `expire()` must next be called (`clock` time), or None."""
        return self.deadline if self.deadline and not self.closed else None

    def expire(self) -> list[Event]:
        """Check the timed limits (the preface, an unfinished header block) against `clock`."""
        if self.closed or not self.deadline or self.clock() < self.deadline:
            return []
        if self._deadline_limit == LIMIT_PREFACE_TIME:
            detail = f"no HTTP/2 preface and SETTINGS within {PREFACE_TIMEOUT_S:g} s"
        else:
            detail = f"a header block unfinished after {HEADER_BLOCK_TIMEOUT_S:g} s"
        return self._limit_close(self._deadline_limit, detail)

    def output_drained(self) -> None:
        """Everything handed out by `chunks_to_send` has been written: the ACKs we queued for
        the peer's PINGs and SETTINGS are gone."""
        self.acks_pending = 0

    def _limit_close(
        self, limit: str, detail: str, code: int = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    ) -> list[Event]:
        """GOAWAY (`code`, with `detail` as debug data) and close: nothing more is read."""
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection(
                    error_code=code, additional_data=_header_text(detail).encode()
                )
            self.closed = True
        self._rx.clear()
        return [
            LimitExceeded(limit, detail),
            ConnectionClosed(f"limit {limit} exceeded: {detail}", error=True),
        ]

    def _frame_limits(self, length: int, ftype: int, flags: int, stream_id: int) -> list[Event]:
        """Checked as each frame's 9-byte header arrives, before its payload is waited for."""
        if length > self.conn.max_inbound_frame_size:
            return self._limit_close(
                LIMIT_FRAME_SIZE,
                f"a {length}-byte frame, above the {self.conn.max_inbound_frame_size} bytes "
                "allowed",
                h2.errors.ErrorCodes.FRAME_SIZE_ERROR,
            )
        if ftype in _HEADER_BLOCK:
            size = length + (self._block_bytes if ftype == _CONTINUATION else 0)
            if size > MAX_HEADER_BLOCK:
                return self._limit_close(
                    LIMIT_HEADER_BLOCK_SIZE,
                    f"a header block of {size} bytes or more, above {MAX_HEADER_BLOCK}",
                )
        elif ftype in (_PING, _SETTINGS) and not flags & _ACK:
            self.acks_pending += 1
            if self.acks_pending > MAX_PENDING_ACKS:
                return self._limit_close(
                    LIMIT_PENDING_ACKS,
                    f"more than {MAX_PENDING_ACKS} PING/SETTINGS unacknowledged while the "
                    "peer reads nothing",
                )
        elif ftype == _RST_STREAM:
            return self._stream_reset_by_peer(stream_id)
        return []

    def _stream_reset_by_peer(self, stream_id: int) -> list[Event]:
        return []

    def _header_block_frame(self, ftype: int, flags: int, length: int) -> None:
        """A whole HEADERS/PUSH_PROMISE/CONTINUATION frame is going to h2: track the block."""
        self._in_header_block = not flags & _END_HEADERS
        if not self._in_header_block:
            self._block_bytes = 0
            if self._deadline_limit == LIMIT_HEADER_BLOCK_TIME:
                self.deadline = 0.0
        elif ftype != _CONTINUATION:  # a block starts: it has HEADER_BLOCK_TIMEOUT_S to end
            self._block_bytes = length
            if not self.deadline:
                self.deadline = self.clock() + HEADER_BLOCK_TIMEOUT_S
                self._deadline_limit = LIMIT_HEADER_BLOCK_TIME
        else:
            self._block_bytes += length

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
        if self.deadline:
            events = self.expire()
            if self.closed:
                return events
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
            new_header = len(rx) < 9  # else its payload is still being gathered
            if new_header:
                take = min(9 - len(rx), end - pos)
                rx += view[pos : pos + take]
                pos += take
                if len(rx) < 9:
                    break
            high, low, ftype, flags, stream_id = _FRAME_HEADER.unpack_from(rx)
            length = high << 8 | low
            stream_id &= 0x7FFFFFFF
            if new_header:  # looked at once, as soon as it is whole
                if length > self.conn.max_inbound_frame_size or ftype != _DATA:
                    events += self._frame_limits(length, ftype, flags, stream_id)
                    if self.closed:
                        break
                elif self._fast_data(flags, stream_id):
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
            if ftype in _HEADER_BLOCK:
                self._header_block_frame(ftype, flags, length)
            elif ftype == _SETTINGS and self._deadline_limit == LIMIT_PREFACE_TIME:
                self.deadline, self._deadline_limit = 0.0, ""  # the client's preface is in
            elif ftype == _GOAWAY and (going := self._graceful_goaway(frame)) is not None:
                events += going
                continue
            events += self._h2_receive(frame)
        return events

    def _fast_data(self, flags: int, stream_id: int) -> bool:
        """A DATA frame's header: can its payload bypass h2?"""
        if flags & (_END_STREAM | _PADDED) or self._in_header_block:
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
        except h2.exceptions.ProtocolError as err:  # h2 has queued its GOAWAY
            self.closed = True
            return [
                ConnectionClosed(
                    f"protocol error from peer: {type(err).__name__}: {err}", error=True
                )
            ]
        except (ValueError, KeyError, IndexError, AssertionError) as err:
            # h2 tripping over input it did not expect: the peer's fault, not the process's
            self.close(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return [
                ConnectionClosed(
                    f"protocol error from peer (h2 raised {type(err).__name__}: {err})",
                    error=True,
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
        if not length or self.closed:
            return
        # Fast path: when h2 would only count the bytes (no WINDOW_UPDATE due on either
        # window), count them as it does. Each chunk relayed from HBONE is acknowledged, and
        # h2's full path (two debug-log calls, seven others) was ~6% of the CPU of a small
        # request through two ztunnels. tests/unit/meshcore/test_hbone_ack_fast_path.py
        # holds it to h2's own.
        stream = self.conn.streams.get(stream_id)
        if length > 0 and stream is not None and stream.state_machine.state in _CAN_RECEIVE:
            conn_window = self.conn._inbound_flow_control_window_manager
            stream_window = stream._inbound_window_manager
            if _no_update_due(conn_window, length) and _no_update_due(stream_window, length):
                conn_window._bytes_processed += length
                stream_window._bytes_processed += length
                return
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

    def forget(self, stream_id: int) -> None:
        """The I/O layer is done with the stream (whatever state it is in)."""

    def drain(self) -> None:
        """Send a graceful GOAWAY (NO_ERROR, last stream 2^31-1: every stream the peer has
        sent or sends before reading it is still served) and keep carrying the streams
        under way. Written by hand: h2 would refuse to send DATA after its own GOAWAY."""
        if self.closed or self.draining:
            return
        self.draining = True
        if self.conn._data_to_send:
            self._out.append(self.conn.data_to_send())
        self._out.append(goaway_frame(MAX_STREAM_ID))

    def _graceful_goaway(self, frame: bytes) -> list[Event] | None:
        """RFC 9113 6.8's shutdown notice (NO_ERROR, last stream 2^31-1) is the peer
        draining: not given to h2 (which would stop all sending), the streams go on. Any
        other GOAWAY (an error, or the final one of a close): None, for h2 as before."""
        if len(frame) < 17 or _FRAME_HEADER.unpack_from(frame)[4] & MAX_STREAM_ID:
            return None
        last, code = _GOAWAY_BODY.unpack_from(frame, 9)
        if code != h2.errors.ErrorCodes.NO_ERROR or last & MAX_STREAM_ID != MAX_STREAM_ID:
            return None
        self.draining = True
        return [GoingAway(MAX_STREAM_ID)]

    def close(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection(error_code=code)
            self.closed = True

    # --- for tests and the config dump ---------------------------------------------------

    @property
    def buffered(self) -> int:
        """Bytes of the peer's held here until a frame is whole (at most a frame)."""
        return len(self._rx)

    @property
    def queued(self) -> int:
        """Bytes waiting in `chunks_to_send`."""
        return sum(len(c) for c in self._out) + len(self.conn._data_to_send)


class HboneServer(_Base):
    """The accepting end (ztunnel's 15008, a waypoint).

    Every CONNECT it reports (`ConnectRequested`) is pending setup until `accept`, `refuse`,
    `reset` or `forget` is called for it, even if the peer resets it meanwhile; at most
    MAX_PENDING_SETUP are, and past that a new CONNECT is refused at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(client_side=False, clock=clock)
        self.pending_setup: set[int] = set()
        self._resets = 0
        self._resets_since = 0.0

    def _translate(self, ev: h2.events.Event) -> list[Event]:
        if isinstance(ev, h2.events.RequestReceived):
            assert ev.stream_id is not None
            raw = cast(list[tuple[bytes, bytes]], ev.headers or [])
            if problem := _request_problem(raw):
                return self._bad(ev.stream_id, f"malformed request: {problem}", 400)
            try:
                headers = _headers(ev.headers)  # type: ignore[arg-type]
            except UnicodeDecodeError:
                return self._bad(ev.stream_id, "a header name or value is not UTF-8", 400)
            method = headers.get(":method")
            if method != "CONNECT":
                return self._bad(ev.stream_id, f"method {method!r} is not CONNECT", 405)
            if ":path" in headers or ":scheme" in headers:
                return self._bad(ev.stream_id, "CONNECT must not carry :path or :scheme", 400)
            try:
                target = parse_authority(headers.get(":authority", ""))
            except HboneError as err:
                return self._bad(ev.stream_id, str(err), 400)
            if self.conn.open_inbound_streams > MAX_CONCURRENT_STREAMS:  # this one included
                self.reset(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                over: list[Event] = [
                    LimitExceeded(
                        LIMIT_STREAMS,
                        f"{MAX_CONCURRENT_STREAMS} streams already open (SETTINGS)",
                        ev.stream_id,
                    )
                ]
                return over + self._count_reset()
            if len(self.pending_setup) >= MAX_PENDING_SETUP:
                self.reset(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                limited: list[Event] = [
                    LimitExceeded(
                        LIMIT_PENDING_SETUP,
                        f"{MAX_PENDING_SETUP} CONNECTs already being set up",
                        ev.stream_id,
                    )
                ]
                return limited + self._count_reset()
            self.pending_setup.add(ev.stream_id)
            return [ConnectRequested(ev.stream_id, target, headers)]
        return super()._translate(ev)

    def _bad(self, stream_id: int, reason: str, status: int) -> list[Event]:
        self.refuse(stream_id, status, reason)
        return [BadRequest(stream_id, reason), *self._count_reset()]

    def _stream_reset_by_peer(self, stream_id: int) -> list[Event]:
        # Only a stream reset before we answered it counts (hyper's "pending accept reset
        # streams"): that is the rapid reset attack, HEADERS then RST_STREAM, each leaving
        # us a setup to do. Apps that reset their connections after using them reset
        # answered streams, at any rate a busy client may have.
        return self._count_reset() if stream_id in self.pending_setup else []

    def _count_reset(self) -> list[Event]:
        """One more stream that ended before it carried anything (reset by the peer before
        our answer, or refused by us for a limit or a bad request): past MAX_RESETS per
        RESET_WINDOW_S the peer is flooding us with them (rapid reset)."""
        now = self.clock()
        if now - self._resets_since > RESET_WINDOW_S:
            self._resets_since, self._resets = now, 0
        self._resets += 1
        if self._resets <= MAX_RESETS:
            return []
        return self._limit_close(
            LIMIT_RESETS,
            f"more than {MAX_RESETS} streams reset or refused within {RESET_WINDOW_S:g} s",
        )

    def accept(self, stream_id: int) -> bool:
        """Answer a CONNECT with 200. False (and nothing sent) if the stream was reset or
        the connection is closed meanwhile: then close whatever was opened for it."""
        self.pending_setup.discard(stream_id)
        if self.closed:
            return False
        try:
            self.conn.send_headers(stream_id, [(":status", "200")])
        except h2.exceptions.ProtocolError:
            return False
        return True

    def refuse(self, stream_id: int, status: int, reason: str) -> bool:
        """Answer a CONNECT with an error status and end the stream; it then stops counting
        against the peer's concurrency, and data still arriving on it only returns credit.
        False if the stream was reset or the connection is closed meanwhile."""
        self.pending_setup.discard(stream_id)
        if self.closed:
            return False
        try:
            self.conn.send_headers(
                stream_id,
                [(":status", str(status)), ("weft-reason", _header_text(reason))],
                end_stream=True,
            )
        except h2.exceptions.ProtocolError:
            self.reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return False
        # the request side may still be open: close it too (RFC 9113 8.1, NO_ERROR)
        self.reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        return True

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.pending_setup.discard(stream_id)
        super().reset(stream_id, code)

    def forget(self, stream_id: int) -> None:
        self.pending_setup.discard(stream_id)


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
            headers = _headers(ev.headers, errors="replace")  # type: ignore[arg-type]
            status_text = headers.get(":status", "0")
            status = int(status_text) if status_text.isascii() and status_text.isdigit() else 0
            return [ConnectResponse(ev.stream_id, status, headers)]
        return super()._translate(ev)

    @property
    def open_streams(self) -> int:
        return int(self.conn.open_outbound_streams)

    @property
    def can_open_stream(self) -> bool:
        return (
            not self.closed
            and not self.draining
            and self.open_streams < self.conn.remote_settings.max_concurrent_streams
        )
