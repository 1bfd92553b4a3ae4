"""h2c and gRPC on the waypoint_mesh harness: a gRPC-shaped h2c backend, and an h2 client
that speaks over one CONNECT stream to the waypoint (as a client pod's h2c connection does
once its ztunnel tunnels it).

Services added to the mesh (all on the `web` workload, each port its own server):

- `grpc` (GRPC_VIP:GRPC_PORT, appProtocol grpc) -> `GrpcEcho("a")`; `grpc-a`, `grpc-b`
  (not bound) -> `GrpcEcho("a")`, `GrpcEcho("b")`: the backends GRPCRoutes pick.
- `grpc-empty`: no endpoints.
- `h2` (H2_VIP:80, port name `http2-web`) -> sample_apps' HTTP echo (h2c).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from meshcore.meshstate import MeshService, ServiceMembership, ServicePort, Workload
from tests.integration.waypoint.waypoint_mesh import WEB_IP, Mesh, service
from waypoint.streamio import BufferedEnd
from ztunnel.relay import Relay

GRPC_VIP = "10.96.0.20"
H2_VIP = "10.96.0.21"
GRPC_PORT = 50051
H2_PORT = 80


def _dict(headers: object) -> dict[str, str]:
    """h2's header list (str with header_encoding set) as a dict."""
    pairs = headers if isinstance(headers, list) else []
    return {
        (n.decode() if isinstance(n, bytes) else n): (v.decode() if isinstance(v, bytes) else v)
        for n, v in pairs
    }


