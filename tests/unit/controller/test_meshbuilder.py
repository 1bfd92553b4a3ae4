"""Resources in, mesh state out: enrollment, waypoints, identities, service membership, reuse."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from controller.meshbuilder import (
    USE_WAYPOINT_NAMESPACE_LABEL,
    MeshBuilder,
    is_enrolled,
    waypoint_for,
    workload_name,
)
from meshcore.api.convert import from_proto, to_proto
from meshcore.meshstate import (
    DATAPLANE_MODE_LABEL,
    USE_WAYPOINT_LABEL,
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
    Namespace,
    ObjectMeta,
    PeerAuthentication,
    Pod,
    Resource,
    ResourceKey,
    Service,
    documents_from_text,
    parse_documents,
)
from meshcore.resources.core import Container, PodSpec, PodStatus

TRUST_DOMAIN = "cluster.local"
BUNDLE = TrustBundle(
    TRUST_DOMAIN, ("-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n",)
)
AMBIENT = {DATAPLANE_MODE_LABEL: "ambient"}
OPTED_OUT = {DATAPLANE_MODE_LABEL: "none"}


def parse(text: str) -> dict[ResourceKey, Resource]:
    docs = documents_from_text(textwrap.dedent(text), "cluster.yaml")
    return {p.resource.key: p.resource for p in parse_documents(docs)}


def build(text: str) -> dict[ResourceKey, StateValue]:
    return MeshBuilder(TRUST_DOMAIN).build(parse(text), BUNDLE)


def workload(state: dict[ResourceKey, StateValue], namespace: str, name: str) -> Workload:
    value = state[ResourceKey("Workload", namespace, name)]
    assert isinstance(value, Workload)
    return value


def service(state: dict[ResourceKey, StateValue], namespace: str, name: str) -> MeshService:
    value = state[ResourceKey("Service", namespace, name)]
    assert isinstance(value, MeshService)
    return value


def of_kind(state: dict[ResourceKey, StateValue], kind: str) -> set[ResourceKey]:
    return {k for k in state if k.kind == kind}


# --- enrollment: Istio ambient's rule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pod_labels", "namespace_labels", "enrolled"),
    [
        ({}, AMBIENT, True),
        ({}, {}, False),
        ({}, OPTED_OUT, False),
        (AMBIENT, {}, True),
        (AMBIENT, OPTED_OUT, True),
        (OPTED_OUT, {}, False),
        ({DATAPLANE_MODE_LABEL: "sidecar"}, AMBIENT, True),
        ({DATAPLANE_MODE_LABEL: "sidecar"}, {}, False),
        ({}, {DATAPLANE_MODE_LABEL: "Ambient"}, False),
    ],
)
def test_the_pod_label_decides_enrollment_when_set_else_the_namespace_label(
    pod_labels: dict[str, str], namespace_labels: dict[str, str], enrolled: bool
):
    assert is_enrolled(pod_labels, namespace_labels) is enrolled


def test_a_pod_label_none_opts_out_of_an_ambient_namespace():
    assert is_enrolled(OPTED_OUT, AMBIENT) is False


# --- waypoints ----------------------------------------------------------------------------------


def test_an_object_without_waypoint_labels_uses_no_waypoint():
    assert waypoint_for("shop", {"app": "cart"}, {}) == ""


def test_the_object_label_names_a_waypoint_in_its_own_namespace():
    assert waypoint_for("shop", {USE_WAYPOINT_LABEL: "wp"}, {}) == "shop/wp"


def test_the_namespace_label_applies_when_the_object_has_none():
    assert waypoint_for("shop", {}, {USE_WAYPOINT_LABEL: "ns-wp"}) == "shop/ns-wp"


def test_the_object_label_wins_over_the_namespace_label():
    assert (
        waypoint_for("shop", {USE_WAYPOINT_LABEL: "own"}, {USE_WAYPOINT_LABEL: "ns"}) == "shop/own"
    )


def test_a_use_waypoint_none_on_the_object_opts_out_of_the_namespace_waypoint():
    assert waypoint_for("shop", {USE_WAYPOINT_LABEL: "none"}, {USE_WAYPOINT_LABEL: "ns"}) == ""


def test_a_use_waypoint_none_on_the_namespace_means_no_waypoint():
    assert waypoint_for("shop", {}, {USE_WAYPOINT_LABEL: "none"}) == ""


def test_the_waypoint_namespace_label_names_a_waypoint_in_another_namespace():
    own = {USE_WAYPOINT_LABEL: "wp", USE_WAYPOINT_NAMESPACE_LABEL: "infra"}
    assert waypoint_for("shop", own, {}) == "infra/wp"
    assert waypoint_for("shop", {}, own) == "infra/wp"


def test_the_waypoint_namespace_label_goes_with_the_waypoint_label_of_the_same_object():
    namespace_labels = {USE_WAYPOINT_LABEL: "ns-wp", USE_WAYPOINT_NAMESPACE_LABEL: "infra"}
    assert waypoint_for("shop", {USE_WAYPOINT_LABEL: "own"}, namespace_labels) == "shop/own"


# --- workload names -----------------------------------------------------------------------------


def _pod(name: str, labels: dict[str, str]) -> Pod:
    return Pod(ObjectMeta(name, "shop", labels), PodSpec((Container("c", "img"),)))


@pytest.mark.parametrize(
    ("pod_name", "labels", "expected"),
    [
        ("web-7d9f8b6c5d-x2k9p", {"pod-template-hash": "7d9f8b6c5d"}, "web"),
        ("my-web-v2-7d9f8b6c5d-x2k9p", {"pod-template-hash": "7d9f8b6c5d"}, "my-web-v2"),
        ("web-7d9f8b6c5d-x2k9p", {}, "web-7d9f8b6c5d-x2k9p"),
        ("web-7d9f8b6c5d-x2k9p", {"pod-template-hash": "0000000000"}, "web-7d9f8b6c5d-x2k9p"),
        ("web-7d9f8b6c5d-x2k9", {"pod-template-hash": "7d9f8b6c5d"}, "web-7d9f8b6c5d-x2k9"),
        ("standalone", {"pod-template-hash": "abc"}, "standalone"),
    ],
)
def test_a_deployment_pod_is_named_after_its_deployment_and_other_pods_after_themselves(
    pod_name: str, labels: dict[str, str], expected: str
):
    assert workload_name(_pod(pod_name, labels)) == expected


# --- build: workloads ---------------------------------------------------------------------------

SHOP = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {weft.dev/dataplane-mode: ambient, weft.dev/use-waypoint: shop-wp}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-5f7b9c8d4e-q8w2z
  namespace: shop
  uid: 0b7c1e4a-uid
  labels: {app: cart, pod-template-hash: 5f7b9c8d4e}
spec:
  nodeName: node-a
  serviceAccountName: cart
  containers:
  - name: app
    image: cart:1
    ports:
    - {name: http, containerPort: 8080}
    - {name: admin, containerPort: 9901}
status:
  phase: Running
  podIP: 10.244.1.7
  hostIP: 192.168.50.11
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: legacy
  namespace: shop
  labels: {app: cart, weft.dev/dataplane-mode: none}
spec:
  nodeName: node-b
  containers: [{name: app, image: legacy:1}]
status: {phase: Running, podIP: 10.244.2.9, hostIP: 192.168.50.12}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: shop, labels: {app: cart}}
spec:
  containers: [{name: app, image: cart:1}]
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: unscheduled, namespace: shop}
spec:
  containers: [{name: app, image: cart:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: default, labels: {app: cart}}
spec:
  nodeName: node-a
  containers: [{name: app, image: cart:1, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.1.8, hostIP: 192.168.50.11}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9090, targetPort: 9901}
  - {name: grpc, port: 81, targetPort: grpc, appProtocol: grpc}
---
apiVersion: v1
kind: Service
metadata:
  name: checkout
  namespace: shop
  labels: {weft.dev/use-waypoint: none}
spec:
  selector: {app: checkout}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: shop}
spec:
  ports: [{port: 443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-wp, namespace: shop, labels: {weft.dev/waypoint-for: all}}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


def test_only_pods_with_an_ip_become_workloads():
    state = build(SHOP)
    assert of_kind(state, "Workload") == {
        ResourceKey("Workload", "shop", "cart-5f7b9c8d4e-q8w2z"),
        ResourceKey("Workload", "shop", "legacy"),
        ResourceKey("Workload", "default", "outsider"),
    }


def test_a_workload_carries_what_the_data_plane_needs_about_its_pod():
    state = build(SHOP)
    assert workload(state, "shop", "cart-5f7b9c8d4e-q8w2z") == Workload(
        uid="0b7c1e4a-uid",
        name="cart-5f7b9c8d4e-q8w2z",
        namespace="shop",
        service_account="cart",
        identity="spiffe://cluster.local/ns/shop/sa/cart",
        node="node-a",
        node_address="192.168.50.11",
        addresses=("10.244.1.7",),
        labels={"app": "cart", "pod-template-hash": "5f7b9c8d4e"},
        enrolled=True,
        ready=True,
        waypoint="shop/shop-wp",
        workload_name="cart",
        services=(ServiceMembership("shop", "cart", {80: 8080, 9090: 9901}),),
    )


def test_the_identity_uses_the_builders_trust_domain_and_the_default_service_account():
    state = MeshBuilder("example.org").build(parse(SHOP), BUNDLE)
    assert workload(state, "shop", "legacy").identity == "spiffe://example.org/ns/shop/sa/default"


def test_a_pod_without_uid_is_identified_by_namespace_and_name():
    assert workload(build(SHOP), "shop", "legacy").uid == "shop/legacy"


def test_an_opted_out_pod_is_still_known_but_not_enrolled():
    legacy = workload(build(SHOP), "shop", "legacy")
    assert (legacy.enrolled, legacy.ready, legacy.addresses) == (False, False, ("10.244.2.9",))


def test_a_pod_of_an_unlabelled_namespace_is_not_enrolled_and_has_no_waypoint():
    outsider = workload(build(SHOP), "default", "outsider")
    assert (outsider.enrolled, outsider.waypoint) == (False, "")


def test_a_pod_follows_its_namespace_waypoint_unless_it_opts_out():
    text = SHOP.replace(
        "labels: {app: cart, weft.dev/dataplane-mode: none}",
        "labels: {app: cart, weft.dev/use-waypoint: none}",
    )
    state = build(text)
    assert workload(state, "shop", "cart-5f7b9c8d4e-q8w2z").waypoint == "shop/shop-wp"
    assert workload(state, "shop", "legacy").waypoint == ""


# --- build: service membership ------------------------------------------------------------------


def test_a_named_target_port_resolves_to_the_pods_container_port_of_that_name():
    cart = workload(build(SHOP), "shop", "cart-5f7b9c8d4e-q8w2z")
    (membership,) = cart.services
    assert membership.ports[80] == 8080


def test_a_numeric_target_port_is_used_as_it_is():
    (membership,) = workload(build(SHOP), "shop", "cart-5f7b9c8d4e-q8w2z").services
    assert membership.ports[9090] == 9901


def test_a_service_port_without_target_port_targets_the_same_port():
    text = SHOP.replace("selector: {app: checkout}", "selector: {app: cart}")
    cart = workload(build(text), "shop", "cart-5f7b9c8d4e-q8w2z")
    assert [m.name for m in cart.services] == ["cart", "checkout"]
    assert cart.services[1].ports == {8080: 8080}


def test_a_named_target_port_the_pod_does_not_define_is_left_out():
    # `grpc` exists on no container of the cart pod; `legacy` defines no named ports at all.
    state = build(SHOP)
    (cart_membership,) = workload(state, "shop", "cart-5f7b9c8d4e-q8w2z").services
    assert 81 not in cart_membership.ports
    (legacy_membership,) = workload(state, "shop", "legacy").services
    assert legacy_membership.ports == {9090: 9901}


def test_a_service_selects_only_matching_pods_of_its_own_namespace():
    state = build(SHOP)
    assert workload(state, "default", "outsider").services == ()
    assert [m.name for m in workload(state, "shop", "legacy").services] == ["cart"]


def test_a_service_without_selector_has_no_member_workloads():
    state = build(SHOP)
    assert all(
        m.name != "external"
        for key in of_kind(state, "Workload")
        for m in workload(state, key.namespace, key.name).services
    )


def test_memberships_are_listed_in_service_order_whatever_the_manifest_order():
    text = SHOP.replace("selector: {app: checkout}", "selector: {app: cart}")
    reordered = "\n---\n".join(reversed(textwrap.dedent(text).split("\n---\n")))
    cart = workload(build(reordered), "shop", "cart-5f7b9c8d4e-q8w2z")
    assert [m.name for m in cart.services] == ["cart", "checkout"]


# --- build: services, waypoints, policies, bundle -----------------------------------------------


def test_a_service_gets_its_cluster_hostname_vip_ports_and_namespace_waypoint():
    assert service(build(SHOP), "shop", "cart") == MeshService(
        name="cart",
        namespace="shop",
        hostname="cart.shop.svc.cluster.local",
        addresses=("10.96.0.20",),
        ports=(
            ServicePort("http", 80),
            ServicePort("metrics", 9090),
            ServicePort("grpc", 81, app_protocol="grpc"),
        ),
        waypoint="shop/shop-wp",
    )


def test_a_service_without_cluster_ip_has_no_address_and_can_opt_out_of_the_waypoint():
    checkout = service(build(SHOP), "shop", "checkout")
    assert (checkout.addresses, checkout.waypoint) == ((), "")


def test_every_service_is_in_the_state_selector_or_not():
    assert of_kind(build(SHOP), "Service") == {
        ResourceKey("Service", "shop", "cart"),
        ResourceKey("Service", "shop", "checkout"),
        ResourceKey("Service", "shop", "external"),
    }


GATEWAYS = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-wp, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
  addresses:
  - {value: 10.244.3.4}
  - {type: IPAddress, value: "fd00::4"}
  - {type: Hostname, value: shop-wp.shop.svc.cluster.local}
  - {type: IPAddress}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bare-wp, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""


def test_only_gateways_of_the_waypoint_class_become_waypoints():
    state = build(GATEWAYS)
    assert of_kind(state, "Waypoint") == {
        ResourceKey("Waypoint", "shop", "shop-wp"),
        ResourceKey("Waypoint", "shop", "bare-wp"),
    }


def test_a_waypoint_has_the_ip_addresses_of_its_gateway():
    state = build(GATEWAYS)
    assert state[ResourceKey("Waypoint", "shop", "shop-wp")] == Waypoint(
        "shop-wp",
        "shop",
        ("10.244.3.4", "fd00::4"),
        identity="spiffe://cluster.local/ns/shop/sa/shop-wp",
    )
    assert state[ResourceKey("Waypoint", "shop", "bare-wp")].addresses == ()


POLICIES = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
"""


