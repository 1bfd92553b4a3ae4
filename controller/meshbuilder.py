"""Resources in, mesh state out: enrollment, service membership, waypoints, identities.

Pure but for the clock that dates problems. A build reuses the previous build's values for
pods whose inputs (the pod object, its namespace's labels, the services of its namespace) are
the same objects as last time, so a one-pod change costs one workload, not a pass over the
whole cluster.

Every resource is built inside its own error boundary: one that cannot be turned into mesh
state (a bad annotation, or a bug met by one object only) becomes a `Problem`, its last good
value stays in force (or it is left out if it never had one), and the rest of the mesh is
built as usual. Resources that are built but enforced nowhere (an AuthorizationPolicy with
targetRefs that no waypoint serves) are reported the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

import structlog

from controller.deployer import check_waypoint_gateway, waypoint_replicas
from controller.errors import BuildError
from controller.store import Problem
from meshcore.identity.spiffe import workload_id
from meshcore.meshstate import (
    CLUSTER_DOMAIN,
    DATAPLANE_MODE_AMBIENT,
    DATAPLANE_MODE_LABEL,
    DATAPLANE_MODE_NONE,
    EXCLUDE_OUTBOUND_PORTS_ANNOTATION,
    GATEWAY_NAME_LABEL,
    MANAGED_BY_MESH_CONTROLLER,
    MANAGED_LABEL,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
    WAYPOINT_FOR_LABEL,
    MeshService,
    ServiceMembership,
    ServicePort,
    StateValue,
    TrafficType,
    TrustBundle,
    Waypoint,
    Workload,
)
from meshcore.ports import PortError, parse_port_list
from meshcore.resources import Namespace, Pod, Resource, ResourceKey, Service
from meshcore.resources.destinationrule import DestinationRule
from meshcore.resources.endpointslice import (
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    EndpointSlice,
)
from meshcore.resources.endpointslice import AddressType as SliceAddressType
from meshcore.resources.gateway import AddressType, Gateway, GRPCRoute, HTTPRoute, ParentKind
from meshcore.resources.meshconfig import (
    MESH_CONFIG_KEY,
    MESH_CONFIGMAP,
    ROOT_NAMESPACE,
    ConfigMap,
    MeshConfig,
    MeshSettings,
    mesh_config_of,
)
from meshcore.resources.node import Node
from meshcore.resources.ratelimit import RateLimitPolicy
from meshcore.resources.ratelimit import TargetKind as RateLimitTargetKind
from meshcore.resources.requestauthn import RequestAuthentication
from meshcore.resources.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    PolicyAction,
    TargetKind,
)
from meshcore.resources.virtualservice import VirtualService
from meshcore.vscheck import virtual_service_problem

log = structlog.get_logger("controller.meshbuilder")

__all__ = ["USE_WAYPOINT_NAMESPACE_LABEL", "BuildError", "MeshBuilder"]

_HASH_SUFFIX = re.compile(r"^(?P<base>.+)-(?P<hash>[a-z0-9]+)-[a-z0-9]{5}$")

NO_JWT_ENFORCEMENT = (
    "RequestAuthentication is enforced by waypoints only (ztunnel does not read HTTP): with "
    "{scope} no waypoint validates these tokens; attach it with targetRefs to a waypoint's "
    "Gateway or a Service bound to a waypoint"
)
MESH_CONFIG_WHERE = (
    f"meshConfig extensionProviders (ConfigMap {ROOT_NAMESPACE}/{MESH_CONFIGMAP}, "
    f"key {MESH_CONFIG_KEY})"
)
CUSTOM_AT_ZTUNNEL = (
    "action CUSTOM with {scope}: this policy is enforced by ztunnel, which cannot call an "
    "ext_authz provider ({provider!r}), so connections its rules match are denied (fail "
    "closed); attach it with targetRefs to a waypoint's Gateway or a Service bound to a "
    "waypoint to have the provider asked"
)
NOT_A_POD = (
    "{address} is not the address of a pod: weft does not route to endpoints outside the mesh "
    "yet, so Service {service} is served by its pod endpoints only"
)
# A Service whose endpoints are all outside the mesh (`default/kubernetes`, a database
# elsewhere) is left out of the mesh state: ztunnel then passes connections to its ClusterIP
# through untouched, as for any address it does not know, and the cluster's own service
# routing reaches the endpoints. In the state with no endpoint, it would be refused.
ONLY_OUTSIDE = (
    "{address} is not the address of a pod, and Service {service} has no pod endpoint: weft "
    "does not route to endpoints outside the mesh yet, so it leaves the Service out of the "
    "mesh; connections to its ClusterIP are passed through (plain TCP, no mesh policy)"
)
UNKNOWN_NODE = (
    "no Node {node!r} is known to the API (deleted, or a wrong name): the pod runs on no node "
    "weft knows"
)
# Kubernetes' own EndpointSlice controller: its slices are for Services with a selector,
# which weft builds from pods (a dangling one is its garbage collector's to remove).
KUBE_SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
NO_ENFORCEMENT_POINT = (
    "targetRefs policies are enforced by waypoints, and no waypoint serves any of its targets: "
    "this policy is enforced nowhere; bind the Service to a waypoint, or use a selector (or no "
    "selector for the whole namespace) to have ztunnel enforce it"
)


def missing_provider(policy: AuthorizationPolicy, mesh: MeshConfig | None) -> str:
    """Why a waypoint's CUSTOM policy has no ext_authz provider ("" when it has one): its
    requests are then denied (fail closed), as Istio does for an unknown provider."""
    name = policy.provider
    if policy.action is not PolicyAction.CUSTOM:
        return ""
    if mesh is not None and name in mesh.settings.ext_authz_providers:
        return ""
    effect = "requests its rules match are denied (fail closed, as Istio does)"
    if mesh is not None and name in mesh.refused_names:
        return (
            f"provider {name!r} is in {MESH_CONFIG_WHERE} but was left out (see that "
            f"ConfigMap's problem): {effect}"
        )
    return f"provider {name!r} is not in {MESH_CONFIG_WHERE}: {effect}"


def l7_at_ztunnel(policy: AuthorizationPolicy) -> tuple[str, str] | None:
    """(field, reason) when a policy that ztunnel enforces (a selector, or neither selector nor
    targetRefs) matches on HTTP attributes, which only a waypoint can see; else None."""
    fields = policy.l7_only_fields()
    if policy.for_waypoint or not fields:
        return None
    first = next(i for i, rule in enumerate(policy.rules) if rule.l7_only_fields())
    scope = "its selector" if policy.has_selector else "no selector and no targetRefs"
    effect = (
        "so it allows less than written"
        if policy.action is PolicyAction.ALLOW
        else "so it matches more connections than written"
    )
    reason = (
        f"{', '.join(fields)} need HTTP, and with {scope} this policy is enforced by ztunnel, "
        "which treats it as Istio does: ALLOW rules with these fields never match, DENY rules "
        f"apply without them, {effect}; to enforce them, bind the workloads to a waypoint "
        "(weftctl waypoint apply) and attach the policy with targetRefs (the waypoint's "
        "Gateway or the Service) instead"
    )
    return f"spec.rules[{first}]", reason


_V = TypeVar("_V", bound=StateValue)


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
    return requested_waypoint(namespace, own_labels, namespace_labels)[0]


def requested_waypoint(
    namespace: str, own_labels: Mapping[str, str], namespace_labels: Mapping[str, str]
) -> tuple[str, bool]:
    """What the labels ask for: (`<ns>/<gateway>` or "", whether the object's own label
    asked). The object's own label wins over its namespace's; `none` opts out; a waypoint's
    own objects (label `gateway.weft.dev/managed`) never ask for one."""
    if own_labels.get(MANAGED_LABEL) == MANAGED_BY_MESH_CONTROLLER:
        return "", False
    for own, labels in ((True, own_labels), (False, namespace_labels)):
        name = labels.get(USE_WAYPOINT_LABEL)
        if name is None:
            continue
        if name == DATAPLANE_MODE_NONE or not name:
            return "", own
        return f"{labels.get(USE_WAYPOINT_NAMESPACE_LABEL, namespace)}/{name}", own
    return "", False


def bind_waypoint(
    requested: str, own_label: bool, kind: str, waypoints: Mapping[str, Waypoint]
) -> tuple[str, BuildError | None]:
    """Istio's rule: a Service (kind "service") or a pod ("workload") is bound to the
    waypoint it asks for only when that waypoint exists and takes its kind of traffic
    (`weft.dev/waypoint-for`). Otherwise it is not bound, and when its own label asked (not
    its namespace's, which asks for services and pods alike) the reason is returned."""
    if not requested:
        return "", None
    waypoint = waypoints.get(requested)
    field = f"metadata.labels[{USE_WAYPOINT_LABEL}]"
    if waypoint is None:
        reason = (
            f"no waypoint {requested} (a Gateway of class weft-waypoint): not bound to a "
            "waypoint until it exists"
        )
        return "", BuildError(reason, field=field) if own_label else None
    serves = (
        waypoint.traffic_type.serves_services
        if kind == "service"
        else waypoint.traffic_type.serves_workloads
    )
    if serves:
        return requested, None
    reason = (
        f"waypoint {requested} is for {waypoint.traffic_type.value} traffic "
        f"({WAYPOINT_FOR_LABEL}), not {kind} traffic: not bound to it; set "
        f"{WAYPOINT_FOR_LABEL}: {kind} or all on the Gateway"
    )
    return "", BuildError(reason, field=field) if own_label else None


def traffic_type(gw: Gateway) -> TrafficType:
    text = gw.metadata.labels.get(WAYPOINT_FOR_LABEL, TrafficType.SERVICE.value)
    try:
        return TrafficType(text)
    except ValueError:
        raise BuildError(
            f"must be service, workload, all or none, got {text!r}",
            field=f"metadata.labels[{WAYPOINT_FOR_LABEL}]",
        ) from None


def workload_name(pod: Pod) -> str:
    """The Deployment a pod belongs to (strip `-<template hash>-<suffix>`), else the pod."""
    template_hash = pod.metadata.labels.get("pod-template-hash")
    match = _HASH_SUFFIX.match(pod.metadata.name)
    if template_hash and match and match.group("hash") == template_hash:
        return match.group("base")
    return pod.metadata.name


def excluded_ports(pod: Pod) -> tuple[int, ...]:
    """Ports from the pod's `weft.dev/exclude-outbound-ports` annotation ("5432,6379");
    BuildError naming the annotation when it is not a list of port numbers."""
    text = pod.metadata.annotations.get(EXCLUDE_OUTBOUND_PORTS_ANNOTATION, "")
    try:
        return parse_port_list(text)
    except PortError as err:
        raise BuildError(
            f'{err}; expected comma-separated port numbers such as "5432,6379"',
            field=f"metadata.annotations[{EXCLUDE_OUTBOUND_PORTS_ANNOTATION}]",
        ) from None


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
    waypoints: tuple[tuple[str, str], ...] = ()  # every waypoint and its traffic type
    # its memberships of Services without a selector, from their EndpointSlices
    endpoints: tuple[ServiceMembership, ...] = ()


class MeshBuilder:
    def __init__(self, trust_domain: str, clock: Callable[[], float] = time.time) -> None:
        self.trust_domain = trust_domain
        self._clock = clock
        self._cache: dict[ResourceKey, tuple[_PodInputs, Workload]] = {}
        self._built: dict[ResourceKey, StateValue] = {}
        self._problems: dict[ResourceKey, Problem] = {}

    def problems(self) -> dict[ResourceKey, Problem]:
        """What the last build could not turn into mesh state, or built but cannot enforce,
        by resource (their `source` is left to the caller, which knows where it came from)."""
        return dict(sorted(self._problems.items()))

    def build(
        self, resources: Mapping[ResourceKey, Resource], bundle: TrustBundle
    ) -> dict[ResourceKey, StateValue]:
        namespaces: dict[str, Mapping[str, str]] = {"default": {}}
        pods: list[Pod] = []
        services_by_ns: dict[str, list[Service]] = {}
        state: dict[ResourceKey, StateValue] = {bundle.key: bundle}
        gateways: list[Gateway] = []
        routes: list[HTTPRoute | GRPCRoute] = []
        virtual_services: list[VirtualService] = []
        rate_limits: list[RateLimitPolicy] = []
        request_authns: list[RequestAuthentication] = []
        waypoint_policies: list[AuthorizationPolicy] = []
        destination_rules: list[DestinationRule] = []
        config_maps: list[ConfigMap] = []
        slices: list[EndpointSlice] = []
        nodes: set[str] = set()
        problems: dict[ResourceKey, Problem] = {}
        for r in resources.values():
            if isinstance(r, Namespace):
                namespaces[r.metadata.name] = r.metadata.labels
            elif isinstance(r, Pod):
                pods.append(r)
            elif isinstance(r, Service):
                services_by_ns.setdefault(r.metadata.namespace, []).append(r)
            elif isinstance(r, AuthorizationPolicy | PeerAuthentication):
                state[r.key] = r
                if isinstance(r, AuthorizationPolicy) and r.for_waypoint:
                    waypoint_policies.append(r)
                elif isinstance(r, AuthorizationPolicy) and r.action is PolicyAction.CUSTOM:
                    scope = "a selector" if r.has_selector else "no selector and no targetRefs"
                    field = "spec.selector" if r.has_selector else "spec.action"
                    reason = CUSTOM_AT_ZTUNNEL.format(scope=scope, provider=r.provider)
                    self._report(problems, r.key, field, reason, False)
                elif isinstance(r, AuthorizationPolicy) and (l7 := l7_at_ztunnel(r)):
                    self._report(problems, r.key, l7[0], l7[1], False)
            elif isinstance(r, Gateway):
                gateways.append(r)
            elif isinstance(r, HTTPRoute | GRPCRoute):
                state[r.key] = r  # as parsed: a waypoint routes with it
                routes.append(r)
            elif isinstance(r, VirtualService):
                state[r.key] = r  # as parsed: a waypoint routes with it
                virtual_services.append(r)
            elif isinstance(r, RateLimitPolicy):
                state[r.key] = r  # as parsed: a waypoint enforces it
                rate_limits.append(r)
            elif isinstance(r, DestinationRule):
                state[r.key] = r  # as parsed: a waypoint applies it
                destination_rules.append(r)
            elif isinstance(r, RequestAuthentication):
                state[r.key] = r  # as parsed: a waypoint validates JWTs with it
                request_authns.append(r)
            elif isinstance(r, ConfigMap):
                config_maps.append(r)
            elif isinstance(r, EndpointSlice):
                slices.append(r)
            elif isinstance(r, Node):
                nodes.add(r.metadata.name)
        mesh_config = self._mesh_config(problems, config_maps, state)

        waypoints: dict[str, Waypoint] = {}
        for gw in gateways:
            if gw.is_waypoint:
                gw_ignored: list[BuildError] = []
                wp = self._guarded(
                    problems,
                    gw.key,
                    ResourceKey(Waypoint.kind, gw.metadata.namespace, gw.metadata.name),
                    functools.partial(
                        self._waypoint,
                        gw,
                        services_by_ns.get(gw.metadata.namespace, []),
                        gw_ignored,
                    ),
                )
                if wp is not None:
                    state[wp.key] = wp
                    waypoints[f"{wp.namespace}/{wp.name}"] = wp
                for err in gw_ignored:  # the deployer runs one replica instead
                    self._report(
                        problems, gw.key, err.field, f"{err.reason}; 1 replica is run", False
                    )

        slice_members, outside_only = self._slice_memberships(
            problems, slices, services_by_ns, pods
        )
        for ns, services in services_by_ns.items():
            ns_labels = namespaces.get(ns, {})
            for svc in services:
                if (ns, svc.metadata.name) in outside_only:
                    continue  # reported on its slices
                refused: list[BuildError] = []
                mesh_svc = self._guarded(
                    problems,
                    svc.key,
                    ResourceKey(MeshService.kind, ns, svc.metadata.name),
                    functools.partial(self._service, svc, ns_labels, waypoints, refused),
                )
                if mesh_svc is not None:
                    state[mesh_svc.key] = mesh_svc
                for err in refused:  # built unbound
                    self._report(problems, svc.key, err.field, err.reason, False)

        for route in routes:
            self._check_route_parents(problems, route, state)
        for vs in virtual_services:
            self._check_virtual_service(problems, vs, routes, state)
        for policy in rate_limits:
            self._check_rate_limit_targets(problems, policy, state, resources, waypoints)
        for authz in waypoint_policies:
            if not self._served_by_a_waypoint(authz, state, waypoints):
                self._report(problems, authz.key, "spec.targetRefs", NO_ENFORCEMENT_POINT, False)
            elif reason := missing_provider(authz, mesh_config):
                self._report(problems, authz.key, "spec.provider.name", reason, False)
        for authn in request_authns:
            if not authn.target_refs:
                scope = "a selector" if authn.selector is not None else "no targetRefs"
                field = "spec.selector" if authn.selector is not None else "spec"
                self._report(
                    problems, authn.key, field, NO_JWT_ENFORCEMENT.format(scope=scope), False
                )
            elif not self._served_by_a_waypoint(authn, state, waypoints):
                scope = "its targetRefs"
                self._report(
                    problems,
                    authn.key,
                    "spec.targetRefs",
                    NO_JWT_ENFORCEMENT.format(scope=scope),
                    False,
                )

        # A pod's binding depends on the waypoints too: a Gateway added, removed or retyped
        # (rare) rebuilds every workload.
        waypoint_kinds = tuple(sorted((k, w.traffic_type.value) for k, w in waypoints.items()))
        cache: dict[ResourceKey, tuple[_PodInputs, Workload]] = {}
        # What a namespace's pods share, made once per namespace, not once per pod: with 10k
        # pods and 50 services a namespace this was most of a one-pod change's CPU.
        per_ns: dict[str, tuple[tuple[tuple[str, str], ...], tuple[int, ...], tuple[Service, ...]]]
        per_ns = {}
        for pod in pods:
            if not pod.status.pod_ip:
                continue  # not scheduled or not started: nothing to reach yet
            ns = pod.metadata.namespace
            ns_labels = namespaces.get(ns, {})
            services = services_by_ns.get(ns, [])
            shared = per_ns.get(ns)
            if shared is None:
                shared = per_ns[ns] = (
                    tuple(sorted(ns_labels.items())),
                    tuple(id(s) for s in services),
                    tuple(services),  # held (not copied) by each pod's entry, for the ids
                )
            inputs = _PodInputs(
                id(pod),
                shared[0],
                shared[1],
                (pod, shared[2]),
                waypoint_kinds,
                slice_members.get(pod.key, ()),
            )
            cached = self._cache.get(pod.key)
            if cached is not None and cached[0] == inputs:
                cache[pod.key] = cached
                state[cached[1].key] = cached[1]
                continue
            ignored: list[BuildError] = []
            unbound: list[BuildError] = []
            workload = self._guarded(
                problems,
                pod.key,
                ResourceKey(Workload.kind, ns, pod.metadata.name),
                functools.partial(
                    self._workload,
                    pod,
                    ns_labels,
                    services,
                    waypoints,
                    ignored,
                    unbound,
                    inputs.endpoints,
                ),
            )
            if workload is None:
                continue
            for err in ignored:  # built without it (fails closed: more captured, not less)
                self._report(problems, pod.key, err.field, f"{err.reason}; ignored", False)
            for err in unbound:  # built unbound, as Istio does
                self._report(problems, pod.key, err.field, err.reason, False)
            if pod.key not in problems:
                cache[pod.key] = (inputs, workload)
            elif cached is not None:
                # The last good workload was kept: it stays cached under its own inputs, so
                # the bad pod is tried (and reported) again next time, not taken as built.
                cache[pod.key] = cached
            state[workload.key] = workload
        if nodes:  # none at all: a folder (the lab), or nodes not listed: unknown, not checked
            for pod in pods:
                node = pod.spec.node_name
                if node and node not in nodes and pod.key not in problems:
                    reason = UNKNOWN_NODE.format(node=node)
                    self._report(problems, pod.key, "spec.nodeName", reason, False)
        for rule in destination_rules:
            self._check_destination_rule(problems, rule, state)
        self._cache = cache
        self._built = state
        self._problems = problems
        return state

    def _slice_memberships(
        self,
        problems: dict[ResourceKey, Problem],
        slices: list[EndpointSlice],
        services_by_ns: Mapping[str, list[Service]],
        pods: list[Pod],
    ) -> tuple[dict[ResourceKey, tuple[ServiceMembership, ...]], set[tuple[str, str]]]:
        """The pods that Services without a selector list as ready endpoints in their
        EndpointSlices, as memberships by pod (service port -> the slice's port of the same
        name), and the Services whose ready endpoints are all outside the mesh (left out of
        it). Slices of Services with a selector are Kubernetes' copy of what the pods say,
        and are not read. An address that is no pod's is reported on its slice."""
        selectorless = {
            (ns, svc.metadata.name): svc
            for ns, services in services_by_ns.items()
            for svc in services
            if not svc.selector
        }
        selected = {
            (ns, svc.metadata.name)
            for ns, services in services_by_ns.items()
            for svc in services
            if svc.selector
        }
        by_ip: dict[str, list[Pod]] = {}
        for pod in pods:
            if pod.status.pod_ip:
                by_ip.setdefault(pod.status.pod_ip, []).append(pod)
        ports_by_pod: dict[ResourceKey, dict[tuple[str, str], dict[int, int]]] = {}
        with_pods: set[tuple[str, str]] = set()  # Services with a pod endpoint
        outside_of: set[tuple[str, str]] = set()  # Services with a non-pod endpoint
        reported: list[tuple[ResourceKey, str, str, str, bool]] = []
        selectorless_name: dict[ResourceKey, str] = {}
        for es in sorted(slices, key=lambda s: s.key):
            ns, owner = es.metadata.namespace, es.service_name
            own = es.metadata.labels.get(MANAGED_BY_LABEL) != KUBE_SLICE_CONTROLLER
            svc = selectorless.get((ns, owner))
            if svc is None:
                if not own:
                    continue
                if (ns, owner) in selected:
                    reason = (
                        f"ignored: Service {ns}/{owner} has a selector, and weft takes its "
                        "endpoints from the pods it selects"
                    )
                elif owner:
                    reason = f"no Service {ns}/{owner}: these endpoints serve nothing"
                else:
                    reason = f"no label {SERVICE_NAME_LABEL}: the slice belongs to no Service"
                field = f"metadata.labels[{SERVICE_NAME_LABEL}]"
                self._report(problems, es.key, field, reason, False)
                continue
            selectorless_name[es.key] = owner
            if es.address_type is not SliceAddressType.IPV4:
                continue  # weft's mesh is IPv4; the Service's other slices are read
            slice_ports = {(p.name, p.protocol): p.port for p in es.ports}
            ports: dict[int, int] = {}
            for sp in svc.ports:
                if (sp.name, sp.protocol) in slice_ports:
                    ports[sp.port] = slice_ports[(sp.name, sp.protocol)] or sp.port
            # the first address not taken: (field, address, reason, whether it is no pod's)
            outside: tuple[str, str, str, bool] | None = None
            for i, endpoint in enumerate(es.endpoints):
                if not endpoint.conditions.ready:
                    continue
                ref = endpoint.target_ref
                for j, address in enumerate(endpoint.addresses):
                    found = by_ip.get(address, [])
                    if len(found) > 1 and ref is not None and ref.kind == "Pod":
                        found = [
                            p
                            for p in found
                            if p.metadata.name == ref.name
                            and p.metadata.namespace == (ref.namespace or ns)
                        ]
                    if len(found) != 1:
                        reason = (
                            NOT_A_POD.format(address=address, service=f"{ns}/{owner}")
                            if not found
                            else f"{address} is the address of several pods (host network): "
                            "name the pod in targetRef to say which"
                        )
                        field = f"endpoints[{i}].addresses[{j}]"
                        outside = outside or (field, address, reason, not found)
                        if not found:
                            outside_of.add((ns, owner))
                        continue
                    with_pods.add((ns, owner))
                    member = ports_by_pod.setdefault(found[0].key, {})
                    member.setdefault((ns, svc.metadata.name), {}).update(ports)
            if outside is not None:
                reported.append((es.key, *outside))
        outside_only = outside_of - with_pods
        for key, field, address, reason, not_a_pod in reported:
            service = (key.namespace, selectorless_name[key])
            if not_a_pod and service in outside_only:
                where = f"{service[0]}/{service[1]}"
                reason = ONLY_OUTSIDE.format(address=address, service=where)
            self._report(problems, key, field, reason, False)
        memberships = {
            key: tuple(
                ServiceMembership(ns, name, dict(sorted(ports.items())))
                for (ns, name), ports in sorted(members.items())
            )
            for key, members in ports_by_pod.items()
        }
        return memberships, outside_only

    def _guarded(
        self,
        problems: dict[ResourceKey, Problem],
        resource: ResourceKey,
        value_key: ResourceKey,
        build: Callable[[], _V],
    ) -> _V | None:
        """`build()`, or, when it fails, the value last built for `value_key` (None if there
        is none) with the failure reported as a problem of `resource`."""
        try:
            return build()
        except BuildError as err:
            field, reason = err.field, err.reason
        except Exception as err:  # the boundary: one resource must never stop the mesh
            field, reason = "", f"cannot be built into mesh state ({type(err).__name__}: {err})"
            old = self._problems.get(resource)
            if old is None or old.reason != reason:  # once, not at every build
                log.exception("resource.build_failed", resource=str(resource))
        last_good = self._built.get(value_key)
        self._report(problems, resource, field, reason, last_good is not None)
        return cast(_V | None, last_good)

    def _report(
        self,
        problems: dict[ResourceKey, Problem],
        resource: ResourceKey,
        field: str,
        reason: str,
        keeps_last_good: bool,
    ) -> None:
        old = self._problems.get(resource)
        if old is not None and (old.field, old.reason) == (field, reason):
            problem = dataclasses.replace(old, keeps_last_good=keeps_last_good)
        else:
            problem = Problem("", str(resource), field, reason, keeps_last_good, self._clock())
            log.warning(
                "resource.invalid",
                resource=str(resource),
                field=field,
                reason=reason,
                keeps_last_good=keeps_last_good,
            )
        problems[resource] = problem

    def _mesh_config(
        self,
        problems: dict[ResourceKey, Problem],
        config_maps: list[ConfigMap],
        state: dict[ResourceKey, StateValue],
    ) -> MeshConfig | None:
        """ConfigMap weft-system/weft's mesh config: its MeshSettings goes into the state (for
        every waypoint); provider entries left out are reported on the ConfigMap, and a
        ConfigMap `weft` elsewhere is reported as ignored."""
        found: MeshConfig | None = None
        for cm in config_maps:
            if not cm.is_mesh_config:
                if cm.metadata.name == MESH_CONFIGMAP:
                    reason = (
                        f"ignored: weft reads the mesh config from ConfigMap "
                        f"{ROOT_NAMESPACE}/{MESH_CONFIGMAP} only"
                    )
                    self._report(problems, cm.key, "metadata.namespace", reason, False)
                continue
            parsed: list[MeshConfig] = []

            def build(cm: ConfigMap = cm, parsed: list[MeshConfig] = parsed) -> MeshSettings:
                parsed.append(mesh_config_of(cm))
                return parsed[0].settings

            settings = self._guarded(problems, cm.key, MeshSettings().key, build)
            if settings is None:
                continue
            state[settings.key] = settings
            found = parsed[0] if parsed else MeshConfig(settings)
            if found.errors:
                field, reason = found.errors[0]
                more = [f"{f}: {r}" for f, r in found.errors[1:6]]
                if len(found.errors) > 6:
                    more.append(f"and {len(found.errors) - 6} more")
                reason += "; this entry is left out, the other providers are used"
                if more:
                    reason += f" (also left out: {'; '.join(more)})"
                self._report(problems, cm.key, field, reason, False)
        return found

    def _check_virtual_service(
        self,
        problems: dict[ResourceKey, Problem],
        vs: VirtualService,
        routes: list[HTTPRoute | GRPCRoute],
        state: Mapping[ResourceKey, StateValue],
    ) -> None:
        """A host or destination naming no Service, or a Service an HTTPRoute (or, for gRPC
        calls, a GRPCRoute) also binds: the route wins, as in Istio (`meshcore.vscheck`)."""

        def service_ports(namespace: str, name: str) -> tuple[int, ...] | None:
            svc = state.get(ResourceKey(MeshService.kind, namespace, name))
            return tuple(p.port for p in svc.ports) if isinstance(svc, MeshService) else None

        parents = [
            (str(r.key), p.namespace, p.name, p.port)
            for r in sorted(routes, key=lambda r: not isinstance(r, HTTPRoute))  # HTTP first
            for p in r.parent_refs
            if p.kind is ParentKind.SERVICE
        ]
        found = virtual_service_problem(vs, service_ports, parents)
        if found is not None:
            self._report(problems, vs.key, found[0], found[1], False)

    def _check_destination_rule(
        self,
        problems: dict[ResourceKey, Problem],
        rule: DestinationRule,
        state: Mapping[ResourceKey, StateValue],
    ) -> None:
        """A host naming no Service, or a subset no ready endpoint of the Service matches, is
        reported (the rule still goes to the waypoints: traffic to an empty subset gets 503)."""
        target = rule.service()
        if target is None:
            return  # a wildcard host: applies to whichever Services it matches
        ns, name = target
        if not isinstance(state.get(ResourceKey(MeshService.kind, ns, name)), MeshService):
            reason = f"no Service {ns}/{name}: the rule applies to nothing"
            self._report(problems, rule.key, "spec.host", reason, False)
            return
        members = [
            w.labels
            for w in state.values()
            if isinstance(w, Workload)
            and any((m.namespace, m.name) == (ns, name) for m in w.services)
        ]
        for i, subset in enumerate(rule.subsets):
            if not any(all(lb.get(k) == v for k, v in subset.labels.items()) for lb in members):
                reason = (
                    f"no endpoint of Service {ns}/{name} has the labels of subset "
                    f"{subset.name!r}: requests routed to it get 503 (no healthy upstream)"
                )
                self._report(problems, rule.key, f"spec.subsets[{i}].labels", reason, False)
                return  # one problem per resource

    def _check_route_parents(
        self,
        problems: dict[ResourceKey, Problem],
        route: HTTPRoute | GRPCRoute,
        state: Mapping[ResourceKey, StateValue],
    ) -> None:
        """A GAMMA route takes effect in the waypoint of its parent Service: a parent that is
        missing or bound to no waypoint is reported (the route still goes to the nodes, and
        takes effect once the Service is bound)."""
        for i, parent in enumerate(route.parent_refs):
            if parent.kind is not ParentKind.SERVICE:
                continue
            svc = state.get(ResourceKey(MeshService.kind, parent.namespace, parent.name))
            if isinstance(svc, MeshService) and svc.waypoint:
                continue
            where = f"{parent.namespace}/{parent.name}"
            reason = (
                f"no Service {where}: nothing for the route to attach to"
                if svc is None
                else f"no waypoint serves Service {where}: the route takes no effect for it "
                f"until the Service or its namespace is labelled {USE_WAYPOINT_LABEL}=<gateway>"
            )
            self._report(problems, route.key, f"spec.parentRefs[{i}]", reason, False)
            return  # one problem per resource

    def _check_rate_limit_targets(
        self,
        problems: dict[ResourceKey, Problem],
        policy: RateLimitPolicy,
        state: Mapping[ResourceKey, StateValue],
        resources: Mapping[ResourceKey, Resource],
        waypoints: Mapping[str, Waypoint],
    ) -> None:
        """A RateLimitPolicy is enforced by waypoints: a target that does not exist, or that
        no waypoint serves, is reported (the policy still goes to the waypoints, and takes
        effect once the target exists and is bound)."""
        ns = policy.metadata.namespace
        for i, ref in enumerate(policy.target_refs):
            where = f"{ns}/{ref.name}"
            reason = ""
            if ref.kind is RateLimitTargetKind.SERVICE:
                svc = state.get(ResourceKey(MeshService.kind, ns, ref.name))
                if not isinstance(svc, MeshService):
                    reason = f"no Service {where}: nothing for the policy to limit"
                elif not svc.waypoint:
                    reason = (
                        f"no waypoint serves Service {where}: the policy takes no effect until "
                        f"the Service or its namespace is labelled {USE_WAYPOINT_LABEL}=<gateway>"
                    )
            elif ref.kind is RateLimitTargetKind.HTTPROUTE:
                if ResourceKey(HTTPRoute.kind, ns, ref.name) not in resources:
                    reason = f"no HTTPRoute {where}: nothing for the policy to limit"
            elif where not in waypoints:
                reason = f"no waypoint Gateway {where}: nothing enforces the policy"
            if reason:
                self._report(problems, policy.key, f"spec.targetRefs[{i}]", reason, False)
                return  # one problem per resource

    @staticmethod
    def _served_by_a_waypoint(
        policy: AuthorizationPolicy | RequestAuthentication,
        state: Mapping[ResourceKey, StateValue],
        waypoints: Mapping[str, Waypoint],
    ) -> bool:
        """Whether a waypoint enforces a targetRefs AuthorizationPolicy: one of its targets is
        a waypoint Gateway, or a Service bound to a waypoint."""
        ns = policy.metadata.namespace
        for ref in policy.target_refs:
            if ref.kind is TargetKind.GATEWAY and f"{ns}/{ref.name}" in waypoints:
                return True
            if ref.kind is TargetKind.GATEWAY_CLASS and waypoints:
                return True  # the parser takes it only from the root namespace
            if ref.kind is TargetKind.SERVICE:
                svc = state.get(ResourceKey(MeshService.kind, ns, ref.name))
                if isinstance(svc, MeshService) and svc.waypoint:
                    return True
        return False

    def _service(
        self,
        svc: Service,
        ns_labels: Mapping[str, str],
        waypoints: Mapping[str, Waypoint],
        unbound: list[BuildError],
    ) -> MeshService:
        ns = svc.metadata.namespace
        requested, own = requested_waypoint(ns, svc.metadata.labels, ns_labels)
        waypoint, refused = bind_waypoint(requested, own, "service", waypoints)
        if refused is not None:
            unbound.append(refused)
        return MeshService(
            name=svc.metadata.name,
            namespace=ns,
            hostname=f"{svc.metadata.name}.{ns}.svc.{CLUSTER_DOMAIN}",
            addresses=(svc.cluster_ip,) if svc.cluster_ip else (),
            ports=tuple(ServicePort(p.name, p.port, p.protocol, p.app_protocol) for p in svc.ports),
            waypoint=waypoint,
        )

    def _waypoint(
        self, gw: Gateway, services: list[Service], ignored: list[BuildError]
    ) -> Waypoint:
        ns, name = gw.metadata.namespace, gw.metadata.name
        check_waypoint_gateway(gw)
        try:
            waypoint_replicas(gw)
        except BuildError as err:
            ignored.append(err)
        # Nodes take IPs only: an unset value or a hostname would make them refuse it.
        addresses = tuple(
            a.value for a in gw.addresses if a.value and a.type is AddressType.IP_ADDRESS
        )
        if not addresses:  # the Service the deployer made for it, as Gateway status says
            addresses = tuple(
                s.cluster_ip
                for s in services
                if s.metadata.name == name
                and s.metadata.labels.get(GATEWAY_NAME_LABEL) == name
                and s.cluster_ip
            )
        return Waypoint(
            name,
            ns,
            addresses,
            traffic_type=traffic_type(gw),
            identity=str(workload_id(self.trust_domain, ns, name)),
        )

    def _workload(
        self,
        pod: Pod,
        ns_labels: Mapping[str, str],
        services: list[Service],
        waypoints: Mapping[str, Waypoint],
        ignored: list[BuildError],
        unbound: list[BuildError],
        endpoints: tuple[ServiceMembership, ...] = (),
    ) -> Workload:
        """The pod's workload. A bad annotation that only narrows capture is left out and
        added to `ignored`: the pod is still enrolled, every outbound port captured. A
        waypoint its own label asks for but cannot have is added to `unbound`."""
        ns = pod.metadata.namespace
        requested, own = requested_waypoint(ns, pod.metadata.labels, ns_labels)
        waypoint, refused = bind_waypoint(requested, own, "workload", waypoints)
        if refused is not None:
            unbound.append(refused)
        try:
            excluded = excluded_ports(pod)
        except BuildError as err:
            excluded = ()
            ignored.append(err)
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
        memberships.extend(endpoints)  # Services without a selector, from their EndpointSlices
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
            waypoint=waypoint,
            workload_name=workload_name(pod),
            services=tuple(sorted(memberships, key=lambda m: (m.namespace, m.name))),
            excluded_ports=excluded,
        )
