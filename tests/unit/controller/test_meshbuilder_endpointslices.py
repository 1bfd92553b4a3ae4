"""Services without a selector take their endpoints from EndpointSlices; pods name known Nodes."""

from __future__ import annotations

import textwrap

from controller.meshbuilder import MeshBuilder
from meshcore.meshstate import ServiceMembership, StateValue, TrustBundle, Workload
from meshcore.resources import Resource, ResourceKey, documents_from_text, parse_documents

BUNDLE = TrustBundle(
    "cluster.local", ("-----BEGIN CERTIFICATE-----\nr\n-----END CERTIFICATE-----\n",)
)

BASE = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {nodeName: node-1, serviceAccountName: db, containers: [{name: db, image: pg}]}
status: {phase: Running, podIP: 10.244.1.5, hostIP: 192.168.56.11,
         conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.244.2.7, hostIP: 192.168.56.12,
         conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.50
  ports: [{name: sql, port: 5432}, {name: admin, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.60, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"""

DB_SLICE = """\
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-manual, namespace: shop, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  targetRef: {kind: Pod, name: db-0, namespace: shop}
ports: [{name: sql, port: 15432}]
"""


def parse(text: str) -> dict[ResourceKey, Resource]:
    docs = documents_from_text(textwrap.dedent(text), "cluster.yaml")
    return {p.resource.key: p.resource for p in parse_documents(docs)}


def build(text: str, builder: MeshBuilder | None = None) -> tuple[dict, MeshBuilder]:
    builder = builder or MeshBuilder("cluster.local")
    return builder.build(parse(text), BUNDLE), builder


def workload(state: dict[ResourceKey, StateValue], name: str) -> Workload:
    value = state[ResourceKey("Workload", "shop", name)]
    assert isinstance(value, Workload)
    return value


def test_a_service_without_a_selector_has_no_endpoints_without_a_slice() -> None:
    state, builder = build(BASE)
    assert workload(state, "db-0").services == ()
    assert builder.problems() == {}


def test_a_slice_makes_the_pod_at_its_address_an_endpoint() -> None:
    state, builder = build(BASE + DB_SLICE)
    db = workload(state, "db-0")
    # the slice's port for the Service port of the same name; `admin` is not in the slice
    assert db.services == (ServiceMembership("shop", "db", {5432: 15432}),)
    assert db.identity == "spiffe://cluster.local/ns/shop/sa/db" and db.enrolled
    assert builder.problems() == {}


def test_slices_of_a_service_with_a_selector_are_not_read() -> None:
    # Kubernetes' own slice for `web`, pointing (wrongly, on purpose) at db-0: ignored
    slice_doc = """\
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-abcde
          namespace: shop
          labels:
            kubernetes.io/service-name: web
            endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
        addressType: IPv4
        endpoints: [{addresses: [10.244.1.5]}]
        ports: [{port: 8080}]
        """
    state, builder = build(BASE + textwrap.dedent(slice_doc))
    assert workload(state, "db-0").services == ()
    assert workload(state, "web-0").services == (ServiceMembership("shop", "web", {80: 8080}),)
    assert builder.problems() == {}
    # ... while a hand-made one for it is said to be ignored
    state, builder = build(BASE + DB_SLICE.replace("service-name: db}", "service-name: web}"))
    problem = builder.problems()[ResourceKey("EndpointSlice", "shop", "db-manual")]
    assert "ignored: Service shop/web has a selector" in problem.reason


def test_a_not_ready_endpoint_is_not_an_endpoint() -> None:
    text = BASE + DB_SLICE.replace("  targetRef:", "  conditions: {ready: false}\n  targetRef:")
    state, _ = build(text)
    assert workload(state, "db-0").services == ()


def test_an_address_outside_the_mesh_is_reported_and_the_pods_still_serve() -> None:
    text = BASE + DB_SLICE.replace(
        "ports: [{name: sql", "- addresses: [192.0.2.10]\nports: [{name: sql"
    )
    state, builder = build(text)
    assert workload(state, "db-0").services == (ServiceMembership("shop", "db", {5432: 15432}),)
    problem = builder.problems()[ResourceKey("EndpointSlice", "shop", "db-manual")]
    assert problem.field == "endpoints[1].addresses[0]"
    assert problem.reason.startswith(
        "192.0.2.10 is not the address of a pod: weft does not route to endpoints outside"
    )


def test_a_service_whose_endpoints_are_all_outside_the_mesh_is_left_out() -> None:
    # like default/kubernetes, or a database elsewhere: in the state with no endpoint ztunnel
    # would refuse it; left out, its ClusterIP is passed through to the cluster's routing
    text = BASE + DB_SLICE.replace("10.244.1.5", "192.0.2.10")
    state, builder = build(text)
    assert ResourceKey("Service", "shop", "db") not in state
    assert ResourceKey("Service", "shop", "web") in state
    problem = builder.problems()[ResourceKey("EndpointSlice", "shop", "db-manual")]
    assert problem.field == "endpoints[0].addresses[0]"
    assert problem.reason.startswith(
        "192.0.2.10 is not the address of a pod, and Service shop/db has no pod endpoint"
    )
    assert "leaves the Service out of the mesh" in problem.reason
    # a pod endpoint in another slice of the same Service keeps it in the mesh
    other = DB_SLICE.replace("db-manual", "db-pods")
    state, builder = build(text + other)
    assert ResourceKey("Service", "shop", "db") in state
    problem = builder.problems()[ResourceKey("EndpointSlice", "shop", "db-manual")]
    assert "served by its pod endpoints only" in problem.reason


def test_a_slice_of_no_service_or_no_label_is_reported() -> None:
    _, builder = build(BASE + DB_SLICE.replace("service-name: db}", "service-name: dbb}"))
    problem = builder.problems()[ResourceKey("EndpointSlice", "shop", "db-manual")]
    assert problem.reason == "no Service shop/dbb: these endpoints serve nothing"
    _, builder = build(BASE + DB_SLICE.replace("labels: {kubernetes.io/service-name: db}", ""))
    problem = builder.problems()[ResourceKey("EndpointSlice", "shop", "db-manual")]
    assert "no label kubernetes.io/service-name" in problem.reason


def test_an_ipv6_slice_is_ignored_quietly() -> None:
    text = BASE + DB_SLICE.replace("IPv4", "IPv6").replace("10.244.1.5", "fd00::5")
    state, builder = build(text)
    assert workload(state, "db-0").services == () and builder.problems() == {}


def test_a_slice_change_rebuilds_the_pod_it_names() -> None:
    # the same pod objects every time: only the slice tells the cached workload is stale
    builder, base = MeshBuilder("cluster.local"), parse(BASE)
    with_slice = {**base, **parse(DB_SLICE)}
    assert workload(builder.build(base, BUNDLE), "db-0").services == ()
    assert workload(builder.build(with_slice, BUNDLE), "db-0").services != ()
    assert workload(builder.build(base, BUNDLE), "db-0").services == ()  # slice deleted


NODES = """\
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.56.11}]}
"""


def test_no_node_objects_means_nodes_unknown_not_checked() -> None:
    _, builder = build(BASE)  # the lab's folder: no Node at all
    assert builder.problems() == {}


def test_a_pod_on_a_node_the_api_does_not_know_is_reported() -> None:
    state, builder = build(BASE + NODES)
    problems = builder.problems()
    assert list(problems) == [ResourceKey("Pod", "shop", "web-0")]
    assert problems[ResourceKey("Pod", "shop", "web-0")].field == "spec.nodeName"
    assert (
        "no Node 'node-2' is known to the API"
        in problems[ResourceKey("Pod", "shop", "web-0")].reason
    )
    assert ResourceKey("Workload", "shop", "web-0") in state  # still in the mesh
    second = NODES.replace("node-1", "node-2").replace("56.11", "56.12")
    _, builder = build(BASE + NODES + second)
    assert builder.problems() == {}
