"""TCP passthrough through the waypoint, and what it reports: Istio's L7 and TCP metrics with
reporter="waypoint", one access-log line per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tests.integration.waypoint.waypoint_mesh import (
    CLIENT_ID,
    CLIENT_IP,
    DOWN_VIP,
    SNIFFED_TCP_PORT,
    TCP_PORT,
    WEB_ID,
    Mesh,
    run,
)
from waypoint.streamio import BufferedEnd
from ztunnel.relay import Relay

pytestmark = pytest.mark.integration

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def total(metric: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    out = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                out += sample.value
    return out


async def echo_through(mesh: Mesh, port: int, payload: bytes) -> bytes:
    stream, status = await mesh.stream(port=port)
    assert status == 200
    end = BufferedEnd("test-client")
    Relay(stream, end).start()
    end.write(payload)
    got = b""
    while len(got) < len(payload):
        got += await asyncio.wait_for(end.read(), 5)
    end.write_eof()
    assert await asyncio.wait_for(end.read(), 5) == b""  # the echo's FIN comes back
    return got


@pytest.mark.parametrize("port", [TCP_PORT, SNIFFED_TCP_PORT], ids=["declared", "sniffed"])
def test_a_non_http_port_is_relayed_as_tcp_and_counted(tmp_path: Path, port: int) -> None:
    async def body(mesh: Mesh) -> None:
        labels = {"reporter": "waypoint", "destination_service": "web.shop.svc.cluster.local"}
        opened = total("istio_tcp_connections_opened_total", **labels)
        sent = total("istio_tcp_sent_bytes_total", **labels)
        payload = b"\x00\x01binary, not HTTP\r\n" + bytes(range(256)) * 400
        assert await echo_through(mesh, port, payload) == payload
        await asyncio.sleep(0.05)  # the close is counted once both relays have ended
        assert total("istio_tcp_connections_opened_total", **labels) == opened + 1
        assert total("istio_tcp_connections_closed_total", **labels) == opened + 1
        assert total("istio_tcp_sent_bytes_total", **labels) == sent + len(payload)
        assert total(
            "istio_tcp_received_bytes_total",
            **labels,
            source_principal=CLIENT_ID,
            destination_principal=WEB_ID,
        ) >= len(payload)

    run(tmp_path, body)


def test_each_request_is_counted_with_istio_labels_and_logged(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        labels = {
            "reporter": "waypoint",
            "source_workload": "client",
            "source_principal": CLIENT_ID,
            "destination_workload": "web",
            "destination_principal": WEB_ID,
            "destination_service": "web.shop.svc.cluster.local",
            "destination_service_name": "web",
            "destination_service_namespace": "shop",
            "request_protocol": "http",
            "response_code": "201",
            "connection_security_policy": "mutual_tls",
        }
        before = total("istio_requests_total", **labels)
        durations = total("istio_request_duration_milliseconds_count", **labels)
        request_bytes = total("istio_request_bytes_sum", **labels)
        client = await mesh.http()
        with capture_logs() as logs:
            client.send_raw(
                b"POST /status/201 HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 5\r\n"
                b"traceparent: 00-" + TRACE_ID.encode() + b"-b7ad6b7169203331-01\r\n"
                b"User-Agent: test/1\r\n\r\nhello"
            )
            response, raw = await client.response()
        assert response.status_code == 201
        assert total("istio_requests_total", **labels) == before + 1
        assert total("istio_request_duration_milliseconds_count", **labels) == durations + 1
        assert total("istio_request_bytes_sum", **labels) == request_bytes + 5
        assert total("istio_response_bytes_sum", **labels) >= len(raw)
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["method"] == "POST"
        assert line["path"] == "/status/201"
        assert line["response_code"] == 201
        assert line["trace_id"] == TRACE_ID
        assert line["source_principal"] == CLIENT_ID
        assert line["destination_principal"] == WEB_ID
        assert line["source_address"] == CLIENT_IP
        assert line["upstream_host"].startswith("127.0.0.1:")
        assert line["user_agent"] == "test/1"
        assert line["duration_ms"] > 0

    run(tmp_path, body)


def test_a_503_is_counted_with_its_flag_and_the_reason_logged(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        labels = {"reporter": "waypoint", "response_code": "503", "response_flags": "UF"}
        before = total("istio_requests_total", **labels)
        client = await mesh.http(vip=DOWN_VIP)
        with capture_logs() as logs:
            client.send_raw(b"GET / HTTP/1.1\r\nHost: down\r\n\r\n")
            response, _ = await client.response()
        assert response.status_code == 503
        assert total("istio_requests_total", **labels) == before + 1
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert "503 destination unavailable" in line["reason"]
        assert line["response_flags"] == "UF"

    run(tmp_path, body)


def test_a_silent_client_on_an_undeclared_port_falls_back_to_tcp(tmp_path: Path) -> None:
    """A server-first protocol: the client says nothing until the server does. After the
    sniff timeout the stream is relayed as TCP, so it is not held forever."""

    async def body(mesh: Mesh) -> None:
        stream, status = await mesh.stream(port=SNIFFED_TCP_PORT)
        assert status == 200
        end = BufferedEnd("test-client")
        Relay(stream, end).start()
        await asyncio.sleep(mesh.waypoint.config.sniff_timeout + 0.2)
        end.write(b"GET / HTTP/1.1\r\n\r\n")  # looks like HTTP, but TCP was decided
        got = b""
        while len(got) < 18:
            got += await asyncio.wait_for(end.read(), 5)
        assert got == b"GET / HTTP/1.1\r\n\r\n"  # the TCP echo answered, not an HTTP server

    run(tmp_path, body)
