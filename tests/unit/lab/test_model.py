"""ClusterModel: manifests in, pods and services with nodes and addresses out, all pure."""

from __future__ import annotations

import random
import re
import textwrap
from collections import Counter

import pytest

from lab.addressing import node_plans
from lab.config import LabConfig
from lab.model import Change, ClusterModel, Endpoint, PodRecord, ServiceEndpoints
from meshcore.resources import (
    Deployment,
    ManifestErrors,
    Resource,
    ResourceKey,
    documents_from_text,
    parse_documents,
)

# Two nodes: node-1 has pod addresses 198.18.128.0/24, node-2 198.18.129.0/24.
SERVICE_CIDR = "198.19.0.0/24"
POD_NAME = re.compile(r"^web-(?P<hash>[0-9a-f]{10})-[bcdfghjklmnpqrstvwxz2456789]{5}$")


def new_model(
    *, nodes: int = 2, node_pod_prefix: int = 24, service_cidr: str = SERVICE_CIDR
) -> ClusterModel:
    plans = node_plans(LabConfig(nodes=nodes, node_pod_prefix=node_pod_prefix))
    return ClusterModel(plans, service_cidr, rng=random.Random(0))


@pytest.fixture
def model() -> ClusterModel:
    return new_model()


def manifests(text: str) -> list[Resource]:
    docs = documents_from_text(textwrap.dedent(text), "test.yaml")
    return [p.resource for p in parse_documents(docs)]


def apply(model: ClusterModel, text: str) -> Change:
    change = model.plan_apply(manifests(text))
    model.commit(change)
    return change


def delete(model: ClusterModel, *keys: ResourceKey) -> Change:
    change = model.plan_delete(keys)
    model.commit(change)
    return change


def apply_errors(model: ClusterModel, text: str) -> list[str]:
    with pytest.raises(ManifestErrors) as caught:
        model.plan_apply(manifests(text))
    return [str(e) for e in caught.value.errors]


def snapshot(model: ClusterModel) -> tuple[object, ...]:
    return (dict(model.resources), dict(model.pods), dict(model.services))


def pod(
    name: str, *, namespace: str = "default", labels: str = "{app: web}", spec: str = ""
) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}
spec:
{textwrap.indent(textwrap.dedent(spec), "  ")}
  containers:
    - name: echo
      image: weft/http-echo
      ports: [{{containerPort: 8080, name: http}}]
---
"""


def deployment(
    *,
    replicas: int = 2,
    labels: str = "{app: web}",
    annotations: str = "{}",
    args: str = "[]",
    namespace: str = "default",
    spec: str = "",
) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {namespace}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {labels}, annotations: {annotations}}}
    spec:
{textwrap.indent(textwrap.dedent(spec), "      ")}
      containers:
        - name: echo
          image: weft/http-echo
          args: {args}
          ports: [{{containerPort: 8080, name: http}}]
---
"""


def service(
    name: str = "web",
    *,
    namespace: str = "default",
    selector: str = "{app: web}",
    ports: str = "[{name: http, port: 80, targetPort: http}]",
    cluster_ip: str = "",
) -> str:
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {selector}
  ports: {ports}
  clusterIP: "{cluster_ip}"
---
"""


NAMESPACE_SHOP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
"""


def names(pods: list[PodRecord]) -> list[str]:
    return [p.name for p in pods]


def web_pods(model: ClusterModel) -> list[PodRecord]:
    return sorted(
        (p for p in model.pods.values() if p.owner == "Deployment/web"), key=lambda p: p.name
    )


# --- standalone pods ---------------------------------------------------------------------------


def test_standalone_pod_gets_the_first_node_and_address(model: ClusterModel) -> None:
    change = apply(model, pod("client"))

    (record,) = change.create
    assert (record.namespace, record.name, record.node, record.ip) == (
        "default",
        "client",
        "node-1",
        "198.18.128.1",
    )
    assert (record.owner, record.template_hash) == ("", "")
    assert record.labels == {"app": "web"}
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", record.uid)
    assert model.pods == {("default", "client"): record}
    assert (change.delete, change.relabel) == ([], [])


