"""Waypoint binding as Istio's: labels ask, the waypoint's `weft.dev/waypoint-for` decides."""

from __future__ import annotations

import textwrap

import pytest

from controller.meshbuilder import MeshBuilder, bind_waypoint
from meshcore.api.convert import from_proto, to_proto
from meshcore.meshstate import (
    MeshService,
    StateValue,
    TrafficType,
    TrustBundle,
    Waypoint,
    Workload,
)
from meshcore.resources import Resource, ResourceKey, documents_from_text, parse_documents

BUNDLE = TrustBundle("cluster.local", ("root",))


def cluster(
    *,
    waypoint_for: str | None = None,
    namespace_label: str = "wp",
    service_labels: str = "{}",
    pod_labels: str = "{app: web}",
    gateway: bool = True,
) -> str:
    gw_labels = f"{{weft.dev/waypoint-for: {waypoint_for}}}" if waypoint_for else "{}"
    ns_labels = f"weft.dev/use-waypoint: {namespace_label}, " if namespace_label else ""
    text = f"""
    apiVersion: v1
    kind: Namespace
    metadata:
      name: shop
      labels: {{{ns_labels}weft.dev/dataplane-mode: ambient}}
    ---
    apiVersion: v1
    kind: Service
    metadata: {{name: web, namespace: shop, labels: {service_labels}}}
    spec:
      clusterIP: 10.96.0.5
      selector: {{app: web}}
      ports: [{{port: 80}}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: web-1, namespace: shop, labels: {pod_labels}}}
    spec: {{nodeName: n1, containers: [{{name: app, image: web}}]}}
    status: {{phase: Running, podIP: 10.244.0.5, hostIP: 192.168.0.1}}
    """
    if gateway:
        text += f"""
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {{name: wp, namespace: shop, labels: {gw_labels}}}
    spec:
      gatewayClassName: weft-waypoint
      listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: wp
      namespace: shop
      labels:
        gateway.networking.k8s.io/gateway-name: wp
        gateway.weft.dev/managed: weft.dev-mesh-controller
    spec:
      clusterIP: 10.96.0.9
      selector: {{gateway.networking.k8s.io/gateway-name: wp}}
      ports: [{{name: mesh, port: 15008}}]
    ---
    apiVersion: v1
    kind: Pod
    metadata:
      name: wp-1
      namespace: shop
      labels:
        gateway.networking.k8s.io/gateway-name: wp
        gateway.weft.dev/managed: weft.dev-mesh-controller
    spec: {{nodeName: n1, serviceAccountName: wp, containers: [{{name: wp, image: x}}]}}
    status: {{phase: Running, podIP: 10.244.0.9, hostIP: 192.168.0.1}}
    """
    return textwrap.dedent(text)


def build(text: str) -> tuple[dict[ResourceKey, StateValue], MeshBuilder]:
    builder = MeshBuilder("cluster.local")
    docs = documents_from_text(text, "c.yaml")
    resources = {p.resource.key: p.resource for p in parse_documents(docs)}
    return builder.build(resources, BUNDLE), builder


def bindings(text: str) -> tuple[str, str]:
    """(the Service web's waypoint, the pod web-1's waypoint)"""
    state, _ = build(text)
    svc = state[ResourceKey("Service", "shop", "web")]
    pod = state[ResourceKey("Workload", "shop", "web-1")]
    assert isinstance(svc, MeshService) and isinstance(pod, Workload)
    return svc.waypoint, pod.waypoint


def problems(text: str) -> dict[str, str]:
    _, builder = build(text)
    return {str(k): f"{p.field}: {p.reason}" for k, p in builder.problems().items()}


# Istio's table: which binding a waypoint takes, by its waypoint-for.
@pytest.mark.parametrize(
    ("waypoint_for", "expected"),
    [
        (None, ("shop/wp", "")),  # default: service
        ("service", ("shop/wp", "")),
        ("workload", ("", "shop/wp")),
        ("all", ("shop/wp", "shop/wp")),
        ("none", ("", "")),
    ],
)
def test_a_namespace_binding_takes_effect_only_for_the_traffic_the_waypoint_is_for(
    waypoint_for: str | None, expected: tuple[str, str]
) -> None:
    text = cluster(waypoint_for=waypoint_for)
    assert bindings(text) == expected
    assert problems(text) == {}  # a namespace label asks for both kinds: no complaint


