"""Real EndpointSlices, Nodes and NodePort/LoadBalancer Services, as an API server returns
them, projected to what weft's parsers read."""

from __future__ import annotations

from typing import Any

from controller.kubekinds import KINDS, KubeKind
from meshcore.resources import Document, Service
from meshcore.resources.endpointslice import EndpointConditions, EndpointSlice
from meshcore.resources.loader import parse_resource
from meshcore.resources.node import Node

BY_KIND = {k.kind: k for k in KINDS}
SERVER_META = {
    "resourceVersion": "77",
    "creationTimestamp": "2026-11-30T10:00:00Z",
    "generation": 2,
    "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}],
}


def parse(kind: KubeKind, obj: dict[str, Any]) -> Any:
    return parse_resource(Document("kubernetes:test", kind.document(obj))).resource


def test_where_the_new_kinds_are_served() -> None:
    assert BY_KIND["EndpointSlice"].list_path() == "/apis/discovery.k8s.io/v1/endpointslices"
    assert BY_KIND["Node"].list_path() == "/api/v1/nodes"
    assert BY_KIND["Node"].object_path("", "node-1") == "/api/v1/nodes/node-1"


def test_a_real_endpoint_slice_keeps_what_the_mesh_reads() -> None:
    raw = {
        "metadata": {
            "name": "db-x7k2p",
            "generateName": "db-",
            "namespace": "shop",
            "labels": {
                "kubernetes.io/service-name": "db",
                "endpointslice.kubernetes.io/managed-by": "someone.example.com",
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Service", "name": "db", "uid": "s-1"}
            ],
            **SERVER_META,
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": ["10.244.1.5"],
                "conditions": {"ready": True, "serving": True, "terminating": False, "x": 1},
                "targetRef": {
                    "kind": "Pod",
                    "name": "db-0",
                    "namespace": "shop",
                    "uid": "p-1",
                    "resourceVersion": "5",
                },
                "nodeName": "node-1",
                "zone": "z1",
                "hostname": "db-0",
                "hints": {"forZones": [{"name": "z1"}]},
                "deprecatedTopology": {"a": "b"},
            }
        ],
        "ports": [{"name": "sql", "port": 5432, "protocol": "TCP", "appProtocol": "postgresql"}],
    }
    es = parse(BY_KIND["EndpointSlice"], raw)
    assert isinstance(es, EndpointSlice) and es.service_name == "db"
    (endpoint,) = es.endpoints
    assert endpoint.conditions == EndpointConditions(True, True, False)
    assert endpoint.target_ref is not None and endpoint.target_ref.uid == "p-1"
    assert es.ports[0].port == 5432


def test_a_real_node_keeps_its_name_labels_and_internal_ips() -> None:
    raw = {
        "metadata": {"name": "node-1", "uid": "n-1", "labels": {"zone": "a"}, **SERVER_META},
        "spec": {"podCIDR": "10.244.1.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "192.168.56.11"},
                {"type": "Hostname", "address": "node-1"},
            ],
            "capacity": {"cpu": "2"},
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.31.0"},
            "newField": {"from": "a later Kubernetes"},
        },
    }
    node = parse(BY_KIND["Node"], raw)
    assert isinstance(node, Node)
    assert node.metadata.labels == {"zone": "a"} and node.internal_ips == ("192.168.56.11",)


def test_real_node_port_and_load_balancer_services_are_their_cluster_ip() -> None:
    for kind, extra in (
        ("NodePort", {"externalTrafficPolicy": "Cluster"}),
        ("LoadBalancer", {"loadBalancerClass": "x.io/lb", "allocateLoadBalancerNodePorts": True,
                          "healthCheckNodePort": 31000, "externalTrafficPolicy": "Local"}),
    ):  # fmt: skip
        raw = {
            "metadata": {"name": "web", "namespace": "shop", **SERVER_META},
            "spec": {
                "type": kind,
                "clusterIP": "10.96.0.9",
                "clusterIPs": ["10.96.0.9"],
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "TCP"}],
                "selector": {"app": "web"},
                **extra,
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}},
        }
        svc = parse(BY_KIND["Service"], raw)
        assert isinstance(svc, Service) and svc.cluster_ip == "10.96.0.9", kind
