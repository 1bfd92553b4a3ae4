"""meshcore.tapserver: `/tap` on a proxy's admin socket only, as ndjson: hello, events,
dropped counts; 400 naming a bad parameter, 429 past the subscriber limit, the subscription
released when the client goes away."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from meshcore import adminserver, tapserver
from meshcore.accessevents import TapHub
from tests.unit.meshcore.test_accessevents import event

tapserver.CLIENT_CHECK = 0.1  # release gone clients quickly in these tests


async def _dump(_request: web.Request) -> web.Response:
    return web.json_response({})


async def _serve(hub: TapHub, tmp_path: Path) -> list[web.AppRunner]:
    return await adminserver.serve_proxy(
        _dump,
        asyncio.Event(),
        admin_addr="",
        admin_socket=tmp_path / "admin.sock",
        metrics_addr="",
        readiness_addr="",
        admin_routes=(tapserver.tap_route(hub),),
    )


def _session(tmp_path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(tmp_path / "admin.sock")))


async def _wait(cond: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_tap_streams_hello_then_filtered_events(tmp_path: Path) -> None:
    async def main() -> list[dict[str, Any]]:
        hub = TapHub("ztunnel", "node-1")
        runners = await _serve(hub, tmp_path)
        try:
            async with (
                _session(tmp_path) as session,
                session.get("http://weft/tap?verdict=deny&namespace=shop") as resp,
            ):
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "application/x-ndjson"
                lines = [json.loads(await resp.content.readline())]
                hub.publish(event())  # allowed: filtered out
                hub.publish(event(verdict="deny", policy="shop/deny", reason="denied"))
                lines.append(json.loads(await resp.content.readline()))
                return lines
        finally:
            for r in runners:
                await r.cleanup()

    hello, denied = asyncio.run(main())
    assert hello == {"type": "hello", "component": "ztunnel", "node": "node-1"}
    assert denied["type"] == "event" and denied["policy"] == "shop/deny"
    assert denied["verdict"] == "deny" and denied["destination_address"] == "10.1.2.7:8080"


def test_bad_query_is_a_400_naming_the_parameter(tmp_path: Path) -> None:
    async def main() -> tuple[int, dict[str, str], int]:
        hub = TapHub("ztunnel")
        runners = await _serve(hub, tmp_path)
        try:
            async with (
                _session(tmp_path) as session,
                session.get("http://weft/tap?port=99999") as resp,
            ):
                return resp.status, await resp.json(), hub.subscribers
        finally:
            for r in runners:
                await r.cleanup()

    status, body, subscribers = asyncio.run(main())
    assert status == 400 and subscribers == 0
    assert body["error"].startswith("/tap: port: '99999' is not a port")


def test_seventeenth_tap_is_a_429_and_gone_clients_free_their_place(tmp_path: Path) -> None:
    async def main() -> None:
        hub = TapHub("waypoint")
        runners = await _serve(hub, tmp_path)
        sessions = [_session(tmp_path) for _ in range(17)]
        try:
            streams = []
            for s in sessions[:16]:
                resp = await s.get("http://weft/tap")
                assert resp.status == 200
                await resp.content.readline()  # hello: subscribed
                streams.append(resp)
            assert hub.subscribers == 16
            async with sessions[16].get("http://weft/tap") as refused:
                assert refused.status == 429
                assert "already serves 16 taps" in (await refused.json())["error"]
            streams[0].close()  # a client goes away without a word
            await sessions[0].close()
            await _wait(lambda: hub.subscribers == 15)
            async with sessions[16].get("http://weft/tap") as again:
                assert again.status == 200
                assert json.loads(await again.content.readline())["type"] == "hello"
        finally:
            for s in sessions:
                await s.close()
            for r in runners:
                await r.cleanup()

    asyncio.run(main())


def test_slow_subscriber_is_told_how_many_it_missed(tmp_path: Path) -> None:
    async def main() -> list[dict[str, Any]]:
        hub = TapHub("ztunnel", queue_events=8)
        runners = await _serve(hub, tmp_path)
        try:
            async with _session(tmp_path) as session, session.get("http://weft/tap") as resp:
                await resp.content.readline()
                for i in range(20):  # in one go: the route has no chance to drain in between
                    hub.publish(event(bytes_sent=i))
                lines = [json.loads(await resp.content.readline()) for _ in range(9)]
                return lines
        finally:
            for r in runners:
                await r.cleanup()

    lines = asyncio.run(main())
    assert [line["bytes_sent"] for line in lines[:8]] == list(range(8))
    assert lines[8] == {"type": "dropped", "count": 12}


def test_tap_is_served_on_the_admin_listener_only(tmp_path: Path) -> None:
    async def main() -> dict[str, int]:
        hub = TapHub("ztunnel")
        runners = await adminserver.serve_proxy(
            _dump,
            asyncio.Event(),
            admin_addr="127.0.0.1:0",
            admin_socket=tmp_path / "admin.sock",
            metrics_addr="127.0.0.1:0",
            readiness_addr="",
            admin_routes=(tapserver.tap_route(hub),),
        )
        # the metrics listener as a unix socket of its own, to ask it too
        metrics = await adminserver.serve(
            [
                adminserver.Listener(
                    "metrics",
                    (web.get("/metrics", adminserver.metrics),),
                    socket=tmp_path / "metrics.sock",
                )
            ]
        )
        try:
            out = {}
            for name in ("admin", "metrics"):
                connector = aiohttp.UnixConnector(path=str(tmp_path / f"{name}.sock"))
                async with (
                    aiohttp.ClientSession(connector=connector) as s,
                    s.get("http://weft/tap?port=x") as resp,
                ):
                    out[name] = resp.status
            return out
        finally:
            for r in runners + metrics:
                await r.cleanup()

    assert asyncio.run(main()) == {"admin": 400, "metrics": 404}


def test_closing_the_hub_ends_every_stream(tmp_path: Path) -> None:
    async def main() -> bytes:
        hub = TapHub("ztunnel")
        runners = await _serve(hub, tmp_path)
        try:
            async with _session(tmp_path) as session, session.get("http://weft/tap") as resp:
                await resp.content.readline()
                hub.close()  # the process stops
                return await asyncio.wait_for(resp.content.read(), 3)
        finally:
            for r in runners:
                await r.cleanup()

    assert asyncio.run(main()) == b""
