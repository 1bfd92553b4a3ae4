"""Typed mesh state <-> protobuf: values survive the trip, malformed messages are refused by name."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import ConversionError, from_proto, key_from_proto, key_to_proto, to_proto
from meshcore.meshstate import (
    MeshService,
    ServiceMembership,
    ServicePort,
    StateValue,
    TrustBundle,
    Waypoint,
    Workload,
)
from meshcore.resources import (
    AuthorizationPolicy,
    ObjectMeta,
    PeerAuthentication,
    ResourceKey,
    documents_from_text,
    parse_documents,
)

WORKLOAD = Workload(
    uid="0b7c1e4a",
    name="cart-5f7b9c8d4e-q8w2z",
    namespace="shop",
    service_account="cart",
    identity="spiffe://cluster.local/ns/shop/sa/cart",
    node="node-a",
    node_address="192.168.50.11",
    addresses=("10.244.1.7", "fd00:10:244::7"),
    labels={"app": "cart", "version": "v1"},
    enrolled=True,
    ready=True,
    waypoint="shop/shop-wp",
    workload_name="cart",
    services=(
        ServiceMembership("shop", "cart", {80: 8080, 9090: 9901}),
        ServiceMembership("shop", "cart-canary", {}),
    ),
)
BARE_WORKLOAD = Workload(
    uid="",
    name="legacy",
    namespace="shop",
    service_account="default",
    identity="",
    node="",
    node_address="",
    addresses=(),
    labels={},
    enrolled=False,
    ready=False,
)
SERVICE = MeshService(
    name="cart",
    namespace="shop",
    hostname="cart.shop.svc.cluster.local",
    addresses=("10.96.0.20",),
    ports=(
        ServicePort("http", 80, app_protocol="kubernetes.io/h2c"),
        ServicePort("dns", 53, "UDP"),
    ),
    waypoint="shop/shop-wp",
)
HEADLESS_SERVICE = MeshService("db", "shop", "db.shop.svc.cluster.local", (), ())
WAYPOINT = Waypoint("shop-wp", "shop", ("10.244.3.4", "fd00::4"))
BUNDLE = TrustBundle("cluster.local", ("-----BEGIN CERTIFICATE-----\nA\n", "second-root"))


@pytest.mark.parametrize(
    "value",
    [WORKLOAD, BARE_WORKLOAD, SERVICE, HEADLESS_SERVICE, WAYPOINT, Waypoint("w", "ns"), BUNDLE],
    ids=lambda v: f"{v.kind}-{v.key.name}",
)
def test_mesh_values_survive_the_wire(value: StateValue):
    message = to_proto(value)
    assert key_from_proto(message.key) == value.key
    assert from_proto(message) == value
    assert from_proto(pb.Resource.FromString(message.SerializeToString())) == value


def test_a_key_survives_the_wire():
    key = ResourceKey("Workload", "shop", "cart")
    assert key_from_proto(pb.ResourceKey.FromString(key_to_proto(key).SerializeToString())) == key


# --- policies -----------------------------------------------------------------------------------

POLICIES = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: cart-rules
  namespace: shop
  labels: {team: payments}
  annotations: {note: dropped on the wire}
spec:
  selector: {matchLabels: {app: cart}}
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/frontend]
        notPrincipals: ["*/ns/shop/sa/bad"]
        namespaces: [shop]
        notNamespaces: [kube-system]
        ipBlocks: [10.244.0.0/16, 10.1.2.3, 10.9.9.9/8]
        notIpBlocks: ["fd00::/64"]
    - source:
        requestPrincipals: ["issuer/subject"]
        notRequestPrincipals: ["*"]
        remoteIpBlocks: ["2001:db8::1"]
        notRemoteIpBlocks: [192.168.0.0/24]
    to:
    - operation:
        hosts: [cart.shop.svc.cluster.local]
        notHosts: [admin.example.com]
        ports: ["8080", "9090"]
        notPorts: ["9901"]
        methods: [GET, POST]
        notMethods: [DELETE]
        paths: [/api/*, "/v1/{*}/items"]
        notPaths: [/admin]
    when:
    - key: request.headers[x-tenant]
      values: [blue]
      notValues: [red]
    - key: source.ip
      values: [10.0.0.0/8]
  - {}
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-all-but-nothing, namespace: shop}
spec:
  action: DENY
  selector: {}
  rules:
  - to: [{operation: {ports: ["22"]}}]
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-rules, namespace: shop}
spec:
  action: AUDIT
  targetRefs:
  - {kind: Service, group: "", name: cart}
  - {kind: Gateway, group: gateway.networking.k8s.io, name: shop-wp}
  rules:
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {paths: [/admin]}}]
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: default, namespace: weft-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: cart-ports, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    8080: {mode: DISABLE}
    9090: {mode: STRICT}
    9091: {}
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: inherit, namespace: shop}
spec:
  selector: {}
"""


