"""The waypoint deployer: a Gateway of class weft-waypoint becomes a running waypoint.

As Istio's gateway deployer does, the controller makes, for Gateway `<ns>/<gw>`:

- a ServiceAccount `<gw>` (the waypoint's identity: `spiffe://<td>/ns/<ns>/sa/<gw>`),
- a Deployment `<gw>` (replicas from the annotation `weft.dev/replicas`, default 1) whose pods
  run the image `weft/waypoint` with args `--gateway <ns>/<gw>` (and, when the controller is
  given one, the OTLP collector for their spans in `WEFT_OTLP_ENDPOINT`), labelled
  `gateway.networking.k8s.io/gateway-name: <gw>` and kept out of capture
  (`weft.dev/dataplane-mode: none`: a waypoint terminates HBONE itself),
- a Service `<gw>` (port 15008 `mesh`, selecting that label),

each owned by the Gateway (an ownerReference), so deleting the Gateway deletes them. It then
keeps the Gateway's status: `Accepted`, `Programmed` (True once a replica is ready) and
`status.addresses` (the Service's ClusterIP).

The same loop writes the routes' status (`controller.routestatus`: Accepted, ResolvedRefs
per Service parent), computed from the mesh state the controller built.

The decisions are pure (`waypoint_objects`, `gateway_status`, `Deployer.plan`); the objects
and statuses are written by an `ObjectWriter`: the lab's API today (`LabObjectWriter`), the
Kubernetes API (server-side apply, the status subresource) with a `KubernetesSource` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog

from controller.conditions import condition as _condition
from controller.errors import BuildError
from controller.routestatus import route_statuses
from meshcore.meshstate import (
    DATAPLANE_MODE_LABEL,
    DATAPLANE_MODE_NONE,
    GATEWAY_NAME_LABEL,
    MANAGED_BY_MESH_CONTROLLER,
    MANAGED_LABEL,
    StateValue,
)
from meshcore.resources import Pod, Resource, ResourceKey, Service
from meshcore.resources.gateway import GROUP, Gateway, ListenerProtocol

log = structlog.get_logger("controller.deployer")

WAYPOINT_IMAGE = "weft/waypoint"
REPLICAS_ANNOTATION = "weft.dev/replicas"
MESH_PORT = 15008
MAX_REPLICAS = 100
RETRY_SECONDS = 5.0  # an object still missing this long after it was applied is applied again


@dataclass(frozen=True)
class KubernetesWaypoints:
    """What a waypoint pod needs on Kubernetes, where no lab hands it a credential: the weft
    image, its projected token (audience weft) to trade for one at the controller's bootstrap
    listener, and the CA root to trust the controller by (ConfigMap weft-ca-root-cert, put
    in the waypoint's namespace, as Istio puts istio-ca-root-cert in every namespace)."""

    image: str
    bootstrap_address: str  # host:port of the controller's bootstrap listener
    roots_pem: str


ROOT_CONFIGMAP = "weft-ca-root-cert"
TOKEN_DIR, ROOTS_DIR, CREDENTIAL_DIR = (
    "/var/run/secrets/weft",
    "/var/run/weft/ca",
    "/var/run/weft/credential",
)


@dataclass(frozen=True)
class DeployerConfig:
    trust_domain: str = "cluster.local"
    controller_address: str = ""  # host:port of the controller's gRPC, for the waypoint
    image: str = WAYPOINT_IMAGE
    # OTLP/gRPC collector for the waypoints' spans, their WEFT_OTLP_ENDPOINT; "": no tracing
    otlp_endpoint: str = ""
    # Redis for Global RateLimitPolicy counters, the waypoints' WEFT_REDIS_ADDR; "": none
    redis_addr: str = ""
    kubernetes: KubernetesWaypoints | None = None  # None: the lab


# --- pure: what a Gateway asks for ---------------------------------------------------------------


def check_waypoint_gateway(gw: Gateway) -> None:
    """A waypoint has one listener, HBONE on 15008 (Istio's istio-waypoint class);
    BuildError naming the listeners otherwise."""
    listeners = gw.listeners
    if (
        len(listeners) != 1
        or listeners[0].protocol is not ListenerProtocol.HBONE
        or listeners[0].port != MESH_PORT
    ):
        raise BuildError(
            f"a waypoint Gateway has exactly one listener, {{name: mesh, port: {MESH_PORT}, "
            f"protocol: HBONE}}; got "
            + ", ".join(f"{li.name} {li.port}/{li.protocol.value}" for li in listeners),
            field="spec.listeners",
        )


def waypoint_replicas(gw: Gateway) -> int:
    """From the annotation `weft.dev/replicas` (default 1); BuildError when it is not a
    number from 0 to 100."""
    text = gw.metadata.annotations.get(REPLICAS_ANNOTATION)
    if text is None:
        return 1
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_REPLICAS:
        raise BuildError(
            f"must be a number of replicas from 0 to {MAX_REPLICAS}, got {text!r}",
            field=f"metadata.annotations[{REPLICAS_ANNOTATION}]",
        )
    return int(text)


def _owner(gw: Gateway) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "name": gw.metadata.name,
        "controller": True,
    }
    if gw.metadata.uid:
        ref["uid"] = gw.metadata.uid
    return ref


