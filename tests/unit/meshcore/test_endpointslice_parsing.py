"""EndpointSlice and Node parsing, and the Service types weft takes as their ClusterIP."""

from __future__ import annotations

import textwrap

import pytest

from meshcore.resources import ManifestError, Service, documents_from_text, parse_resource
from meshcore.resources.endpointslice import (
    MAX_ADDRESSES,
    MAX_ENDPOINTS,
    MAX_PORTS,
    AddressType,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    TargetRef,
)
from meshcore.resources.node import Node

SLICE = """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: shop
  labels: {{kubernetes.io/service-name: db}}
{body}
"""


def parse_one(text: str) -> object:
    (doc,) = documents_from_text(textwrap.dedent(text), "x.yaml")
    return parse_resource(doc).resource


def slice_of(body: str) -> EndpointSlice:
    es = parse_one(SLICE.format(body=textwrap.dedent(body)))
    assert isinstance(es, EndpointSlice)
    return es


def test_a_hand_written_slice() -> None:
    es = slice_of("""\
        addressType: IPv4
        endpoints:
        - addresses: [10.244.1.5]
          conditions: {ready: true, serving: true, terminating: false}
          targetRef: {kind: Pod, name: db-0, namespace: shop, uid: u-1}
          nodeName: node-1
          zone: z1
        - addresses: [192.0.2.10]
        ports:
        - {name: sql, port: 5432, protocol: TCP, appProtocol: postgresql}
        """)
    assert es.service_name == "db" and es.address_type is AddressType.IPV4
    first, second = es.endpoints
    assert first.addresses == ("10.244.1.5",) and first.node_name == "node-1"
    assert first.target_ref == TargetRef("Pod", "db-0", "shop", "u-1")
    assert second.conditions == EndpointConditions(True, True, False)  # unset: ready
    assert es.ports == (EndpointPort("sql", 5432, "TCP", "postgresql"),)


def test_serving_defaults_to_ready() -> None:
    es = slice_of("""\
        addressType: IPv4
        endpoints: [{addresses: [10.0.0.1], conditions: {ready: false}}]
        """)
    assert es.endpoints[0].conditions == EndpointConditions(False, False, False)


@pytest.mark.parametrize("kind", ["IPv6", "FQDN"])
def test_other_address_types_parse_with_no_endpoints(kind: str) -> None:
    es = slice_of(f"""\
        addressType: {kind}
        endpoints: [{{addresses: ["fd00::1", "db.example.com"]}}]
        ports: [{{port: 5432}}]
        """)
    assert es.address_type.value == kind and es.endpoints == () and es.ports == ()


BAD = [
    ("addressType: IPv5", "EndpointSlice shop/db-1: addressType: must be IPv4, IPv6 or FQDN"),
    ("endpoints: []", "EndpointSlice shop/db-1: addressType: required field is missing"),
    (
        "addressType: IPv4\nendpoints: [{addresses: []}]",
        "endpoints[0].addresses: an endpoint needs at least one address",
    ),
    (
        "addressType: IPv4\nendpoints: [{addresses: [fd00::1]}]",
        "endpoints[0].addresses[0]: 'fd00::1' is not an IPv4 address (addressType is IPv4)",
    ),
    (
        "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], conditions: {ready: yes-ish}}]",
        "endpoints[0].conditions.ready: expected true or false",
    ),
    (
        "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], weight: 3}]",
        "endpoints[0].weight: unknown field",
    ),
    (
        "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1], targetRef: {kind: Pod, x: 1}}]",
        "endpoints[0].targetRef.x: unknown field",
    ),
    ("addressType: IPv4\nports: [{port: 0}]", "ports[0].port: must be at least 1, got 0"),
    ("addressType: IPv4\nports: [{port: 80, protocol: tcp}]", "ports[0].protocol: must be TCP"),
    ("addressType: IPv4\nports: [{name: Web_1, port: 80}]", "ports[0].name:"),
    (
        "addressType: IPv4\nports: [{name: a, port: 80}, {name: a, port: 81}]",
        "ports[1]: duplicate port name 'a' for TCP",
    ),
    ("addressType: IPv4\nendpoints: {}", "endpoints: expected an array"),
]


