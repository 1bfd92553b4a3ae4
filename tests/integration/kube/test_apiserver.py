"""weft-kube-apiserver behaves as a Kubernetes API server for what weft's controller relies on:
list/watch with resourceVersions, bookmarks and 410 Gone, paging, the status subresource,
TokenRequest and TokenReview, CRDs, and a restart mid-watch. Driven with the official
`kubernetes` client, as KubernetesSource will be."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.rest import ApiException

from tests.conftest import RUN_ID
from tests.kubeapi import KubeAPI, kube_api, running_kube_api

pytestmark = pytest.mark.kubernetes
__all__ = ["kube_api"]


@pytest.fixture
def namespace(kube_api: KubeAPI, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"weft-{RUN_ID}-{request.node.name.removeprefix('test_')[:30].replace('_', '-')}".rstrip(
        "-"
    )
    core = k8s.CoreV1Api(kube_api.api_client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise


def pod(name: str, node: str = "", labels: dict[str, str] | None = None) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels or {"app": "weft-test"}),
        spec=k8s.V1PodSpec(
            node_name=node or None,
            containers=[k8s.V1Container(name="app", image="weft/sample:1")],
        ),
    )


def events(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    got = []
    for event in stream:
        got.append((event["type"], event["object"].metadata.name))
        if len(got) == count:
            break
    return got


def test_pods_and_namespaces_are_created_listed_and_watched(
    kube_api: KubeAPI, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    raw = kube_api.get_json("/api/v1/namespaces")
    assert raw["kind"] == "NamespaceList" and "kind" not in raw["items"][0]  # as kube-apiserver
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", namespace} <= names

    core.create_namespaced_pod(namespace, pod("a", node="weft-node-1"))
    listed = core.list_namespaced_pod(namespace)
    assert [p.metadata.name for p in listed.items] == ["a"]
    created = listed.items[0]
    assert created.status.phase == "Pending"  # the stored status is the server's, not the client's
    assert created.status.qos_class == "BestEffort"
    assert created.spec.service_account_name == "default"

    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=10,
    )
    core.create_namespaced_pod(namespace, pod("b"))
    # kubelet's part: the status goes through pods/status ...
    core.patch_namespaced_pod_status(
        "a",
        namespace,
        {"status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}},
    )
    # ... and a status sent to the pod itself is ignored, as kube-apiserver does.
    core.patch_namespaced_pod(
        "a", namespace, {"status": {"phase": "Failed"}, "metadata": {"labels": {"v": "2"}}}
    )
    # An unscheduled pod goes at once: its deletionTimestamp is written (MODIFIED), then it is
    # removed (DELETED), as kube-apiserver's graceful deletion does with a zero grace period.
    core.delete_namespaced_pod("b", namespace)
    assert events(stream, 5) == [
        ("ADDED", "b"), ("MODIFIED", "a"), ("MODIFIED", "a"), ("MODIFIED", "b"), ("DELETED", "b"),
    ]  # fmt: skip

    a = core.read_namespaced_pod("a", namespace)
    assert (a.status.phase, a.status.pod_ip, a.metadata.labels["v"]) == ("Running", "10.1.0.5", "2")
    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=weft-node-1")
    assert [p.metadata.name for p in on_node.items] == ["a"]


def test_watch_with_bookmarks_reports_progress(kube_api: KubeAPI, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    core.create_namespaced_pod(namespace, pod("a"))
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    # A write elsewhere moves etcd's revision past the pods' rv. The watch cache sends a
    # bookmark 2 s before the watch's timeout (and every minute) with the revision etcd's
    # progress notifications (every 1 s here) brought it to, and only if that is newer than
    # what the watcher has: on an idle server there is nothing to report, as on a real cluster.
    core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="elsewhere"))
    )
    bookmarks: list[str] = []
    seen: list[tuple[str, float]] = []
    started = time.monotonic()
    # Up to three 10 s watches: on a loaded machine (the full suite on 2 cores) a progress
    # notification can miss the first watch's bookmark window.
    for _attempt in range(3):
        for event in watch.Watch().stream(
            core.list_namespaced_pod,
            namespace,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=10,
        ):
            seen.append((event["type"], round(time.monotonic() - started, 1)))
            if event["type"] == "BOOKMARK":
                bookmarks.append(event["raw_object"]["metadata"]["resourceVersion"])
        if bookmarks:
            break
    assert bookmarks, f"no BOOKMARK event within three 10 s watches from {rv}: {seen}"
    assert int(bookmarks[-1]) > int(rv)
    assert {kind for kind, _ in seen} == {"BOOKMARK"}  # no pod changed
    assert time.monotonic() - started < 40


def test_continue_token_older_than_compaction_is_410_gone(
    kube_api: KubeAPI, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    for i in range(3):
        core.create_namespaced_pod(namespace, pod(f"p{i}"))
    first = core.list_namespaced_pod(namespace, limit=1)
    assert first.metadata._continue
    core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="later"))
    )
    kube_api.compact_etcd()
    # The watch cache serves continuations from its snapshots until it learns of the
    # compaction (it polls every 15 s), as kube-apiserver 1.34+ does.
    deadline = time.monotonic() + 25
    while True:
        try:
            core.list_namespaced_pod(namespace, limit=1, _continue=first.metadata._continue)
        except ApiException as gone:
            assert gone.status == 410, gone.body
            assert "too old" in gone.body
            break
        assert time.monotonic() < deadline, (
            "a continue token from before the compaction still works after 25 s"
        )
        time.sleep(0.5)


def test_watch_from_before_a_restart_and_compaction_is_410_gone(
    kube_api: KubeAPI, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    core.create_namespaced_pod(namespace, pod("a"))
    old = core.list_namespaced_pod(namespace).metadata.resource_version
    core.create_namespaced_pod(namespace, pod("b"))
    kube_api.compact_etcd()
    kube_api.restart_apiserver()  # the new watch cache starts after `old`
    with pytest.raises(ApiException) as gone:
        for _ in watch.Watch().stream(
            core.list_namespaced_pod, namespace, resource_version=old, timeout_seconds=5
        ):
            pass
    assert gone.value.status == 410
    # The client's remedy: list again and watch from the list's resourceVersion.
    relisted = core.list_namespaced_pod(namespace)
    assert sorted(p.metadata.name for p in relisted.items) == ["a", "b"]


def test_paging_lists_1000_pods_in_pages_of_200(kube_api: KubeAPI, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: core.create_namespaced_pod(namespace, pod(f"pod-{i:04d}")), range(1000)
            )
        )
    started = time.monotonic()
    seen: list[str] = []
    pages = 0
    token = None
    while pages < 10:
        page = core.list_namespaced_pod(namespace, limit=200, _continue=token)
        pages += 1
        assert len(page.items) <= 200
        seen += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert pages == 5
    assert seen == [f"pod-{i:04d}" for i in range(1000)]
    assert time.monotonic() - started < 10


def bound_token(
    kube_api: KubeAPI, namespace: str, sa: str, pod_name: str, audiences: list[str]
) -> str:
    core = k8s.CoreV1Api(kube_api.api_client)
    uid = core.read_namespaced_pod(pod_name, namespace).metadata.uid
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(
            audiences=audiences,
            expiration_seconds=600,
            bound_object_ref=k8s.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod_name, uid=uid
            ),
        )
    )
    issued = core.create_namespaced_service_account_token(sa, namespace, request)
    assert issued.status.token
    return str(issued.status.token)


def review(kube_api: KubeAPI, token: str, audiences: list[str]) -> k8s.V1TokenReviewStatus:
    auth = k8s.AuthenticationV1Api(kube_api.api_client)
    body = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=audiences))
    return auth.create_token_review(body).status


def test_tokenreview_authenticates_a_bound_token_for_its_audience_only(
    kube_api: KubeAPI, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="weft-node"))
    )
    core.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=f"weft-{RUN_ID}-node")))
    try:
        agent = pod("agent", node=f"weft-{RUN_ID}-node")
        agent.spec.service_account_name = "weft-node"
        core.create_namespaced_pod(namespace, agent)
        token = bound_token(kube_api, namespace, "weft-node", "agent", ["weft"])

        ok = review(kube_api, token, ["weft"])
        assert ok.authenticated, ok.error
        assert ok.user.username == f"system:serviceaccount:{namespace}:weft-node"
        assert ok.audiences == ["weft"]
        assert {
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        } <= set(ok.user.groups)
        assert ok.user.extra["authentication.kubernetes.io/pod-name"] == ["agent"]
        assert ok.user.extra["authentication.kubernetes.io/node-name"] == [f"weft-{RUN_ID}-node"]

        wrong = review(kube_api, token, ["not-weft"])
        assert not wrong.authenticated
        assert "audience" in wrong.error

        # A token for another audience is not an API credential either.
        with pytest.raises(ApiException) as refused:
            k8s.CoreV1Api(kube_api.client_for(token)).list_namespaced_pod(namespace)
        assert refused.value.status == 401

        # A pod on a node is deleted gracefully: it stays, terminating, and its token with it.
        core.delete_namespaced_pod("agent", namespace)
        assert core.read_namespaced_pod("agent", namespace).metadata.deletion_timestamp is not None
        assert review(kube_api, token, ["weft"]).authenticated
        core.delete_namespaced_pod("agent", namespace, grace_period_seconds=0)  # kubelet's part
        gone = review(kube_api, token, ["weft"])
        assert not gone.authenticated  # bound to a pod that no longer exists
        assert "agent" in gone.error
    finally:
        core.delete_node(f"weft-{RUN_ID}-node")


def test_a_token_for_the_api_audience_is_an_api_credential(
    kube_api: KubeAPI, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    core.create_namespaced_service_account(
        namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="reader"))
    )
    issued = core.create_namespaced_service_account_token(
        "reader",
        namespace,
        k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec(audiences=[])),
    )
    as_sa = k8s.CoreV1Api(kube_api.client_for(issued.status.token))
    assert as_sa.list_namespaced_pod(namespace).items == []
    with pytest.raises(ApiException) as unauthenticated:
        k8s.CoreV1Api(kube_api.client_for("not-a-token")).list_namespaced_pod(namespace)
    assert unauthenticated.value.status == 401


WIDGETS = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets{RUN_ID}.test.weft.dev"},
    "spec": {
        "group": "test.weft.dev",
        "scope": "Namespaced",
        "names": {
            "plural": f"widgets{RUN_ID}",
            "singular": f"widget{RUN_ID}",
            "kind": f"Widget{RUN_ID}",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                                "required": ["size"],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_a_crd_installs_and_its_resources_are_validated_created_and_watched(
    kube_api: KubeAPI, namespace: str
) -> None:
    ext = k8s.ApiextensionsV1Api(kube_api.api_client)
    name = WIDGETS["metadata"]["name"]  # type: ignore[index]
    plural = f"widgets{RUN_ID}"
    ext.create_custom_resource_definition(WIDGETS)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            crd = ext.read_custom_resource_definition(name)
            if any(
                c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
            ):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"CRD {name} was not Established within 10 s")
        custom = k8s.CustomObjectsApi(kube_api.api_client)

        def widget(n: str, size: Any) -> dict[str, Any]:
            return {
                "apiVersion": "test.weft.dev/v1",
                "kind": f"Widget{RUN_ID}",
                "metadata": {"name": n},
                "spec": {"size": size},
            }

        deadline = time.monotonic() + 10
        while True:  # the CR endpoint is served shortly after Established
            try:
                first = custom.create_namespaced_custom_object(
                    "test.weft.dev", "v1", namespace, plural, widget("w1", 1)
                )
                break
            except ApiException as e:
                if e.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with pytest.raises(ApiException) as invalid:
            custom.create_namespaced_custom_object(
                "test.weft.dev", "v1", namespace, plural, widget("w0", 0)
            )
        assert invalid.value.status == 422
        assert "spec.size" in invalid.value.body
        with pytest.raises(ApiException) as strict:
            bad = widget("w9", 2) | {"spec": {"size": 2, "colour": "red"}}
            custom.create_namespaced_custom_object(
                "test.weft.dev", "v1", namespace, plural, bad, field_validation="Strict"
            )
        assert strict.value.status == 400 and "colour" in strict.value.body

        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object, "test.weft.dev", "v1", namespace, plural,
            resource_version=first["metadata"]["resourceVersion"], timeout_seconds=10,
        )  # fmt: skip
        custom.create_namespaced_custom_object(
            "test.weft.dev", "v1", namespace, plural, widget("w2", 2)
        )
        event = next(iter(stream))
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "w2")
        groups = k8s.ApisApi(kube_api.api_client).get_api_versions()
        assert "test.weft.dev" in {g.name for g in groups.groups}
    finally:
        ext.delete_custom_resource_definition(name)


def test_a_restart_ends_the_watch_and_the_client_resumes_from_its_resource_version() -> None:
    # A server of its own: after a restart the watch cache starts at etcd's current revision,
    # so a resume succeeds only if nothing at all was written since the client's last event
    # (otherwise 410 and a relist, as on a real cluster); the shared server's background
    # cleanups would make that a race.
    with running_kube_api("restart") as kube_api:
        resume_after_restart(kube_api)


def resume_after_restart(kube_api: KubeAPI) -> None:
    namespace = f"weft-{RUN_ID}-restart"
    core = k8s.CoreV1Api(kube_api.api_client)
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    deadline = time.monotonic() + 10  # the server's own write (the default ServiceAccount) first
    while not core.list_namespaced_service_account(namespace).items:
        assert time.monotonic() < deadline, "no default ServiceAccount within 10 s"
        time.sleep(0.05)
    core.create_namespaced_pod(namespace, pod("before"))
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    seen: queue.Queue[tuple[str, str, str] | None] = queue.Queue()

    def watch_until_it_ends() -> None:
        try:
            for event in watch.Watch().stream(
                core.list_namespaced_pod, namespace, resource_version=rv, timeout_seconds=60
            ):
                obj = event["object"]
                seen.put((event["type"], obj.metadata.name, obj.metadata.resource_version))
        except Exception as e:  # a dropped connection ends the watch like a close
            seen.put(("ENDED", type(e).__name__, ""))
        seen.put(None)

    watcher = threading.Thread(target=watch_until_it_ends, daemon=True)
    watcher.start()
    core.create_namespaced_pod(namespace, pod("during"))
    kind, name, last_rv = seen.get(timeout=10)  # type: ignore[misc]
    assert (kind, name) == ("ADDED", "during")

    kube_api.restart_apiserver()
    watcher.join(30)
    assert not watcher.is_alive(), "the watch did not end when the API server stopped"

    core.create_namespaced_pod(namespace, pod("after"))
    resumed = watch.Watch().stream(
        core.list_namespaced_pod, namespace, resource_version=last_rv, timeout_seconds=10
    )
    assert events(resumed, 1) == [("ADDED", "after")]


def test_kubectl_gets_namespaces_and_dry_runs_a_manifest(
    kube_api: KubeAPI, namespace: str, tmp_path: Any
) -> None:
    out = kube_api.kubectl("get", "ns").stdout
    assert "kube-system" in out and namespace in out
    manifest = tmp_path / "ds.yaml"
    manifest.write_text(
        f"""apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: weft-node, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: weft-node}}}}
  template:
    metadata: {{labels: {{app: weft-node}}}}
    spec:
      containers: [{{name: agent, image: "weft:dev"}}]
