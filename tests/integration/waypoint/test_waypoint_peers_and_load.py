"""Who may use the waypoint and as whom; many streams at once; large bodies both ways;
a pod addressed directly through a workload waypoint."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from meshcore import hbone
from meshcore.meshstate import Workload
from tests.integration.waypoint.waypoint_mesh import (
    CLIENT_IP,
    GATEWAY,
    NODE_ADDRESS,
    NS,
    TD,
    WEB_IP,
    WEB_VIP,
    HttpClient,
    Mesh,
    run,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "identity",
    [
        "spiffe://other-domain/ns/shop/sa/client",  # signed by our CA, another trust domain
        f"spiffe://{TD}/weft/admin",  # not a workload identity
    ],
)
def test_only_workload_identities_of_our_trust_domain_are_served(
    tmp_path: Path, identity: str
) -> None:
    async def body(mesh: Mesh) -> None:
        from tests.integration.ztunnel.test_inbound_admission_io import Node

        node = Node(mesh.ca)
        node.port = mesh.port  # its client helper, pointed at the waypoint
        conn = await node.client(identity)
        stream = conn.open(hbone.Target(WEB_VIP, 80), {})
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(stream.response, 5)
        await asyncio.wait_for(conn.closed.wait(), 5)

    run(tmp_path, body)


def test_a_forwarded_address_the_certificate_does_not_vouch_for_is_not_believed(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        conn = await mesh.connect()
        with capture_logs() as logs:
            stream = conn.open(hbone.Target(WEB_VIP, 80), {"forwarded": "for=127.0.0.9"})
            assert (await asyncio.wait_for(stream.response, 5)).status == 200
            client = HttpClient(stream)
            client.send_raw(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            response, _ = await client.response()
        assert response.status_code == 200
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["source_address"] == NODE_ADDRESS  # the peer's, not the claim
        assert [e for e in logs if e["event"] == "waypoint.forwarded_untrusted"]

    run(tmp_path, body)


def test_many_streams_at_once_on_one_connection(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        conn = await mesh.connect()

        async def one(i: int) -> list[str]:
            stream, status = await mesh.stream(conn=conn)
            assert status == 200
            client = HttpClient(stream)
            paths = []
            for j in range(3):
                client.send_raw(f"GET /{i}/{j} HTTP/1.1\r\nHost: web\r\n\r\n".encode())
                response, raw = await client.response()
                assert response.status_code == 200
                paths.append(json.loads(raw)["request"]["path"])
            return paths

        results = await asyncio.gather(*(one(i) for i in range(30)))
        assert results == [[f"/{i}/{j}" for j in range(3)] for i in range(30)]

    run(tmp_path, body)


class BigResponder:
    """A pod answering every request with `size` bytes (content-length), kept alive."""

    def __init__(self, size: int) -> None:
        self.size = size

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
                    writer.write(b"z" * self.size)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        self.server = await asyncio.start_server(serve, WEB_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])


def test_large_bodies_flow_both_ways(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        # 6 MiB up: more than the HBONE stream window (4 MiB) and the read high-water mark
        client = await mesh.http()
        payload = b"u" * (6 * 1024 * 1024)
        client.send_raw(
            b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % len(payload)
        )
        for i in range(0, len(payload), 256 * 1024):
            client.send_raw(payload[i : i + 256 * 1024])
            await client.end.drain()
        response, raw = await client.response()
        assert response.status_code == 200 and json.loads(raw)["body_bytes"] == len(payload)
        # 6 MiB down, from a pod added to the mesh for it: a workload waypoint's pod
        size = 6 * 1024 * 1024
        port = await BigResponder(size).start()
        big = dataclasses.replace(mesh.waypoint.view.mesh.by_ip[WEB_IP], waypoint=f"{NS}/{GATEWAY}")
        rebind(mesh, big)
        stream, status = await mesh.stream(vip=WEB_IP, port=port)  # the pod's own address
        assert status == 200
        down = HttpClient(stream)
        for _ in range(2):  # twice, on one kept-alive backend stream
            down.send_raw(b"GET /big HTTP/1.1\r\nHost: pod\r\n\r\n")
            response, raw = await down.response()
            assert response.status_code == 200 and len(raw) == size

    run(tmp_path, body)


def rebind(mesh: Mesh, workload: Workload) -> None:
    """The same mesh state with `workload` replaced, given to the waypoint."""
    state = {**mesh.state, workload.key: workload}
    mesh.state = state
    mesh.waypoint.view.update(state)


def test_a_pod_not_bound_to_the_waypoint_is_refused(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        _, status = await mesh.stream(vip=WEB_IP, port=80)  # web's pod, bound only via Service
        assert status == 404
        _, status = await mesh.stream(vip=CLIENT_IP, port=80)
        assert status == 404

    run(tmp_path, body)


class OneShot:
    """A pod that answers the first request of each connection (as keep-alive), and closes
    the connection when a second one comes: the race of a backend's idle timeout."""

    def __init__(self) -> None:
        self.connections = 0

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        self.server = await asyncio.start_server(serve, WEB_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])


def test_a_kept_alive_backend_closing_under_a_get_is_retried_once_on_a_new_connection(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        pod = OneShot()
        port = await pod.start()
        rebind(
            mesh,
            dataclasses.replace(mesh.waypoint.view.mesh.by_ip[WEB_IP], waypoint=f"{NS}/{GATEWAY}"),
        )
        stream, _ = await mesh.stream(vip=WEB_IP, port=port)
        client = HttpClient(stream)
        for _ in range(3):
            client.send_raw(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n")
            response, raw = await client.response()
            assert response.status_code == 200 and raw == b"ok"
        assert pod.connections == 3
        # a POST with a body is not repeated: the client gets the 503
        client.send_raw(b"POST / HTTP/1.1\r\nHost: pod\r\nContent-Length: 1\r\n\r\nx")
        response, _ = await client.response()
        assert response.status_code == 503

    run(tmp_path, body)


def test_a_client_resetting_mid_request_leaves_nothing_behind(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        conn = await mesh.connect()
        with capture_logs() as logs:
            for _ in range(5):
                stream, _ = await mesh.stream(conn=conn)
                client = HttpClient(stream)
                client.send_raw(b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\n0123")
                await asyncio.sleep(0.05)  # the request reaches the backend
                client.end.reset()
            await asyncio.sleep(0.2)
        assert not [e for e in logs if e["event"] == "waypoint.failed_unexpectedly"]
        completed = [e for e in logs if e["event"] == "request.completed"]
        assert len(completed) == 5 and {e["response_flags"] for e in completed} == {"DC"}
        assert [s["streams"] for s in mesh.waypoint.stats()] == [0]  # all streams gone
        assert all(p["streams"] == 0 for p in mesh.waypoint.pool.stats())  # backends too

    run(tmp_path, body)
