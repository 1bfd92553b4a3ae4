"""Projection of real API-server objects to what weft's parsers read."""

from __future__ import annotations

from typing import Any

import pytest

from controller.kubekinds import KINDS, KubeKind
from meshcore.resources import Document, ManifestError
from meshcore.resources.loader import parse_resource

BY_KIND = {k.kind: k for k in KINDS}

SERVER_META = {
    "resourceVersion": "1234",
    "creationTimestamp": "2026-11-30T10:00:00Z",
    "generation": 3,
    "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
    "finalizers": ["x/y"],
    "selfLink": "/api/v1/...",
    "deletionGracePeriodSeconds": 30,
}

# a Pod as a real kubelet-era API server returns it: fields weft never reads, some it
# would refuse in a lab manifest (env from a Secret), server bookkeeping, full status
REAL_POD: dict[str, Any] = {
    "metadata": {
        "name": "reviews-v1-5d8c4b7f6-abcde",
        "generateName": "reviews-v1-5d8c4b7f6-",
        "namespace": "shop",
        "uid": "0b4f6a34-1111-2222-3333-444455556666",
        "labels": {"app": "reviews", "version": "v1"},
        "annotations": {"kubectl.kubernetes.io/restartedAt": "now"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "reviews-v1-5d8c4b7f6",
                "uid": "9",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        **SERVER_META,
    },
    "spec": {
        "nodeName": "node-a",
        "serviceAccountName": "reviews",
        "serviceAccount": "reviews",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "overhead": {"cpu": "10m"},
        "volumes": [{"name": "token", "projected": {"sources": []}}],
        "containers": [
            {
                "name": "reviews",
                "image": "docker.io/istio/examples-bookinfo-reviews-v1:1.20",
                "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "c"}}],
                "ports": [{"containerPort": 9080, "protocol": "TCP", "hostPort": 0}],
                "resources": {"limits": {"cpu": "1"}},
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
            }
        ],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.244.1.7",
        "podIPs": [{"ip": "10.244.1.7"}],
        "hostIP": "192.168.56.11",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "x"},
            {"type": "Ready", "status": "True", "lastProbeTime": None},
        ],
        "containerStatuses": [{"name": "reviews", "ready": True}],
        "qosClass": "Burstable",
    },
}


def parse(kind: KubeKind, obj: dict[str, Any]) -> Any:
    return parse_resource(Document("kubernetes:test", kind.document(obj))).resource


def test_a_real_pod_parses_with_what_the_mesh_needs() -> None:
    pod = parse(BY_KIND["Pod"], REAL_POD)
    assert pod.metadata.name == "reviews-v1-5d8c4b7f6-abcde"
    assert pod.metadata.labels == {"app": "reviews", "version": "v1"}
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    assert pod.spec.node_name == "node-a"
    assert pod.spec.service_account_name == "reviews"
    assert pod.spec.containers[0].ports[0].container_port == 9080
    assert (pod.status.pod_ip, pod.status.host_ip, pod.status.ready) == (
        "10.244.1.7",
        "192.168.56.11",
        True,
    )


def test_projection_reports_no_ignored_fields_for_a_real_pod() -> None:
    parsed = parse_resource(Document("k", BY_KIND["Pod"].document(REAL_POD)))
    assert parsed.ignored_fields == ()


def test_a_pending_pod_without_status_or_ip() -> None:
    raw = {"metadata": {"name": "p", "namespace": "shop"}, "spec": REAL_POD["spec"]}
    pod = parse(BY_KIND["Pod"], raw)
    assert pod.status.pod_ip == "" and not pod.status.ready


def test_a_real_service() -> None:
    raw = {
        "metadata": {"name": "reviews", "namespace": "shop", **SERVER_META},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.20",
            "clusterIPs": ["10.96.0.20"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "selector": {"app": "reviews"},
            "ports": [{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"}],
        },
        "status": {"loadBalancer": {}},
    }
    svc = parse(BY_KIND["Service"], raw)
    assert svc.cluster_ip == "10.96.0.20" and svc.ports[0].port == 9080


def test_an_external_name_service_is_still_refused_with_the_field() -> None:
    raw = {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "example.com"},
    }
    with pytest.raises(ManifestError) as err:
        parse(BY_KIND["Service"], raw)
    assert "spec.type: ExternalName Services are not supported yet" in str(err.value)


def test_a_real_deployment() -> None:
    raw = {
        "metadata": {"name": "reviews-v1", "namespace": "shop", **SERVER_META},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "reviews"}},
            "strategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"app": "reviews"}, "creationTimestamp": None},
                "spec": REAL_POD["spec"],
            },
        },
        "status": {"replicas": 2, "readyReplicas": 2},
    }
    dep = parse(BY_KIND["Deployment"], raw)
    assert dep.replicas == 2


def test_namespace_and_service_account_keep_metadata_only() -> None:
    ns = parse(
        BY_KIND["Namespace"],
        {
            "metadata": {"name": "shop", "labels": {"weft.dev/dataplane-mode": "ambient"}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        },
    )
    assert ns.metadata.labels == {"weft.dev/dataplane-mode": "ambient"}
    sa = parse(
        BY_KIND["ServiceAccount"],
        {"metadata": {"name": "reviews", "namespace": "shop"}, "secrets": [{"name": "x"}]},
    )
    assert sa.metadata.name == "reviews"


def test_weft_kinds_are_kept_whole_but_for_server_fields_and_status() -> None:
    raw = {
        "metadata": {"name": "allow-get", "namespace": "shop", **SERVER_META},
        "spec": {"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        "status": {"conditions": []},
    }
    doc = BY_KIND["AuthorizationPolicy"].document(raw)
    assert doc["apiVersion"] == "security.weft.dev/v1" and "status" not in doc
    assert set(doc["metadata"]) == {"name", "namespace"}
    assert parse(BY_KIND["AuthorizationPolicy"], raw).rules[0]


def test_an_unknown_spec_field_in_a_weft_kind_is_still_refused() -> None:
    raw = {"metadata": {"name": "p", "namespace": "shop"}, "spec": {"acton": "ALLOW"}}
    with pytest.raises(ManifestError) as err:
        parse(BY_KIND["AuthorizationPolicy"], raw)
    assert "acton" in str(err.value)


def test_rest_paths() -> None:
    assert BY_KIND["Pod"].list_path() == "/api/v1/pods"
    assert BY_KIND["Namespace"].object_path("", "shop") == "/api/v1/namespaces/shop"
    assert BY_KIND["HTTPRoute"].list_path() == "/apis/gateway.networking.k8s.io/v1/httproutes"
    assert (
        BY_KIND["Gateway"].object_path("shop", "waypoint")
        == "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint"
    )
    config = BY_KIND["ConfigMap"]
    assert config.list_path() == "/api/v1/namespaces/weft-system/configmaps"
    assert config.field_selector == "metadata.name=weft"


def test_every_kind_the_loader_knows_is_watched() -> None:
    from meshcore.resources.loader import KINDS as PARSED

    watched = {k.kind for k in KINDS}
    assert set(PARSED) <= watched
