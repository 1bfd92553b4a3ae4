"""On a real API server (tests/kubeapi.py): a Service without a selector whose hand-made
EndpointSlice points at a pod gets that pod as its endpoint in the mesh the controller builds
from what `KubernetesSource` yields; an address outside the mesh is reported on the slice, and
a pod on a node the API does not know on the pod."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from kubernetes import client as k8s

from controller.kubekinds import KINDS
from controller.kubesource import KubernetesSource, KubeSettings
from controller.meshbuilder import MeshBuilder
from controller.store import ResourceStore
from meshcore.meshstate import ServiceMembership, StateValue, TrustBundle, Workload
from meshcore.resources import ResourceKey
from tests.conftest import RUN_ID
from tests.kubeapi import KubeAPI, kube_api  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

BY_KIND = {k.kind: k for k in KINDS}
WATCHED = tuple(
    BY_KIND[k] for k in ("Namespace", "ServiceAccount", "Pod", "Service", "EndpointSlice", "Node")
)
BUNDLE = TrustBundle(
    "cluster.local", ("-----BEGIN CERTIFICATE-----\nr\n-----END CERTIFICATE-----\n",)
)
NS = f"weft-es-{RUN_ID}"
NODE = f"weft-node-{RUN_ID}"


def call(api: KubeAPI, method: str, path: str, body: Any = None) -> dict[str, Any]:
    client: k8s.ApiClient = api.api_client
    kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
    params = client.param_serialize(
        method,
        path,
        header_params={"Accept": "application/json", "Content-Type": kind},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(*params, _request_timeout=30)
    data = response.read()
    assert response.status < 300, (method, path, response.status, data[:300])
    return json.loads(data) if data else {}


def create(api: KubeAPI, obj: dict[str, Any]) -> dict[str, Any]:
    kind = BY_KIND[obj["kind"]]
    base = kind.object_path(obj["metadata"].get("namespace", ""), "x").rsplit("/", 1)[0]
    return call(api, "POST", base, obj)


def running_pod(api: KubeAPI, name: str, node: str, ip: str) -> None:
    create(
        api,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "weft/echo"}]},
        },
    )
    status = {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
    call(api, "PATCH", f"/api/v1/namespaces/{NS}/pods/{name}/status", {"status": status})


def test_a_hand_made_slice_makes_its_pod_the_endpoint_of_a_selectorless_service(
    kube_api: KubeAPI,  # noqa: F811
) -> None:
    ambient = {"weft.dev/dataplane-mode": "ambient"}
    create(kube_api, {"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": NS, "labels": ambient}})  # fmt: skip
    create(kube_api, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    running_pod(kube_api, "db-0", NODE, "10.244.3.5")
    running_pod(kube_api, "stray", f"{NODE}-gone", "10.244.9.9")
    create(
        kube_api,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "db", "namespace": NS},
            "spec": {"ports": [{"name": "sql", "port": 5432}]},  # no selector
        },
    )
    create(
        kube_api,
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "db-manual",
                "namespace": NS,
                "labels": {
                    "kubernetes.io/service-name": "db",
                    "endpointslice.kubernetes.io/managed-by": "weft-test",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.244.3.5"],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": "db-0", "namespace": NS},
                    "nodeName": NODE,
                },
                {"addresses": ["192.0.2.10"]},  # a database outside the cluster
            ],
            "ports": [{"name": "sql", "port": 15432, "protocol": "TCP"}],
        },
    )

    store, builder = ResourceStore(), MeshBuilder("cluster.local")
    state: dict[ResourceKey, StateValue] = {}

    def member() -> tuple[ServiceMembership, ...]:
        db = state.get(ResourceKey("Workload", NS, "db-0"))
        return db.services if isinstance(db, Workload) else ()

    async def scenario() -> None:
        nonlocal state
        source = KubernetesSource(KubeSettings(kinds=WATCHED), kube_api.api_client)
        try:
            async with asyncio.timeout(30):
                async for batch in source.batches():
                    for change in batch:
                        if change.documents is None:
                            store.remove_source(change.source)
                        else:
                            store.set_source(change.source, change.documents)
                    state = builder.build(store.resources(), BUNDLE)
                    if member():
                        break
        finally:
            source.close()

    asyncio.run(scenario())
    assert store.problems() == []  # every object, as the API server returns it, parses
    assert member() == (ServiceMembership(NS, "db", {5432: 15432}),)
    db = state[ResourceKey("Workload", NS, "db-0")]
    assert isinstance(db, Workload) and db.enrolled and db.ready
    assert db.identity == f"spiffe://cluster.local/ns/{NS}/sa/default"
    problems = builder.problems()
    outside = problems[ResourceKey("EndpointSlice", NS, "db-manual")]
    assert (outside.field, outside.reason.split(":")[0]) == (
        "endpoints[1].addresses[0]",
        "192.0.2.10 is not the address of a pod",
    )
    stray = problems[ResourceKey("Pod", NS, "stray")]
    assert stray.field == "spec.nodeName" and f"no Node '{NODE}-gone'" in stray.reason
    assert ResourceKey("Pod", NS, "db-0") not in problems
    with contextlib.suppress(AssertionError):  # the module's API server goes with the module
        call(kube_api, "DELETE", f"/api/v1/namespaces/{NS}")
