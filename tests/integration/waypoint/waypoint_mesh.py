"""A small mesh in one process, on loopback, with a real CA and real mTLS:

    client (HBONE, as the client pod's ztunnel would) -> waypoint (15008) -> HBONE as the
    waypoint -> node-2's ztunnel `Inbound` -> the pod: sample_apps' HTTP echo, or a TCP echo

The client opens CONNECT streams to the Service VIP with the client's certificate, exactly as
ztunnel's outbound side does for a Service bound to a waypoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import h11
import structlog
import uvloop

from controller.ca import CertificateAuthority
from meshcore import hbone
from meshcore.meshstate import MeshService, ServiceMembership, ServicePort, Waypoint, Workload
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from sample_apps.echo_core import Identity
from sample_apps.http_echo import EchoConfig, EchoServer
from tests.integration.ztunnel.test_pool_peer_identity import fetcher
from waypoint.proxy import Waypoint as WaypointProxy
from waypoint.proxy import WaypointConfig
from waypoint.state import WaypointView
from waypoint.streamio import BufferedEnd
from ztunnel.hbone_conn import HboneConnection, Stream
from ztunnel.identity import IdentityManager
from ztunnel.inbound import Inbound
from ztunnel.listeners import HboneListener, serve_hbone
from ztunnel.pool import Pool, sni_for
from ztunnel.relay import Relay
from ztunnel.state import MeshView

TD = "cluster.local"
NS = "shop"
GATEWAY = "waypoint"
WAYPOINT_ID = f"spiffe://{TD}/ns/{NS}/sa/{GATEWAY}"
CLIENT_ID = f"spiffe://{TD}/ns/{NS}/sa/client"
WEB_ID = f"spiffe://{TD}/ns/{NS}/sa/web"
NODE_ADDRESS = "127.0.0.1"  # both nodes, as seen on loopback
CLIENT_IP = "127.0.0.5"
WEB_IP = "127.0.0.1"  # the backend pods listen here
WEB_VIP = "10.96.0.10"
DOWN_VIP = "10.96.0.11"  # a Service whose only endpoint has nothing listening
RESET_VIP = "10.96.0.12"  # a Service whose endpoint resets every connection
UNBOUND_VIP = "10.96.0.13"  # a Service not bound to this waypoint
ROUTED_VIP = "10.96.0.14"  # a Service with HTTPRoutes (set by the test), backed by web

# web's ports: declared HTTP, undeclared (sniffed), declared TCP
HTTP_PORT, SNIFFED_PORT, TCP_PORT, SNIFFED_TCP_PORT = 80, 8080, 9000, 9001


def workload(
    name: str, ip: str, identity: str, services: tuple[ServiceMembership, ...] = ()
) -> Workload:
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace=NS,
        service_account=identity.rsplit("/", 1)[1],
        identity=identity,
        node="node-2" if name != "client" else "node-1",
        node_address=NODE_ADDRESS,
        addresses=(ip,),
        labels={"app": name, "version": "v1"},
        enrolled=True,
        ready=True,
        workload_name=name,
        services=services,
    )


def service(name: str, vip: str, ports: tuple[ServicePort, ...], bound: bool = True) -> MeshService:
    return MeshService(
        name=name,
        namespace=NS,
        hostname=f"{name}.{NS}.svc.cluster.local",
        addresses=(vip,),
        ports=ports,
        waypoint=f"{NS}/{GATEWAY}" if bound else "",
    )


class TcpEcho:
    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, WEB_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])


class Resetter:
    """A pod that reads a request and resets the connection without answering."""

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read(65536)
            writer.transport.abort()

        self.server = await asyncio.start_server(serve, WEB_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((WEB_IP, 0))
        return int(s.getsockname()[1])


class Mesh:
    def __init__(self, tmp_path: Path) -> None:
        self.ca = CertificateAuthority.load_or_create(tmp_path / "ca", TD)
        self.listeners: list[HboneListener] = []
        self.clients: list[HboneConnection] = []

    async def start(self) -> None:
        echo = EchoServer(
            EchoConfig(WEB_IP, 0, Identity(pod="web-1", namespace=NS, version="v1")),
            structlog.get_logger("echo"),
        )
        self.echo = echo
        echo_port = (await echo.start()).port
        echo2 = EchoServer(
            EchoConfig(WEB_IP, 0, Identity(pod="web-2", namespace=NS, version="v2")),
            structlog.get_logger("echo"),
        )
        self.echo2 = echo2
        echo2_port = (await echo2.start()).port
        tcp_port = await TcpEcho().start()
        reset_port = await Resetter().start()
        dead_port = free_port()
        web = workload(
            "web",
            WEB_IP,
            WEB_ID,
            (
                ServiceMembership(
                    NS,
                    "web",
                    {
                        HTTP_PORT: echo_port,
                        SNIFFED_PORT: echo_port,
                        TCP_PORT: tcp_port,
                        SNIFFED_TCP_PORT: tcp_port,
                    },
                ),
                ServiceMembership(NS, "down", {HTTP_PORT: dead_port}),
                ServiceMembership(NS, "resetter", {HTTP_PORT: reset_port}),
                ServiceMembership(NS, "unbound", {HTTP_PORT: echo_port}),
                ServiceMembership(NS, "routed", {HTTP_PORT: echo_port}),
                ServiceMembership(NS, "web-v2", {HTTP_PORT: echo2_port}),
            ),
        )
        client = workload("client", CLIENT_IP, CLIENT_ID)
        state: dict[ResourceKey, object] = {
            w.key: w
            for w in (
                web,
                client,
                service(
                    "web",
                    WEB_VIP,
                    (
                        ServicePort("http", HTTP_PORT),
                        ServicePort("web", SNIFFED_PORT),
                        ServicePort("tcp", TCP_PORT),
                        ServicePort("other", SNIFFED_TCP_PORT),
                    ),
                ),
                service("down", DOWN_VIP, (ServicePort("http", HTTP_PORT),)),
                service("resetter", RESET_VIP, (ServicePort("http-api", HTTP_PORT),)),
                service("unbound", UNBOUND_VIP, (ServicePort("http", HTTP_PORT),), bound=False),
                service("routed", ROUTED_VIP, (ServicePort("http", HTTP_PORT),)),
                service("web-v2", "10.96.0.15", (ServicePort("http", HTTP_PORT),), bound=False),
                Waypoint(GATEWAY, NS),
            )
        }

        # node-2: a real ztunnel inbound side, holding web's certificate
        node_view = MeshView("node-2")
        node_view.update(state)  # type: ignore[arg-type]
        node_ids = IdentityManager(fetcher(self.ca))
        await node_ids.get(WEB_ID)
        self.inbound = Inbound("node-2", TD, node_view, node_ids)
        node = await serve_hbone(
            self.inbound.hbone_protocol, "127.0.0.1", 0, self.inbound.server_context()
        )
        self.listeners.append(node)

        # the waypoint: its own identity, its pool dialing node-2's 15008
        view = WaypointView(f"{NS}/{GATEWAY}")
        view.update(state)
        self.state = state
        ids = IdentityManager(fetcher(self.ca))
        self.waypoint = WaypointProxy(
            WaypointConfig(NS, GATEWAY, TD, sniff_timeout=0.3),
            view,
            ids,
            Pool(ids, port=node.sockets[0].getsockname()[1]),
        )
        await self.waypoint.start()
        listener = await serve_hbone(
            self.waypoint.hbone_protocol, "127.0.0.1", 0, self.waypoint.server_context()
        )
        self.listeners.append(listener)
        self.port = int(listener.sockets[0].getsockname()[1])
        self.client_ids = IdentityManager(fetcher(self.ca))

    def set_routes(self, manifests: str) -> None:
        """Give the waypoint these HTTPRoutes (YAML), as a config update would."""
        parsed = parse_documents(documents_from_text(textwrap.dedent(manifests), "routes.yaml"))
        routes = {p.resource.key: p.resource for p in parsed}
        self.waypoint.view.update({**self.state, **routes})

    async def connect(self, identity: str = CLIENT_ID) -> HboneConnection:
        """An HBONE connection to the waypoint, as the client pod's ztunnel opens it."""
        ctx = await self.client_ids.context(identity, server=False)
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: HboneConnection(hbone.HboneClient()),
            "127.0.0.1",
            self.port,
            ssl=ctx,
            server_hostname=sni_for(WAYPOINT_ID),
        )
        conn.start()
        self.clients.append(conn)
        return conn

    async def stream(
        self, vip: str = WEB_VIP, port: int = HTTP_PORT, conn: HboneConnection | None = None
    ) -> tuple[Stream, int]:
        conn = conn or await self.connect()
        stream = conn.open(hbone.Target(vip, port), {"forwarded": f"for={CLIENT_IP}"})
        response = await asyncio.wait_for(stream.response, 5)
        return stream, response.status

    async def http(self, vip: str = WEB_VIP, port: int = HTTP_PORT) -> HttpClient:
        stream, status = await self.stream(vip, port)
        assert status == 200
        return HttpClient(stream)

    async def close(self) -> None:
        for conn in self.clients:
            conn.close()
        for listener in self.listeners:
            listener.close()
        await self.waypoint.pool.close()
        await self.echo.stop()
        await self.echo2.stop()