def test_policies_pass_through_as_they_are():
    resources = parse(POLICIES)
    state = MeshBuilder(TRUST_DOMAIN).build(resources, BUNDLE)
    for key, resource in resources.items():
        assert state[key] is resource


def test_the_trust_bundle_is_part_of_every_state():
    assert MeshBuilder(TRUST_DOMAIN).build({}, BUNDLE) == {BUNDLE.key: BUNDLE}
    assert build(SHOP)[BUNDLE.key] is BUNDLE


def test_kinds_the_data_plane_does_not_need_are_left_out():
    text = """
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: cart, namespace: shop}
    spec:
      selector: {matchLabels: {app: cart}}
      template:
        metadata: {labels: {app: cart}}
        spec: {containers: [{name: app, image: cart:1}]}
    ---
    apiVersion: v1
    kind: ServiceAccount
    metadata: {name: cart, namespace: shop}
    ---
    apiVersion: v1
    kind: Namespace
    metadata: {name: shop}
    """
    assert build(text) == {BUNDLE.key: BUNDLE}


def test_every_value_built_converts_to_the_wire_and_back_unchanged():
    # A value a node cannot convert is NACKed by every node: the builder must never make one.
    state = build(SHOP + "---\n" + GATEWAYS.replace("shop-wp", "other-wp") + "---\n" + POLICIES)
    for key, value in state.items():
        back = from_proto(to_proto(value))
        if isinstance(value, AuthorizationPolicy | PeerAuthentication):
            value = dataclasses.replace(
                value, metadata=ObjectMeta(value.metadata.name, value.metadata.namespace)
            )
        assert back == value, key