def test_pod_with_a_node_name_runs_on_that_node(model: ClusterModel) -> None:
    (record,) = apply(model, pod("client", spec="nodeName: node-2")).create

    assert (record.node, record.ip) == ("node-2", "198.18.129.1")


def test_standalone_pods_are_spread_over_nodes_in_name_order(model: ClusterModel) -> None:
    apply(model, pod("c") + pod("a") + pod("b"))

    assert {ref[1]: (p.node, p.ip) for ref, p in model.pods.items()} == {
        "a": ("node-1", "198.18.128.1"),
        "b": ("node-2", "198.18.129.1"),
        "c": ("node-1", "198.18.128.2"),
    }


def test_standalone_pod_label_change_relabels_it_in_place(model: ClusterModel) -> None:
    (before,) = apply(model, pod("client")).create

    change = apply(model, pod("client", labels="{app: web, version: v2}"))

    assert (change.create, change.delete) == ([], [])
    (after,) = change.relabel
    assert after.labels == {"app": "web", "version": "v2"}
    assert (after.uid, after.ip, after.node) == (before.uid, before.ip, before.node)
    assert model.pods[("default", "client")] == after


def test_standalone_pod_spec_cannot_change(model: ClusterModel) -> None:
    apply(model, pod("client"))
    before = snapshot(model)

    errors = apply_errors(model, pod("client", spec="terminationGracePeriodSeconds: 30"))

    assert errors == [
        "Pod default/client: spec: a Pod's spec cannot change (only its labels and "
        "annotations); delete it and apply it again"
    ]
    assert snapshot(model) == before


# --- deployments -------------------------------------------------------------------------------


def test_deployment_pods_are_named_after_it_and_its_template_hash(model: ClusterModel) -> None:
    (dep,) = manifests(deployment(replicas=3))
    assert isinstance(dep, Deployment)

    change = model.plan_apply([dep])
    model.commit(change)

    template_hash = dep.template.fingerprint()
    assert len(change.create) == 3
    assert len({p.name for p in change.create}) == 3
    for record in change.create:
        match = POD_NAME.match(record.name)
        assert match, record.name
        assert match["hash"] == template_hash
        assert record.labels == {"app": "web", "pod-template-hash": template_hash}
        assert (record.owner, record.template_hash) == ("Deployment/web", template_hash)
        assert record.spec == dep.template


def test_deployment_pods_spread_evenly_over_nodes(model: ClusterModel) -> None:
    apply(model, deployment(replicas=4))

    assert Counter(p.node for p in web_pods(model)) == {"node-1": 2, "node-2": 2}
    assert sorted(p.ip for p in web_pods(model)) == [
        "198.18.128.1",
        "198.18.128.2",
        "198.18.129.1",
        "198.18.129.2",
    ]


def test_deployment_pod_goes_to_the_node_with_fewer_pods_overall(model: ClusterModel) -> None:
    apply(model, pod("client"))

    apply(model, deployment(replicas=1))

    assert [p.node for p in web_pods(model)] == ["node-2"]


def test_deployment_pinned_to_a_node_puts_every_pod_there(model: ClusterModel) -> None:
    apply(model, deployment(replicas=3, spec="nodeName: node-2"))

    assert [p.node for p in web_pods(model)] == ["node-2"] * 3


def test_the_same_seed_gives_the_same_names_and_uids() -> None:
    first, second = new_model(), new_model()

    apply(first, deployment(replicas=3))
    apply(second, deployment(replicas=3))

    assert [(p.name, p.uid) for p in web_pods(first)] == [(p.name, p.uid) for p in web_pods(second)]


