"""The mesh state the data plane needs: what the controller computes and every node keeps.

Typed, frozen values; the wire form is in `meshcore.api.convert`. Keys follow the
Kubernetes shape (kind, namespace, name) so a state is a plain mapping of key -> value.

A node keeps one Workload per pod of the cluster (50k and more), so the values are slotted
and what pods share is stored once: the strings many values repeat (namespaces, service
accounts, identities, node names) are interned, and equal label maps and membership port
maps are one read-only `Shared` map (see `docs/scale.md`).
"""

from __future__ import annotations

import enum
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from meshcore.resources import ResourceKey
from meshcore.resources.destinationrule import DestinationRule
from meshcore.resources.gateway import GRPCRoute, HTTPRoute
from meshcore.resources.meshconfig import MeshSettings
from meshcore.resources.ratelimit import RateLimitPolicy
from meshcore.resources.requestauthn import RequestAuthentication
from meshcore.resources.security import AuthorizationPolicy, PeerAuthentication
from meshcore.resources.virtualservice import VirtualService

DATAPLANE_MODE_LABEL = "weft.dev/dataplane-mode"
DATAPLANE_MODE_AMBIENT = "ambient"
DATAPLANE_MODE_NONE = "none"
USE_WAYPOINT_LABEL = "weft.dev/use-waypoint"
USE_WAYPOINT_NAMESPACE_LABEL = "weft.dev/use-waypoint-namespace"
WAYPOINT_FOR_LABEL = "weft.dev/waypoint-for"  # on the Gateway: which traffic it takes
# On the objects the deployer makes for a waypoint (as Gateway API implementations label them):
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
# ... and, as Istio's `gateway.istio.io/managed`, marks them as a waypoint's own: a waypoint's
# pods and Service are never bound to a waypoint themselves.
MANAGED_LABEL = "gateway.weft.dev/managed"
MANAGED_BY_MESH_CONTROLLER = "weft.dev-mesh-controller"
# The controllerName in the status weft writes (routes' status.parents[]), as Istio's
# `istio.io/mesh-controller`.
MESH_CONTROLLER_NAME = "weft.dev/mesh-controller"
EXCLUDE_OUTBOUND_PORTS_ANNOTATION = "weft.dev/exclude-outbound-ports"
WAYPOINT_GATEWAY_CLASS = "weft-waypoint"
CLUSTER_DOMAIN = "cluster.local"


def _intern(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


def _set(value: object, name: str, new: object) -> None:
    object.__setattr__(value, name, new)  # a frozen value, while it is made


class Shared(dict[Any, Any]):
    """A map many values hold alike (a membership's ports: every pod of the service; a pod's
    labels: every pod of its ReplicaSet), stored once. Read-only, as the frozen values that
    hold it; a plain dict for everything else (equality, `dict(...)`, protobuf)."""

    __slots__ = ("__weakref__",)

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle build it whole
        return (Shared, (tuple(self.items()),))

    def _read_only(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("a shared map of the mesh state is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only


# Held weakly: a map goes when the last value holding it does, so these hold no more than the
# state does.
_SHARED: weakref.WeakValueDictionary[tuple[tuple[Any, Any], ...], Shared] = (
    weakref.WeakValueDictionary()
)


def shared(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    """The one read-only map equal to `mapping` (strings in it interned). Equal maps in
    another order are the same map (protobuf maps have no order): it keeps the first's."""
    if isinstance(mapping, Shared):
        return mapping
    items = tuple((_intern(k), _intern(v)) for k, v in mapping.items())
    try:
        key = tuple(sorted(items))
    except TypeError:  # keys of mixed types: no order, equal only in the same order
        key = items
    found = _SHARED.get(key)
    if found is None:
        found = _SHARED[key] = Shared(items)
    return found


@dataclass(frozen=True, slots=True)
class ServiceMembership:
    """A service a workload backs: service port -> the workload's target port."""

    namespace: str
    name: str
    ports: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _set(self, "namespace", _intern(self.namespace))
        _set(self, "name", _intern(self.name))
        _set(self, "ports", shared(self.ports))


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    service_account: str
    identity: str
    node: str
    node_address: str
    addresses: tuple[str, ...]
    labels: Mapping[str, str]
    enrolled: bool
    ready: bool
    waypoint: str = ""
    workload_name: str = ""
    services: tuple[ServiceMembership, ...] = ()
    excluded_ports: tuple[int, ...] = ()
    kind = "Workload"

    def __post_init__(self) -> None:
        # uid, name and addresses are the pod's own: nothing to share
        for name in ("namespace", "service_account", "identity", "node", "node_address"):
            _set(self, name, _intern(getattr(self, name)))
        _set(self, "waypoint", _intern(self.waypoint))
        # a Deployment's name is shared by its pods; a bare pod's is its own name
        if self.workload_name == self.name:
            _set(self, "workload_name", self.name)
        else:
            _set(self, "workload_name", _intern(self.workload_name))
        _set(self, "labels", shared(self.labels))

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: str = "TCP"
    # The Service port's `appProtocol` ("http", "kubernetes.io/h2c", "grpc"...), "" when unset:
    # with the port name's prefix, what a waypoint parses on this port.
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class MeshService:
    name: str
    namespace: str
    hostname: str
    addresses: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    waypoint: str = ""
    kind = "Service"

    def __post_init__(self) -> None:
        _set(self, "namespace", _intern(self.namespace))
        _set(self, "waypoint", _intern(self.waypoint))

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)


class TrafficType(enum.StrEnum):
    """The Gateway's `weft.dev/waypoint-for` label, with Istio's meaning: which bindings a
    waypoint takes. A Service or Pod bound to a waypoint that does not take its kind of
    traffic is not bound."""

    SERVICE = "service"  # traffic addressed to a bound Service (the default)
    WORKLOAD = "workload"  # traffic addressed to a bound pod's IP
    ALL = "all"
    NONE = "none"

    @property
    def serves_services(self) -> bool:
        return self in (TrafficType.SERVICE, TrafficType.ALL)

    @property
    def serves_workloads(self) -> bool:
        return self in (TrafficType.WORKLOAD, TrafficType.ALL)


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A Gateway of class weft-waypoint: where bound traffic goes, and who the waypoint is.
    Its replicas are the ready workloads labelled `gateway.networking.k8s.io/gateway-name:
    <name>` in its namespace."""

    name: str
    namespace: str
    addresses: tuple[str, ...] = ()  # the Gateway's addresses, else its Service's ClusterIP
    traffic_type: TrafficType = TrafficType.SERVICE
    identity: str = ""  # spiffe://<td>/ns/<namespace>/sa/<name>: what its replicas present
    kind = "Waypoint"

    @property
    def for_(self) -> TrafficType:
        return self.traffic_type

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class TrustBundle:
    trust_domain: str
    roots_pem: tuple[str, ...]
    kind = "TrustBundle"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, "", "trust-bundle")


StateValue = (
    Workload
    | MeshService
    | Waypoint
    | TrustBundle
    | AuthorizationPolicy
    | PeerAuthentication
    | HTTPRoute  # sent as parsed, for waypoints
    | GRPCRoute
    | DestinationRule  # sent as parsed, for waypoints
    | VirtualService  # sent as parsed, for waypoints
    | RateLimitPolicy  # sent as parsed, for waypoints
    | RequestAuthentication  # sent as parsed, for waypoints
    | MeshSettings  # the mesh config's extension providers, for waypoints
)