def parsed_policies() -> list[AuthorizationPolicy | PeerAuthentication]:
    docs = documents_from_text(textwrap.dedent(POLICIES), "policies.yaml")
    out = []
    for parsed in parse_documents(docs):
        assert isinstance(parsed.resource, AuthorizationPolicy | PeerAuthentication)
        out.append(parsed.resource)
    return out


def as_node_sees_it(
    policy: AuthorizationPolicy | PeerAuthentication,
) -> AuthorizationPolicy | PeerAuthentication:
    """Only the name and namespace of a policy's metadata go on the wire."""
    meta = ObjectMeta(policy.metadata.name, policy.metadata.namespace)
    return dataclasses.replace(policy, metadata=meta)


@pytest.mark.parametrize("policy", parsed_policies(), ids=lambda p: f"{p.kind}-{p.metadata.name}")
def test_policies_survive_the_wire_but_for_metadata_beyond_name_and_namespace(
    policy: AuthorizationPolicy | PeerAuthentication,
):
    message = pb.Resource.FromString(to_proto(policy).SerializeToString())
    assert from_proto(message) == as_node_sees_it(policy)


def test_an_empty_selector_stays_distinct_from_no_selector_on_the_wire():
    by_name = {p.metadata.name: p for p in parsed_policies()}
    empty, absent = by_name["deny-all-but-nothing"], by_name["allow-nothing"]
    assert (empty.selector, absent.selector) == ({}, None)
    assert from_proto(to_proto(empty)).selector == {}  # type: ignore[union-attr]
    assert from_proto(to_proto(absent)).selector is None  # type: ignore[union-attr]


def test_a_rule_that_matches_everything_stays_one_on_the_wire():
    by_name = {p.metadata.name: p for p in parsed_policies()}
    back = from_proto(to_proto(by_name["cart-rules"]))
    assert isinstance(back, AuthorizationPolicy)
    assert back.rules[1].matches_everything


# --- malformed messages -------------------------------------------------------------------------


def resource(value: StateValue) -> pb.Resource:
    return to_proto(value)


def refused(message: pb.Resource) -> str:
    with pytest.raises(ConversionError) as caught:
        from_proto(message)
    return str(caught.value)


def test_a_workload_with_a_bad_address_is_refused_naming_it():
    message = resource(WORKLOAD)
    message.workload.addresses.append("10.244.1.300")
    assert refused(message) == (
        "Workload shop/cart-5f7b9c8d4e-q8w2z: '10.244.1.300' is not an IP address"
    )


def test_a_workload_with_a_bad_node_address_is_refused_naming_it():
    message = resource(WORKLOAD)
    message.workload.node_address = "node-a.example"
    assert "Workload shop/cart-5f7b9c8d4e-q8w2z: 'node-a.example'" in refused(message)


def test_a_workload_without_a_name_is_refused():
    message = resource(WORKLOAD)
    message.workload.name = ""
    assert "workload without name or namespace" in refused(message)