"""
    )
    done = kube_api.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert "created (server dry run)" in done.stdout
    manifest.write_text(manifest.read_text().replace("image:", "imagee:"))
    refused = kube_api.kubectl("apply", "--dry-run=server", "-f", str(manifest), check=False)
    assert refused.returncode != 0 and "imagee" in refused.stderr
    assert k8s.AppsV1Api(kube_api.api_client).list_namespaced_daemon_set(namespace).items == []


def test_the_server_plays_the_defaults_weft_reads(kube_api: KubeAPI, namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    # The service-account controller's part: every namespace gets "default".
    deadline = time.monotonic() + 10
    while not any(
        sa.metadata.name == "default"
        for sa in core.list_namespaced_service_account(namespace).items
    ):
        assert time.monotonic() < deadline, "no default ServiceAccount within 10 s"
        time.sleep(0.1)
    svc = k8s.V1Service(
        metadata=k8s.V1ObjectMeta(name="web"),
        spec=k8s.V1ServiceSpec(
            selector={"app": "web"}, ports=[k8s.V1ServicePort(name="http", port=80)]
        ),
    )
    first = core.create_namespaced_service(namespace, svc)
    second = core.create_namespaced_service(
        namespace, k8s.V1Service(metadata=k8s.V1ObjectMeta(name="api"), spec=svc.spec)
    )
    assert (
        first.spec.cluster_ip.startswith("10.96.")
        and first.spec.cluster_ip != second.spec.cluster_ip
    )
    assert (first.spec.type, first.spec.ports[0].protocol, first.spec.ports[0].target_port) == (
        "ClusterIP",
        "TCP",
        80,
    )
    with pytest.raises(ApiException) as immutable:
        core.patch_namespaced_service("web", namespace, {"spec": {"clusterIP": "10.96.255.1"}})
    assert immutable.value.status == 422 and "spec.clusterIP" in immutable.value.body

    apps = k8s.AppsV1Api(kube_api.api_client)
    deploy = {
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1"}]},
            },
        },
    }
    created = apps.create_namespaced_deployment(namespace, deploy)
    assert created.metadata.generation == 1
    apps.patch_namespaced_deployment_status(
        "web", namespace, {"status": {"observedGeneration": 1, "readyReplicas": 1}}
    )
    bumped = apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 3}})
    assert (bumped.metadata.generation, bumped.status.ready_replicas) == (2, 1)


def test_server_side_apply_with_kubectl_tracks_field_managers(
    kube_api: KubeAPI, namespace: str, tmp_path: Any
) -> None:
    manifest = tmp_path / "cm.yaml"
    manifest.write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: weft-cfg, namespace: {namespace}}}\ndata: {{a: '1'}}\n"
    )
    kube_api.kubectl("apply", "--server-side", "--field-manager=weft-test", "-f", str(manifest))
    core = k8s.CoreV1Api(kube_api.api_client)
    core.patch_namespaced_config_map("weft-cfg", namespace, {"data": {"b": "2"}})
    cm = core.read_namespaced_config_map("weft-cfg", namespace)
    assert cm.data == {"a": "1", "b": "2"}
    assert {"weft-test"} <= {m.manager for m in cm.metadata.managed_fields}
    manifest.write_text(manifest.read_text().replace("a: '1'", "a: '3'"))
    kube_api.kubectl("apply", "--server-side", "--field-manager=weft-test", "-f", str(manifest))
    assert core.read_namespaced_config_map("weft-cfg", namespace).data == {"a": "3", "b": "2"}


def test_deleting_a_namespace_deletes_what_was_in_it(kube_api: KubeAPI) -> None:
    core = k8s.CoreV1Api(kube_api.api_client)
    name = f"weft-{RUN_ID}-doomed"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    core.create_namespaced_pod(name, pod("a"))
    core.create_namespaced_config_map(name, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="c")))
    core.delete_namespace(name)
    deadline = time.monotonic() + 15
    while core.list_namespaced_pod(name).items or core.list_namespaced_config_map(name).items:
        assert time.monotonic() < deadline, "the namespace's objects were not deleted within 15 s"
        time.sleep(0.2)
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(name, pod("late"))
    assert refused.value.status == 404  # NamespaceLifecycle admission


def test_rbac_mode_grants_what_the_bindings_grant_and_nothing_else() -> None:
    with running_kube_api("rbac", authorization="RBAC") as kube_api:
        core = k8s.CoreV1Api(kube_api.api_client)
        rbac = k8s.RbacAuthorizationV1Api(kube_api.api_client)
        ns, other = f"weft-{RUN_ID}-rbac", f"weft-{RUN_ID}-other"
        for name in (ns, other):
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        core.create_namespaced_service_account(
            ns, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="agent"))
        )
        token = core.create_namespaced_service_account_token(
            "agent", ns, k8s.AuthenticationV1TokenRequest(spec=k8s.V1TokenRequestSpec())
        )
        as_agent = k8s.CoreV1Api(kube_api.client_for(token.status.token))

        def status_of(call: Any) -> int:
            try:
                call()
            except ApiException as e:
                return int(e.status)
            return 200

        assert status_of(lambda: as_agent.list_namespaced_pod(ns)) == 403
        assert (
            kube_api.get_json("/api", token=token.status.token)["kind"] == "APIVersions"
        )  # discovery
        rbac.create_namespaced_role(
            ns,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
                ],
            },
        )
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": "agent-reads-pods"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "pod-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
            },
        )
        deadline = time.monotonic() + 10  # the authorizer reads bindings through an informer
        while status_of(lambda: as_agent.list_namespaced_pod(ns)) != 200:
            assert time.monotonic() < deadline, "the RoleBinding did not take effect within 10 s"
            time.sleep(0.1)
        assert status_of(lambda: as_agent.list_namespaced_pod(other)) == 403
        assert status_of(lambda: as_agent.create_namespaced_pod(ns, pod("x"))) == 403
        # kubectl auth can-i (SelfSubjectAccessReview, impersonating) answers as the server decides.
        sa = f"system:serviceaccount:{ns}:agent"
        assert (
            kube_api.kubectl("auth", "can-i", "list", "pods", "-n", ns, f"--as={sa}").stdout.strip()
            == "yes"
        )
        refused = kube_api.kubectl(
            "auth", "can-i", "create", "pods", "-n", ns, f"--as={sa}", check=False
        )
        assert (refused.returncode, refused.stdout.strip()) == (1, "no")
        assert status_of(lambda: as_agent.list_node()) == 403
        # An aggregated ClusterRole gets the rules of the ClusterRoles it selects.
        rbac.create_cluster_role(
            {
                "metadata": {"name": f"weft-{RUN_ID}-nodes", "labels": {"weft-agg": "1"}},
                "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
            }
        )
        rbac.create_cluster_role(
            {
                "metadata": {"name": f"weft-{RUN_ID}-agg"},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"weft-agg": "1"}}]},
            }
        )
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": f"weft-{RUN_ID}-agg"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"weft-{RUN_ID}-agg",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
            }
        )
        deadline = time.monotonic() + 10
        while status_of(lambda: as_agent.list_node()) != 200:
            assert time.monotonic() < deadline, (
                "the aggregated ClusterRole did not take effect within 10 s"
            )
            time.sleep(0.1)
