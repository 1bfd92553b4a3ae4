"""EndpointSlice (`discovery.k8s.io/v1`): the endpoints of a Service, as Kubernetes lists them.

weft reads them for Services without a selector only, whose endpoints someone (a person, or
another controller) writes by hand; a Service with a selector gets its endpoints from the pods
its selector matches, which say more than a slice does (as Istio's ambient index: Pod first,
EndpointSlice for what no pod describes). Only `addressType: IPv4` is read, as weft's mesh is
single-stack IPv4: an IPv6 or FQDN slice parses, with no endpoints, and is otherwise ignored.

Bounds are the API server's own (1,000 endpoints and 100 ports per slice, 1 to 100 addresses
per endpoint), so a slice the lab's folder accepts is one a cluster would store.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.names import check_dns_subdomain, check_label_key, check_port_name

ENDPOINTSLICE_VERSIONS = frozenset({"discovery.k8s.io/v1"})
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"

MAX_ENDPOINTS = 1000  # apimachinery's maxEndpoints
MAX_PORTS = 100  # maxPorts
MAX_ADDRESSES = 100  # maxAddresses, per endpoint

_IGNORED_ENDPOINT = frozenset({"hostname", "zone", "hints", "deprecatedTopology"})
_IGNORED_TARGET_REF = frozenset({"resourceVersion", "fieldPath"})


class AddressType(enum.StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"
    FQDN = "FQDN"


@dataclass(frozen=True)
class TargetRef:
    """What an endpoint is (a Pod, usually); weft matches pods by address, this is for
    messages and for telling a pod from something else."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""


@dataclass(frozen=True)
class EndpointConditions:
    """Kubernetes' meaning: `ready` unset is ready; `serving` unset is `ready`; `terminating`
    unset is not terminating."""

    ready: bool = True
    serving: bool = True
    terminating: bool = False


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[str, ...]
    conditions: EndpointConditions = EndpointConditions()
    target_ref: TargetRef | None = None
    node_name: str = ""


@dataclass(frozen=True)
class EndpointPort:
    """A port of the slice: `name` matches the Service port it serves, `port` is where the
    endpoints listen (the target port). `port` 0: unset, "all ports" in Kubernetes."""

    name: str = ""
    port: int = 0
    protocol: str = "TCP"
    app_protocol: str = ""


@dataclass(frozen=True)
class EndpointSlice:
    metadata: ObjectMeta
    address_type: AddressType
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    kind = "EndpointSlice"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def service_name(self) -> str:
        """The Service it belongs to (label `kubernetes.io/service-name`), "" for none."""
        return self.metadata.labels.get(SERVICE_NAME_LABEL, "")


def _boolean(f: Fields, name: str, default: bool) -> bool:
    value = f.raw(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise f.fail(name, "expected true or false")
    return value


def _parse_conditions(raw: object, path: str) -> EndpointConditions:
    f = Fields(raw, path)
    ready = _boolean(f, "ready", True)
    serving = _boolean(f, "serving", ready)
    terminating = _boolean(f, "terminating", False)
    f.done()
    return EndpointConditions(ready, serving, terminating)


def _parse_target_ref(raw: object, path: str) -> TargetRef:
    f = Fields(raw, path, ignored=_IGNORED_TARGET_REF)
    f.string("apiVersion")
    kind = f.string("kind")
    name = f.string("name")
    namespace = f.string("namespace")
    uid = f.string("uid")
    f.done()
    return TargetRef(kind, name, namespace, uid)


def _parse_endpoint(raw: object, path: str, ignored: list[str]) -> Endpoint:
    f = Fields(raw, path, ignored=_IGNORED_ENDPOINT)
    addresses = f.string_list("addresses")
    if not addresses:
        raise f.fail("addresses", "an endpoint needs at least one address")
    if len(addresses) > MAX_ADDRESSES:
        raise f.fail("addresses", f"at most {MAX_ADDRESSES} addresses, got {len(addresses)}")
    for i, address in enumerate(addresses):
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise ManifestError(
                f"{address!r} is not an IPv4 address (addressType is IPv4)",
                field=f"{f.sub('addresses')}[{i}]",
            ) from None
    conditions = (
        _parse_conditions(f.raw("conditions"), f.sub("conditions"))
        if f.has("conditions")
        else EndpointConditions()
    )
    target = (
        _parse_target_ref(f.raw("targetRef"), f.sub("targetRef")) if f.has("targetRef") else None
    )
    node_name = f.string("nodeName")
    if node_name:
        check_dns_subdomain(node_name, f.sub("nodeName"))
    ignored.extend(f.done())
    return Endpoint(addresses, conditions, target, node_name)


def _parse_port(raw: object, path: str) -> EndpointPort:
    f = Fields(raw, path)
    name = f.string("name")
    if name:
        check_port_name(name, f.sub("name"))
    port = f.integer("port", minimum=1, maximum=65535)
    protocol = f.string("protocol", default="TCP")
    if protocol not in ("TCP", "UDP", "SCTP"):
        raise f.fail("protocol", f"must be TCP, UDP or SCTP, got {protocol!r}")
    app_protocol = f.string("appProtocol")
    if app_protocol:
        check_label_key(app_protocol, f.sub("appProtocol"))
    f.done()
    return EndpointPort(name, port, protocol, app_protocol)


def parse_endpoint_slice(f: Fields, ignored: list[str]) -> EndpointSlice:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    text = f.string("addressType", required=True)
    try:
        address_type = AddressType(text)
    except ValueError:
        raise f.fail("addressType", f"must be IPv4, IPv6 or FQDN, got {text!r}") from None
    raw_endpoints = f.raw("endpoints")
    raw_ports = f.raw("ports")
    for name, raw, bound in (
        ("endpoints", raw_endpoints, MAX_ENDPOINTS),
        ("ports", raw_ports, MAX_PORTS),
    ):
        if raw is not None and not isinstance(raw, list):
            raise f.fail(name, "expected an array")
        if raw is not None and len(raw) > bound:
            raise f.fail(name, f"at most {bound} {name} per slice, got {len(raw)}")
    if address_type is not AddressType.IPV4:
        return EndpointSlice(meta, address_type)  # not read: weft's mesh is IPv4
    endpoints = tuple(_parse_endpoint(item, p, ignored) for p, item in f.objects("endpoints"))
    ports = tuple(_parse_port(item, p) for p, item in f.objects("ports"))
    seen: set[tuple[str, str]] = set()
    for i, port in enumerate(ports):
        if (port.name, port.protocol) in seen:
            raise f.fail(f"ports[{i}]", f"duplicate port name {port.name!r} for {port.protocol}")
        seen.add((port.name, port.protocol))
    return EndpointSlice(meta, address_type, endpoints, ports)