def test_a_pod_labelled_for_a_service_waypoint_is_not_bound_and_reported() -> None:
    text = cluster(namespace_label="", pod_labels="{app: web, weft.dev/use-waypoint: wp}")
    assert bindings(text) == ("", "")
    assert problems(text) == {
        "Pod shop/web-1": "metadata.labels[weft.dev/use-waypoint]: waypoint shop/wp is for "
        "service traffic (weft.dev/waypoint-for), not workload traffic: not bound to it; set "
        "weft.dev/waypoint-for: workload or all on the Gateway"
    }


def test_a_service_labelled_for_a_workload_waypoint_is_not_bound_and_reported() -> None:
    text = cluster(
        waypoint_for="workload", namespace_label="", service_labels="{weft.dev/use-waypoint: wp}"
    )
    assert bindings(text) == ("", "")
    assert list(problems(text)) == ["Service shop/web"]


def test_a_service_labelled_for_a_missing_waypoint_is_not_bound_and_reported() -> None:
    text = cluster(gateway=False, namespace_label="", service_labels="{weft.dev/use-waypoint: wp}")
    assert bindings(text) == ("", "")
    assert problems(text) == {
        "Service shop/web": "metadata.labels[weft.dev/use-waypoint]: no waypoint shop/wp "
        "(a Gateway of class weft-waypoint): not bound to a waypoint until it exists"
    }


def test_a_namespace_label_for_a_missing_waypoint_binds_nothing_silently() -> None:
    text = cluster(gateway=False)
    assert bindings(text) == ("", "")
    assert problems(text) == {}


def test_the_object_label_wins_and_none_opts_out() -> None:
    text = cluster(waypoint_for="all", service_labels="{weft.dev/use-waypoint: none}")
    assert bindings(text) == ("", "shop/wp")


def test_a_waypoints_own_pods_and_service_are_never_bound_to_a_waypoint() -> None:
    state, _ = build(cluster(waypoint_for="all"))
    own_pod = state[ResourceKey("Workload", "shop", "wp-1")]
    own_svc = state[ResourceKey("Service", "shop", "wp")]
    assert isinstance(own_pod, Workload) and isinstance(own_svc, MeshService)
    assert (own_pod.waypoint, own_svc.waypoint) == ("", "")


def test_a_waypoint_has_its_traffic_type_identity_and_service_address() -> None:
    state, _ = build(cluster(waypoint_for="all"))
    assert state[ResourceKey("Waypoint", "shop", "wp")] == Waypoint(
        "wp",
        "shop",
        ("10.96.0.9",),
        traffic_type=TrafficType.ALL,
        identity="spiffe://cluster.local/ns/shop/sa/wp",
    )


def test_a_gateway_with_a_bad_waypoint_for_label_is_a_problem_and_binds_nothing() -> None:
    text = cluster(waypoint_for="everything")
    assert bindings(text) == ("", "")
    assert problems(text) == {
        "Gateway shop/wp": "metadata.labels[weft.dev/waypoint-for]: must be service, "
        "workload, all or none, got 'everything'"
    }


def test_retyping_a_waypoint_rebinds_pods_that_were_cached() -> None:
    builder = MeshBuilder("cluster.local")

    def parsed(waypoint_for: str) -> dict[ResourceKey, Resource]:
        docs = documents_from_text(cluster(waypoint_for=waypoint_for), "c.yaml")
        return {p.resource.key: p.resource for p in parse_documents(docs)}

    def pod_waypoint(resources: dict[ResourceKey, Resource]) -> str:
        pod = builder.build(resources, BUNDLE)[ResourceKey("Workload", "shop", "web-1")]
        assert isinstance(pod, Workload)
        return pod.waypoint

    resources = parsed("service")
    assert pod_waypoint(resources) == ""
    gateway = ResourceKey("Gateway", "shop", "wp")
    resources[gateway] = parsed("all")[gateway]  # only the Gateway changes
    assert pod_waypoint(resources) == "shop/wp"


@pytest.mark.parametrize("traffic_type", list(TrafficType))
def test_a_waypoint_survives_the_wire_with_its_traffic_type(traffic_type: TrafficType) -> None:
    wp = Waypoint("wp", "shop", ("10.96.0.9",), traffic_type, "spiffe://td/ns/shop/sa/wp")
    assert from_proto(to_proto(wp)) == wp


def test_bind_waypoint_says_nothing_when_nothing_is_asked() -> None:
    assert bind_waypoint("", True, "service", {}) == ("", None)