def test_scaling_up_keeps_running_pods_and_adds_the_difference(model: ClusterModel) -> None:
    apply(model, deployment(replicas=2))
    running = web_pods(model)

    change = apply(model, deployment(replicas=4))

    assert (change.delete, change.relabel) == ([], [])
    assert len(change.create) == 2
    assert set(names(running)) <= set(names(web_pods(model)))
    assert all(model.pods[p.ref] == p for p in running)
    assert Counter(p.node for p in web_pods(model)) == {"node-1": 2, "node-2": 2}


@pytest.mark.parametrize(
    ("replicas", "per_node"),
    [(3, {"node-1": 2, "node-2": 1}), (2, {"node-1": 1, "node-2": 1}), (1, {"node-1": 1}), (0, {})],
)
def test_scaling_down_removes_pods_from_the_busiest_node_first(
    model: ClusterModel, replicas: int, per_node: dict[str, int]
) -> None:
    apply(model, deployment(replicas=4))
    running = web_pods(model)

    change = apply(model, deployment(replicas=replicas))

    assert (change.create, change.relabel) == ([], [])
    assert len(change.delete) == 4 - replicas
    assert set(names(web_pods(model))) == set(names(running)) - set(names(change.delete))
    assert Counter(p.node for p in web_pods(model)) == per_node


def test_scaling_down_frees_addresses_for_later_pods() -> None:
    model = new_model(nodes=1, node_pod_prefix=30)  # node-1 holds two pod addresses
    apply(model, deployment(replicas=2))
    apply(model, deployment(replicas=0))

    apply(model, deployment(replicas=2))

    assert sorted(p.ip for p in web_pods(model)) == ["198.18.128.1", "198.18.128.2"]


def test_released_pod_addresses_are_reused_after_never_used_ones(model: ClusterModel) -> None:
    apply(model, pod("a", spec="nodeName: node-1"))
    delete(model, ResourceKey("Pod", "default", "a"))

    apply(model, pod("b", spec="nodeName: node-1"))

    assert model.pods[("default", "b")].ip == "198.18.128.2"


@pytest.mark.parametrize(
    ("labels", "annotations", "expected_labels", "expected_annotations"),
    [
        ("{app: web, version: v2}", "{}", {"app": "web", "version": "v2"}, {}),
        ("{app: web}", "{team: payments}", {"app": "web"}, {"team": "payments"}),
    ],
)
def test_metadata_only_change_relabels_deployment_pods_without_recreating_them(
    model: ClusterModel,
    labels: str,
    annotations: str,
    expected_labels: dict[str, str],
    expected_annotations: dict[str, str],
) -> None:
    apply(model, deployment(replicas=2))
    before = web_pods(model)

    change = apply(model, deployment(replicas=2, labels=labels, annotations=annotations))

    assert (change.create, change.delete) == ([], [])
    assert sorted(p.name for p in change.relabel) == [p.name for p in before]
    after = web_pods(model)
    assert [(p.name, p.uid, p.ip, p.node) for p in after] == [
        (p.name, p.uid, p.ip, p.node) for p in before
    ]
    for record in after:
        assert record.labels == {**expected_labels, "pod-template-hash": record.template_hash}
        assert record.annotations == expected_annotations


def test_reapplying_the_same_manifests_changes_nothing(model: ClusterModel) -> None:
    text = pod("client") + deployment(replicas=2) + service()
    apply(model, text)
    before = snapshot(model)

    change = apply(model, text)

    assert change.empty
    assert snapshot(model) == before


