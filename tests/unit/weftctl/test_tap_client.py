"""weftctl tap: what to tap in a lab, the line printed per event, and subscribing to one
source's `/tap` (a real TapHub behind the real route on a unix socket)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from lab.state import LabPaths
from meshcore import adminserver, tapserver
from meshcore.accessevents import TapFilter, TapHub
from tests.unit.meshcore.test_accessevents import event
from weftctl.tap import LabTap, TapError, TapSource, lab_sources, open_tap
from weftctl.tap_commands import format_event

STATUS = {
    "nodes": [{"name": "node-1"}, {"name": "node-2"}],
    "pods": [
        {
            "namespace": "demo",
            "name": "waypoint-abc",
            "phase": "Running",
            "netns": "weft-x-pod-1",
            "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
        },
        {  # not yet running: tapped when it is
            "namespace": "demo",
            "name": "waypoint-def",
            "phase": "Pending",
            "netns": "weft-x-pod-2",
            "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
        },
        {"namespace": "demo", "name": "client", "phase": "Running", "netns": "n", "labels": {}},
    ],
}


def test_lab_sources_are_every_ztunnel_and_each_running_waypoint_replica() -> None:
    paths = LabPaths(Path("/run/weft/labs/x"))
    assert lab_sources(STATUS, paths) == [
        TapSource("ztunnel node-1", "ztunnel", socket=paths.ztunnel_socket("node-1")),
        TapSource("ztunnel node-2", "ztunnel", socket=paths.ztunnel_socket("node-2")),
        TapSource("waypoint demo/waypoint-abc", "waypoint", netns="/run/netns/weft-x-pod-1"),
    ]


def test_connection_line_names_both_sides_bytes_verdict_and_policy() -> None:
    line = format_event(
        event(verdict="deny", policy="shop/deny-all", reason="denied by shop/deny-all").to_json()
    )
    stamp = time.strftime("%H:%M:%S", time.localtime(1.0))
    assert line.startswith(f"{stamp}.000  destination  ")
    assert "demo/client-0 (demo/client) -> shop/web-1:8080 (shop/web)" in line
    assert "10B/20B  1.5ms  deny shop/deny-all (denied by shop/deny-all)" in line


def test_request_line_has_method_path_code_and_flags() -> None:
    data = event(
        kind="request",
        reporter="waypoint",
        method="GET",
        path="/cart",
        response_code=503,
        response_flags="UF",
        verdict="error",
        destination_workload="",
        destination_namespace="",
        destination_principal="",
    ).to_json()
    line = format_event(data)
    assert "-> web.shop.svc.cluster.local:8080  GET /cart 503" in line
    assert line.endswith("flags=UF")


async def _dump(_request: web.Request) -> web.Response:
    return web.json_response({})


async def _serve(hub: TapHub, sock: Path) -> list[web.AppRunner]:
    return await adminserver.serve_proxy(
        _dump,
        asyncio.Event(),
        admin_addr="",
        admin_socket=sock,
        metrics_addr="",
        readiness_addr="",
        admin_routes=(tapserver.tap_route(hub),),
    )


def test_open_tap_subscribes_and_reads_events(tmp_path: Path) -> None:
    async def main() -> tuple[dict[str, object], dict[str, object]]:
        hub = TapHub("ztunnel", "node-1")
        runners = await _serve(hub, tmp_path / "z.sock")
        try:
            source = TapSource("ztunnel node-1", "ztunnel", socket=tmp_path / "z.sock")
            reader, writer, hello = await open_tap(source, TapFilter(port=8080))
            hub.publish(event(destination_address="10.1.2.7:9090"))  # filtered out
            hub.publish(event())
            line = json.loads(await asyncio.wait_for(reader.readline(), 3))
            writer.close()
            return hello, line
        finally:
            for r in runners:
                await r.cleanup()

    hello, line = asyncio.run(main())
    assert hello == {"type": "hello", "component": "ztunnel", "node": "node-1"}
    assert line["type"] == "event" and line["destination_address"] == "10.1.2.7:8080"


def test_open_tap_says_why_a_source_refused(tmp_path: Path) -> None:
    async def main() -> str:
        hub = TapHub("ztunnel", max_subscribers=0)
        runners = await _serve(hub, tmp_path / "z.sock")
        try:
            source = TapSource("ztunnel node-1", "ztunnel", socket=tmp_path / "z.sock")
            with pytest.raises(TapError) as err:
                await open_tap(source, TapFilter())
            return str(err.value)
        finally:
            for r in runners:
                await r.cleanup()

    assert asyncio.run(main()) == (
        "ztunnel node-1 refused the tap (429): this ztunnel already serves 0 taps; "
        "stop one and try again"
    )


def test_open_tap_names_an_unreachable_source(tmp_path: Path) -> None:
    source = TapSource("ztunnel node-9", "ztunnel", socket=tmp_path / "none.sock")
    with pytest.raises(TapError, match=r"cannot tap ztunnel node-9 at .*none.sock .*is the lab up"):
        asyncio.run(open_tap(source, TapFilter(), timeout=2))


class _FixedLab(LabTap):
    """LabTap over a list of sources the test changes, in place of a lab's status."""

    def __init__(self, sources: list[TapSource]) -> None:
        super().__init__("unit", TapFilter(), refresh=0.05, hello_timeout=1.5)
        self.wanted = sources

    async def _discover(self) -> list[TapSource]:
        return list(self.wanted)


