"""The waypoint process: mesh state from the controller, its own certificate, the listeners.

Ports (Istio's): 15008 HBONE (the proxy), 15020 metrics (`/metrics`, `/stats/prometheus`,
nothing else), 15021 readiness (`/healthz/ready`: synced with the controller and its own
certificate fetched; nothing else), 15000 admin on localhost only (`/config_dump`).

It authenticates to the controller with the credential its pod was given
(`WEFT_CREDENTIAL`: key.pem, cert.pem, roots.pem for its service account's identity, as a
projected ServiceAccount token), which the controller accepts while that identity is its
Waypoint's (controller/authz.py). Its SVID is fetched and renewed over the same channel.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from meshcore import adminserver, hbone, tapserver
from meshcore.configclient import Applied, ConfigClient, NodeCredential
from meshcore.identity.certs import CertificateError
from meshcore.otlplogs import OtlpLogs
from waypoint import telemetry
from waypoint.pathnorm import DEFAULT as DEFAULT_PATH_NORMALIZATION
from waypoint.pathnorm import PathNormalization
from waypoint.proxy import Waypoint, WaypointConfig
from waypoint.ratelimit_store import RedisStore
from waypoint.state import WaypointView
from waypoint.tracing import Tracing
from ztunnel.identity import IdentityManager
from ztunnel.inbound import HANDSHAKE_TIMEOUT
from ztunnel.listeners import serve_hbone
from ztunnel.pool import Pool

log = structlog.get_logger("waypoint")

CERT_CHECK = 60.0  # seconds between looks at our own certificate (renewed at half life)
CERT_RETRY = (0.2, 5.0)  # backoff between failed first fetches


@dataclass(frozen=True)
class WaypointProcessConfig:
    namespace: str  # the Gateway's
    name: str
    controller: str
    credential: Path
    trust_domain: str = "cluster.local"
    # 15008 takes every address: ztunnels of every node reach it at the pod's address.
    hbone_addr: str = f"0.0.0.0:{hbone.HBONE_PORT}"
    # Endpoints' ztunnels are dialled on this port.
    ztunnel_port: int = hbone.HBONE_PORT
    # host:port ("" is off), see meshcore.adminserver.parse_addr.
    admin_addr: str = "127.0.0.1:15000"  # /config_dump, with readiness and metrics
    metrics_addr: str = "0.0.0.0:15020"  # /metrics (/stats/prometheus) only
    readiness_addr: str = "0.0.0.0:15021"  # /healthz/ready only
    admin_socket: Path | None = None
    # OTLP/gRPC collector for spans (`host:port` or an http(s):// URL); "" is no tracing
    otlp_endpoint: str = ""
    # OTLP/gRPC collector for the access log (`host:port` or an http(s):// URL); "" is none
    otlp_logs_endpoint: str = ""
    node: str = ""  # the node this replica runs on, for its access events ("" unknown)
    # Redis for Global RateLimitPolicy counters (`host:port` or `unix:/path`); "" is none
    redis_addr: str = ""
    # How request paths are normalised before AuthorizationPolicy matching (Istio's options)
    path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION

    @property
    def proxy(self) -> WaypointConfig:
        return WaypointConfig(
            self.namespace,
            self.name,
            self.trust_domain,
            path_normalization=self.path_normalization,
        )


class WaypointProcess:
    def __init__(self, config: WaypointProcessConfig) -> None:
        self.config = config
        self.identity = config.proxy.identity
        self.view = WaypointView(config.proxy.gateway)
        credential = NodeCredential.load(config.credential)
        if str(credential.identity) != self.identity:
            raise CertificateError(
                f"the credential is for {credential.identity}, not this waypoint's "
                f"identity {self.identity}",
                source=str(config.credential),
            )
        # The config stream names its caller by the identity the credential proves.
        self.client = ConfigClient(
            self.identity,
            config.controller,
            credential,
            on_change=self._on_change,
            component="waypoint",
        )
        self.identities = IdentityManager(self.client.certificate)
        self.pool = Pool(self.identities, config.ztunnel_port)
        self.tracing = (
            Tracing.otlp(config.otlp_endpoint, config.name, config.namespace)
            if config.otlp_endpoint
            else None
        )
        self.ratelimit_store = RedisStore(config.redis_addr) if config.redis_addr else None
        telemetry.TAP.node = config.node
        # the access log as OTLP log records: a sink of this process's access events
        self.otlp_logs = (
            OtlpLogs.otlp(
                config.otlp_logs_endpoint,
                f"{config.name}.{config.namespace}",
                "waypoint",
                **{"k8s.namespace.name": config.namespace},
            )
            if config.otlp_logs_endpoint
            else None
        )
        if self.otlp_logs is not None:
            telemetry.TAP.add_sink(self.otlp_logs)
        self.proxy = Waypoint(
            config.proxy,
            self.view,
            self.identities,
            self.pool,
            tracing=self.tracing,
            ratelimit_store=self.ratelimit_store,
        )
        self._servers: list[asyncio.AbstractServer] = []
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.failed = asyncio.Event()  # it cannot serve: the process should exit

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_change(self, _applied: Applied) -> None:
        self.view.update(self.client.state)
        if self.view.mesh.bundle is not None:
            self.identities.set_roots("".join(self.view.mesh.bundle.roots_pem).encode())

    async def start(self) -> None:
        c = self.config
        hbone_addr = adminserver.parse_addr(c.hbone_addr, "hbone_addr")
        if hbone_addr is None:
            raise ValueError("hbone_addr: the waypoint needs its HBONE listener")
        self._spawn(self.client.run())
        self._spawn(self.pool.reap())
        self._spawn(self.proxy.reap())
        await self._start_http()
        self._spawn(self._become_ready(hbone_addr))
        log.info(
            "waypoint.started",
            gateway=c.proxy.gateway,
            identity=self.identity,
            controller=c.controller,
        )

    async def _become_ready(self, hbone_addr: adminserver.Address) -> None:
        """Synced, our certificate fetched, then 15008 opened: a kubelet's TCP probe on it
        (the lab's) sees the waypoint ready only when it can serve."""
        await self.client.synced.wait()
        delay = CERT_RETRY[0]
        while True:
            try:
                await self.proxy.start()  # our own certificate, before the first handshake
                break
            except (grpc.aio.AioRpcError, CertificateError, OSError) as err:
                log.warning("cert.fetch_failed", identity=self.identity, error=str(err))
                await asyncio.sleep(delay)
                delay = min(delay * 2, CERT_RETRY[1])
        try:
            listener = await serve_hbone(  # handshakes bounded per source and in all
                self.proxy.hbone_protocol,
                hbone_addr.host,
                hbone_addr.port,
                self.proxy.server_context(),
                handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except OSError as err:
            log.error("waypoint.listen_failed", addr=str(hbone_addr), error=str(err))
            self.failed.set()  # the process exits; its supervisor restarts it
            return
        self._servers.append(listener)
        self.ready.set()
        log.info("waypoint.ready", gateway=self.config.proxy.gateway, version=self.client.version)
        while True:  # renewed at half life: `get` starts it when due
            await asyncio.sleep(CERT_CHECK)
            try:
                await self.identities.get(self.identity)
            except (grpc.aio.AioRpcError, CertificateError, OSError) as err:
                log.warning("cert.renewal_failed", identity=self.identity, error=str(err))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        await self.pool.close()
        for task in list(self._tasks):
            task.cancel()
        telemetry.TAP.close()  # open /tap streams end, so the admin listener can stop
        for runner in self._runners:
            await runner.cleanup()
        await self.client.close()
        if self.otlp_logs is not None:  # the queued records go out (bounded by its timeout)
            telemetry.TAP.remove_sink(self.otlp_logs)
            await asyncio.to_thread(self.otlp_logs.shutdown)
        if self.ratelimit_store is not None:
            await self.ratelimit_store.close()
        if self.tracing is not None:  # the queued spans go out (bounded by the export timeout)
            await asyncio.to_thread(self.tracing.shutdown)

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
            admin_routes=(tapserver.tap_route(telemetry.TAP),),
        )

    async def _config_dump(self, _request: web.Request) -> web.Response:
        now = dt.datetime.now(dt.UTC)
        bound = sorted(
            f"{s.namespace}/{s.name}"
            for s in {s.key: s for s in self.view.mesh.by_vip.values()}.values()
            if s.waypoint == self.view.gateway
        )
        body = {
            "gateway": self.view.gateway,
            "identity": self.identity,
            "controller": {"connected": self.client.connected, "version": self.client.version},
            "bound_services": bound,
            "http_routes": sorted(
                f"{r.metadata.namespace}/{r.metadata.name}" for r in self.view.http_routes
            ),
            "certificates": [
                {
                    "identity": ident,
                    "not_after": cert.not_after.isoformat(),
                    "expires_in_s": int((cert.not_after - now).total_seconds()),
                }
                for ident, cert in sorted(self.identities.known().items())
            ],
            "pool": self.pool.stats(),
            "inbound": self.proxy.stats(),
            "tracing": {"otlp_endpoint": self.config.otlp_endpoint or None},
            "access_log": {
                "otlp_logs_endpoint": self.config.otlp_logs_endpoint or None,
                "tap_subscribers": telemetry.TAP.subscribers,
            },
            # DestinationRules: the clusters with circuit breakers or outlier detection,
            # their requests in flight and ejected endpoints (`weftctl waypoint status`)
            "destination_rules": {
                "rules": sorted(
                    f"{r.metadata.namespace}/{r.metadata.name}" for r in self.view.destination_rules
                ),
                "clusters": self.proxy.traffic.describe(),
            },
            "rate_limits": {
                "redis": self.config.redis_addr or None,
                "policies": sorted(
                    f"{p.metadata.namespace}/{p.metadata.name}"
                    for p in self.view.rate_limit_policies
                ),
            },
        }
        return web.json_response(body)