def test_template_spec_change_replaces_every_pod(model: ClusterModel) -> None:
    apply(model, deployment(replicas=2))
    old = web_pods(model)

    change = apply(model, deployment(replicas=2, args="[--port, '9090']"))

    assert sorted(change.delete, key=lambda p: p.name) == old
    assert len(change.create) == 2
    (new_hash,) = {p.template_hash for p in change.create}
    assert new_hash != old[0].template_hash
    assert all(p.name.startswith(f"web-{new_hash}-") for p in change.create)
    assert web_pods(model) == sorted(change.create, key=lambda p: p.name)
    assert Counter(p.node for p in web_pods(model)) == {"node-1": 1, "node-2": 1}


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        pytest.param(
            pod("client", namespace="shop"),
            ["Pod shop/client: metadata.namespace: namespace 'shop' does not exist"],
            id="missing namespace",
        ),
        pytest.param(
            service(namespace="shop"),
            ["Service shop/web: metadata.namespace: namespace 'shop' does not exist"],
            id="service in a missing namespace",
        ),
        pytest.param(
            pod("client", spec="serviceAccountName: reader"),
            [
                "Pod default/client: spec.serviceAccountName: "
                "service account 'reader' does not exist in namespace 'default'"
            ],
            id="missing service account",
        ),
        pytest.param(
            deployment(spec="serviceAccountName: reader"),
            [
                "Deployment default/web: spec.template.spec.serviceAccountName: "
                "service account 'reader' does not exist in namespace 'default'"
            ],
            id="deployment with a missing service account",
        ),
        pytest.param(
            pod("client", spec="nodeName: node-3"),
            [
                "Pod default/client: spec.nodeName: "
                "node 'node-3' does not exist (the lab has node-1, node-2)"
            ],
            id="unknown node",
        ),
        pytest.param(
            deployment(spec="nodeName: worker"),
            [
                "Deployment default/web: spec.template.spec.nodeName: "
                "node 'worker' does not exist (the lab has node-1, node-2)"
            ],
            id="deployment on an unknown node",
        ),
        pytest.param(
            """
            apiVersion: v1
            kind: Pod
            metadata: {name: proxy}
            spec:
              containers:
                - {name: main, image: weft/http-echo}
                - {name: side, image: nginx:1.25}
            """,
            [
                "Pod default/proxy: spec.containers[1].image: image 'nginx:1.25' is not a lab "
                "image (weft/ext-authz, weft/http-echo, weft/load-client, weft/tcp-echo, "
                "weft/waypoint); give a command to run another program"
            ],
            id="unknown image without command",
        ),
        pytest.param(
            service(cluster_ip="10.96.0.10"),
            [
                "Service default/web: spec.clusterIP: "
                "10.96.0.10 is outside the service range 198.19.0.0/24"
            ],
            id="cluster IP out of range",
        ),
        pytest.param(
            service("a", cluster_ip="198.19.0.10") + service("b", cluster_ip="198.19.0.10"),
            ["Service default/b: spec.clusterIP: 198.19.0.10 is already used by Service default/a"],
            id="duplicate cluster IP",
        ),
        pytest.param(
            pod("a", namespace="shop")
            + pod("b", spec="serviceAccountName: reader")
            + pod("c", spec="nodeName: node-9"),
            [
                "Pod default/b: spec.serviceAccountName: "
                "service account 'reader' does not exist in namespace 'default'",
                "Pod default/c: spec.nodeName: "
                "node 'node-9' does not exist (the lab has node-1, node-2)",
                "Pod shop/a: metadata.namespace: namespace 'shop' does not exist",
            ],
            id="every error at once",
        ),
    ],
)
def test_invalid_change_is_refused_naming_resource_and_field(
    model: ClusterModel, text: str, errors: list[str]
) -> None:
    assert apply_errors(model, text) == errors
    assert snapshot(model) == ({}, {}, {})


@pytest.mark.parametrize(
    "image",
    ["weft/http-echo", "weft/tcp-echo:1.2", "weft/load-client@sha256:0123abcd"],
)
def test_sample_app_images_run_without_a_command(model: ClusterModel, image: str) -> None:
    apply(
        model,
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\n"
        f"spec: {{containers: [{{name: c, image: '{image}'}}]}}\n",
    )

    assert list(model.pods) == [("default", "a")]