# --- build: reuse of unchanged workloads --------------------------------------------------------

TWO_NAMESPACES = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bank, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: bank}
spec:
  selector: {app: ledger}
  ports: [{port: 80, targetPort: 8080}]
"""


def _running(name: str, namespace: str, app: str, ip: str) -> str:
    return f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {app}}}}}
spec:
  nodeName: node-a
  containers: [{{name: app, image: {app}:1}}]
status: {{phase: Running, podIP: {ip}, hostIP: 192.168.50.11}}
"""


CLUSTER = (
    TWO_NAMESPACES
    + _running("cart-1", "shop", "cart", "10.244.1.1")
    + _running("cart-2", "shop", "cart", "10.244.1.2")
    + _running("ledger-1", "bank", "ledger", "10.244.2.1")
)


def workloads(state: dict[ResourceKey, StateValue]) -> dict[str, Workload]:
    return {k.name: v for k, v in state.items() if isinstance(v, Workload)}


@pytest.fixture
def built() -> tuple[MeshBuilder, dict[ResourceKey, Resource], dict[str, Workload]]:
    builder = MeshBuilder(TRUST_DOMAIN)
    resources = parse(CLUSTER)
    return builder, resources, workloads(builder.build(resources, BUNDLE))


def rebuilt_names(before: dict[str, Workload], after: dict[str, Workload]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in after if after[name] is not before[name]}