def test_lab_tap_follows_sources_that_come_go_and_restart(tmp_path: Path) -> None:
    async def main() -> None:
        hub_a, hub_b = TapHub("ztunnel", "node-1"), TapHub("waypoint")
        sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"
        runners_a = await _serve(hub_a, sock_a)
        runners_b: list[web.AppRunner] = []
        a = TapSource("ztunnel node-1", "ztunnel", socket=sock_a)
        b = TapSource("waypoint demo/waypoint-1", "waypoint", socket=sock_b)
        notices: list[str] = []
        tap = _FixedLab([a])
        tap.notice = notices.append
        try:
            async with tap:
                events = aiter(tap)
                hub_a.publish(event(bytes_sent=1))
                assert (await asyncio.wait_for(anext(events), 3))["bytes_sent"] == 1
                # a new replica appears: tapped at the next look
                runners_b = await _serve(hub_b, sock_b)
                tap.wanted = [a, b]
                await _until(lambda: hub_b.subscribers == 1)
                hub_b.publish(event(bytes_sent=2, component="waypoint"))
                assert (await asyncio.wait_for(anext(events), 3))["component"] == "waypoint"
                # the ztunnel restarts: its stream ends, it is dialled again
                hub_a.close()  # (as the ztunnel stops: its taps end, then its listeners)
                for r in runners_a:
                    await r.cleanup()
                runners_a = await _serve(hub_a, sock_a)
                await _until(lambda: hub_a.subscribers == 1, 5)
                hub_a.publish(event(bytes_sent=3))
                assert (await asyncio.wait_for(anext(events), 3))["bytes_sent"] == 3
                # the replica goes away: no longer tapped
                tap.wanted = [a]
                await _until(lambda: hub_b.subscribers == 0)
                assert tap.sources == ["ztunnel node-1"]
        finally:
            hub_a.close()
            hub_b.close()
            for r in runners_a + runners_b:
                await r.cleanup()
        assert "tapping waypoint demo/waypoint-1" in notices
        assert "waypoint demo/waypoint-1 is gone" in notices

    asyncio.run(main())


def test_lab_tap_names_every_source_that_did_not_say_hello(tmp_path: Path) -> None:
    async def main() -> str:
        hub = TapHub("ztunnel")
        runners = await _serve(hub, tmp_path / "a.sock")
        tap = _FixedLab(
            [
                TapSource("ztunnel node-1", "ztunnel", socket=tmp_path / "a.sock"),
                TapSource("ztunnel node-2", "ztunnel", socket=tmp_path / "gone.sock"),
            ]
        )
        try:
            with pytest.raises(TapError) as err:
                async with tap:
                    pass
            await _until(lambda: hub.subscribers == 0)  # the one that answered is let go
            return str(err.value)
        finally:
            for r in runners:
                await r.cleanup()

    assert asyncio.run(main()).startswith("cannot tap ztunnel node-2 at ")


async def _until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_lab_tap_waits_for_a_source_still_starting(tmp_path: Path) -> None:
    async def main() -> int:
        hub = TapHub("waypoint")
        sock = tmp_path / "late.sock"
        started: list[web.AppRunner] = []

        async def start_late() -> None:
            await asyncio.sleep(0.5)
            started.extend(await _serve(hub, sock))

        late = asyncio.create_task(start_late())
        try:
            async with _FixedLab([TapSource("waypoint demo/waypoint-2", "waypoint", sock)]):
                return hub.subscribers
        finally:
            await late
            hub.close()
            for r in started:
                await r.cleanup()

    assert asyncio.run(main()) == 1


def test_cli_refuses_a_bad_verdict_and_says_when_the_lab_is_not_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from weftctl.main import cli

    monkeypatch.setenv("WEFT_LAB_STATE", str(tmp_path))
    runner = CliRunner()
    bad = runner.invoke(cli, ["tap", "--verdict", "maybe"])
    assert bad.exit_code == 2 and "'maybe' is not one of 'allow', 'deny', 'error'" in bad.output
    bad_port = runner.invoke(cli, ["tap", "--port", "0"])
    assert bad_port.exit_code == 2 and "--port" in bad_port.output
    down = runner.invoke(cli, ["tap", "--lab", "nolab", "-n", "demo"])
    assert down.exit_code == 1
    assert "lab 'nolab': no lab daemon socket at" in down.output
    assert "is it up? (`weftctl lab up`)" in down.output