def test_any_image_runs_when_a_command_is_given(model: ClusterModel) -> None:
    apply(
        model,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n"
        "spec: {containers: [{name: c, image: nginx, command: [sleep, '1']}]}\n",
    )

    assert list(model.pods) == [("default", "a")]


def test_namespace_and_service_account_may_arrive_with_their_pods(model: ClusterModel) -> None:
    apply(
        model,
        NAMESPACE_SHOP
        + "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reader, namespace: shop}\n---\n"
        + pod("client", namespace="shop", spec="serviceAccountName: reader"),
    )

    assert list(model.pods) == [("shop", "client")]


def test_a_failed_plan_leaves_the_model_unchanged(model: ClusterModel) -> None:
    apply(model, deployment(replicas=2) + service())
    before = snapshot(model)

    apply_errors(model, deployment(replicas=4) + pod("x", spec="nodeName: node-7"))

    assert snapshot(model) == before
    # and nothing was reserved: the next valid change gets the addresses it would have got
    change = apply(model, deployment(replicas=4) + service("other"))
    assert sorted(p.ip for p in change.create) == ["198.18.128.2", "198.18.129.2"]
    assert model.services[("default", "other")].vip == "198.19.0.2"


def test_a_plan_that_is_not_committed_changes_nothing(model: ClusterModel) -> None:
    apply(model, pod("client"))
    before = snapshot(model)

    model.plan_apply(manifests(deployment(replicas=3) + service()))
    model.plan_delete([ResourceKey("Pod", "default", "client")])

    assert snapshot(model) == before


def test_pods_beyond_a_nodes_address_range_are_refused_as_a_manifest_error() -> None:
    model = new_model(nodes=1, node_pod_prefix=30)  # node-1 holds two pod addresses

    errors = apply_errors(model, deployment(replicas=3))

    assert errors == [
        "Deployment default/web: spec.replicas: no free address left in 198.18.128.0/30 on node-1"
    ]
    assert snapshot(model) == ({}, {}, {})


def test_standalone_pod_beyond_a_nodes_address_range_is_refused_as_a_manifest_error() -> None:
    model = new_model(nodes=1, node_pod_prefix=30)
    apply(model, pod("a") + pod("b"))

    assert apply_errors(model, pod("c")) == [
        "Pod default/c: no free address left in 198.18.128.0/30 on node-1"
    ]


# --- services ----------------------------------------------------------------------------------


def test_services_get_virtual_ips_in_order_around_explicit_ones(model: ClusterModel) -> None:
    apply(model, service("a") + service("b", cluster_ip="198.19.0.2") + service("c"))

    assert {ref[1]: r.vip for ref, r in model.services.items()} == {
        "a": "198.19.0.1",
        "b": "198.19.0.2",
        "c": "198.19.0.3",
    }


def test_updated_service_keeps_its_virtual_ip(model: ClusterModel) -> None:
    apply(model, service())

    apply(model, service(ports="[{name: http, port: 8080}]"))

    record = model.services[("default", "web")]
    assert record.vip == "198.19.0.1"
    assert [p.port for p in record.service.ports] == [8080]


def test_service_may_restate_its_own_cluster_ip(model: ClusterModel) -> None:
    apply(model, service())

    apply(model, service(cluster_ip="198.19.0.1"))

    assert model.services[("default", "web")].vip == "198.19.0.1"


@pytest.mark.parametrize(
    ("first", "second", "error"),
    [
        pytest.param(
            service(),
            service(cluster_ip="198.19.0.50"),
            "Service default/web: spec.clusterIP: clusterIP is immutable (it is 198.19.0.1)",
            id="changed cluster IP",
        ),
        pytest.param(
            service("a"),
            service("b", cluster_ip="198.19.0.1"),
            "Service default/b: spec.clusterIP: 198.19.0.1 is already allocated",
            id="cluster IP of another service",
        ),
    ],
)
def test_cluster_ip_conflicts_with_what_is_running_are_refused(
    model: ClusterModel, first: str, second: str, error: str
) -> None:
    apply(model, first)

    assert apply_errors(model, second) == [error]