def waypoint_objects(gw: Gateway, config: DeployerConfig, replicas: int) -> list[dict[str, Any]]:
    """The ServiceAccount, Service and Deployment of waypoint `gw`, as manifests."""
    ns, name = gw.metadata.namespace, gw.metadata.name
    labels = {GATEWAY_NAME_LABEL: name, MANAGED_LABEL: MANAGED_BY_MESH_CONTROLLER}

    def meta() -> dict[str, Any]:
        return {
            "name": name,
            "namespace": ns,
            "labels": dict(labels),
            "ownerReferences": [_owner(gw)],
        }

    def field_env(var: str, path: str) -> dict[str, Any]:
        return {"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "WEFT_CONTROLLER_ADDR", "value": config.controller_address},
        {"name": "WEFT_TRUST_DOMAIN", "value": config.trust_domain},
        {"name": "WEFT_GATEWAY", "value": f"{ns}/{name}"},
        field_env("NODE_NAME", "spec.nodeName"),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        field_env("HOST_IP", "status.hostIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ]
    if config.otlp_endpoint:
        env.append({"name": "WEFT_OTLP_ENDPOINT", "value": config.otlp_endpoint})
    if config.redis_addr:
        env.append({"name": "WEFT_REDIS_ADDR", "value": config.redis_addr})
    container: dict[str, Any] = {
        "name": "waypoint",
        "image": config.image,
        "args": ["--gateway", f"{ns}/{name}"],
        "env": env,
        "ports": [{"name": "mesh", "containerPort": MESH_PORT}],
    }
    pod_spec: dict[str, Any] = {"serviceAccountName": name, "containers": [container]}
    extra: list[dict[str, Any]] = []
    if config.kubernetes is not None:
        extra = _on_kubernetes(ns, container, pod_spec, config.kubernetes)
    return [
        *extra,
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(),
            "spec": {
                "selector": {GATEWAY_NAME_LABEL: name},
                "ports": [{"name": "mesh", "port": MESH_PORT, "targetPort": MESH_PORT}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                "template": {
                    "metadata": {
                        "labels": {**labels, DATAPLANE_MODE_LABEL: DATAPLANE_MODE_NONE},
                    },
                    "spec": pod_spec,
                },
            },
        },
    ]


def _on_kubernetes(
    ns: str, container: dict[str, Any], pod_spec: dict[str, Any], k8s: KubernetesWaypoints
) -> list[dict[str, Any]]:
    """Fit a waypoint pod for Kubernetes (in place); the extra objects it needs."""
    container["image"] = k8s.image
    container["command"] = ["python", "-m", "waypoint", "run"]
    container["env"] += [
        {"name": "WEFT_CREDENTIAL", "value": CREDENTIAL_DIR},
        {"name": "WEFT_BOOTSTRAP_TOKEN", "value": f"{TOKEN_DIR}/token"},
        {"name": "WEFT_BOOTSTRAP_CONTROLLER", "value": k8s.bootstrap_address},
        {"name": "WEFT_CONTROLLER_ROOTS", "value": f"{ROOTS_DIR}/root-cert.pem"},
    ]
    container["volumeMounts"] = [
        {"name": "weft-token", "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": "weft-ca", "mountPath": ROOTS_DIR, "readOnly": True},
        {"name": "weft-credential", "mountPath": CREDENTIAL_DIR},
    ]
    pod_spec["automountServiceAccountToken"] = False  # (only the weft-audience token)
    pod_spec["volumes"] = [
        {
            "name": "weft-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "weft",
                            "expirationSeconds": 3600,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {"name": "weft-ca", "configMap": {"name": ROOT_CONFIGMAP}},
        {"name": "weft-credential", "emptyDir": {"medium": "Memory"}},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": ROOT_CONFIGMAP, "namespace": ns},
            "data": {"root-cert.pem": k8s.roots_pem},
        }
    ]


def gateway_status(
    *,
    refused: str,
    address: str,
    ready: int,
    replicas: int,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    """Gateway API status: Accepted (the Gateway is one weft can run), Programmed (a
    replica is ready and the Service has an address), `addresses` (that address)."""
    if refused:
        return {
            "conditions": [
                _condition("Accepted", False, "ListenersNotValid", refused, previous, now),
                _condition("Programmed", False, "Invalid", "not accepted", previous, now),
            ]
        }
    accepted = _condition("Accepted", True, "Accepted", "", previous, now)
    if not address:
        programmed = _condition(
            "Programmed", False, "AddressNotAssigned", "its Service has no ClusterIP yet",
            previous, now,
        )  # fmt: skip
    elif ready == 0:
        programmed = _condition(
            "Programmed",
            False,
            "Pending",
            f"0/{replicas} replicas ready",
            previous,
            now,
        )
    else:
        programmed = _condition(
            "Programmed", True, "Programmed", f"{ready}/{replicas} replicas ready", previous, now
        )
    status: dict[str, Any] = {"conditions": [accepted, programmed]}
    if address:
        status["addresses"] = [{"type": "IPAddress", "value": address}]
    return status


# --- the plan: what to write now -------------------------------------------------------------


@dataclass
class DeployPlan:
    apply: dict[ResourceKey, list[dict[str, Any]]] = field(default_factory=dict)  # by Gateway
    statuses: dict[ResourceKey, dict[str, Any]] = field(default_factory=dict)  # Gateways, routes

    @property
    def empty(self) -> bool:
        return not (self.apply or self.statuses)


def _fingerprint(objects: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(objects, sort_keys=True).encode()).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Deployer:
    """Compares what each waypoint Gateway asks for with what it last wrote and what the
    cluster has, and plans the writes. Told what was written (`applied`, `status_written`),
    so a failed write is planned again."""

    def __init__(
        self,
        config: DeployerConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], str] = _now,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._applied: dict[ResourceKey, tuple[str, float]] = {}  # fingerprint, when
        self._statuses: dict[ResourceKey, dict[str, Any]] = {}

    def plan(
        self,
        resources: Mapping[ResourceKey, Resource],
        state: Mapping[ResourceKey, StateValue] | None = None,
    ) -> DeployPlan:
        """What to write now. With `state` (the mesh state built from `resources`), the
        routes' statuses too (`controller.routestatus`)."""
        out = DeployPlan()
        gateways = [r for r in resources.values() if isinstance(r, Gateway) and r.is_waypoint]
        keys = {gw.key for gw in gateways}
        self._applied = {k: v for k, v in self._applied.items() if k in keys}
        routes: dict[ResourceKey, dict[str, Any]] = {}
        if state is not None:
            routes = route_statuses(resources, state, self._statuses, self._wall_clock())
        self._statuses = {k: v for k, v in self._statuses.items() if k in keys or k in routes}
        for key, route_status in routes.items():
            if route_status != self._statuses.get(key):
                out.statuses[key] = route_status
        for gw in gateways:
            refused = ""
            try:
                check_waypoint_gateway(gw)
            except BuildError as err:
                refused = err.reason
            try:
                replicas = waypoint_replicas(gw)
            except BuildError:
                replicas = 1  # reported by the mesh builder
            ns, name = gw.metadata.namespace, gw.metadata.name
            if not refused:
                objects = waypoint_objects(gw, self.config, replicas)
                fingerprint = _fingerprint(objects)
                last = self._applied.get(gw.key)
                missing = any(
                    ResourceKey(kind, ns, name) not in resources
                    for kind in ("ServiceAccount", "Service", "Deployment")
                )
                if (
                    last is None
                    or last[0] != fingerprint
                    or (missing and self._clock() - last[1] >= RETRY_SECONDS)
                ):
                    out.apply[gw.key] = objects
            svc = resources.get(ResourceKey("Service", ns, name))
            address = svc.cluster_ip if isinstance(svc, Service) else ""
            ready = sum(
                1
                for r in resources.values()
                if isinstance(r, Pod)
                and r.metadata.namespace == ns
                and r.metadata.labels.get(GATEWAY_NAME_LABEL) == name
                and r.status.ready
            )
            previous = self._statuses.get(gw.key)
            status = gateway_status(
                refused=refused,
                address=address,
                ready=ready,
                replicas=replicas,
                previous=previous,
                now=self._wall_clock(),
            )
            if status != previous:
                out.statuses[gw.key] = status
        return out

    def applied(self, gateway: ResourceKey, objects: list[dict[str, Any]]) -> None:
        self._applied[gateway] = (_fingerprint(objects), self._clock())

    def status_written(self, resource: ResourceKey, status: dict[str, Any]) -> None:
        self._statuses[resource] = status


# --- I/O: where objects are written ----------------------------------------------------------


class WriteError(Exception):
    """The cluster refused or could not take a write; says which and why."""


class ObjectWriter(Protocol):
    async def apply(self, source: str, objects: list[dict[str, Any]]) -> None: ...

    async def set_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None: ...


class LabObjectWriter:
    """Writes through the lab daemon's API (`/v1/apply`, `/v1/objects/status`) on its unix
    socket, as `weftctl lab apply` does."""

    def __init__(self, socket: Path, timeout: float = 60.0) -> None:
        self.socket = socket
        self.timeout = timeout

    async def _call(self, method: str, path: str, body: Any) -> None:
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=str(self.socket)),
                    timeout=aiohttp.ClientTimeout(total=self.timeout),
                ) as session,
                session.request(method, f"http://lab{path}", json=body) as resp,
            ):
                data = await resp.json()
                if resp.status >= 400:
                    errors = "; ".join(e.get("message", "") for e in data.get("errors", []))
                    raise WriteError(f"lab API {path}: {resp.status}: {errors}")
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise WriteError(f"lab API at {self.socket}: {type(err).__name__}: {err}") from None

    async def apply(self, source: str, objects: list[dict[str, Any]]) -> None:
        await self._call(
            "POST", "/v1/apply", {"documents": [{"source": source, "raw": o} for o in objects]}
        )

    async def set_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        body = {"kind": kind, "namespace": namespace, "name": name, "status": status}
        await self._call("PUT", "/v1/objects/status", body)


