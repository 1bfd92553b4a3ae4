"""Pure pieces of ztunnel: SNI naming of identities, the mesh view's lookups, metric labels."""

from __future__ import annotations

import pytest

from meshcore.meshstate import MeshService, ServiceMembership, ServicePort, Workload
from meshcore.resources import ResourceKey
from ztunnel.metrics import ConnectionLabels
from ztunnel.pool import identity_from_sni, sni_for
from ztunnel.state import MeshView


def workload(
    name: str,
    ip: str,
    node: str = "node-1",
    *,
    enrolled: bool = True,
    ready: bool = True,
    services: tuple[ServiceMembership, ...] = (),
    namespace: str = "shop",
    sa: str = "web",
) -> Workload:
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace=namespace,
        service_account=sa,
        identity=f"spiffe://cluster.local/ns/{namespace}/sa/{sa}",
        node=node,
        node_address="198.18.0.1",
        addresses=(ip,),
        labels={"app": name},
        enrolled=enrolled,
        ready=ready,
        workload_name=name.split("-")[0],
        services=services,
    )


@pytest.mark.parametrize(
    "identity",
    ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/a-b/sa/default"],
)
def test_an_identity_survives_the_round_trip_through_sni(identity: str) -> None:
    assert identity_from_sni(sni_for(identity), "cluster.local") == identity


@pytest.mark.parametrize("name", ["", "web.shop", "web.shop.sa.other", "example.com"])
def test_a_name_that_is_not_ours_maps_to_no_identity(name: str) -> None:
    assert identity_from_sni(name, "cluster.local") is None


def test_the_view_indexes_workloads_services_and_what_is_local() -> None:
    member = (ServiceMembership("shop", "web", {80: 8080}),)
    state = {
        ResourceKey("Workload", "shop", "web-1"): workload("web-1", "10.0.0.1", services=member),
        ResourceKey("Workload", "shop", "web-2"): workload(
            "web-2", "10.0.0.2", "node-2", services=member
        ),
        ResourceKey("Workload", "shop", "web-3"): workload(
            "web-3", "10.0.0.3", ready=False, services=member
        ),
        ResourceKey("Workload", "shop", "out"): workload("out", "10.0.0.4", enrolled=False),
        ResourceKey("Service", "shop", "web"): MeshService(
            "web", "shop", "web.shop.svc.cluster.local", ("198.19.0.1",), (ServicePort("http", 80),)
        ),
    }
    view = MeshView("node-1")
    view.update(state)
    assert view.by_ip["10.0.0.2"].name == "web-2"
    assert view.by_vip["198.19.0.1"].name == "web"
    assert sorted(w.name for w in view.local_workloads()) == ["web-1", "web-3"]
    endpoints = view.endpoints(view.by_vip["198.19.0.1"], 80)
    assert sorted((w.name, port) for w, port in endpoints) == [("web-1", 8080), ("web-2", 8080)]
    assert view.endpoints(view.by_vip["198.19.0.1"], 81) == []


def test_metric_labels_use_istio_names_and_unknown_for_what_is_not_known() -> None:
    src = workload("client-abc", "10.0.0.9", sa="client")
    labels = ConnectionLabels("source", src, src.identity, None, "", "", "none")
    values = labels.values("UF")
    assert values == {
        "reporter": "source",
        "source_workload": "client",
        "source_workload_namespace": "shop",
        "source_principal": "spiffe://cluster.local/ns/shop/sa/client",
        "destination_service": "unknown",
        "destination_workload": "unknown",
        "destination_workload_namespace": "unknown",
        "destination_principal": "unknown",
        "connection_security_policy": "none",
        "response_flags": "UF",
    }
