"""Resources in, mesh state out: enrollment, service membership, waypoints, identities.

Pure. A build reuses the previous build's values for pods whose inputs (the pod object, its
namespace's labels, the services of its namespace) are the same objects as last time, so a
one-pod change costs one workload, not a pass over the whole cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from meshcore.identity.spiffe import workload_id
from meshcore.meshstate import (
    CLUSTER_DOMAIN,
    DATAPLANE_MODE_AMBIENT,
    DATAPLANE_MODE_LABEL,
    DATAPLANE_MODE_NONE,
    EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
    USE_WAYPOINT_LABEL,
    MeshService,
    ServiceMembership,
    ServicePort,
    StateValue,
    TrustBundle,
    Waypoint,
    Workload,
)
from meshcore.resources import Namespace, Pod, Resource, ResourceKey, Service
from meshcore.resources.gateway import AddressType, Gateway
from meshcore.resources.security import AuthorizationPolicy, PeerAuthentication

log = structlog.get_logger("controller.meshbuilder")

USE_WAYPOINT_NAMESPACE_LABEL = "weft.dev/use-waypoint-namespace"
_HASH_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<hash>[a-z0-9]+)-[a-z0-9]{5}$")


def is_enrolled(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    """Istio ambient's rule: the pod label decides when set, else the namespace label."""
    pod_mode = pod_labels.get(DATAPLANE_MODE_LABEL)
    if pod_mode == DATAPLANE_MODE_NONE:
        return False
    if pod_mode == DATAPLANE_MODE_AMBIENT:
        return True
    return namespace_labels.get(DATAPLANE_MODE_LABEL) == DATAPLANE_MODE_AMBIENT


def waypoint_for(
    namespace: str, own_labels: Mapping[str, str], namespace_labels: Mapping[str, str]
) -> str:
    """`<ns>/<gateway>` from the object's own label, else its namespace's; `none` opts out."""
    for labels in (own_labels, namespace_labels):
        name = labels.get(USE_WAYPOINT_LABEL)
        if name is None:
            continue
        if name == DATAPLANE_MODE_NONE or not name:
            return ""
        return f"{labels.get(USE_WAYPOINT_NAMESPACE_LABEL, namespace)}/{name}"
    return ""


def workload_name(pod: Pod) -> str:
    """The Deployment a pod belongs to (strip `-<template hash>-<suffix>`), else the pod."""
    template_hash = pod.metadata.labels.get("pod-template-hash")
    match = _HASH_SUFFIX.match(pod.metadata.name)
    if template_hash and match and match.group("hash") == template_hash:
        return match.group("base")
    return pod.metadata.name


def excluded_ports(pod: Pod) -> tuple[int, ...]:
    """Ports from the pod's `weft.dev/exclude-outbound-ports` annotation ("5432,6379");
    entries that are not port numbers are skipped and logged."""
    text = pod.metadata.annotations.get(EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "")
    ports = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.isdigit() and 1 <= int(item) <= 65535:
            ports.add(int(item))
        else:
            log.warning("workload.bad_excluded_port", pod=str(pod.key), value=item)
    return tuple(sorted(ports))


