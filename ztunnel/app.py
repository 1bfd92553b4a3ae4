"""The ztunnel process: mesh state from the controller, certificates, and the listeners.

Ports (Istio's): 15001 outbound (captured), 15008 inbound HBONE, 15006 inbound plaintext,
15020 metrics, 15021 readiness, 15000 admin (config dump). Each HTTP listener binds the
narrowest address its job allows, as Istio's ztunnel does: admin on localhost (and the unix
socket) only; 15020 serves metrics only and 15021 readiness only, so a pod that reaches its
node's addresses finds no configuration there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from meshcore import adminserver, hbone, tapserver
from meshcore.accessevents import TapHub
from meshcore.configclient import Applied, ConfigClient, NodeCredential
from meshcore.otlplogs import OtlpLogs
from ztunnel import configview
from ztunnel.connections import ConnectionTable
from ztunnel.handover import READY_TIMEOUT_S, Draining
from ztunnel.handoverio import HandoverServer, Takeover
from ztunnel.identity import IdentityManager
from ztunnel.inbound import HANDSHAKE_TIMEOUT, Inbound, transparent_listener
from ztunnel.listeners import BACKLOG, HboneListener, listening_socket
from ztunnel.outbound import Outbound
from ztunnel.pool import Pool
from ztunnel.state import MeshView
from ztunnel.version import VERSION

log = structlog.get_logger("ztunnel")

# The listening sockets a successor takes over (ztunnel.handover), by name.
LISTENERS = frozenset({"outbound", "hbone", "plaintext"})
DRAIN_TIMEOUT_S = 600.0  # Istio's default termination grace for ztunnel is 30 s; ours drains
# After the GOAWAY, a peer may still open a stream it sent before reading it: an inbound HBONE
# connection is closed only once it carried no stream for this long.
GOAWAY_GRACE_S = 5.0
DRAIN_POLL_S = 0.5


@dataclass(frozen=True)
class ZtunnelConfig:
    node: str
    controller: str
    credential: Path
    trust_domain: str = "cluster.local"
    # The data listeners take every address: pods reach 15001 at their gateway, other nodes
    # reach 15008 at this node's address, and 15006 is reached by steering.
    data_host: str = "0.0.0.0"
    outbound_port: int = 15001
    inbound_port: int = hbone.HBONE_PORT
    plaintext_port: int = 15006
    # host:port ("" is off), see meshcore.adminserver.parse_addr.
    admin_addr: str = "127.0.0.1:15000"  # /config_dump, with readiness and metrics
    metrics_addr: str = "0.0.0.0:15020"  # /metrics (/stats/prometheus) only
    readiness_addr: str = "0.0.0.0:15021"  # /healthz/ready only
    admin_socket: Path | None = None  # the admin routes, for weftctl and the lab
    # OTLP/gRPC collector for the access log (`host:port` or an http(s):// URL); "" is none
    otlp_logs_endpoint: str = ""
    # where a successor takes the listeners from (node-local, root only); None: no handover
    handover_socket: Path | None = None
    drain_timeout: float = DRAIN_TIMEOUT_S  # a replaced ztunnel relays on at most this long


class Ztunnel:
    def __init__(self, config: ZtunnelConfig) -> None:
        self.config = config
        self.view = MeshView(config.node)
        self.client = ConfigClient(
            config.node,
            config.controller,
            NodeCredential.load(config.credential),
            on_change=self._on_change,
            component="ztunnel",
        )
        self.identities = IdentityManager(self.client.certificate)
        self.pool = Pool(self.identities, config.inbound_port)
        # access events: /tap subscribers and the OTLP log exporter
        self.tap = TapHub("ztunnel", config.node)
        self.otlp_logs = (
            OtlpLogs.otlp(
                config.otlp_logs_endpoint, "ztunnel", "ztunnel", **{"k8s.node.name": config.node}
            )
            if config.otlp_logs_endpoint
            else None
        )
        if self.otlp_logs is not None:
            self.tap.add_sink(self.otlp_logs)
        self.connections = ConnectionTable()
        self.outbound = Outbound(
            config.node, self.view, self.pool, self.client.synced, self.tap, self.connections
        )
        self.inbound = Inbound(
            config.node,
            config.trust_domain,
            self.view,
            self.identities,
            self.tap,
            self.connections,
        )
        self._servers: list[asyncio.AbstractServer] = []
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self._listeners: dict[str, socket.socket] = {}
        self._hbone: HboneListener | None = None
        self._handover: HandoverServer | None = None
        self.started_at = time.time()
        self.predecessor: dict[str, object] | None = None  # the ztunnel this one replaced
        self.draining_since: float | None = None  # (loop time) a successor took over
        self.drained = asyncio.Event()  # draining is over: the process may exit

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_change(self, _applied: Applied) -> None:
        self.view.update(self.client.state)
        if self.view.bundle is not None:
            self.identities.set_roots("".join(self.view.bundle.roots_pem).encode())
        local = {w.identity for w in self.view.local_workloads()}
        self.identities.forget(local)
        for identity in local:  # fetch before each workload's first connection
            self._spawn(self._prefetch(identity))

    async def _prefetch(self, identity: str) -> None:
        try:
            await self.identities.get(identity)
        except Exception as err:  # logged; the next change or connection retries
            log.warning("cert.fetch_failed", identity=identity, error=str(err))

    async def start(self, takeover: Takeover | None = None) -> None:
        """Bind and serve; or, taking over from a running ztunnel, serve on its listening
        sockets once ready (config synced, certificates fetched), then tell it to drain."""
        c = self.config
        self._spawn(self.client.run())
        self._spawn(self.pool.reap())
        self._spawn(self.inbound.reap())
        if takeover is None:
            await self._serve(self._bind())
            await self._start_http()
            self._spawn(self._become_ready())
        else:
            try:  # the old one serves meanwhile; it gives up on us after READY_TIMEOUT_S
                async with asyncio.timeout(READY_TIMEOUT_S - 10):
                    await self._become_ready()
                await self._serve(takeover.listeners)
            except BaseException as err:
                takeover.abandon(f"the successor failed to start: {err!r}")
                raise
            # it stops accepting, lets go of HTTP, drains for at most our --drain-timeout
            self.predecessor = await takeover.hand_over(c.drain_timeout)
            await self._start_http()
            log.info("handover.completed", **self.predecessor)
        if c.handover_socket is not None:
            self._handover = HandoverServer(
                c.handover_socket, c.node, VERSION, lambda: dict(self._listeners), self._drain
            )
            await self._handover.start()
        log.info("ztunnel.started", node=c.node, controller=c.controller, version=VERSION)

    def _bind(self) -> dict[str, socket.socket]:
        c = self.config
        socks: dict[str, socket.socket] = {}
        try:
            socks["outbound"] = listening_socket(c.data_host, c.outbound_port)
            socks["hbone"] = listening_socket(c.data_host, c.inbound_port)
            socks["plaintext"] = transparent_listener(c.data_host, c.plaintext_port)
        except BaseException:
            for sock in socks.values():
                sock.close()
            raise
        return socks

    async def _serve(self, socks: dict[str, socket.socket]) -> None:
        """Serve on the listening sockets (bound here, or taken from a predecessor: from one
        with workers, every socket of each SO_REUSEPORT group, `outbound/0`, `outbound/1`...,
        so none is left with connections nobody accepts)."""
        loop = asyncio.get_running_loop()
        self._listeners = dict(socks)
        for name, sock in sorted(socks.items()):
            kind = name.partition("/")[0]
            if kind == "outbound":
                server: asyncio.AbstractServer = await loop.create_server(
                    self.outbound.protocol, sock=sock, backlog=BACKLOG
                )
            elif kind == "hbone":  # handshakes bounded per source and in total
                server = self._hbone = HboneListener(
                    self.inbound.hbone_protocol,
                    sock,
                    self.inbound.server_context(),
                    handshake_timeout=HANDSHAKE_TIMEOUT,
                )
                await self._hbone.start_serving()
            else:
                server = await loop.create_server(
                    self.inbound.plaintext_protocol, sock=sock, backlog=BACKLOG
                )
            self._servers.append(server)

    # --- being replaced --------------------------------------------------------------------

    async def _drain(self, timeout: float) -> Draining:
        """A successor serves on our listening sockets: accept no more (what waits in the
        accept queues is the successor's), GOAWAY to the other nodes' pools, let go of the
        HTTP listeners, and relay what is open until it ends or the drain timeout."""
        loop = asyncio.get_running_loop()
        self.draining_since = loop.time()
        for server in self._servers:
            if isinstance(server, HboneListener):
                server.stop_accepting()
            else:
                server.close()
        self._servers = []
        self.inbound.drain()
        self.ready.clear()
        self.tap.close()  # open /tap streams end (the successor serves /tap now)
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        open_now = len(self.connections)
        log.info(
            "drain.started",
            connections=open_now,
            hbone_connections=len(self.inbound.stats()),
            timeout_s=timeout,
        )
        self._spawn(self._drain_until_done(timeout))
        return Draining(timeout, open_now)

    async def _drain_until_done(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        assert self.draining_since is not None
        deadline = self.draining_since + timeout
        while loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
            hbone_open = self.inbound.close_emptied(self.draining_since, GOAWAY_GRACE_S)
            settled = loop.time() - self.draining_since > GOAWAY_GRACE_S
            if settled and not hbone_open and not len(self.connections):
                log.info("drain.done", seconds=round(loop.time() - self.draining_since, 1))
                break
        else:
            log.warning(
                "drain.timeout",
                timeout_s=timeout,
                connections_cut=len(self.connections),
            )
        self.drained.set()

    async def _become_ready(self) -> None:
        await self.client.synced.wait()
        for w in self.view.local_workloads():
            await self._prefetch(w.identity)
        self.ready.set()
        log.info(
            "ztunnel.ready",
            node=self.config.node,
            version=self.client.version,
            certificates=len(self.identities.known()),
        )

    async def stop(self) -> None:
        if self._handover is not None:
            self._handover.close()
        for server in self._servers:
            server.close()
        await self.pool.close()
        for task in list(self._tasks):
            task.cancel()
        self.tap.close()  # open /tap streams end, so the admin listener can stop
        for runner in self._runners:
            await runner.cleanup()
        await self.client.close()
        if self.otlp_logs is not None:  # the queued records go out (bounded by its timeout)
            await asyncio.to_thread(self.otlp_logs.shutdown)

    # --- admin, metrics, readiness ------------------------------------------------------

    async def _start_http(self) -> None:
        c = self.config
        self._runners += await adminserver.serve_proxy(
            self._config_dump,
            self.ready,
            admin_addr=c.admin_addr,
            admin_socket=c.admin_socket,
            metrics_addr=c.metrics_addr,
            readiness_addr=c.readiness_addr,
            admin_routes=(
                tapserver.tap_route(self.tap),
                web.get("/connections", self._connections),
            ),
        )

    async def _connections(self, _request: web.Request) -> web.Response:
        """The connections being relayed now (`weftctl ztunnel-config connections`)."""
        return web.json_response({"node": self.config.node, **self.connections.describe()})

    async def _config_dump(self, _request: web.Request) -> web.Response:
        body = mesh_dump(
            self.config,
            self.client,
            self.view,
            self.identities,
            self.tap,
            process_info(self.started_at, self.predecessor),
        )
        body["pool"] = self.pool.stats()
        body["inbound"] = self.inbound.stats()
        return web.json_response(body)


def process_info(started_at: float, predecessor: dict[str, object] | None) -> dict[str, object]:
    """Which code serves, and the ztunnel it took over from (restart, upgrade)."""
    return {
        "pid": os.getpid(),
        "version": VERSION,
        "started_at": dt.datetime.fromtimestamp(started_at, dt.UTC).isoformat(),
        "predecessor": predecessor,
    }


def mesh_dump(
    config: ZtunnelConfig,
    client: ConfigClient,
    view: MeshView,
    identities: IdentityManager,
    tap: TapHub,
    process: dict[str, object],
) -> dict[str, Any]:
    """/config_dump without the data path's own state (pool, inbound): what the process
    holding the controller stream knows (the single process, or the workers' parent)."""
    now = dt.datetime.now(dt.UTC)
    return {
        "node": config.node,
        "controller": {"connected": client.connected, "version": client.version},
        "process": process,
        "workloads": [
            {
                "name": w.name,
                "namespace": w.namespace,
                "addresses": list(w.addresses),
                "node": w.node,
                "identity": w.identity,
                "enrolled": w.enrolled,
                "local": w.node == config.node,
            }
            for w in sorted(
                {w.key: w for w in view.by_ip.values()}.values(),
                key=lambda w: (w.namespace, w.name),
            )
        ],
        # name, namespace, addresses; with hostname, ports, endpoints, waypoint
        "services": configview.services(view),
        "policies": [f"{p.metadata.namespace}/{p.metadata.name}" for p in view.policies],
        "peer_authentications": [
            f"{p.metadata.namespace}/{p.metadata.name}" for p in view.peer_authentications
        ],
        # both kinds, with scope, action and rules (`weftctl ztunnel-config policies`)
        "policy_details": configview.policies(view),
        "tap": {"subscribers": tap.subscribers},
        "otlp_logs": {"endpoint": config.otlp_logs_endpoint or None},
        "certificates": [
            {
                "identity": ident,
                "not_after": cert.not_after.isoformat(),
                "expires_in_s": int((cert.not_after - now).total_seconds()),
            }
            for ident, cert in sorted(identities.known().items())
        ],
    }