def test_a_rebuild_from_the_same_objects_returns_the_same_workload_objects(built):
    builder, resources, before = built
    assert rebuilt_names(before, workloads(builder.build(dict(resources), BUNDLE))) == set()


def test_a_changed_pod_gets_a_new_workload_and_the_others_are_reused(built):
    builder, resources, before = built
    key = ResourceKey("Pod", "shop", "cart-1")
    pod = resources[key]
    assert isinstance(pod, Pod)
    resources[key] = dataclasses.replace(pod, status=PodStatus("Running", "10.244.1.1", "", True))
    after = workloads(builder.build(resources, BUNDLE))
    assert rebuilt_names(before, after) == {"cart-1"}
    assert after["cart-1"].ready is True


def test_an_equal_but_new_pod_object_is_rebuilt_to_an_equal_workload(built):
    builder, resources, before = built
    key = ResourceKey("Pod", "shop", "cart-1")
    resources[key] = dataclasses.replace(resources[key])
    after = workloads(builder.build(resources, BUNDLE))
    assert rebuilt_names(before, after) == {"cart-1"}
    assert after["cart-1"] == before["cart-1"]


def test_a_namespace_label_change_rebuilds_the_workloads_of_that_namespace_only(built):
    builder, resources, before = built
    key = ResourceKey("Namespace", "", "shop")
    resources[key] = Namespace(ObjectMeta("shop", labels={**AMBIENT, USE_WAYPOINT_LABEL: "wp"}))
    after = workloads(builder.build(resources, BUNDLE))
    assert rebuilt_names(before, after) == {"cart-1", "cart-2"}


