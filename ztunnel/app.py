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
from ztunnel.identity import IdentityManager
from ztunnel.inbound import HANDSHAKE_TIMEOUT, Inbound, transparent_listener
from ztunnel.listeners import serve_hbone
from ztunnel.outbound import Outbound
from ztunnel.pool import Pool
from ztunnel.state import MeshView

log = structlog.get_logger("ztunnel")


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

    async def start(self) -> None:
        c = self.config
        self._spawn(self.client.run())
        self._spawn(self.pool.reap())
        self._spawn(self.inbound.reap())
        loop = asyncio.get_running_loop()
        self._servers.append(
            await loop.create_server(
                self.outbound.protocol,
                c.data_host,
                c.outbound_port,
                reuse_address=True,
                backlog=1024,
            )
        )
        self._servers.append(  # handshakes bounded per source and in total
            await serve_hbone(
                self.inbound.hbone_protocol,
                c.data_host,
                c.inbound_port,
                self.inbound.server_context(),
                handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        )
        self._servers.append(
            await loop.create_server(
                self.inbound.plaintext_protocol,
                sock=transparent_listener(c.data_host, c.plaintext_port),
            )
        )
        await self._start_http()
        self._spawn(self._become_ready())
        log.info("ztunnel.started", node=c.node, controller=c.controller)

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
        now = dt.datetime.now(dt.UTC)
        body = {
            "node": self.config.node,
            "controller": {"connected": self.client.connected, "version": self.client.version},
            "workloads": [
                {
                    "name": w.name,
                    "namespace": w.namespace,
                    "addresses": list(w.addresses),
                    "node": w.node,
                    "identity": w.identity,
                    "enrolled": w.enrolled,
                    "local": w.node == self.config.node,
                }
                for w in sorted(
                    {w.key: w for w in self.view.by_ip.values()}.values(),
                    key=lambda w: (w.namespace, w.name),
                )
            ],
            # name, namespace, addresses; with hostname, ports, endpoints, waypoint
            "services": configview.services(self.view),
            "policies": [f"{p.metadata.namespace}/{p.metadata.name}" for p in self.view.policies],
            "peer_authentications": [
                f"{p.metadata.namespace}/{p.metadata.name}" for p in self.view.peer_authentications
            ],
            # both kinds, with scope, action and rules (`weftctl ztunnel-config policies`)
            "policy_details": configview.policies(self.view),
            "tap": {"subscribers": self.tap.subscribers},
            "otlp_logs": {"endpoint": self.config.otlp_logs_endpoint or None},
            "certificates": [
                {
                    "identity": ident,
                    "not_after": cert.not_after.isoformat(),
                    "expires_in_s": int((cert.not_after - now).total_seconds()),
                }
                for ident, cert in sorted(self.identities.known().items())
            ],
            "pool": self.pool.stats(),
            "inbound": self.inbound.stats(),
        }
        return web.json_response(body)
