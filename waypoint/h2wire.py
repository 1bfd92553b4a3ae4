"""HTTP/2 (h2c) and gRPC for the waypoint, the pure half: headers in and out, gRPC answers
made here, the settings we advertise, and the per-connection bounds h2 itself does not keep.

h2 (`h2.connection.H2Connection`) parses and frames; `waypoint.h2c` moves bytes. What is
here takes header lists and returns header lists, or takes bytes and says whether a bound
was crossed, so every case is tested without a socket.

Bounds (as ztunnel's HBONE server, `meshcore.hbone`): at most `hbone.MAX_CONCURRENT_STREAMS`
streams open at once (SETTINGS; h2 refuses the client that goes past them with a GOAWAY); a
header block (HEADERS plus its CONTINUATIONs) of at most `hbone.MAX_HEADER_BLOCK` bytes,
counted frame by frame before h2 buffers it (CVE-2024-27316); at most `hbone.MAX_RESETS`
streams reset by the client within `hbone.RESET_WINDOW_S` (CVE-2023-44487). Past a bound the
client gets GOAWAY ENHANCE_YOUR_CALM and its connection (its HBONE stream) ends.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import h2.settings

from meshcore import hbone
from waypoint import routing
from waypoint.h1 import HOP_BY_HOP

Headers = tuple[tuple[str, str], ...]
RawHeaders = Sequence[tuple[bytes, bytes]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What one stream, and one connection, may have in flight towards us (our receive windows):
# the window is given back only once the bytes were passed on, so this is also what we
# hold per stream and per connection.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
MAX_CONCURRENT_STREAMS = hbone.MAX_CONCURRENT_STREAMS
MAX_HEADER_BLOCK = hbone.MAX_HEADER_BLOCK
MAX_RESETS = hbone.MAX_RESETS
RESET_WINDOW_S = hbone.RESET_WINDOW_S

# gRPC status codes the waypoint answers with itself
GRPC_OK = 0
GRPC_DEADLINE_EXCEEDED = 4
GRPC_UNIMPLEMENTED = routing.GRPC_UNIMPLEMENTED
GRPC_INTERNAL = 13
GRPC_UNAVAILABLE = routing.GRPC_UNAVAILABLE

# Connection-specific headers HTTP/2 forbids (RFC 9113 8.2.2), besides `te` other than
# "trailers"; and HTTP/1.1's hop-by-hop list.
_CONNECTION_SPECIFIC = HOP_BY_HOP | {"transfer-encoding", "host"}

_FRAME_HEADERS = 0x1
_FRAME_CONTINUATION = 0x9
_FLAG_END_HEADERS = 0x4


def local_settings() -> dict[h2.settings.SettingCodes, int]:
    """The SETTINGS we send, as a server to clients and as a client to backends."""
    return {
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_BLOCK,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    }


@dataclass(frozen=True)
class H2Request:
    """One request stream's head, as the client sent it."""

    method: str
    path: str  # :path
    authority: str  # :authority (or a Host header)
    scheme: str
    headers: Headers  # regular headers, names lowercase, in order

    @property
    def grpc(self) -> bool:
        return is_grpc(header(self.headers, "content-type"))

    def route_request(
        self, client_namespace: str, source_labels: Mapping[str, str] | None = None
    ) -> routing.Request:
        return routing.Request(
            self.method,
            self.path,
            self.headers,
            host=self.authority,
            client_namespace=client_namespace,
            source_labels=source_labels,
        )


class H2RequestError(ValueError):
    """A request head the waypoint cannot route (h2 has checked the rest)."""