def test_a_new_namespace_object_with_the_same_labels_reuses_the_workloads(built):
    builder, resources, before = built
    key = ResourceKey("Namespace", "", "shop")
    resources[key] = Namespace(ObjectMeta("shop", labels=dict(AMBIENT)))
    assert rebuilt_names(before, workloads(builder.build(resources, BUNDLE))) == set()


def test_a_changed_service_rebuilds_the_workloads_of_its_namespace_only(built):
    builder, resources, before = built
    key = ResourceKey("Service", "shop", "cart")
    svc = resources[key]
    assert isinstance(svc, Service)
    resources[key] = dataclasses.replace(svc, selector={"app": "none-of-them"})
    after = workloads(builder.build(resources, BUNDLE))
    assert rebuilt_names(before, after) == {"cart-1", "cart-2"}
    assert after["cart-1"].services == ()


def test_a_removed_service_rebuilds_the_workloads_of_its_namespace_only(built):
    builder, resources, before = built
    del resources[ResourceKey("Service", "bank", "ledger")]
    after = workloads(builder.build(resources, BUNDLE))
    assert rebuilt_names(before, after) == {"ledger-1"}
    assert after["ledger-1"].services == ()


def test_a_removed_pod_loses_its_workload_and_the_others_are_reused(built):
    builder, resources, before = built
    del resources[ResourceKey("Pod", "shop", "cart-2")]
    after = workloads(builder.build(resources, BUNDLE))
    assert after.keys() == {"cart-1", "ledger-1"}
    assert all(after[name] is before[name] for name in after)


