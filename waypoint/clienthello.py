"""The server name (SNI) of a TLS ClientHello, read from a stream's first bytes without I/O.

A TCP stream through the waypoint may carry the client's own TLS (its HBONE tunnel's TLS is
already off). Authorization's `connection.sni` is the `server_name` extension (RFC 6066) of
its ClientHello, as Envoy's tls_inspector reads it. `inspect(prefix)` looks at what has
arrived and says: FOUND (the hello is complete; `server_name` is its SNI, "" when it has
none), NEED_MORE (it could still become one: wait until `need` bytes are there), NOT_TLS (not
a handshake record, or a malformed hello: no SNI), or TOO_LARGE (a hello bigger than we look
into).

Bounds, all checked before a length is trusted: a record at most 2^14 bytes (RFC 8446 5.1),
the ClientHello message at most MAX_HELLO bytes, spread over at most MAX_RECORDS records (a
hello may be fragmented; zero-length fragments are refused, as RFC 8446 requires), so
`need` never exceeds MAX_INSPECT bytes and no call does more than one pass over them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

RECORD_HEADER = 5
MAX_RECORD = 1 << 14  # TLSPlaintext.length
HANDSHAKE_RECORD = 0x16
CLIENT_HELLO = 0x01
SERVER_NAME = 0x0000  # extension type
HOST_NAME = 0x00  # ServerName.name_type
MAX_HELLO = 16 * 1024  # ClientHello body bytes we look into (real ones: 0.2-2 KiB)
MAX_RECORDS = 64  # records one hello may be fragmented into
MAX_INSPECT = MAX_RECORDS * RECORD_HEADER + 4 + MAX_HELLO  # most bytes `need` asks for
MAX_HOST_NAME = 255  # a DNS name


class State(enum.Enum):
    FOUND = "found"
    NEED_MORE = "need_more"
    NOT_TLS = "not_tls"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Hello:
    state: State
    server_name: str = ""  # FOUND only; "" when the hello has no host_name
    need: int = 0  # NEED_MORE only: the prefix length at which to look again


_NOT_TLS = Hello(State.NOT_TLS)
_TOO_LARGE = Hello(State.TOO_LARGE)


class _Malformed(Exception):
    pass


class _Reader:
    """Bounded reads over one message: every length is checked against what is left."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.left():
            raise _Malformed
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.uint(length_size)))


def inspect(prefix: bytes | bytearray | memoryview) -> Hello:
    """What a stream's first bytes say about its TLS ClientHello (never raises)."""
    data = memoryview(prefix)
    if not data:
        return Hello(State.NEED_MORE, need=1)
    if data[0] != HANDSHAKE_RECORD:
        return _NOT_TLS
    message = bytearray()  # the handshake message, reassembled from its fragments
    pos = 0
    for _ in range(MAX_RECORDS):
        if len(data) - pos < RECORD_HEADER:
            if len(data) > pos and data[pos] != HANDSHAKE_RECORD:
                return _NOT_TLS
            if len(data) > pos + 1 and data[pos + 1] != 3:
                return _NOT_TLS
            return Hello(State.NEED_MORE, need=pos + RECORD_HEADER)
        kind, major = data[pos], data[pos + 1]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if kind != HANDSHAKE_RECORD or major != 3 or not 0 < length <= MAX_RECORD:
            return _NOT_TLS  # (another record type before the hello is complete: not one)
        start = pos + RECORD_HEADER
        had = len(message)
        message += data[start : start + length]
        pos = start + length
        if len(message) >= 4:
            if message[0] != CLIENT_HELLO:
                return _NOT_TLS
            body_length = int.from_bytes(message[1:4], "big")
            if body_length > MAX_HELLO:
                return _TOO_LARGE
            if len(message) >= 4 + body_length:
                return _found(bytes(message[4 : 4 + body_length]))
            if len(data) < pos:  # this record is still arriving
                return Hello(State.NEED_MORE, need=min(pos, start + 4 + body_length - had))
        elif len(data) < pos:
            return Hello(State.NEED_MORE, need=min(pos, start + 4 - had))
    return _TOO_LARGE


def _found(body: bytes) -> Hello:
    try:
        return Hello(State.FOUND, server_name=_server_name(_Reader(body)))
    except (_Malformed, UnicodeDecodeError):
        return _NOT_TLS


def _server_name(r: _Reader) -> str:
    """The host_name in a ClientHello body; "" when it has no server_name extension."""
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # legacy_session_id
    if len(r.vector(2).data) < 2:  # cipher_suites
        raise _Malformed
    if not r.vector(1).data:  # legacy_compression_methods
        raise _Malformed
    if not r.left():
        return ""  # (an SSL 3.0-era hello without extensions)
    extensions = r.vector(2)
    if r.left():
        raise _Malformed  # bytes after the extensions
    found: str | None = None
    seen: set[int] = set()
    while extensions.left():
        kind = extensions.uint(2)
        payload = extensions.vector(2)
        if kind in seen:
            raise _Malformed  # a duplicate extension: TLS stacks refuse the hello
        seen.add(kind)
        if kind == SERVER_NAME and payload.left():  # (empty: a server's acknowledgement)
            found = _host_name(payload)
    return found or ""


def _host_name(payload: _Reader) -> str:
    names = payload.vector(2)
    if payload.left() or not names.left():
        raise _Malformed
    while names.left():
        name_type = names.uint(1)
        name = names.vector(2).data
        if name_type == HOST_NAME:
            if not 0 < len(name) <= MAX_HOST_NAME:
                raise _Malformed
            text = bytes(name).decode("ascii")
            if not text.isprintable() or " " in text:
                raise _Malformed
            return text.lower()  # (DNS names ignore case)
    return ""