class DeployerLoop:
    """Runs the deployer's plans through a writer, off the controller's build path: woken
    by each new set of resources, and every few seconds to retry."""

    def __init__(self, deployer: Deployer, writer: ObjectWriter) -> None:
        self.deployer = deployer
        self.writer = writer
        self._resources: Mapping[ResourceKey, Resource] = {}
        self._state: Mapping[ResourceKey, StateValue] | None = None
        self._wake = asyncio.Event()

    def notify(
        self,
        resources: Mapping[ResourceKey, Resource],
        state: Mapping[ResourceKey, StateValue] | None = None,
    ) -> None:
        """New resources, and the mesh state built from them (for the routes' status)."""
        self._resources = resources
        self._state = state
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_SECONDS)
            self._wake.clear()
            await self.run_once()

    async def run_once(self) -> None:
        plan = self.deployer.plan(self._resources, self._state)
        for gw, objects in plan.apply.items():
            try:
                await self.writer.apply(f"deployer:{gw.namespace}/{gw.name}", objects)
            except WriteError as err:
                log.warning("waypoint.apply_failed", gateway=str(gw), error=str(err))
                continue
            self.deployer.applied(gw, objects)
            log.info("waypoint.applied", gateway=str(gw))
        for key, status in plan.statuses.items():
            try:
                await self.writer.set_status(key.kind, key.namespace, key.name, status)
            except WriteError as err:
                log.warning("status.write_failed", resource=str(key), error=str(err))
                continue
            self.deployer.status_written(key, status)
