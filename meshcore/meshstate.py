"""The mesh state the data plane needs: what the controller computes and every node keeps.

Typed, frozen values; the wire form is in `meshcore.api.convert`. Keys follow the
Kubernetes shape (kind, namespace, name) so a state is a plain mapping of key -> value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.resources import ResourceKey
from meshcore.resources.security import AuthorizationPolicy, PeerAuthentication

DATAPLANE_MODE_LABEL = "weft.dev/dataplane-mode"
DATAPLANE_MODE_AMBIENT = "ambient"
DATAPLANE_MODE_NONE = "none"
USE_WAYPOINT_LABEL = "weft.dev/use-waypoint"
EXCLUDE_OUTBOUND_PORTS_ANNOTATION = "weft.dev/exclude-outbound-ports"
WAYPOINT_GATEWAY_CLASS = "weft-waypoint"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class ServiceMembership:
    """A service a workload backs: service port -> the workload's target port."""

    namespace: str
    name: str
    ports: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
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

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: str = "TCP"
    # The Service port's `appProtocol` ("http", "kubernetes.io/h2c", "grpc"...), "" when unset:
    # with the port name's prefix, what a waypoint parses on this port.
    app_protocol: str = ""


@dataclass(frozen=True)
class MeshService:
    name: str
    namespace: str
    hostname: str
    addresses: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    waypoint: str = ""
    kind = "Service"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class Waypoint:
    name: str
    namespace: str
    addresses: tuple[str, ...] = ()
    kind = "Waypoint"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class TrustBundle:
    trust_domain: str
    roots_pem: tuple[str, ...]
    kind = "TrustBundle"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, "", "trust-bundle")


StateValue = (
    Workload | MeshService | Waypoint | TrustBundle | AuthorizationPolicy | PeerAuthentication
)
