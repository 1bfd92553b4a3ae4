"""Access events from a real ztunnel inbound side (real mTLS on loopback, a real CA, a real
pod socket, no lab): what `/tap` and the OTLP log exporter are handed for a connection that
closed, one denied by policy, one closed by a policy change, one to a dead pod; and that a
subscriber that never reads loses events (counted) while the data path goes on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from meshcore import hbone
from meshcore.accessevents import AccessEvent, TapFilter, TapHub
from tests.integration.ztunnel.test_inbound_admission_io import (
    CLIENT,
    CLIENT_IP,
    DENY_CLIENT,
    WEB,
    Node,
    Target,
    connect,
    eventually,
    run,
)
from ztunnel.relay import Relay, TcpLeg

pytestmark = pytest.mark.integration


async def app_connection(
    node: Node, identity: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """An app's TCP connection relayed over an HBONE stream to the node's inbound side, as
    the source ztunnel carries it; the CONNECT's status."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[TcpLeg] = loop.create_future()
    listener = await loop.create_server(lambda: TcpLeg(on_made=accepted.set_result), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", listener.sockets[0].getsockname()[1]
    )
    leg = await accepted
    listener.close()
    conn = await node.client(identity)
    stream, status = await connect(conn, port, f"for={CLIENT_IP}")
    if status == 200:
        Relay(leg, stream).start()
    else:
        leg.abort()
    return reader, writer, status


async def take(hub_sub: object, count: int, timeout: float = 5) -> list[AccessEvent]:
    got: list[AccessEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{len(got)} of {count} events"
        events, _ = await hub_sub.take(left)  # type: ignore[attr-defined]
        got += events
    return got


def test_a_closed_connection_is_one_event_with_identities_and_bytes(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        sub = node.inbound.tap.subscribe(TapFilter(namespace="shop"))
        reader, writer, status = await app_connection(node, CLIENT, port)
        assert status == 200
        writer.write(b"x" * 1000)
        assert await reader.readexactly(1000) == b"x" * 1000
        writer.write_eof()
        assert await reader.read() == b""
        closed_at = time.time()
        writer.close()
        (event,) = await take(sub, 1)
        assert (event.component, event.reporter, event.kind) == (
            "ztunnel",
            "destination",
            "connection",
        )
        assert event.node == "node-2" and event.verdict == "allow" and event.policy == ""
        assert (event.source_workload, event.source_namespace) == ("client", "shop")
        assert event.source_principal == CLIENT and event.source_address == CLIENT_IP
        assert (event.destination_workload, event.destination_principal) == ("web", WEB)
        assert event.destination_address == f"127.0.0.1:{port}"
        assert (event.bytes_sent, event.bytes_received) == (1000, 1000)
        assert event.security == "mutual_tls" and event.duration_ms > 0
        assert abs(event.time - closed_at) < 1.0
        assert node.inbound.table.describe()["total"] == 0  # no longer listed as open

    run(tmp_path, body)


def test_a_policy_denial_names_the_policy(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        node.view.policies.append(DENY_CLIENT)
        sub = node.inbound.tap.subscribe(TapFilter(verdict="deny"))
        _, writer, status = await app_connection(node, CLIENT, port)
        assert status == 403
        writer.close()
        (event,) = await take(sub, 1)
        assert event.policy == "shop/no-client" and event.source_principal == CLIENT
        assert event.destination_principal == WEB and event.bytes_sent == 0
        assert "no-client" in event.reason
        assert target.peers == []

    run(tmp_path, body)


def test_a_connection_closed_by_a_policy_change_is_reported_denied(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        sub = node.inbound.tap.subscribe(TapFilter())
        reader, writer, status = await app_connection(node, CLIENT, port)
        assert status == 200
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        listed = node.inbound.table.describe()
        assert listed["total"] == 1
        (open_conn,) = listed["connections"]
        assert open_conn["source_principal"] == CLIENT and open_conn["bytes_sent"] == 5
        assert open_conn["destination"] == "shop/web" and open_conn["direction"] == "inbound"
        node.view.policies.append(DENY_CLIENT)
        assert node.inbound.recheck() == 1
        (event,) = await take(sub, 1)
        assert event.verdict == "deny" and event.policy == "shop/no-client"
        assert event.reason.startswith("closed by policy: ")
        assert (event.bytes_sent, event.bytes_received) == (5, 5)
        writer.close()

    run(tmp_path, body)


def test_a_dead_pod_is_an_error_event(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        assert target.server is not None
        target.server.close()
        await target.server.wait_closed()
        sub = node.inbound.tap.subscribe(TapFilter(verdict="error"))
        conn = await node.client(CLIENT)
        _, status = await connect(conn, port, f"for={CLIENT_IP}")
        assert status == 503
        (event,) = await take(sub, 1)
        assert event.reason.startswith(f"connect 127.0.0.1:{port}")

    run(tmp_path, body)


def test_a_subscriber_that_never_reads_loses_events_not_connections(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        node.inbound.tap = hub = TapHub("ztunnel", "node-2", queue_events=4)
        stalled = hub.subscribe(TapFilter())
        for i in range(12):  # every one still carried while nobody reads the tap
            reader, writer, status = await app_connection(node, CLIENT, port)
            assert status == 200, i
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
        await eventually(lambda: stalled.dropped == 8, "8 events dropped", 10)
        events, dropped = await stalled.take(1)
        assert len(events) == 4 and dropped == 8
        assert [e.verdict for e in events] == ["allow"] * 4

    run(tmp_path, body)


def test_nobody_listening_builds_no_event(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        built: list[object] = []
        real = AccessEvent.__init__

        def counting(self: AccessEvent, *args: object, **kwargs: object) -> None:
            built.append(1)
            real(self, *args, **kwargs)  # type: ignore[arg-type]

        AccessEvent.__init__ = counting  # type: ignore[method-assign]
        try:
            conn = await node.client(CLIENT)
            stream, status = await connect(conn, port, f"for={CLIENT_IP}")
            assert status == 200
            conn.open(hbone.Target("127.0.0.1", 1), {})  # refused: nothing built either
            stream.send_eof()
            await asyncio.sleep(0.2)
        finally:
            AccessEvent.__init__ = real  # type: ignore[method-assign]
        assert not node.inbound.tap.active and built == []

    run(tmp_path, body)
