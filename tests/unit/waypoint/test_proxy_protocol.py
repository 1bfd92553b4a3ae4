"""Protocol choice for a waypoint stream: what the Service port declares, else the bytes."""

from __future__ import annotations

import pytest

from meshcore.meshstate import ServicePort
from waypoint.protocol import H2_PREFACE, MAX_SNIFF, AppProtocol, choose, declared, sniff

HTTP1, H2C, GRPC, TCP = AppProtocol.HTTP1, AppProtocol.H2C, AppProtocol.GRPC, AppProtocol.TCP


@pytest.mark.parametrize(
    ("name", "app_protocol", "expected"),
    [
        ("", "http", HTTP1),
        ("", "HTTP", HTTP1),
        ("", "kubernetes.io/h2c", H2C),
        ("", "grpc", GRPC),
        ("", "tcp", TCP),
        ("", "mysql", TCP),
        ("http-web", "example.com/custom", None),  # unknown appProtocol: sniffed
        ("grpc-api", "tcp", TCP),  # appProtocol wins over the name
        ("http", "", HTTP1),
        ("http-web", "", HTTP1),
        ("http2-web", "", H2C),
        ("grpc", "", GRPC),
        ("grpc-web", "", HTTP1),  # grpc-web is HTTP/1.1, not the grpc- prefix
        ("tcp-db", "", TCP),
        ("https", "", TCP),
        ("httpx", "", None),  # a prefix is the whole name or followed by '-'
        ("web", "", None),
        ("", "", None),
    ],
)
def test_a_port_declares_by_app_protocol_then_by_name(
    name: str, app_protocol: str, expected: AppProtocol | None
) -> None:
    assert declared(ServicePort(name, 80, "TCP", app_protocol)) is expected


def test_a_non_tcp_port_is_never_parsed() -> None:
    assert declared(ServicePort("http", 53, "UDP")) is TCP


def test_no_port_declares_nothing() -> None:
    assert declared(None) is None


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"", None),
        (b"G", None),
        (b"GET", None),
        (b"GET /", None),
        (b"GET /index.html HT", None),
        (b"GET /index.html HTTP/1.1\r", None),
        (b"GET /index.html HTTP/1.1\r\n", HTTP1),
        (b"GET / HTTP/1.0\n", HTTP1),  # a bare LF ends a line too
        (b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1),
        (b"M-SEARCH * HTTP/1.1\r\n", HTTP1),
        (b"GET / HTTP/2.0\r\n", TCP),
        (b"GET /\r\n", TCP),  # HTTP/0.9: not served
        (b"GET  / HTTP/1.1\r\n", TCP),
        (b"GET / HTTP/1.1 \r\n", TCP),
        (b"\x16\x03\x01\x02\x00", TCP),  # a TLS ClientHello
        (b"\x00\x01", TCP),
        (b"SSH-2.0-OpenSSH_9.6\r\n", TCP),
        (b"*1\r\n$4\r\nPING\r\n", TCP),  # redis
        (b"GET /\xff HTTP/1.1\r\n", TCP),
        (b"PRI", None),  # could still be the h2 preface, or a PRI request
        (b"PRI * HTTP/2.0\r\n", TCP),  # the preface cut off: not HTTP/1.x either
        (H2_PREFACE, H2C),
        (H2_PREFACE + b"\x00\x00\x12\x04", H2C),
        (H2_PREFACE[:10], None),
    ],
)
def test_sniffing_the_first_bytes(prefix: bytes, expected: AppProtocol | None) -> None:
    assert sniff(prefix) is expected


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"", TCP),
        (b"GET / HTTP/1.1", TCP),  # no line end: not enough to call it HTTP
        (b"GET / HTTP/1.1\r\n", HTTP1),
        (H2_PREFACE[:10], TCP),
    ],
)
def test_a_final_sniff_decides(prefix: bytes, expected: AppProtocol) -> None:
    assert sniff(prefix, final=True) is expected


def test_a_request_line_that_never_ends_is_tcp() -> None:
    long = b"GET /" + b"a" * MAX_SNIFF
    assert sniff(long) is TCP
    assert sniff(long[: MAX_SNIFF - 1]) is None


def test_a_declared_port_is_not_sniffed() -> None:
    assert choose(ServicePort("tcp-db", 5432), b"GET / HTTP/1.1\r\n") is TCP
    assert choose(ServicePort("http", 80), b"") is HTTP1
    assert choose(ServicePort("db", 5432), b"GET / HTTP/1.1\r\n") is HTTP1
    assert choose(ServicePort("db", 5432), b"GE") is None