class GrpcEcho:
    """A gRPC-shaped h2c server: any call is answered 200 with content-type
    application/grpc, header `x-backend: <name>`, `x-request: <JSON of the request head and
    trailers>`, the request body echoed (or `x-size` bytes), then trailers `grpc-status`
    (request header `x-want-status`, default 0) and `x-trailer: <name>`. `x-delay-ms` waits
    first."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.resets = 0  # streams the client (the waypoint) reset

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, WEB_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        heads: dict[int, dict[str, str]] = {}
        bodies: dict[int, bytearray] = {}
        tails: dict[int, dict[str, str]] = {}
        pending: dict[int, tuple[memoryview, list[tuple[str, str]]]] = {}
        tasks: set[asyncio.Task[None]] = set()

        def pump() -> None:
            for sid, (data, trailers) in list(pending.items()):
                while data:
                    try:
                        room = min(
                            conn.local_flow_control_window(sid),
                            conn.max_outbound_frame_size,
                            len(data),
                        )
                    except h2.exceptions.StreamClosedError:
                        pending.pop(sid)
                        break
                    if room <= 0:
                        break
                    conn.send_data(sid, bytes(data[:room]))
                    data = data[room:]
                if sid in pending:
                    if data:
                        pending[sid] = (data, trailers)
                    else:
                        pending.pop(sid)
                        conn.send_headers(sid, trailers, end_stream=True)
            writer.write(conn.data_to_send())

        async def answer(sid: int) -> None:
            head = heads.pop(sid)
            body = bytes(bodies.pop(sid, b""))
            await asyncio.sleep(int(head.get("x-delay-ms", "0")) / 1000)
            self.calls += 1
            size = head.get("x-size")
            out = b"x" * int(size) if size else body
            seen = {"head": head, "trailers": tails.pop(sid, {}), "body_bytes": len(body)}
            conn.send_headers(
                sid,
                [
                    (":status", "200"),
                    ("content-type", "application/grpc"),
                    ("x-backend", self.name),
                    ("x-request", json.dumps(seen)),
                ],
            )
            trailers = [
                ("grpc-status", head.get("x-want-status", "0")),
                ("x-trailer", self.name),
            ]
            pending[sid] = (memoryview(out), trailers)
            pump()

        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        heads[ev.stream_id] = _dict(ev.headers)
                    elif isinstance(ev, h2.events.DataReceived):
                        bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        tails[ev.stream_id] = _dict(ev.headers)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in heads:
                        task = asyncio.ensure_future(answer(ev.stream_id))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif isinstance(ev, h2.events.StreamReset):
                        self.resets += 1
                        pending.pop(ev.stream_id, None)
                pump()
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            writer.close()


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] = field(default_factory=dict)
    reset: int | None = None  # the RST_STREAM error code, if the stream was reset

    def json(self) -> dict[str, object]:
        return dict(json.loads(self.body))


class H2Client:
    """An h2 client on one CONNECT stream to the waypoint; requests may run concurrently."""

    def __init__(self, stream: object) -> None:
        self.end = BufferedEnd("h2-test-client")
        self.relay = Relay(stream, self.end)  # type: ignore[arg-type]
        self.relay.start()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.replies: dict[int, Reply] = {}
        self.done: dict[int, asyncio.Future[Reply]] = {}
        self.window = asyncio.Event()
        self.goaway: int | None = None
        self.closed = asyncio.Event()
        self.flush()
        self.reader = asyncio.ensure_future(self._read())

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.end.write(data)

    async def _read(self) -> None:
        try:
            while data := await self.end.read():
                for ev in self.conn.receive_data(data):
                    self._on(ev)
                self.flush()
        except ConnectionError:
            pass
        finally:
            self.closed.set()
            for fut in self.done.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the connection ended"))

    def _on(self, ev: h2.events.Event) -> None:
        if isinstance(
            ev,
            (
                h2.events.WindowUpdated,
                h2.events.RemoteSettingsChanged,
                h2.events.StreamReset,  # a sender waiting for window on it stops
                h2.events.StreamEnded,
            ),
        ):
            self.window.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = int(ev.error_code or 0)
        sid = getattr(ev, "stream_id", None)
        reply = self.replies.get(sid) if sid else None
        if reply is None or sid is None:
            return
        if isinstance(ev, h2.events.ResponseReceived):
            head = _dict(ev.headers)
            reply.status = int(head.pop(":status"))
            reply.headers = head
        elif isinstance(ev, h2.events.DataReceived):
            reply.body += ev.data or b""
            self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, h2.events.TrailersReceived):
            reply.trailers = _dict(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self.done[sid].set_result(reply)
        elif isinstance(ev, h2.events.StreamReset):
            reply.reset = int(ev.error_code or 0)
            if not self.done[sid].done():
                self.done[sid].set_result(reply)

    async def request(
        self,
        path: str,
        *,
        method: str = "POST",
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        trailers: tuple[tuple[str, str], ...] = (),
        authority: str = "svc",
    ) -> Reply:
        sid = self.conn.get_next_available_stream_id()
        self.replies[sid] = Reply()
        self.done[sid] = asyncio.get_running_loop().create_future()
        head = [(":method", method), (":scheme", "http"), (":authority", authority)]
        head += [(":path", path), *headers]
        self.conn.send_headers(sid, head, end_stream=not body and not trailers)
        self.flush()
        view = memoryview(body)
        while view:
            stream = self.conn.streams.get(sid)
            if stream is None or stream.closed:  # answered and reset before the end
                break
            try:
                room = min(
                    self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
                )
            except h2.exceptions.StreamClosedError:  # answered (and reset) before the end
                break
            if room <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            self.conn.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # answered early
            if trailers:
                self.conn.send_headers(sid, list(trailers), end_stream=True)
            elif body:
                self.conn.end_stream(sid)
        self.flush()
        return await asyncio.wait_for(self.done[sid], 10)

    async def grpc(
        self,
        path: str,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"\x00\x00\x00\x00\x00",  # one empty length-prefixed message
        trailers: tuple[tuple[str, str], ...] = (),
    ) -> Reply:
        """A unary call (`body` as given: its framing is the caller's)."""
        headers = (("content-type", "application/grpc"), ("te", "trailers"), *headers)
        return await self.request(path, headers=headers, body=body, trailers=trailers)

    def close(self) -> None:
        with contextlib.suppress(ConnectionError):
            self.conn.close_connection()
            self.flush()
            self.end.write_eof()
        self.reader.cancel()


async def add_h2_services(mesh: Mesh) -> dict[str, GrpcEcho]:
    """Start the gRPC backends and add the h2c and gRPC Services to both views."""
    echoes = {name: GrpcEcho(name) for name in ("a", "b")}
    ports = {name: await echo.start() for name, echo in echoes.items()}
    close_mesh = mesh.close

    async def close() -> None:  # the backends go with the mesh
        for echo in echoes.values():
            echo.server.close()
        await close_mesh()

    mesh.close = close  # type: ignore[method-assign]
    state = dict(mesh.state)
    web = next(w for w in state.values() if isinstance(w, Workload) and w.name == "web")
    http_port = next(m for m in web.services if m.name == "web").ports[80]
    memberships = (
        ServiceMembership("shop", "grpc", {GRPC_PORT: ports["a"]}),
        ServiceMembership("shop", "grpc-a", {GRPC_PORT: ports["a"]}),
        ServiceMembership("shop", "grpc-b", {GRPC_PORT: ports["b"]}),
        ServiceMembership("shop", "h2", {H2_PORT: http_port}),
    )
    web = dataclasses.replace(web, services=(*web.services, *memberships))
    state[web.key] = web
    grpc_port = ServicePort("grpc-api", GRPC_PORT, app_protocol="grpc")
    services: list[MeshService] = [
        service("grpc", GRPC_VIP, (grpc_port,)),
        service("grpc-a", "10.96.0.22", (grpc_port,), bound=False),
        service("grpc-b", "10.96.0.23", (grpc_port,), bound=False),
        service("h2", H2_VIP, (ServicePort("http2-web", H2_PORT),)),
        service("grpc-empty", "10.96.0.24", (grpc_port,), bound=False),  # no endpoints
    ]
    for svc in services:
        state[svc.key] = svc
    mesh.state = state
    mesh.waypoint.view.update(state)
    mesh.inbound.view.update(state)  # type: ignore[arg-type]
    return echoes


async def h2_client(mesh: Mesh, vip: str, port: int) -> H2Client:
    stream, status = await mesh.stream(vip, port)
    assert status == 200
    return H2Client(stream)