def test_a_service_with_a_bad_address_is_refused_naming_it():
    message = resource(SERVICE)
    message.service.addresses[:] = ["cart.example.com"]
    assert refused(message) == "Service shop/cart: 'cart.example.com' is not an IP address"


def test_a_waypoint_with_a_bad_address_is_refused_naming_it():
    message = resource(WAYPOINT)
    message.waypoint.addresses.append("")
    assert refused(message) == "Waypoint shop/shop-wp: '' is not an IP address"


def test_a_resource_without_a_body_is_refused_naming_it():
    message = pb.Resource(key=key_to_proto(ResourceKey("Workload", "shop", "ghost")))
    assert refused(message) == "Workload shop/ghost: resource has no body"


def test_a_key_that_does_not_match_its_body_is_refused():
    message = resource(WORKLOAD)
    message.key.name = "someone-else"
    assert refused(message) == (
        "Workload shop/someone-else: key does not match its body "
        "(Workload shop/cart-5f7b9c8d4e-q8w2z)"
    )


def test_a_body_under_another_kinds_key_is_refused():
    message = resource(SERVICE)
    message.key.kind = "Workload"
    assert "key does not match its body (Service shop/cart)" in refused(message)


def test_a_trust_bundle_with_no_roots_is_refused():
    message = resource(BUNDLE)
    del message.trust_bundle.roots_pem[:]
    assert refused(message) == "TrustBundle trust-bundle: a trust bundle with no roots"


def _policy(name: str) -> pb.Resource:
    by_name = {p.metadata.name: p for p in parsed_policies()}
    return resource(by_name[name])


def test_an_unknown_policy_action_is_refused_naming_the_policy():
    message = _policy("allow-nothing")
    message.authorization_policy.action = 7  # type: ignore[assignment]
    assert "shop/allow-nothing" in refused(message)


def test_an_unknown_mtls_mode_is_refused_naming_the_policy():
    message = _policy("default")
    message.peer_authentication.mode = 9  # type: ignore[assignment]
    assert "weft-system/default" in refused(message)


def test_an_unknown_port_level_mtls_mode_is_refused_naming_the_policy():
    message = _policy("cart-ports")
    message.peer_authentication.port_level[8080] = 9
    assert "shop/cart-ports" in refused(message)


@pytest.mark.parametrize("block", ["10.0.0.0/33", "not-an-ip", "", "fd00::/129"])
def test_a_bad_ip_block_in_a_policy_is_refused_naming_the_policy(block: str):
    message = _policy("cart-rules")
    message.authorization_policy.rules[0].sources[0].ip_blocks.append(block)
    assert "shop/cart-rules" in refused(message)


@pytest.mark.parametrize("port", ["http", "0", "65536", " 80", "\u00b2", "\uff18\uff10"])
def test_a_port_that_is_not_a_number_is_refused_naming_the_policy(port: str):
    message = _policy("cart-rules")
    message.authorization_policy.rules[0].operations[0].ports.append(port)
    assert "shop/cart-rules" in refused(message)
    assert repr(port) in refused(message)


@pytest.mark.parametrize("port", ["http", "0", "\uff18\uff10"])
def test_a_port_condition_that_is_not_a_number_is_refused_naming_the_policy(port: str):
    message = _policy("cart-rules")
    message.authorization_policy.rules[0].conditions.append(
        pb.Condition(key="destination.port", values=["80"], not_values=[port])
    )
    assert "shop/cart-rules" in refused(message)


def test_an_unknown_target_kind_is_refused_naming_the_policy():
    message = _policy("waypoint-rules")
    message.authorization_policy.target_refs[0].kind = "ServiceEntry"
    assert "shop/waypoint-rules" in refused(message)


def test_a_policy_under_another_name_is_refused():
    message = _policy("allow-nothing")
    message.key.name = "allow-everything"
    assert "key does not match its body" in refused(message)