def test_a_new_pod_object_at_the_address_of_a_dropped_one_is_not_taken_for_it():
    # What a source does when one file changes twice between builds: the first replacement is
    # dropped, and CPython may allocate the second at its address, so it gets the same id().
    builder = MeshBuilder(TRUST_DOMAIN)
    meta = ObjectMeta("cart-1", "shop")
    spec = PodSpec((Container("app", "cart:1"),))
    pod = Pod(meta, spec, PodStatus("Running", "10.244.1.1"))
    builder.build({pod.key: pod}, BUNDLE)
    for i in range(2, 30):
        status = PodStatus("Running", f"10.244.1.{i}")
        del pod
        pod = Pod(meta, spec, status)
        state = builder.build({pod.key: pod}, BUNDLE)
        assert workload(state, "shop", "cart-1").addresses == (f"10.244.1.{i}",)


# --- error boundary: one bad resource is a problem, the rest of the mesh is built -------------

EXCLUDE = "weft.dev/exclude-outbound-ports"
CART_1 = ResourceKey("Pod", "shop", "cart-1")


def annotated(pod: Resource, *, exclude: str) -> Pod:
    assert isinstance(pod, Pod)
    meta = dataclasses.replace(pod.metadata, annotations={EXCLUDE: exclude})
    return dataclasses.replace(pod, metadata=meta)


def test_a_pod_excludes_the_ports_of_its_annotation():
    resources = parse(CLUSTER)
    resources[CART_1] = annotated(resources[CART_1], exclude=" 6379, 5432,6379")
    builder = MeshBuilder(TRUST_DOMAIN)
    assert workloads(builder.build(resources, BUNDLE))["cart-1"].excluded_ports == (5432, 6379)
    assert builder.problems() == {}


@pytest.mark.parametrize(
    "bad",
    ["\u00b2", "\uff18\uff10\uff18\uff10", "5432,\u0668\u0660", "0", "65536", "http", "80,,443"],
)
def test_a_bad_port_annotation_is_a_problem_and_the_rest_of_the_mesh_is_built(bad: str):
    resources = parse(CLUSTER)
    resources[CART_1] = annotated(resources[CART_1], exclude=bad)
    builder = MeshBuilder(TRUST_DOMAIN, clock=lambda: 1000.0)
    state = builder.build(resources, BUNDLE)
    # built without the annotation: still in the mesh, every outbound port captured
    assert workloads(state).keys() == {"cart-1", "cart-2", "ledger-1"}
    assert workloads(state)["cart-1"].excluded_ports == ()
    assert workloads(state)["cart-1"].enrolled
    assert of_kind(state, "Service") == {
        ResourceKey("Service", "shop", "cart"),
        ResourceKey("Service", "bank", "ledger"),
    }
    problem = builder.problems()[CART_1]
    assert problem.resource == "Pod shop/cart-1"
    assert problem.field == f"metadata.annotations[{EXCLUDE}]"
    assert "is not a port number" in problem.reason and problem.reason.endswith("; ignored")
    assert not problem.keeps_last_good
    assert problem.since == 1000.0


def test_a_pod_whose_annotation_turns_bad_is_captured_on_every_port_until_fixed(built):
    """The annotation only narrows capture: a bad one is ignored (fail closed), not a reason
    to leave the pod's traffic outside the mesh."""
    builder, resources, _ = built
    resources[CART_1] = annotated(resources[CART_1], exclude="\u00b2")
    after = workloads(builder.build(resources, BUNDLE))
    assert after["cart-1"].excluded_ports == () and after["cart-1"].enrolled
    assert not builder.problems()[CART_1].keeps_last_good
    # Built again, still bad: still reported (it is not taken from the cache as good).
    resources[CART_1] = annotated(resources[CART_1], exclude="\u00b2,80")
    after = workloads(builder.build(resources, BUNDLE))
    assert after["cart-1"].excluded_ports == ()
    assert CART_1 in builder.problems()
    assert workloads(builder.build(dict(resources), BUNDLE))["cart-1"].excluded_ports == ()
    assert CART_1 in builder.problems()
    resources[CART_1] = annotated(resources[CART_1], exclude="80")
    fixed = workloads(builder.build(resources, BUNDLE))
    assert fixed["cart-1"].excluded_ports == (80,)
    assert builder.problems() == {}


