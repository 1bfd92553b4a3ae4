"""The dashboard's graph model, from Prometheus answers shaped as the demo lab's (recorded
from a live lab's Prometheus, rebuilt here): reporters, waypoint hops, Services, layout."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from weftctl.dashboard import graph, inventory
from weftctl.dashboard.graph import GraphInput, build, layers
from weftctl.dashboard.promql import Sample

HOST = "{}.demo.svc.cluster.local"


def tcp(src: str, dst: str, value: float, reporter: str = "source", **labels: str) -> Sample:
    return Sample(
        {
            "reporter": reporter,
            "source_workload": src,
            "source_workload_namespace": "demo" if src != "unknown" else "unknown",
            "destination_workload": dst,
            "destination_workload_namespace": "demo" if dst != "unknown" else "unknown",
            "destination_service": labels.pop("service", "unknown"),
            "connection_security_policy": labels.pop("security", "mutual_tls"),
            **labels,
        },
        value,
    )


def req(src: str, dst: str, service: str, value: float, code: str = "200", **labels: str) -> Sample:
    return Sample(
        {
            "reporter": "waypoint",
            "source_workload": src,
            "source_workload_namespace": "demo",
            "destination_workload": dst,
            "destination_workload_namespace": "demo",
            "destination_service": HOST.format(service),
            "response_code": code,
            "response_flags": labels.pop("flags", "-"),
            "connection_security_policy": "mutual_tls",
            **labels,
        },
        value,
    )


def demo_status() -> dict[str, Any]:
    """The parts of `weftctl lab status -o json` of the demo lab the inventory reads."""

    def pod(name: str, owner: str = "", **labels: str) -> dict[str, Any]:
        return {"namespace": "demo", "name": name, "owner": owner, "labels": labels, "ready": True}

    return {
        "namespaces": [{"name": "demo", "labels": {"weft.dev/dataplane-mode": "ambient"}}],
        "pods": [
            pod("backend-v1-6968f89614-glzf8", "Deployment/backend-v1", app="backend"),
            pod("backend-v1-6968f89614-mkvmc", "Deployment/backend-v1", app="backend"),
            pod("backend-v2-6968f89614-m2gvp", "Deployment/backend-v2", app="backend"),
            pod("frontend-f96f7413df-45lss", "Deployment/frontend", app="frontend"),
            pod("traffic", app="traffic"),
            pod(
                "waypoint-254531527e-nvfhr",
                "Deployment/waypoint",
                **{
                    "gateway.networking.k8s.io/gateway-name": "waypoint",
                    "weft.dev/dataplane-mode": "none",
                },
            ),
            pod("legacy", "", **{"weft.dev/dataplane-mode": "none"}),
        ],
        "services": [
            {
                "namespace": "demo",
                "name": "frontend",
                "ports": [
                    {
                        "port": 80,
                        "endpoints": ["198.18.128.3:8080"],
                        "endpoint_pods": ["demo/frontend-f96f7413df-45lss"],
                    }
                ],
            }
        ],
    }


DEMO = inventory.from_status(demo_status())


def demo_input(scraped_waypoint: bool = True) -> GraphInput:
    """The demo with traffic: traffic -> frontend (one kept-alive connection), frontend ->
    backend through the waypoint (split v1/v2), as the lab's Prometheus answers (which
    scrapes the waypoint, labelled with its Gateway, unless `scraped_waypoint` is False)."""
    return GraphInput(
        waypoints=(Sample({"namespace": "demo", "gateway": "waypoint"}, 1.0),)
        if scraped_waypoint
        else (),
        requests=(
            req("frontend", "backend-v1", "backend-v1", 1.8),
            req("frontend", "backend-v1", "backend-v1", 0.2, code="503", flags="UF"),
            req("frontend", "backend-v2", "backend-v2", 0.2),
        ),
        response_bytes=(req("frontend", "backend-v1", "backend-v1", 900.0),),
        tcp_opened=(
            # both ztunnels count traffic -> frontend; only the source knows the Service
            tcp("traffic", "frontend", 0.5, service=HOST.format("frontend")),
            tcp("traffic", "frontend", 0.5, reporter="destination"),
            # idle series: rate() of a counter that did not move
            tcp("traffic", "tcp-echo", 0.0, service=HOST.format("tcp-echo")),
        ),
        tcp_active=(
            # frontend's kept-alive connection to the waypoint (for the backend Service) ...
            tcp("frontend", "waypoint", 1, service=HOST.format("backend")),
            # ... and the waypoint's onward connections, counted by the destination ztunnel
            # under the original source
            tcp("frontend", "backend-v1", 2, reporter="destination"),
            tcp("waypoint", "backend-v2", 1, reporter="destination"),
        ),
        tcp_sent=(tcp("traffic", "frontend", 100.0, service=HOST.format("frontend")),),
        tcp_received=(tcp("traffic", "frontend", 300.0, service=HOST.format("frontend")),),
    )


def edges_by_id(g: graph.Graph) -> dict[str, graph.Edge]:
    return {e.id: e for e in g.edges}


def test_demo_graph_has_the_demo_call_chain_through_services_with_waypoint_hops_folded() -> None:
    g = build(demo_input(), DEMO)
    assert [(n.id, n.depth) for n in g.nodes] == [
        ("workload:demo/traffic", 0),
        ("service:demo/frontend", 1),
        ("workload:demo/frontend", 2),
        ("service:demo/backend-v1", 3),
        ("service:demo/backend-v2", 3),
        ("workload:demo/backend-v1", 4),
        ("workload:demo/backend-v2", 4),
    ]
    assert sorted(edges_by_id(g)) == [
        "service:demo/backend-v1->workload:demo/backend-v1",
        "service:demo/backend-v2->workload:demo/backend-v2",
        "service:demo/frontend->workload:demo/frontend",
        "workload:demo/frontend->service:demo/backend-v1",
        "workload:demo/frontend->service:demo/backend-v2",
        "workload:demo/traffic->service:demo/frontend",
    ]
    assert not any(n.waypoint for n in g.nodes)  # the waypoint is on the edges, not a node


def test_a_connection_counted_by_both_ztunnels_is_counted_once_from_the_source() -> None:
    e = edges_by_id(build(demo_input(), DEMO))["workload:demo/traffic->service:demo/frontend"]
    assert e.connection_rate == 0.5  # not 1.0
    assert e.bytes_rate == 400.0
    assert e.protocol == "tcp"
    assert e.request_rate == 0.0
    assert e.security == "mutual_tls"
    assert e.waypoints == ()


def test_requests_a_waypoint_carried_name_it_and_carry_rates_errors_and_bytes() -> None:
    edges = edges_by_id(build(demo_input(), DEMO))
    e = edges["workload:demo/frontend->service:demo/backend-v1"]
    assert e.protocol == "http"
    assert e.request_rate == pytest.approx(2.0)
    assert e.error_rate == pytest.approx(0.1)  # 0.2 of 2.0 answered 503
    assert e.bytes_rate == 900.0
    assert e.waypoints == ("demo/waypoint",)
    onward = edges["service:demo/backend-v1->workload:demo/backend-v1"]
    assert onward.request_rate == pytest.approx(2.0)
    # the destination ztunnel's count of the waypoint's connections is not added as TCP
    assert onward.active_connections == 0
    assert edges["workload:demo/frontend->service:demo/backend-v2"].error_rate == 0.0


def test_why_arguments_are_a_pod_of_the_source_and_the_service_it_dialled() -> None:
    edges = edges_by_id(build(demo_input(), DEMO))
    e = edges["workload:demo/traffic->service:demo/frontend"]
    assert (e.why_source, e.why_destination) == ("demo/traffic", "frontend.demo")
    e = edges["service:demo/backend-v2->workload:demo/backend-v2"]
    assert (e.why_source, e.why_destination) == (
        "demo/frontend-f96f7413df-45lss",
        "backend-v2.demo",
    )
    assert e.to_json()["why"] == {"src": "demo/frontend-f96f7413df-45lss", "dst": "backend-v2.demo"}


def test_a_flow_without_service_asks_why_about_a_pod_and_a_port_a_service_targets() -> None:
    g = build(GraphInput(tcp_opened=(tcp("traffic", "frontend", 1.0),)), DEMO)
    (e,) = g.edges
    assert (e.source, e.target) == ("workload:demo/traffic", "workload:demo/frontend")
    assert e.why_destination == "demo/frontend-f96f7413df-45lss:8080"


def test_nodes_say_whether_enrolled_from_the_lab_and_unknown_without_one() -> None:
    data = GraphInput(
        tcp_opened=(
            tcp("legacy", "frontend", 1.0, reporter="destination", security="none"),
            tcp("traffic", "frontend", 1.0),
        )
    )
    nodes = {n.id: n for n in build(data, DEMO).nodes}
    assert nodes["workload:demo/legacy"].enrolled is False
    assert nodes["workload:demo/traffic"].enrolled is True
    nodes = {n.id: n for n in build(data, inventory.Inventory()).nodes}
    assert nodes["workload:demo/legacy"].enrolled is None


def test_plaintext_and_mixed_security_are_told_apart() -> None:
    plain = build(GraphInput(tcp_opened=(tcp("a", "b", 1.0, security="none"),)), DEMO)
    assert plain.edges[0].security == "none"
    mixed = build(
        GraphInput(
            tcp_opened=(
                tcp("a", "b", 1.0, security="none"),
                tcp("a", "b", 1.0, security="mutual_tls"),
            )
        ),
        DEMO,
    )
    assert mixed.edges[0].security == "mixed"


def test_denials_count_l4_refusals_and_403_or_uaex_requests() -> None:
    data = GraphInput(
        tcp_denied=(
            tcp("traffic", "frontend", 0.3, service=HOST.format("frontend"), response_flags="UAEX"),
            tcp("traffic", "frontend", 0.3, reporter="destination", response_flags="UAEX"),
        ),
        requests=(
            req("traffic", "backend-v1", "backend-v1", 0.5, code="403"),
            req("traffic", "backend-v1", "backend-v1", 0.25, code="401", flags="UAEX"),
            req("traffic", "backend-v1", "backend-v1", 1.0),
        ),
    )
    edges = edges_by_id(build(data, DEMO))
    assert edges["workload:demo/traffic->service:demo/frontend"].denial_rate == pytest.approx(0.3)
    e = edges["workload:demo/traffic->service:demo/backend-v1"]
    assert e.denial_rate == pytest.approx(0.75)
    assert e.error_rate == 0.0  # a denial is not a server error


def test_unknown_sources_become_one_unknown_node() -> None:
    data = GraphInput(
        tcp_opened=(
            tcp("unknown", "frontend", 1.0, reporter="destination", security="none"),
            tcp("unknown", "backend-v1", 1.0, reporter="destination", security="none"),
        )
    )
    g = build(data, DEMO)
    unknown = [n for n in g.nodes if n.kind == "unknown"]
    assert [n.id for n in unknown] == ["unknown"]
    assert {e.source for e in g.edges} == {"unknown"}
    assert all(e.why_source is None and e.to_json()["why"] is None for e in g.edges)


def test_no_traffic_is_an_empty_graph() -> None:
    idle = GraphInput(
        tcp_opened=(tcp("traffic", "frontend", 0.0),),
        tcp_active=(tcp("traffic", "frontend", 0.0),),
        requests=(req("frontend", "backend-v1", "backend-v1", float("nan")),),
    )
    g = build(idle, DEMO)
    assert g.to_json() == {"nodes": [], "edges": [], "dropped_nodes": 0}


def test_waypoint_is_drawn_as_a_node_when_neither_the_lab_nor_prometheus_knows_it() -> None:
    g = build(demo_input(scraped_waypoint=False), inventory.Inventory())
    nodes = {n.id: n for n in g.nodes}
    assert not nodes["workload:demo/waypoint"].waypoint
    assert "service:demo/backend->workload:demo/waypoint" in edges_by_id(g)


def test_waypoint_known_from_prometheus_alone_folds_in_as_with_the_lab() -> None:
    with_lab = build(demo_input(scraped_waypoint=False), DEMO)
    scraped = build(demo_input(), inventory.Inventory())
    assert sorted(edges_by_id(scraped)) == sorted(edges_by_id(with_lab))
    e = edges_by_id(scraped)["workload:demo/frontend->service:demo/backend-v1"]
    assert e.waypoints == ("demo/waypoint",)


def test_nodes_past_the_bound_are_the_least_busy_and_counted() -> None:
    data = GraphInput(
        tcp_opened=tuple(tcp("client", f"server-{i}", float(i + 1)) for i in range(30))
    )
    g = build(data, inventory.Inventory(), max_nodes=11)
    assert len(g.nodes) == 11
    assert g.dropped_nodes == 20
    kept = {n.name for n in g.nodes} - {"client"}
    assert kept == {f"server-{i}" for i in range(20, 30)}  # the ten busiest
    assert all(e.target in {n.id for n in g.nodes} for e in g.edges)


@pytest.mark.parametrize(
    ("edges", "depth"),
    [
        ([("a", "b"), ("b", "c")], {"a": 0, "b": 1, "c": 2}),
        # the longest chain decides the column
        ([("a", "b"), ("b", "c"), ("a", "c")], {"a": 0, "b": 1, "c": 2}),
        # a cycle behind an entry point: the edge that closes it is ignored
        ([("a", "b"), ("b", "c"), ("c", "b")], {"a": 0, "b": 1, "c": 2}),
        # a cycle with no entry point still lays out
        ([("x", "y"), ("y", "x")], {"x": 0, "y": 1}),
        # self-calls and unrelated nodes
        ([("a", "a")], {"a": 0, "lonely": 0}),
    ],
)
def test_layers(edges: list[tuple[str, str]], depth: dict[str, int]) -> None:
    nodes = set(depth) | {n for e in edges for n in e}
    assert layers(nodes, edges) == depth


def test_layers_of_a_long_chain_are_linear_not_recursive() -> None:
    n = 5000  # deeper than Python's recursion limit
    ids = [f"n{i:05d}" for i in range(n)]
    depth = layers(ids, list(itertools.pairwise(ids)))
    assert depth[ids[-1]] == n - 1


def test_service_hostnames() -> None:
    assert graph.service_of("backend.demo.svc.cluster.local") == ("demo", "backend")
    assert graph.service_of("backend.demo.svc.example.org") == ("demo", "backend")
    assert graph.service_of("unknown") is None
    assert graph.service_of("") is None
    assert graph.service_of("example.com") is None
    assert graph.service_of("10.0.0.1") is None


def test_rates_in_json_are_plain_numbers() -> None:
    data = build(demo_input(), DEMO).to_json()
    for e in data["edges"]:
        for key in ("request_rate", "error_rate", "denial_rate", "connection_rate", "bytes_rate"):
            assert isinstance(e[key], float) and math.isfinite(e[key]), (e["id"], key)
        assert isinstance(e["active_connections"], int)


def test_inventory_from_status() -> None:
    inv = inventory.from_status(demo_status())
    assert inv.waypoints == {("demo", "waypoint")}
    assert ("demo", "legacy") not in inv.enrolled
    assert inv.pod_of(("demo", "backend-v1")) == "demo/backend-v1-6968f89614-glzf8"
    assert inv.pod_of(("demo", "nothing")) is None
    assert inv.is_enrolled(("demo", "nothing")) is None


def test_inventory_prefers_ready_pods() -> None:
    status = demo_status()
    status["pods"][0]["ready"] = False
    inv = inventory.from_status(status)
    assert inv.pod_of(("demo", "backend-v1")) == "demo/backend-v1-6968f89614-mkvmc"


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"pods": []}, "'namespaces'"),
        ({"namespaces": [], "pods": [{"name": "p"}]}, "'namespace'"),
        ({"namespaces": [], "pods": ["p"]}, "pods[0]: not an object"),
        (
            {
                "namespaces": [],
                "pods": [],
                "services": [{"ports": [{"endpoints": ["nope"], "endpoint_pods": ["demo/p"]}]}],
            },
            "malformed",
        ),
    ],
)
def test_inventory_refuses_a_malformed_status_naming_the_field(
    broken: dict[str, Any], message: str
) -> None:
    with pytest.raises(inventory.InventoryError, match=None) as err:
        inventory.from_status(broken)
    assert message in str(err.value)


def test_nodes_say_how_the_traffic_they_receive_is_secured() -> None:
    data = GraphInput(
        tcp_opened=(
            tcp("legacy", "frontend", 1.0, reporter="destination", security="none"),
            tcp("traffic", "frontend", 1.0),
            tcp("traffic", "backend-v1", 1.0),
        )
    )
    nodes = {n.id: n for n in build(data, DEMO).nodes}
    assert nodes["workload:demo/frontend"].inbound_security == "mixed"
    assert nodes["workload:demo/backend-v1"].inbound_security == "mutual_tls"
    assert nodes["workload:demo/traffic"].inbound_security == ""  # receives nothing
    assert nodes["workload:demo/frontend"].to_json()["inbound_security"] == "mixed"


def test_a_namespace_keeps_the_flows_that_start_pass_or_end_in_it() -> None:
    data = GraphInput(
        tcp_opened=(
            tcp("traffic", "frontend", 1.0, service=HOST.format("frontend")),
            Sample(
                {
                    "reporter": "source",
                    "source_workload": "client",
                    "source_workload_namespace": "other",
                    "destination_workload": "frontend",
                    "destination_workload_namespace": "demo",
                    "destination_service": HOST.format("frontend"),
                    "connection_security_policy": "mutual_tls",
                },
                1.0,
            ),
            Sample(
                {
                    "reporter": "source",
                    "source_workload": "a",
                    "source_workload_namespace": "other",
                    "destination_workload": "b",
                    "destination_workload_namespace": "other",
                    "destination_service": "unknown",
                    "connection_security_policy": "mutual_tls",
                },
                1.0,
            ),
        )
    )
    assert len(build(data, DEMO).edges) == 4
    demo = {e.id for e in build(data, DEMO, namespace="demo").edges}
    assert demo == {
        "workload:demo/traffic->service:demo/frontend",
        "workload:other/client->service:demo/frontend",
        "service:demo/frontend->workload:demo/frontend",
    }
    assert {e.id for e in build(data, DEMO, namespace="other").edges} == {
        "workload:other/client->service:demo/frontend",
        "service:demo/frontend->workload:demo/frontend",
        "workload:other/a->workload:other/b",
    }
    assert build(data, DEMO, namespace="nowhere").edges == ()