class HttpClient:
    """Raw HTTP/1.1 bytes out over one CONNECT stream; responses parsed by h11."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.end = BufferedEnd("test-client")
        self.relay = Relay(stream, self.end)
        self.relay.start()
        self.h11 = h11.Connection(h11.CLIENT)

    def send_raw(self, data: bytes) -> None:
        self.end.write(data)

    async def response(self, method: str = "GET") -> tuple[h11.Response, bytes]:
        """The next response (h11 is told the method, so a HEAD answer has no body)."""
        if self.h11.our_state is h11.IDLE:
            self.h11.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
            self.h11.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await asyncio.wait_for(self.end.read(), 10))
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                return head, body
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a response")

    async def closed(self) -> bool:
        """Whether the waypoint ended the stream (EOF or reset) within a few seconds."""
        try:
            while await asyncio.wait_for(self.end.read(), 5):
                pass
        except ConnectionError:
            return True
        except TimeoutError:
            return False
        return True


def run(tmp_path: Path, body: Callable[[Mesh], Awaitable[None]]) -> None:
    async def main() -> None:
        mesh = Mesh(tmp_path)
        await mesh.start()
        try:
            await asyncio.wait_for(body(mesh), 60)
        finally:
            await mesh.close()

    uvloop.run(main())


def headers_of(response: h11.Response) -> dict[str, str]:
    return {n.decode(): v.decode() for n, v in response.headers}