def test_a_problem_keeps_the_time_it_was_first_seen():
    now = [1000.0]
    builder = MeshBuilder(TRUST_DOMAIN, clock=lambda: now[0])
    resources = parse(CLUSTER)
    resources[CART_1] = annotated(resources[CART_1], exclude="x")
    builder.build(resources, BUNDLE)
    now[0] = 2000.0
    resources[CART_1] = annotated(resources[CART_1], exclude="x")
    builder.build(resources, BUNDLE)
    assert builder.problems()[CART_1].since == 1000.0
    resources[CART_1] = annotated(resources[CART_1], exclude="y")
    builder.build(resources, BUNDLE)
    assert builder.problems()[CART_1].since == 2000.0  # another problem


def test_any_error_building_one_resource_is_a_problem_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
):
    import controller.meshbuilder as meshbuilder

    real = meshbuilder.requested_waypoint

    def failing_for_ledger(
        namespace: str, own: dict[str, str], ns: dict[str, str]
    ) -> tuple[str, bool]:
        if own.get("app") == "ledger" or namespace == "bank":
            raise RuntimeError("boom")
        return real(namespace, own, ns)

    monkeypatch.setattr(meshbuilder, "requested_waypoint", failing_for_ledger)
    builder = MeshBuilder(TRUST_DOMAIN)
    state = builder.build(parse(CLUSTER), BUNDLE)
    assert workloads(state).keys() == {"cart-1", "cart-2"}
    assert of_kind(state, "Service") == {ResourceKey("Service", "shop", "cart")}
    problems = builder.problems()
    assert problems.keys() == {
        ResourceKey("Pod", "bank", "ledger-1"),
        ResourceKey("Service", "bank", "ledger"),
    }
    assert all("RuntimeError: boom" in p.reason for p in problems.values())


TARGET_REFS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: via-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  action: DENY
  rules: [{from: [{source: {namespaces: [bank]}}]}]
"""


def test_a_target_refs_policy_is_reported_as_enforced_nowhere_until_waypoints_exist():
    resources = parse(POLICIES + "---\n" + TARGET_REFS)
    builder = MeshBuilder(TRUST_DOMAIN)
    state = builder.build(resources, BUNDLE)
    key = ResourceKey("AuthorizationPolicy", "shop", "via-waypoint")
    assert state[key] is resources[key]  # still sent: the data plane knows it exists
    assert builder.problems().keys() == {key}
    problem = builder.problems()[key]
    assert problem.field == "spec.targetRefs"
    assert "enforced nowhere" in problem.reason
    assert "selector" in problem.reason  # says what to do instead


def test_a_target_refs_policy_for_a_service_a_waypoint_serves_is_not_a_problem():
    resources = parse(SHOP + "---\n" + TARGET_REFS)
    builder = MeshBuilder(TRUST_DOMAIN)
    state = builder.build(resources, BUNDLE)
    key = ResourceKey("AuthorizationPolicy", "shop", "via-waypoint")
    assert state[key] is resources[key]
    assert key not in builder.problems()


GATEWAY_CLASS_POLICY = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: every-waypoint, namespace: weft-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: weft-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin*]}}]}]
"""


def test_a_gateway_class_policy_is_enforced_nowhere_only_while_no_waypoint_exists():
    key = ResourceKey("AuthorizationPolicy", "weft-system", "every-waypoint")
    alone = MeshBuilder(TRUST_DOMAIN)
    alone.build(parse(GATEWAY_CLASS_POLICY), BUNDLE)
    assert "enforced nowhere" in alone.problems()[key].reason
    with_waypoint = MeshBuilder(TRUST_DOMAIN)
    state = with_waypoint.build(parse(SHOP + "---\n" + GATEWAY_CLASS_POLICY), BUNDLE)
    assert state[key] is not None
    assert key not in with_waypoint.problems()
