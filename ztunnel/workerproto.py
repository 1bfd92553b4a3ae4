"""What a ztunnel's parent and its worker processes say to each other, sans I/O.

`ztunnel run --workers N` (N > 1) runs one parent and N workers (ztunnel.supervisor). The
parent alone holds the controller stream and the CA client; workers relay connections. Over
one unix stream socket per worker, frames of `kind` + payload:

    parent -> worker  STATE     a StateUpdate (protobuf bytes): the mesh as the parent has it
                      CERT      a workload certificate a worker asked for (JSON), or why not
                      STATS?    what the worker relays now, for /connections and /config_dump
                      DRAIN     a successor took the listeners: stop accepting and drain
                      TAP       whether anyone taps (events are only made while someone does)
    worker -> parent  READY     synced and serving
                      CERT?     the certificate of one identity (fetched once per node)
                      EVENT     an access event (JSON), for the parent's /tap and OTLP log
                      STATS     the answer to STATS?
                      DRAINED   its connections ended (or the drain timeout passed)

A frame is a 4-byte big-endian length (of kind + payload), a 1-byte kind and the payload,
at most MAX_FRAME bytes (a snapshot of 50k workloads is a few MB). Both ends are one
ztunnel's own processes; the bound keeps a bug from becoming an unbounded buffer.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">LB")


class Kind(enum.IntEnum):
    STATE = 1
    CERT = 2
    STATS_REQUEST = 3
    DRAIN = 4
    TAP = 5
    READY = 10
    CERT_REQUEST = 11
    EVENT = 12
    STATS = 13
    DRAINED = 14


class FrameError(ValueError):
    """A frame that breaks the protocol (too long, unknown kind, bad JSON)."""


@dataclass(frozen=True)
class Frame:
    kind: Kind
    payload: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FrameError(f"{self.kind.name}: not JSON: {err}") from None


def encode(kind: Kind, payload: bytes = b"") -> bytes:
    if len(payload) + 1 > MAX_FRAME:
        raise FrameError(f"{kind.name}: a frame of {len(payload) + 1} bytes, over {MAX_FRAME}")
    return _HEADER.pack(len(payload) + 1, kind) + payload


def encode_json(kind: Kind, body: object) -> bytes:
    return encode(kind, json.dumps(body, separators=(",", ":")).encode())


class FrameReader:
    """Bytes in (`feed`), whole frames out; FrameError ends the channel."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= _HEADER.size:
            length, kind = _HEADER.unpack_from(buf, pos)
            if length < 1 or length > self._max:
                raise FrameError(f"a frame of {length} bytes (1 to {self._max} allowed)")
            try:
                kind = Kind(kind)
            except ValueError:
                raise FrameError(f"unknown frame kind {kind}") from None
            end = pos + 4 + length
            if len(buf) < end:
                break
            frames.append(Frame(kind, bytes(buf[pos + _HEADER.size : end])))
            pos = end
        del buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


def listener_kind(name: str) -> str:
    """`outbound/3` -> `outbound`; `plaintext` -> `plaintext`."""
    return name.partition("/")[0]


def assign(names: list[str], workers: int) -> dict[int, list[str]]:
    """Which listening sockets each worker serves: `kind/i` (one of a SO_REUSEPORT group) to
    worker i mod N; a name without an index (15006, which bpf_sk_assign needs alone, or a
    socket taken from a single-process ztunnel) is shared by every worker. Every socket is
    served: a reuseport socket nobody accepts on would strand the connections hashed to it."""
    out: dict[int, list[str]] = {i: [] for i in range(workers)}
    for name in sorted(names):
        _, sep, index = name.partition("/")
        if sep:
            out[int(index) % workers].append(name)
        else:
            for i in range(workers):
                out[i].append(name)
    return out


def to_bind(names: list[str], workers: int, grouped: tuple[str, ...]) -> list[str]:
    """The reuseport sockets to add so each worker has one of each `grouped` kind: none for a
    kind offered as a single (non-reuseport) socket, which then stays shared."""
    missing = []
    for kind in grouped:
        indexed = sorted(int(n.partition("/")[2]) for n in names if n.startswith(kind + "/"))
        if kind in names:
            continue
        have = set(indexed)
        missing += [f"{kind}/{i}" for i in range(workers) if i not in have]
    return missing