def test_service_range_exhaustion_is_refused_naming_the_service() -> None:
    model = new_model(service_cidr="198.19.0.0/30")  # two virtual IPs

    errors = apply_errors(model, service("a") + service("b") + service("c"))

    assert errors == ["Service default/c: spec.clusterIP: no free address left in 198.19.0.0/30"]


# --- deleting ----------------------------------------------------------------------------------


def test_deleting_a_deployment_deletes_its_pods_and_frees_their_addresses(
    model: ClusterModel,
) -> None:
    apply(model, deployment(replicas=2))
    running = web_pods(model)

    change = delete(model, ResourceKey("Deployment", "default", "web"))

    assert sorted(change.delete, key=lambda p: p.name) == running
    assert model.pods == {}
    assert model.resources == {}


def test_deleting_a_namespace_takes_everything_in_it(model: ClusterModel) -> None:
    apply(
        model,
        NAMESPACE_SHOP
        + deployment(replicas=2, namespace="shop")
        + service(namespace="shop")
        + pod("keeper"),
    )

    change = delete(model, ResourceKey("Namespace", "", "shop"))

    assert len(change.delete) == 2
    assert list(model.pods) == [("default", "keeper")]
    assert list(model.resources) == [ResourceKey("Pod", "default", "keeper")]
    assert model.services == {}
    assert model.namespaces() == {"default": {}}
    # the service's virtual IP was released and may be claimed again
    apply(model, service(cluster_ip="198.19.0.1"))


def test_deleting_a_service_releases_its_virtual_ip(model: ClusterModel) -> None:
    apply(model, service("a"))

    delete(model, ResourceKey("Service", "default", "a"))

    apply(model, service("b", cluster_ip="198.19.0.1"))
    assert model.services[("default", "b")].vip == "198.19.0.1"


def test_deleting_what_does_not_exist_fails_naming_each_missing_resource(
    model: ClusterModel,
) -> None:
    apply(model, pod("client"))
    before = snapshot(model)

    with pytest.raises(ManifestErrors) as caught:
        model.plan_delete(
            [
                ResourceKey("Pod", "default", "nope"),
                ResourceKey("Pod", "default", "client"),
                ResourceKey("Namespace", "", "default"),
            ]
        )

    assert [str(e) for e in caught.value.errors] == [
        "Pod default/nope: not found",
        "Namespace default: not found",
    ]
    assert snapshot(model) == before


def test_namespaces_always_include_default_and_carry_labels(model: ClusterModel) -> None:
    apply(model, NAMESPACE_SHOP)

    assert model.namespaces() == {"default": {}, "shop": {"istio.io/dataplane-mode": "ambient"}}


# --- service endpoints -------------------------------------------------------------------------