def decode(raw: RawHeaders) -> Headers:
    return tuple((n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw)


def encode(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def header(headers: Headers, name: str) -> str | None:
    return next((v for n, v in headers if n == name), None)


def is_grpc(content_type: str | None) -> bool:
    """gRPC's content types: application/grpc, application/grpc+proto, ...;grpc-web is not."""
    if not content_type:
        return False
    value = content_type.split(";", 1)[0].strip().lower()
    return value == "application/grpc" or value.startswith("application/grpc+")


def parse_request(raw: RawHeaders) -> H2Request:
    pseudo: dict[str, str] = {}
    regular: list[tuple[str, str]] = []
    for name, value in decode(raw):
        if name.startswith(":"):
            pseudo[name] = value
        else:
            regular.append((name, value))
    method = pseudo.get(":method", "")
    if method == "CONNECT":
        raise H2RequestError("CONNECT is not proxied by the waypoint")
    path = pseudo.get(":path", "")
    if not method or not path:
        raise H2RequestError("a request without :method or :path")
    authority = pseudo.get(":authority") or header(tuple(regular), "host") or ""
    return H2Request(method, path, authority, pseudo.get(":scheme", "http"), tuple(regular))


def _forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Regular headers that may cross an HTTP/2 hop: no pseudo-headers, no
    connection-specific ones (`te: trailers` kept: gRPC requires it)."""
    out = []
    for name, value in headers:
        name = name.lower()
        if name.startswith(":"):
            continue
        if name == "te":
            if value.strip().lower() == "trailers":
                out.append((name, "trailers"))
            continue
        if name in _CONNECTION_SPECIFIC:
            continue
        out.append((name, value))
    return out


def backend_request(method: str, decision: routing.Forward) -> list[tuple[str, str]]:
    """The head sent to a backend: what routing decided (path, authority, headers)."""
    return [
        (":method", method),
        (":scheme", "http"),
        (":authority", decision.host),
        (":path", decision.path),
        *_forwardable(decision.request_headers),
    ]


def client_response(
    raw: RawHeaders, ops: tuple[routing.HeaderOps, ...]
) -> tuple[int, list[tuple[str, str]]]:
    """A backend's response head for the client: its status, and the headers with the
    route's response header operations applied (status first)."""
    headers = decode(raw)
    status_text = header(headers, ":status") or ""
    if not status_text.isdigit():
        raise H2RequestError(f"a response without a valid :status ({status_text!r})")
    regular = tuple(_forwardable(headers))
    if ops:
        regular = routing.modify_headers(regular, ops)
    return int(status_text), [(":status", status_text), *_forwardable(regular)]


def trailers(raw: RawHeaders) -> list[tuple[str, str]]:
    return _forwardable(decode(raw))


def grpc_status(headers: Iterable[tuple[str, str]]) -> str:
    """The `grpc-status` of a trailer block (or of a trailers-only response), "" if none."""
    return next((v.strip() for n, v in headers if n == "grpc-status"), "")


def _grpc_message(text: str) -> str:
    """gRPC's percent-encoding of grpc-message (everything outside 0x20-0x7e, and %)."""
    out = []
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def grpc_answer(status: int, message: str, extra: Headers = ()) -> list[tuple[str, str]]:
    """A gRPC answer made here: HTTP 200, trailers-only (one HEADERS with END_STREAM)."""
    return [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", str(status)),
        ("grpc-message", _grpc_message(message)),
        *_forwardable(extra),
    ]


def http_answer(
    status: int, reason: str, extra: Headers = ()
) -> tuple[list[tuple[str, str]], bytes]:
    """An HTTP answer made here: head and body (the reason, for errors)."""
    body = f"{status} {reason}\n".encode() if status >= 400 else b""
    head = [
        (":status", str(status)),
        *_forwardable(extra),
        ("content-length", str(len(body))),
    ]
    if body:
        head.insert(1, ("content-type", "text/plain"))
    return head, body


# --- bounds h2 does not keep ----------------------------------------------------------------


class FrameGuard:
    """Reads frame headers off the client's bytes before h2 does, to bound what h2 would
    buffer: a header block (HEADERS + CONTINUATION) above `max_header_block` bytes is refused
    as soon as its frames say so. `feed()` returns why the connection must end, or None."""

    def __init__(self, max_header_block: int = MAX_HEADER_BLOCK, *, preface: bool = True) -> None:
        self.max_header_block = max_header_block
        self._preface_left = len(PREFACE) if preface else 0
        self._head = bytearray()  # a frame header split across reads
        self._payload_left = 0
        self._block = 0  # bytes of the header block in progress
        self._in_block = False

    def feed(self, data: bytes) -> str | None:
        view = memoryview(data)
        if self._preface_left:
            taken = min(self._preface_left, len(view))
            self._preface_left -= taken
            view = view[taken:]
        while view:
            if self._payload_left:
                taken = min(self._payload_left, len(view))
                self._payload_left -= taken
                view = view[taken:]
                continue
            need = 9 - len(self._head)
            self._head += view[:need]
            view = view[need:]
            if len(self._head) < 9:
                return None
            high, low, ftype, flags = struct.unpack(">BHBB", self._head[:5])
            self._head.clear()
            length = (high << 16) | low
            self._payload_left = length
            if ftype in (_FRAME_HEADERS, _FRAME_CONTINUATION):
                self._block = self._block + length if self._in_block else length
                self._in_block = not flags & _FLAG_END_HEADERS
                if self._block > self.max_header_block:
                    return (
                        f"a header block of {self._block} bytes or more, "
                        f"above {self.max_header_block}"
                    )
        return None


class ResetBudget:
    """Streams the client reset, per window (rapid reset): `count()` says whether this one
    goes past the budget."""

    def __init__(
        self,
        clock: Callable[[], float],
        max_resets: int = MAX_RESETS,
        window_s: float = RESET_WINDOW_S,
    ) -> None:
        self.clock = clock
        self.max_resets = max_resets
        self.window_s = window_s
        self._since = clock()
        self._resets = 0

    def count(self) -> bool:
        now = self.clock()
        if now - self._since > self.window_s:
            self._since = now
            self._resets = 0
        self._resets += 1
        return self._resets > self.max_resets
