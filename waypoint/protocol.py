"""Which protocol a CONNECT stream carries, decided without I/O.

First what the Service port declares, as Istio reads it: `appProtocol` (`http`,
`kubernetes.io/h2c`, `grpc`...), else the port name's prefix (`http-`, `http2-`, `grpc-`...).
A port that declares nothing is sniffed: an HTTP/1.x request line, or the HTTP/2 preface;
anything else is TCP. A port declared as an opaque protocol (`tcp`, `tls`, `mysql`...) is never
sniffed, so server-first protocols are not held waiting for a client that says nothing.
"""

from __future__ import annotations

import enum
import re

from meshcore.meshstate import ServicePort

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A request line longer than this is not one we sniff as HTTP (h11's own head limit is 16 KiB).
MAX_SNIFF = 16 * 1024


class AppProtocol(enum.Enum):
    HTTP1 = "http"
    H2C = "h2c"  # HTTP/2 without TLS, prior knowledge
    GRPC = "grpc"  # gRPC over h2c
    TCP = "tcp"  # opaque: relayed as bytes


# appProtocol values (Kubernetes' and Istio's) -> protocol; unknown values are sniffed
_APP_PROTOCOLS = {
    "http": AppProtocol.HTTP1,
    "http2": AppProtocol.H2C,
    "kubernetes.io/h2c": AppProtocol.H2C,
    "grpc": AppProtocol.GRPC,
    "tcp": AppProtocol.TCP,
    "tls": AppProtocol.TCP,
    "https": AppProtocol.TCP,
    "kubernetes.io/ws": AppProtocol.HTTP1,
    "kubernetes.io/wss": AppProtocol.TCP,
    "mongo": AppProtocol.TCP,
    "mysql": AppProtocol.TCP,
    "redis": AppProtocol.TCP,
}
# port name `<prefix>` or `<prefix>-<suffix>`, Istio's list
_NAME_PREFIXES = {
    "http": AppProtocol.HTTP1,
    "http2": AppProtocol.H2C,
    "grpc": AppProtocol.GRPC,
    "grpc-web": AppProtocol.HTTP1,
    "tcp": AppProtocol.TCP,
    "tls": AppProtocol.TCP,
    "https": AppProtocol.TCP,
    "mongo": AppProtocol.TCP,
    "mysql": AppProtocol.TCP,
    "redis": AppProtocol.TCP,
}


def declared(port: ServicePort | None) -> AppProtocol | None:
    """What the Service port says it carries; None: nothing, sniff it."""
    if port is None:
        return None
    if port.protocol.upper() not in ("", "TCP"):
        return AppProtocol.TCP  # UDP/SCTP never reach a waypoint; never parse them
    app = port.app_protocol.strip().lower()
    if app:
        return _APP_PROTOCOLS.get(app)
    name = port.name.lower()
    for prefix in sorted(_NAME_PREFIXES, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "-"):
            return _NAME_PREFIXES[prefix]
    return None


# RFC 9110 token characters, for the method
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_LINE = re.compile(rb"%s+ [\x21-\x7e]+ HTTP/1\.[01]\r?\n" % _TOKEN)
# a prefix that may still grow into a request line
_PARTIAL_LINE = re.compile(
    rb"%s+( [\x21-\x7e]*( (H(T(T(P(/(1(\.[01]?)?)?)?)?)?)?)?)?)?\r?" % _TOKEN
)


def sniff(prefix: bytes, *, final: bool = False) -> AppProtocol | None:
    """The protocol a stream's first bytes show; None: read more first. `final`: no more
    bytes are coming (end of stream, or the sniff timed out), so decide on what there is."""
    if prefix.startswith(H2_PREFACE):
        return AppProtocol.H2C
    line_end = prefix.find(b"\n", 0, MAX_SNIFF)
    if line_end >= 0:
        if _REQUEST_LINE.fullmatch(prefix, 0, line_end + 1):
            return AppProtocol.HTTP1
        return AppProtocol.TCP
    if final or len(prefix) >= MAX_SNIFF:
        return AppProtocol.TCP
    could_be_h2 = H2_PREFACE.startswith(prefix)
    could_be_h1 = _PARTIAL_LINE.fullmatch(prefix) is not None
    if could_be_h2 or could_be_h1 or not prefix:
        return None
    return AppProtocol.TCP


def choose(port: ServicePort | None, prefix: bytes, *, final: bool = False) -> AppProtocol | None:
    """The declared protocol if any, else what the bytes show (None: read more)."""
    return declared(port) or sniff(prefix, final=final)
