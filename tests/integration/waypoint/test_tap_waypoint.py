"""The waypoint's access events on real traffic over mTLS (the in-process mesh of
waypoint_mesh.py), read as `weftctl tap` reads them: through the `/tap` route on an admin
socket. One event per request (code, method, path, authority, flags, the denying policy),
one per TCP stream passed through; and the same as OTLP log records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from meshcore import adminserver, tapserver
from meshcore.accessevents import TapFilter
from meshcore.otlplogs import OtlpLogs
from tests.integration.waypoint.test_waypoint_authorization import POLICIES
from tests.integration.waypoint.test_waypoint_tcp_and_telemetry import echo_through
from tests.integration.waypoint.waypoint_mesh import (
    CLIENT_ID,
    CLIENT_IP,
    DOWN_VIP,
    TCP_PORT,
    WEB_ID,
    WEB_VIP,
    Mesh,
    run,
)
from tests.integration.ztunnel.test_tap_otlp import OtlpLogsReceiver
from waypoint import telemetry
from weftctl.tap import TapSource, open_tap

pytestmark = pytest.mark.integration


async def _dump(_request: web.Request) -> web.Response:
    return web.json_response({})


@asynccontextmanager
async def tapped(tmp_path: Path, flt: TapFilter) -> AsyncIterator[asyncio.StreamReader]:
    """The waypoint's /tap on an admin socket, subscribed to as weftctl does."""
    sock = tmp_path / "waypoint-admin.sock"
    runners = await adminserver.serve_proxy(
        _dump,
        asyncio.Event(),
        admin_addr="",
        admin_socket=sock,
        metrics_addr="",
        readiness_addr="",
        admin_routes=(tapserver.tap_route(telemetry.TAP),),
    )
    try:
        reader, writer, hello = await open_tap(TapSource("waypoint", "waypoint", sock), flt)
        assert hello["component"] == "waypoint"
        try:
            yield reader
        finally:
            writer.close()
    finally:
        telemetry.TAP.close()
        for r in runners:
            await r.cleanup()


async def next_event(reader: asyncio.StreamReader) -> dict[str, Any]:
    line = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert line["type"] == "event", line
    return dict(line)


def test_each_request_is_one_event_with_its_code_and_identities(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        async with tapped(tmp_path, TapFilter(namespace="shop")) as tap:
            client = await mesh.http()
            client.send_raw(
                b"POST /status/201 HTTP/1.1\r\nHost: web.shop\r\nContent-Length: 5\r\n\r\nhello"
            )
            assert (await client.response())[0].status_code == 201
            event = await next_event(tap)
        assert (event["component"], event["reporter"], event["kind"]) == (
            "waypoint",
            "waypoint",
            "request",
        )
        assert (event["method"], event["path"], event["authority"]) == (
            "POST",
            "/status/201",
            "web.shop",
        )
        assert event["response_code"] == 201 and event["response_flags"] == "-"
        assert event["verdict"] == "allow" and event["policy"] == "" and event["reason"] == ""
        assert event["source_principal"] == CLIENT_ID and event["source_address"] == CLIENT_IP
        assert event["source_workload"] == "client" and event["source_namespace"] == "shop"
        assert event["destination_principal"] == WEB_ID
        assert event["destination_service"] == "web.shop.svc.cluster.local"
        assert event["destination_address"].startswith("127.0.0.1:")
        assert event["bytes_sent"] == 5 and event["bytes_received"] > 0

    run(tmp_path, body)


def test_a_denied_request_names_the_policy_and_a_failed_one_its_flag(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(POLICIES)
        async with tapped(tmp_path, TapFilter(verdict="deny")) as denied_tap:
            client = await mesh.http()
            client.send_raw(b"GET /ip HTTP/1.1\r\nHost: web\r\n\r\n")  # allowed: not shown
            assert (await client.response())[0].status_code == 200
            client.send_raw(b"GET /admin HTTP/1.1\r\nHost: web\r\n\r\n")
            assert (await client.response())[0].status_code == 403
            client.send_raw(b"POST /ip HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi")
            assert (await client.response())[0].status_code == 403
            admin = await next_event(denied_tap)
            post = await next_event(denied_tap)
        assert admin["path"] == "/admin" and admin["response_code"] == 403
        assert admin["policy"] == "shop/web-deny-admin"
        assert post["method"] == "POST" and post["policy"] == ""
        assert "no ALLOW policy matched" in post["reason"]
        async with tapped(tmp_path, TapFilter(verdict="error")) as error_tap:
            down = await mesh.http(vip=DOWN_VIP)
            down.send_raw(b"GET / HTTP/1.1\r\nHost: down\r\n\r\n")
            assert (await down.response())[0].status_code == 503
            failed = await next_event(error_tap)
        assert failed["response_code"] == 503 and failed["response_flags"] == "UF"
        assert "503" in failed["reason"]

    run(tmp_path, body)


def test_a_tcp_stream_passed_through_is_one_connection_event(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        async with tapped(tmp_path, TapFilter(pod="web")) as tap:
            payload = b"\x00binary" * 1000
            assert await echo_through(mesh, TCP_PORT, payload) == payload
            event = await next_event(tap)
        assert (event["reporter"], event["kind"], event["verdict"]) == (
            "waypoint",
            "connection",
            "allow",
        )
        assert (event["bytes_sent"], event["bytes_received"]) == (len(payload), len(payload))
        assert event["source_principal"] == CLIENT_ID
        assert event["destination_principal"] == WEB_ID
        assert event["destination_service"] == "web.shop.svc.cluster.local"
        assert event["destination_address"].startswith("127.0.0.1:")  # the endpoint dialled
        assert not event["destination_address"].endswith(f":{TCP_PORT}")  # (not the VIP's)

    run(tmp_path, body)


def test_requests_go_out_as_otlp_log_records(tmp_path: Path) -> None:
    receiver = OtlpLogsReceiver()
    sink = OtlpLogs.otlp(receiver.endpoint, "waypoint.shop", "waypoint")

    async def body(mesh: Mesh) -> None:
        telemetry.TAP.add_sink(sink)
        try:
            client = await mesh.http(vip=WEB_VIP)
            client.send_raw(b"GET /status/418 HTTP/1.1\r\nHost: web\r\n\r\n")
            assert (await client.response())[0].status_code == 418
        finally:
            telemetry.TAP.remove_sink(sink)
        await asyncio.to_thread(receiver.wait_for, 1)

    try:
        run(tmp_path, body)
    finally:
        sink.shutdown()
        receiver.stop()
    (record,) = receiver.records
    assert record.body == "request.completed"
    assert record.resource["service.name"] == "waypoint.shop"
    assert record.attributes["response_code"] == 418
    assert record.attributes["path"] == "/status/418"
    assert record.attributes["source_principal"] == CLIENT_ID