@pytest.mark.parametrize(("body", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_slices_name_the_field(body: str, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        slice_of(body)
    assert message in str(err.value)


def test_bounds_are_the_api_servers() -> None:
    endpoint = "{addresses: [10.0.0.1]}"
    at = slice_of(f"addressType: IPv4\nendpoints: [{', '.join([endpoint] * MAX_ENDPOINTS)}]")
    assert len(at.endpoints) == MAX_ENDPOINTS
    with pytest.raises(ManifestError, match=f"endpoints: at most {MAX_ENDPOINTS} endpoints"):
        slice_of(f"addressType: IPv6\nendpoints: [{', '.join([endpoint] * (MAX_ENDPOINTS + 1))}]")
    ports = ", ".join(f"{{name: p{i}, port: {i + 1}}}" for i in range(MAX_PORTS + 1))
    with pytest.raises(ManifestError, match=f"ports: at most {MAX_PORTS} ports"):
        slice_of(f"addressType: IPv4\nports: [{ports}]")
    addresses = ", ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(MAX_ADDRESSES + 1))
    with pytest.raises(ManifestError, match=f"at most {MAX_ADDRESSES} addresses"):
        slice_of(f"addressType: IPv4\nendpoints: [{{addresses: [{addresses}]}}]")


def test_a_node_keeps_its_internal_addresses() -> None:
    node = parse_one("""\
        apiVersion: v1
        kind: Node
        metadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}
        spec: {podCIDR: 10.244.1.0/24}
        status:
          addresses:
          - {type: InternalIP, address: 192.168.56.11}
          - {type: Hostname, address: node-1}
          - {type: ExternalIP, address: 203.0.113.7}
          capacity: {cpu: "2"}
        """)
    assert isinstance(node, Node)
    assert node.key.namespace == "" and node.internal_ips == ("192.168.56.11",)


def test_a_node_is_cluster_scoped_and_its_address_checked() -> None:
    head = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1"
    with pytest.raises(ManifestError, match=r"metadata\.namespace: this kind is cluster"):
        parse_one(head + ", namespace: x}\n")
    with pytest.raises(
        ManifestError, match=r"Node node-1: status\.addresses\[0\]\.address: 'n1' is not"
    ):
        parse_one(head + "}\nstatus: {addresses: [{type: InternalIP, address: n1}]}\n")


SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
{spec}
"""


@pytest.mark.parametrize(
    "spec",
    [
        "  type: NodePort\n  clusterIP: 10.96.0.9\n  externalTrafficPolicy: Local\n"
        "  ports: [{port: 80, nodePort: 30080}]\n  selector: {app: web}",
        "  type: LoadBalancer\n  clusterIP: 10.96.0.9\n  loadBalancerIP: 203.0.113.9\n"
        "  loadBalancerClass: x.io/lb\n  allocateLoadBalancerNodePorts: true\n"
        "  healthCheckNodePort: 32000\n  loadBalancerSourceRanges: [0.0.0.0/0]\n"
        "  ports: [{port: 80, nodePort: 30080}]\n  selector: {app: web}",
    ],
    ids=["NodePort", "LoadBalancer"],
)
def test_node_port_and_load_balancer_services_are_their_cluster_ip(spec: str) -> None:
    (doc,) = documents_from_text(SERVICE.format(spec=spec), "x.yaml")
    parsed = parse_resource(doc)
    svc = parsed.resource
    assert isinstance(svc, Service)
    assert svc.cluster_ip == "10.96.0.9" and svc.ports[0].port == 80
    assert "spec.ports[0].nodePort" in parsed.ignored_fields  # said, not silently dropped
