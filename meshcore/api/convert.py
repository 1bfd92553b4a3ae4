"""Typed mesh state <-> protobuf messages. The only place that knows both shapes.

`from_proto` is where the data plane parses what it receives: a message it cannot turn into
a typed value raises `ConversionError`, and the node NACKs that version.
"""

from __future__ import annotations

import ipaddress
import sys

from meshcore.api import mesh_pb2 as pb
from meshcore.api.destinationrule_convert import (
    destination_rule_from_proto,
    destination_rule_to_proto,
)
from meshcore.api.errors import ConversionError
from meshcore.api.meshsettings_convert import mesh_settings_from_proto, mesh_settings_to_proto
from meshcore.api.networking_convert import (
    virtual_service_from_proto,
    virtual_service_to_proto,
)
from meshcore.api.policy_convert import policy_from_proto, policy_to_proto
from meshcore.api.ratelimit_convert import rate_limit_from_proto, rate_limit_to_proto
from meshcore.api.requestauthn_convert import (
    request_authentication_from_proto,
    request_authentication_to_proto,
)
from meshcore.api.route_convert import route_from_proto, route_to_proto
from meshcore.meshstate import (
    MeshService,
    ServiceMembership,
    ServicePort,
    StateValue,
    TrafficType,
    TrustBundle,
    Waypoint,
    Workload,
)
from meshcore.resources import GRPCRoute, HTTPRoute, ResourceKey
from meshcore.resources.destinationrule import DestinationRule
from meshcore.resources.meshconfig import MeshSettings
from meshcore.resources.ratelimit import RateLimitPolicy
from meshcore.resources.requestauthn import RequestAuthentication
from meshcore.resources.virtualservice import VirtualService

__all__ = ["ConversionError", "from_proto", "key_from_proto", "key_to_proto", "to_proto"]


def key_to_proto(key: ResourceKey) -> pb.ResourceKey:
    return pb.ResourceKey(kind=key.kind, namespace=key.namespace, name=key.name)


def key_from_proto(msg: pb.ResourceKey) -> ResourceKey:
    # kind and namespace repeat across a node's 50k keys: stored once (docs/scale.md)
    return ResourceKey(sys.intern(msg.kind), sys.intern(msg.namespace), msg.name)


def to_proto(value: StateValue) -> pb.Resource:
    out = pb.Resource(key=key_to_proto(value.key))
    if isinstance(value, Workload):
        out.workload.CopyFrom(
            pb.Workload(
                uid=value.uid,
                name=value.name,
                namespace=value.namespace,
                service_account=value.service_account,
                identity=value.identity,
                node=value.node,
                node_address=value.node_address,
                addresses=list(value.addresses),
                labels=dict(value.labels),
                enrolled=value.enrolled,
                ready=value.ready,
                waypoint=value.waypoint,
                workload_name=value.workload_name,
                services=[
                    pb.ServiceMembership(namespace=m.namespace, name=m.name, ports=dict(m.ports))
                    for m in value.services
                ],
                excluded_ports=list(value.excluded_ports),
            )
        )
    elif isinstance(value, MeshService):
        out.service.CopyFrom(
            pb.Service(
                name=value.name,
                namespace=value.namespace,
                hostname=value.hostname,
                addresses=list(value.addresses),
                waypoint=value.waypoint,
                ports=[
                    pb.ServicePort(
                        name=p.name, port=p.port, protocol=p.protocol, app_protocol=p.app_protocol
                    )
                    for p in value.ports
                ],
            )
        )
    elif isinstance(value, Waypoint):
        out.waypoint.CopyFrom(
            pb.Waypoint(
                name=value.name,
                namespace=value.namespace,
                addresses=list(value.addresses),
                traffic_type=value.traffic_type.value,
                identity=value.identity,
            )
        )
    elif isinstance(value, TrustBundle):
        out.trust_bundle.CopyFrom(
            pb.TrustBundle(trust_domain=value.trust_domain, roots_pem=list(value.roots_pem))
        )
    elif isinstance(value, HTTPRoute | GRPCRoute):
        route_to_proto(value, out)
    elif isinstance(value, DestinationRule):
        destination_rule_to_proto(value, out)
    elif isinstance(value, VirtualService):
        virtual_service_to_proto(value, out)
    elif isinstance(value, RateLimitPolicy):
        rate_limit_to_proto(value, out)
    elif isinstance(value, RequestAuthentication):
        request_authentication_to_proto(value, out)
    elif isinstance(value, MeshSettings):
        mesh_settings_to_proto(value, out)
    else:
        policy_to_proto(value, out)
    return out


def _addresses(values: object, what: str) -> tuple[str, ...]:
    out = []
    for a in values:  # type: ignore[attr-defined]
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise ConversionError(f"{what}: {a!r} is not an IP address") from None
        out.append(str(a))
    return tuple(out)


def from_proto(msg: pb.Resource) -> StateValue:
    key = key_from_proto(msg.key)
    body = msg.WhichOneof("body")
    what = f"{key}"
    if body == "workload":
        w = msg.workload
        if not w.name or not w.namespace:
            raise ConversionError(f"{what}: workload without name or namespace")
        value: StateValue = Workload(
            uid=w.uid,
            name=w.name,
            namespace=w.namespace,
            service_account=w.service_account,
            identity=w.identity,
            node=w.node,
            node_address=_addresses([w.node_address], what)[0] if w.node_address else "",
            addresses=_addresses(w.addresses, what),
            labels=dict(w.labels),
            enrolled=w.enrolled,
            ready=w.ready,
            waypoint=w.waypoint,
            workload_name=w.workload_name,
            services=tuple(
                ServiceMembership(m.namespace, m.name, dict(m.ports)) for m in w.services
            ),
            excluded_ports=tuple(w.excluded_ports),
        )
    elif body == "service":
        s = msg.service
        value = MeshService(
            name=s.name,
            namespace=s.namespace,
            hostname=s.hostname,
            addresses=_addresses(s.addresses, what),
            ports=tuple(ServicePort(p.name, p.port, p.protocol, p.app_protocol) for p in s.ports),
            waypoint=s.waypoint,
        )
    elif body == "waypoint":
        wp = msg.waypoint
        try:
            traffic_type = TrafficType(wp.traffic_type or TrafficType.SERVICE.value)
        except ValueError:
            raise ConversionError(
                f"{what}: traffic_type must be service, workload, all or none, "
                f"got {wp.traffic_type!r}"
            ) from None
        value = Waypoint(
            wp.name,
            wp.namespace,
            _addresses(wp.addresses, what),
            traffic_type=traffic_type,
            identity=wp.identity,
        )
    elif body == "trust_bundle":
        if not msg.trust_bundle.roots_pem:
            raise ConversionError(f"{what}: a trust bundle with no roots")
        value = TrustBundle(msg.trust_bundle.trust_domain, tuple(msg.trust_bundle.roots_pem))
    elif body in ("authorization_policy", "peer_authentication"):
        value = policy_from_proto(msg)
    elif body in ("http_route", "grpc_route"):
        value = route_from_proto(msg)
    elif body == "destination_rule":
        value = destination_rule_from_proto(msg)
    elif body == "virtual_service":
        value = virtual_service_from_proto(msg)
    elif body == "rate_limit_policy":
        value = rate_limit_from_proto(msg)
    elif body == "request_authentication":
        value = request_authentication_from_proto(msg)
    elif body == "mesh_settings":
        value = mesh_settings_from_proto(msg)
    else:
        raise ConversionError(f"{what}: resource has no body")
    if value.key != key:
        raise ConversionError(f"{what}: key does not match its body ({value.key})")
    return value