def _target_port(pod: Pod, target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    for c in pod.spec.containers:
        for p in c.ports:
            if p.name == target:
                return p.container_port
    return None


@dataclass(frozen=True)
class _PodInputs:
    pod: int
    namespace_labels: tuple[tuple[str, str], ...]
    services: tuple[int, ...]
    # The pod and services themselves, not compared: holding them while this entry is cached
    # keeps a new object from being allocated at one of their ids and taken for the old one.
    objects: tuple[object, ...] = field(default=(), compare=False)


class MeshBuilder:
    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self._cache: dict[ResourceKey, tuple[_PodInputs, Workload]] = {}

    def build(
        self, resources: Mapping[ResourceKey, Resource], bundle: TrustBundle
    ) -> dict[ResourceKey, StateValue]:
        namespaces: dict[str, Mapping[str, str]] = {"default": {}}
        pods: list[Pod] = []
        services_by_ns: dict[str, list[Service]] = {}
        state: dict[ResourceKey, StateValue] = {bundle.key: bundle}
        gateways: list[Gateway] = []
        for r in resources.values():
            if isinstance(r, Namespace):
                namespaces[r.metadata.name] = r.metadata.labels
            elif isinstance(r, Pod):
                pods.append(r)
            elif isinstance(r, Service):
                services_by_ns.setdefault(r.metadata.namespace, []).append(r)
            elif isinstance(r, AuthorizationPolicy | PeerAuthentication):
                state[r.key] = r
            elif isinstance(r, Gateway):
                gateways.append(r)

        for ns, services in services_by_ns.items():
            ns_labels = namespaces.get(ns, {})
            for svc in services:
                mesh_svc = MeshService(
                    name=svc.metadata.name,
                    namespace=ns,
                    hostname=f"{svc.metadata.name}.{ns}.svc.{CLUSTER_DOMAIN}",
                    addresses=(svc.cluster_ip,) if svc.cluster_ip else (),
                    ports=tuple(ServicePort(p.name, p.port, p.protocol) for p in svc.ports),
                    waypoint=waypoint_for(ns, svc.metadata.labels, ns_labels),
                )
                state[mesh_svc.key] = mesh_svc

        for gw in gateways:
            if gw.is_waypoint:
                wp = Waypoint(
                    gw.metadata.name,
                    gw.metadata.namespace,
                    # Nodes take IPs only: an unset value or a hostname would make them refuse it.
                    tuple(
                        a.value
                        for a in gw.addresses
                        if a.value and a.type is AddressType.IP_ADDRESS
                    ),
                )
                state[wp.key] = wp

        cache: dict[ResourceKey, tuple[_PodInputs, Workload]] = {}
        for pod in pods:
            if not pod.status.pod_ip:
                continue  # not scheduled or not started: nothing to reach yet
            ns = pod.metadata.namespace
            ns_labels = namespaces.get(ns, {})
            services = services_by_ns.get(ns, [])
            inputs = _PodInputs(
                id(pod),
                tuple(sorted(ns_labels.items())),
                tuple(id(s) for s in services),
                (pod, *services),
            )
            cached = self._cache.get(pod.key)
            if cached is not None and cached[0] == inputs:
                workload = cached[1]
            else:
                workload = self._workload(pod, ns_labels, services)
            cache[pod.key] = (inputs, workload)
            state[workload.key] = workload
        self._cache = cache
        return state

    def _workload(
        self, pod: Pod, ns_labels: Mapping[str, str], services: list[Service]
    ) -> Workload:
        ns = pod.metadata.namespace
        memberships = []
        for svc in services:
            if not svc.selector or any(
                pod.metadata.labels.get(k) != v for k, v in svc.selector.items()
            ):
                continue
            ports = {}
            for sp in svc.ports:
                target = _target_port(pod, sp.target_port)
                if target is not None:
                    ports[sp.port] = target
            memberships.append(ServiceMembership(ns, svc.metadata.name, ports))
        return Workload(
            uid=pod.metadata.uid or f"{ns}/{pod.metadata.name}",
            name=pod.metadata.name,
            namespace=ns,
            service_account=pod.spec.service_account_name,
            identity=str(workload_id(self.trust_domain, ns, pod.spec.service_account_name)),
            node=pod.spec.node_name,
            node_address=pod.status.host_ip,
            addresses=(pod.status.pod_ip,),
            labels=dict(pod.metadata.labels),
            enrolled=is_enrolled(pod.metadata.labels, ns_labels),
            ready=pod.status.ready,
            waypoint=waypoint_for(ns, pod.metadata.labels, ns_labels),
            workload_name=workload_name(pod),
            services=tuple(sorted(memberships, key=lambda m: (m.namespace, m.name))),
            excluded_ports=excluded_ports(pod),
        )
