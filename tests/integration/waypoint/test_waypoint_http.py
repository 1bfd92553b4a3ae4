"""The waypoint's HTTP/1.1 path on real mTLS: client HBONE -> waypoint -> HBONE (as the
waypoint) -> a real ztunnel inbound -> sample_apps' HTTP echo."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.integration.waypoint.waypoint_mesh import (
    DOWN_VIP,
    HTTP_PORT,
    RESET_VIP,
    SNIFFED_PORT,
    UNBOUND_VIP,
    WEB_ID,
    WEB_VIP,
    HttpClient,
    Mesh,
    headers_of,
    run,
)

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_request_reaches_the_backend_through_the_destination_ztunnel(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http()
        client.send_raw(
            b"GET /hello?x=1 HTTP/1.1\r\nHost: web.shop\r\n"
            b"traceparent: " + TRACEPARENT.encode() + b"\r\n"
            b"tracestate: vendor=abc\r\nbaggage: user=42\r\n\r\n"
        )
        response, raw = await client.response()
        assert response.status_code == 200
        assert headers_of(response)["x-weft-pod"] == "web-1"
        echoed = json.loads(raw)
        assert echoed["request"]["path"] == "/hello?x=1"
        sent = echoed["request"]["headers"]
        assert sent["host"] == "web.shop"
        # trace context goes through unchanged
        assert sent["traceparent"] == TRACEPARENT
        assert sent["tracestate"] == "vendor=abc"
        assert sent["baggage"] == "user=42"

    run(tmp_path, body)


def test_keep_alive_carries_several_requests_on_one_client_stream(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http()
        for i in range(5):
            client.send_raw(f"GET /n/{i} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
            response, raw = await client.response()
            assert response.status_code == 200
            assert json.loads(raw)["request"]["path"] == f"/n/{i}"
        # one HBONE connection to node-2, one stream reused for all five requests
        (pooled,) = mesh.waypoint.pool.stats()
        assert pooled["destination"] == WEB_ID and pooled["streams"] == 1
        # pipelined: two requests written at once, answered in order
        client.send_raw(b"GET /a HTTP/1.1\r\nHost: web\r\n\r\nGET /b HTTP/1.1\r\nHost: web\r\n\r\n")
        _first, raw_a = await client.response()
        _second, raw_b = await client.response()
        assert json.loads(raw_a)["request"]["path"] == "/a"
        assert json.loads(raw_b)["request"]["path"] == "/b"

    run(tmp_path, body)


def test_chunked_request_and_content_length_bodies_reach_the_backend(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http()
        client.send_raw(
            b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        response, raw = await client.response()
        assert response.status_code == 200
        assert json.loads(raw)["body_bytes"] == 11
        payload = b"x" * 300_000  # bigger than one HTTP/2 frame and the first window
        client.send_raw(
            b"PUT /big HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
        )
        response, raw = await client.response()
        assert json.loads(raw)["body_bytes"] == len(payload)
        # HEAD: no body comes back, and the connection goes on
        client.send_raw(b"HEAD /h HTTP/1.1\r\nHost: web\r\n\r\n")
        response, raw = await client.response("HEAD")
        assert response.status_code == 200 and raw == b""
        client.send_raw(b"GET /after HTTP/1.1\r\nHost: web\r\n\r\n")
        response, raw = await client.response()
        assert json.loads(raw)["request"]["path"] == "/after"

    run(tmp_path, body)


def test_an_undeclared_port_is_sniffed_as_http(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http(port=SNIFFED_PORT)
        # the request line arrives in pieces
        for piece in (b"GE", b"T /sniffed HT", b"TP/1.1\r\nHost: web\r\n\r\n"):
            client.send_raw(piece)
            await asyncio.sleep(0.02)
        response, raw = await client.response()
        assert response.status_code == 200
        assert json.loads(raw)["request"]["path"] == "/sniffed"

    run(tmp_path, body)


def test_garbage_gets_a_400_and_only_that_connection_closes(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        conn = await mesh.connect()
        stream, _ = await mesh.stream(conn=conn)
        bad = HttpClient(stream)
        good_stream, _ = await mesh.stream(conn=conn)
        good = HttpClient(good_stream)
        bad.send_raw(b"GET / HTTP/1.1\r\nHost: web\r\nBad Header Name: x\r\n\r\n")
        response, _ = await bad.response()
        assert response.status_code == 400
        assert await bad.closed()
        # the HBONE connection and its other stream carry on
        good.send_raw(b"GET /still HTTP/1.1\r\nHost: web\r\n\r\n")
        response, _raw = await good.response()
        assert response.status_code == 200 and not conn.closed.is_set()

    run(tmp_path, body)


def test_a_backend_with_nothing_listening_is_a_503(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http(vip=DOWN_VIP)
        client.send_raw(b"POST / HTTP/1.1\r\nHost: down\r\nContent-Length: 3\r\n\r\nabc")
        response, raw = await client.response()
        assert response.status_code == 503
        assert b"503" in raw
        # the client connection is still good for another request
        client.send_raw(b"GET / HTTP/1.1\r\nHost: down\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 503

    run(tmp_path, body)


def test_a_backend_that_resets_is_a_503(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http(vip=RESET_VIP)
        client.send_raw(b"GET / HTTP/1.1\r\nHost: resetter\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 503

    run(tmp_path, body)


def test_a_service_not_bound_to_the_waypoint_is_refused(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        _, status = await mesh.stream(vip=UNBOUND_VIP)
        assert status == 404
        _, status = await mesh.stream(vip=WEB_VIP, port=1234)  # a port web does not have
        assert status == 404

    run(tmp_path, body)


def test_expect_100_continue_is_answered_by_the_waypoint(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http(port=HTTP_PORT)
        client.send_raw(
            b"POST /c HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(client.end.read(), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        client.send_raw(b"data")
        client.h11.receive_data(interim)
        response, raw = await client.response()
        assert response.status_code == 200 and json.loads(raw)["body_bytes"] == 4

    run(tmp_path, body)