ENDPOINTS_SETUP = (
    NAMESPACE_SHOP
    + pod("a", spec="nodeName: node-1")
    + pod("b", spec="nodeName: node-2")
    + textwrap.dedent(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: c, labels: {app: web}}
        spec:
          nodeName: node-1
          containers: [{name: plain, image: weft/tcp-echo}]
        ---
        """
    )
    + pod("other", labels="{app: other}", spec="nodeName: node-2")
    + pod("elsewhere", namespace="shop", spec="nodeName: node-2")
    + service(
        ports="[{name: http, port: 80, targetPort: http},"
        " {name: admin, port: 9000, targetPort: 9090}]"
    )
    + service("external", selector="{}", ports="[{port: 443}]")
)


def test_service_endpoints_resolve_named_and_numeric_target_ports_of_ready_pods(
    model: ClusterModel,
) -> None:
    apply(model, ENDPOINTS_SETUP)
    ip = {ref: p.ip for ref, p in model.pods.items()}
    a, b, c = ("default", "a"), ("default", "b"), ("default", "c")
    ready = [a, b, c, ("default", "other"), ("shop", "elsewhere")]

    assert model.service_endpoints(ready) == [
        ServiceEndpoints("default", "external", "", "198.19.0.1", 443, "TCP", ()),
        ServiceEndpoints(
            "default",
            "web",
            "http",
            "198.19.0.2",
            80,
            "TCP",
            # c has no container port named http, so it is no endpoint of this port
            (Endpoint(a, ip[a], 8080, "node-1"), Endpoint(b, ip[b], 8080, "node-2")),
        ),
        ServiceEndpoints(
            "default",
            "web",
            "admin",
            "198.19.0.2",
            9000,
            "TCP",
            (
                Endpoint(a, ip[a], 9090, "node-1"),
                Endpoint(b, ip[b], 9090, "node-2"),
                Endpoint(c, ip[c], 9090, "node-1"),
            ),
        ),
    ]


@pytest.mark.parametrize(
    ("ready", "members"),
    [
        ([], []),
        ([("default", "b")], ["b"]),
        ([("default", "a"), ("default", "nope")], ["a"]),
    ],
)
def test_only_ready_pods_are_endpoints(
    model: ClusterModel, ready: list[tuple[str, str]], members: list[str]
) -> None:
    apply(model, ENDPOINTS_SETUP)

    by_port = {se.port_name: se for se in model.service_endpoints(ready)}

    assert [ep.pod[1] for ep in by_port["http"].endpoints] == members


def test_relabelled_pod_leaves_the_service_endpoints(model: ClusterModel) -> None:
    apply(model, deployment(replicas=2) + service())
    ready = list(model.pods)
    assert len(model.service_endpoints(ready)[0].endpoints) == 2

    apply(
        model,
        deployment(replicas=2, labels="{app: web, paused: 'true'}")
        + service(selector="{app: web, paused: 'false'}"),
    )

    assert model.service_endpoints(ready)[0].endpoints == ()


OWNED = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: default}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: wp
  ownerReferences:
  - {apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, name: wp, controller: true}
---
apiVersion: v1
kind: Service
metadata:
  name: wp
  ownerReferences:
  - {apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, name: wp, uid: abc}
spec:
  selector: {app: wp}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: wp
  ownerReferences:
  - {apiVersion: gateway.networking.k8s.io/v1, kind: Gateway, name: wp}
spec:
  selector: {matchLabels: {app: wp}}
  template:
    metadata: {labels: {app: wp}}
    spec:
      serviceAccountName: wp
      containers: [{name: wp, image: weft/waypoint}]
---
apiVersion: v1
kind: Service
metadata: {name: other}
spec:
  selector: {app: other}
  ports: [{port: 80}]
"""


def test_deleting_an_owner_deletes_what_it_owns_with_its_pods_as_the_garbage_collector_does(
    model: ClusterModel,
) -> None:
    apply(model, OWNED)
    assert len(model.pods) == 1

    delete(model, ResourceKey("Gateway", "default", "wp"))

    assert set(model.resources) == {ResourceKey("Service", "default", "other")}
    assert model.pods == {}
    assert set(model.services) == {("default", "other")}


def test_an_object_with_an_owner_left_is_kept() -> None:
    model = new_model()
    owners = (
        "[{apiVersion: v1, kind: Service, name: wp}, {apiVersion: v1, kind: ServiceAccount, "
        "name: keeper}]"
    )
    keeper = "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: keeper}\n"
    apply(
        model, OWNED.replace("name: other}", f"name: other, ownerReferences: {owners}}}") + keeper
    )
    delete(model, ResourceKey("Gateway", "default", "wp"))
    assert set(model.resources) == {
        ResourceKey("Service", "default", "other"),
        ResourceKey("ServiceAccount", "default", "keeper"),
    }
