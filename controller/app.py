"""The controller process: source -> store -> mesh state -> versioned log -> gRPC to nodes.

Also serves readiness (15021, `/ready` only), Prometheus metrics (15014, `/metrics` only) and
an admin API (JSON over a unix socket and localhost:15000) that `weftctl controller ...` reads.
The admin API shows the whole mesh state: it is never on an address a pod can reach.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web
from prometheus_client import Gauge

from controller.bootstrap import BootstrapService, TokenReviewer
from controller.ca import CertificateAuthority
from controller.deployer import (
    Deployer,
    DeployerConfig,
    DeployerLoop,
    KubernetesWaypoints,
    LabObjectWriter,
    ObjectWriter,
    WriteError,
)
from controller.distribution import StateLog
from controller.kubewriter import KubernetesObjectWriter
from controller.meshbuilder import MeshBuilder
from controller.nodeauth import NodeTokenPolicy, PodFacts
from controller.revocation import REVOKED_NODES_FILE, RevokedNodes
from controller.server import ControllerService
from controller.sources import Source
from controller.store import Problem, ResourceStore
from meshcore import adminserver
from meshcore.api import limits
from meshcore.meshstate import TrustBundle, Waypoint, Workload
from meshcore.resources import ResourceKey
from meshcore.resources.core import Pod

log = structlog.get_logger("controller")

CONFIG_ERRORS = Gauge("weft_controller_config_errors", "Resources currently refused as invalid.")
STATE_VERSION = Gauge("weft_controller_state_version", "Version of the mesh state.")
STATE_RESOURCES = Gauge("weft_controller_state_resources", "Resources in the mesh state.")

CONTROLLER_DNS_NAME = "weft-controller"


@dataclass(frozen=True)
class ControllerConfig:
    trust_domain: str = "cluster.local"
    state_dir: Path = Path("/var/lib/weft/controller")
    plugin_ca_dir: Path | None = None
    grpc_listen: str = "0.0.0.0:15012"
    # host:port ("" is off), see meshcore.adminserver.parse_addr.
    admin_addr: str = "127.0.0.1:15000"  # /debug/*, with readiness and metrics
    metrics_addr: str = "0.0.0.0:15014"  # /metrics only
    readiness_addr: str = "0.0.0.0:15021"  # /ready only
    admin_socket: Path | None = None  # the admin routes, for weftctl and the lab
    serving_addresses: tuple[str, ...] = field(default_factory=tuple)
    extra_roots: tuple[Path, ...] = field(default_factory=tuple)
    # Where the waypoint deployer writes the objects it makes (the lab's API socket); None:
    # no deployer (waypoint Gateways are still turned into mesh state).
    lab_api: Path | None = None
    # OTLP/gRPC collector the waypoints it deploys send spans to ("" : none), see
    # controller.deployer
    waypoint_otlp_endpoint: str = ""
    # Redis for the Global RateLimitPolicy counters of the waypoints it deploys ("": none)
    waypoint_redis_addr: str = ""
    # Kubernetes: where nodes trade their ServiceAccount token for a node credential
    # (controller.bootstrap; "" : off, as in the lab, whose nodes are given credentials)
    bootstrap_listen: str = ""
    # Kubernetes: the image waypoint pods run (the one weft image)
    waypoint_image: str = "ghcr.io/weft-mesh/weft:0.1.0"
    node_token_policy: NodeTokenPolicy = field(default_factory=NodeTokenPolicy)


def plugin_ca_given(folder: Path | None) -> bool:
    """Whether to run on a plugged-in CA: a folder that holds files. An empty one (the
    optional Secret `weft-ca` not created, as Istio's cacerts) means the controller's own
    self-signed root, as in Istio; a folder with some files but not all is an error later."""
    if folder is None:
        return False
    if folder.is_dir() and not any(p.name[0] != "." for p in folder.iterdir()):
        log.warning("ca.plugin_folder_empty", folder=str(folder), using="self-signed root")
        return False
    return True


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        source: Source,
        reviewer: TokenReviewer | None = None,
        cluster: KubernetesObjectWriter | None = None,
    ) -> None:
        """`reviewer`: the API server's TokenReview, for nodes bootstrapping with a token
        (with `config.bootstrap_listen`); `cluster`: where to write back on Kubernetes
        (waypoint objects, status, problems as Events, the CA root ConfigMap)."""
        self.config = config
        self.source = source
        self.reviewer = reviewer
        self.cluster = cluster
        plugin = config.plugin_ca_dir if plugin_ca_given(config.plugin_ca_dir) else None
        self.ca = (
            CertificateAuthority.from_plugin(plugin, config.trust_domain)
            if plugin is not None
            else CertificateAuthority.load_or_create(config.state_dir / "ca", config.trust_domain)
        )
        for root in config.extra_roots:
            self.ca.add_root(root.read_bytes())
        self.store = ResourceStore()
        self.builder = MeshBuilder(config.trust_domain)
        self.state = StateLog()
        self.service = ControllerService(
            self.state,
            self.ca,
            self.workloads,
            RevokedNodes(config.state_dir / REVOKED_NODES_FILE),
            self.waypoints,
        )
        self.synced = asyncio.Event()
        self.grpc_port = 0
        self._runners: list[web.AppRunner] = []
        self._server: grpc.aio.Server | None = None
        self._bootstrap_server: grpc.aio.Server | None = None
        self.bootstrap_port = 0
        self.deployer: DeployerLoop | None = None
        self._deployer_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._problems_told = asyncio.Event()  # set: the cluster has been told of problems
        self._problems_told.set()

    def workloads(self) -> list[Workload]:
        return [v for v in self.state.values.values() if isinstance(v, Workload)]

    def waypoints(self) -> list[Waypoint]:
        return [v for v in self.state.values.values() if isinstance(v, Waypoint)]

    def problems(self) -> list[Problem]:
        """Resources refused by the store (invalid manifests) or by the mesh builder (valid,
        but they cannot become mesh state or be enforced), each named with its source."""
        built = [
            dataclasses.replace(p, source=self.store.source_of(key))
            for key, p in self.builder.problems().items()
        ]
        return self.store.problems() + built

    def bundle(self) -> TrustBundle:
        return TrustBundle(self.config.trust_domain, tuple(self.ca.trust_bundle))

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        await self._start_grpc()
        await self._start_http()
        writer: ObjectWriter | None = (
            LabObjectWriter(self.config.lab_api) if self.config.lab_api is not None else None
        ) or self.cluster
        if self.cluster is not None:
            self._spawn(self._publish_roots())
        if writer is not None:
            deployer = Deployer(
                DeployerConfig(
                    self.config.trust_domain,
                    self._grpc_address(),
                    otlp_endpoint=self.config.waypoint_otlp_endpoint,
                    redis_addr=self.config.waypoint_redis_addr,
                    kubernetes=self._kubernetes_waypoints(),
                ),
            )
            self.deployer = DeployerLoop(deployer, writer)
            self._deployer_task = asyncio.create_task(self.deployer.run())
        log.info(
            "controller.started",
            grpc_port=self.grpc_port,
            bootstrap_port=self.bootstrap_port or None,
            epoch=self.state.epoch,
            trust_domain=self.config.trust_domain,
        )

    async def run(self) -> None:
        """Follow the source forever."""
        async for batch in self.source.batches():
            started = time.monotonic()
            for change in batch:
                if change.removed:
                    self.store.remove_source(change.source)
                else:
                    assert change.documents is not None
                    self.store.set_source(change.source, change.documents)
            self.recompute()
            self.synced.set()
            self.service.synced.set()
            log.debug(
                "source.batch", changes=len(batch), seconds=round(time.monotonic() - started, 4)
            )

    def _reachable_host(self) -> str:
        """How a pod names this controller: its first serving IP (the lab), else its first
        qualified DNS name (Kubernetes: weft-controller.weft-system.svc), else the bare one."""
        addresses = self.config.serving_addresses
        for address in addresses:
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                continue
        return next((a for a in addresses if "." in a), CONTROLLER_DNS_NAME)

    def _grpc_address(self) -> str:
        """host:port where a pod reaches this controller's gRPC (for waypoints)."""
        return f"{self._reachable_host()}:{self.grpc_port}"

    def _kubernetes_waypoints(self) -> KubernetesWaypoints | None:
        """How waypoint pods are fitted for Kubernetes; None where the lab runs them (it
        hands them their credentials itself)."""
        if self.cluster is None or self.config.lab_api is not None:
            return None
        port = self.config.bootstrap_listen.rpartition(":")[2] or "15013"
        return KubernetesWaypoints(
            self.config.waypoint_image,
            f"{self._reachable_host()}:{port}",
            "".join(self.ca.trust_bundle),
        )

    def recompute(self) -> None:
        resources = self.store.resources()
        state = self.builder.build(resources, self.bundle())
        if self.deployer is not None:
            self.deployer.notify(resources, state)
        delta = self.state.update(state)
        CONFIG_ERRORS.set(len(self.problems()))
        if delta is not None:
            STATE_VERSION.set(delta.version)
            STATE_RESOURCES.set(len(state))
            log.info(
                "state.changed",
                version=delta.version,
                upserts=len(delta.upserts),
                removals=len(delta.removals),
            )
            self.service.notify()
        if self.cluster is not None and self._problems_told.is_set():
            self._problems_told.clear()
            self._spawn(self._tell_problems())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_roots(self) -> None:
        """The CA root ConfigMap node pods mount, retried until the API server takes it."""
        assert self.cluster is not None
        delay = 0.5
        while True:
            try:
                await self.cluster.publish_roots(self.ca.trust_bundle)
                log.info("roots.published")
                return
            except WriteError as err:
                log.warning("roots.publish_failed", error=str(err), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _tell_problems(self) -> None:
        """Problems as Events, at most once a second however often the state changes."""
        assert self.cluster is not None
        try:
            await self.cluster.tell_problems(self.problems())
            await asyncio.sleep(1.0)
        finally:
            self._problems_told.set()

    async def stop(self) -> None:
        if self._deployer_task is not None:
            self._deployer_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for server in (self._server, self._bootstrap_server):
            if server is not None:
                await server.stop(grace=0.5)
        for runner in self._runners:
            await runner.cleanup()

    async def _start_grpc(self) -> None:
        host, _, port = self.config.grpc_listen.rpartition(":")
        dns, ips = [CONTROLLER_DNS_NAME], []
        for address in self.config.serving_addresses:
            try:
                ips.append(str(ipaddress.ip_address(address)))
            except ValueError:
                dns.append(address)
        # The certificate PEM is the leaf followed by its chain, as TLS wants it.
        key_pem, cert_chain_pem = self.ca.issue_serving_certificate(dns, ips)
        credentials = grpc.ssl_server_credentials(
            [(key_pem, cert_chain_pem)],
            root_certificates="".join(self.ca.trust_bundle).encode(),
            require_client_auth=True,
        )
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", limits.STATE_MESSAGE_MAX),
                ("grpc.max_receive_message_length", limits.NODE_MESSAGE_MAX),
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ]
        )
        self._server.add_generic_rpc_handlers((self.service.handlers(),))
        self.grpc_port = self._server.add_secure_port(f"{host or '0.0.0.0'}:{port}", credentials)
        await self._server.start()
        if self.config.bootstrap_listen and self.reviewer is not None:
            await self._start_bootstrap(key_pem, cert_chain_pem)

    async def _start_bootstrap(self, key_pem: bytes, cert_chain_pem: bytes) -> None:
        """The token-for-credential listener: TLS authenticating the controller only."""
        assert self.reviewer is not None
        service = BootstrapService(
            self.ca,
            self.reviewer,
            self.pod_facts,
            self.config.node_token_policy,
            self.service.synced,
            self.service.revoked,
            self.service.waypoint_identities,
        )
        self._bootstrap_server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 64 << 10)]
        )
        self._bootstrap_server.add_generic_rpc_handlers((service.handlers(),))
        host, _, port = self.config.bootstrap_listen.rpartition(":")
        self.bootstrap_port = self._bootstrap_server.add_secure_port(
            f"{host or '0.0.0.0'}:{port}",
            grpc.ssl_server_credentials([(key_pem, cert_chain_pem)]),
        )
        await self._bootstrap_server.start()

    def pod_facts(self, namespace: str, name: str) -> PodFacts | None:
        """What the source says of a pod (for node bootstrap), None when it has no such pod."""
        pod = self.store.resources().get(ResourceKey("Pod", namespace, name))
        if not isinstance(pod, Pod):
            return None
        return PodFacts(pod.metadata.uid, pod.spec.service_account_name, pod.spec.node_name)

    # --- HTTP: readiness, metrics, admin ------------------------------------------------------

    async def _start_http(self) -> None:
        c = self.config
        ready = web.get("/ready", self._ready)
        metrics = web.get("/metrics", adminserver.metrics)
        admin = (
            web.get("/debug/nodes", self._nodes),
            web.get("/debug/problems", self._problems),
            web.get("/debug/state", self._state),
            ready,
            metrics,
        )
        self._runners += await adminserver.serve(
            [
                adminserver.Listener("admin", admin, c.admin_addr, c.admin_socket),
                adminserver.Listener("metrics", (metrics,), c.metrics_addr),
                adminserver.Listener("readiness", (ready,), c.readiness_addr),
            ]
        )

    async def _ready(self, _request: web.Request) -> web.Response:
        if self.synced.is_set() and self._server is not None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not synced with the source yet\n")

    async def _nodes(self, _request: web.Request) -> web.Response:
        connected = [s.as_dict() | {"connected": True} for s in self.service.sessions]
        live = {(s.node, s.component) for s in self.service.sessions}
        gone = [
            s.as_dict() | {"connected": False}
            for key, s in sorted(self.service.disconnected.items())
            if key not in live
        ]
        return web.json_response(
            {"epoch": self.state.epoch, "version": self.state.version, "nodes": connected + gone}
        )

    async def _problems(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "problems": [
                    {
                        "source": p.source,
                        "resource": p.resource,
                        "field": p.field,
                        "reason": p.reason,
                        "message": p.message,
                        "keeps_last_good": p.keeps_last_good,
                        "since": p.since,
                    }
                    for p in self.problems()
                ]
            }
        )

    async def _state(self, request: web.Request) -> web.Response:
        """The state as sent to a node (every node gets the same mesh state), as JSON."""
        from google.protobuf.json_format import MessageToDict

        from meshcore.api.convert import to_proto

        node = request.query.get("node", "")
        session = next((s for s in self.service.sessions if s.node == node), None)
        body: dict[str, Any] = {
            "epoch": self.state.epoch,
            "version": self.state.version,
            "node": node,
            "acked_version": session.acked_version if session else None,
            "resources": [
                MessageToDict(to_proto(v), preserving_proto_field_name=True)
                for _, v in sorted(self.state.values.items())
            ],
        }
        return web.json_response(body)
