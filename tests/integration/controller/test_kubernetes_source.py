"""KubernetesSource against a real API server (tests/kubeapi.py): initial list, every change,
a watch resumed after the API server restarts, a 410 forcing a relist with nothing lost, and
1,000 pods listed a page at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from controller.kubecache import WatchExpired
from controller.kubekinds import KINDS, KubeKind
from controller.kubesource import KubernetesSource, KubeSettings, Reflector
from controller.sources import SourceChange
from meshcore.resources import Document
from meshcore.resources.core import Pod
from meshcore.resources.loader import parse_resource
from tests.kubeapi import KubeAPI, kube_api  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

BY_KIND = {k.kind: k for k in KINDS}
CORE = tuple(BY_KIND[k] for k in ("Namespace", "Pod", "Service", "ServiceAccount"))


def pod(name: str, ns: str, node: str = "node-a") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "web", "image": "weft/echo", "ports": [{"containerPort": 80}]}],
        },
    }


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def create(api: KubeAPI, obj: dict[str, Any]) -> dict[str, Any]:
    kind = BY_KIND[obj["kind"]]
    ns = obj["metadata"].get("namespace", "")
    base = kind.object_path(ns, "x").rsplit("/", 1)[0]
    return call(api, "POST", base, obj)


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


class Collected:
    """Every batch a source yields, with a way to wait for a condition on what it holds."""

    def __init__(self) -> None:
        self.batches: list[list[SourceChange]] = []
        self.present: dict[str, Any] = {}
        self._changed = asyncio.Event()

    def add(self, batch: list[SourceChange]) -> None:
        self.batches.append(batch)
        for change in batch:
            if change.documents is None:
                self.present.pop(change.source, None)
            else:
                assert isinstance(change.documents, list)
                self.present[change.source] = change.documents[0].raw
        self._changed.set()

    async def until(self, check: Callable[[], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def following(source: KubernetesSource) -> AsyncIterator[Collected]:
    collected = Collected()

    async def run() -> None:
        async for batch in source.batches():
            collected.add(batch)

    task = asyncio.create_task(run())
    try:
        yield collected
    finally:
        source.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


READY = [{"type": "Ready", "status": "True"}]


def ready(doc: dict[str, Any]) -> bool:
    return {"type": "Ready", "status": "True"} in doc["status"]["conditions"]


def settings(kinds: tuple[KubeKind, ...] = CORE, **extra: Any) -> KubeSettings:
    return KubeSettings(kinds=kinds, **extra)


def src(kind: str, ns: str, name: str) -> str:
    return f"kubernetes:{kind}/{ns}/{name}" if ns else f"kubernetes:{kind}/{name}"


def test_first_batch_holds_the_whole_cluster_then_every_change(kube_api: KubeAPI) -> None:  # noqa: F811
    ns = "src-first"
    create(kube_api, namespace(ns))
    create(kube_api, pod("before", ns))

    async def scenario() -> None:
        source = KubernetesSource(
            settings(kinds=(*CORE, BY_KIND["AuthorizationPolicy"])), kube_api.api_client
        )
        async with following(source) as seen:
            await seen.until(lambda: bool(seen.batches))
            first = {c.source for c in seen.batches[0]}
            assert {src("Namespace", "", ns), src("Pod", ns, "before")} <= first
            # the projected object parses as weft's Pod
            (change,) = [c for c in seen.batches[0] if c.source == src("Pod", ns, "before")]
            assert isinstance(change.documents, list)
            parsed = parse_resource(change.documents[0]).resource
            assert isinstance(parsed, Pod) and parsed.spec.node_name == "node-a"

            await asyncio.to_thread(create, kube_api, pod("after", ns))
            await seen.until(lambda: src("Pod", ns, "after") in seen.present)
            await asyncio.to_thread(
                call,
                kube_api,
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/after/status",
                {"status": {"phase": "Running", "podIP": "10.244.0.9", "conditions": READY}},
            )
            await seen.until(lambda: ready(seen.present[src("Pod", ns, "after")]))
            await asyncio.to_thread(
                call,
                kube_api,
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/after",
                {"metadata": {"labels": {"app": "web", "version": "v2"}}},
            )
            await seen.until(
                lambda: (
                    seen.present[src("Pod", ns, "after")]["metadata"]["labels"].get("version")
                    == "v2"
                )
            )
            # a scheduled pod is deleted gracefully: terminating (not ready) first ...
            path = f"/api/v1/namespaces/{ns}/pods/after"
            await asyncio.to_thread(call, kube_api, "DELETE", path)
            await seen.until(lambda: not ready(seen.present[src("Pod", ns, "after")]))
            # ... then gone once its kubelet says so
            await asyncio.to_thread(call, kube_api, "DELETE", path, {"gracePeriodSeconds": 0})
            await seen.until(lambda: src("Pod", ns, "after") not in seen.present)

    asyncio.run(scenario())


def test_a_kind_whose_crd_is_not_installed_does_not_hold_back_the_first_batch(
    kube_api: KubeAPI,  # noqa: F811
) -> None:
    async def scenario() -> None:
        missing = KubeKind("Widget", "widgets.weft.dev", "v1", "widgets", optional=True)
        source = KubernetesSource(
            settings(kinds=(BY_KIND["Namespace"], missing)), kube_api.api_client
        )
        async with following(source) as seen:
            await seen.until(lambda: bool(seen.batches), timeout=10)

    asyncio.run(scenario())


def test_watch_resumes_after_the_api_server_restarts(kube_api: KubeAPI) -> None:  # noqa: F811
    ns = "src-restart"
    create(kube_api, namespace(ns))

    async def scenario() -> None:
        source = KubernetesSource(settings(), kube_api.api_client)
        async with following(source) as seen:
            await seen.until(lambda: src("Namespace", "", ns) in seen.present)
            await asyncio.to_thread(kube_api.restart_apiserver)
            await asyncio.to_thread(create, kube_api, pod("after-restart", ns))
            await seen.until(lambda: src("Pod", ns, "after-restart") in seen.present, timeout=40)

    asyncio.run(scenario())


def test_410_gone_makes_a_relist_that_loses_no_event(kube_api: KubeAPI) -> None:  # noqa: F811
    """While the reflector's version is too old (compacted away), objects are added and
    deleted: the relist it is forced into reports both."""
    ns = "src-gone"
    create(kube_api, namespace(ns))
    create(kube_api, pod("doomed", ns))
    reported: list[Any] = []
    reflector = Reflector(
        BY_KIND["Pod"], kube_api.api_client, settings(), lambda _k, c: reported.extend(c),
        __import__("threading").Event(),
    )  # fmt: skip
    items, version = reflector.list()
    reflector.cache.relist(items, version)
    call(kube_api, "DELETE", f"/api/v1/namespaces/{ns}/pods/doomed", {"gracePeriodSeconds": 0})
    create(kube_api, pod("born", ns))
    # etcd forgets the history the reflector would resume from, and the API server's watch
    # cache (which restarts with it) never had it: resuming is refused with 410
    kube_api.compact_etcd()
    kube_api.restart_apiserver()
    with pytest.raises(WatchExpired):  # (as an HTTP 410, or a 410 ERROR event in the stream)
        for event in reflector.watch(reflector.cache.resume_from):
            reflector.cache.event(event)
    reflector._relist("expired")
    names = {(c.name, c.obj is not None) for c in reported if c.namespace == ns}
    assert ("doomed", False) in names and ("born", True) in names


def test_a_thousand_pods_listed_a_page_at_a_time(kube_api: KubeAPI) -> None:  # noqa: F811
    ns = "src-many"
    create(kube_api, namespace(ns))

    def make_all() -> None:
        for i in range(1000):
            create(kube_api, pod(f"p-{i:04}", ns))

    make_all()
    pages: list[int] = []
    reflector = Reflector(
        BY_KIND["Pod"], kube_api.api_client, settings(page_size=200), lambda _k, _c: None,
        __import__("threading").Event(),
    )  # fmt: skip
    original = reflector._get

    def counting(query: list[tuple[str, str]], read_timeout: float) -> Any:
        pages.append(1)
        return original(query, read_timeout)

    reflector._get = counting  # type: ignore[method-assign]
    items, _version = reflector.list()
    mine = [i for i in items if i["metadata"]["namespace"] == ns]
    assert len(mine) == 1000
    assert len(pages) >= 5  # (1000 / 200, plus whatever else the server holds)


CRD_FILES = [
    *sorted((Path(__file__).parents[3] / "daemonset" / "crds").glob("*.yaml")),
    Path(__file__).parents[3] / "lab" / "kube" / "gateway-api-crds.yaml",
]

EVERY_KIND: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("Namespace", {"metadata": {"name": "kinds-ns"}}, {"metadata": {"labels": {"x": "1"}}}),
    (
        "ServiceAccount",
        {"metadata": {"name": "sa", "namespace": "kinds"}},
        {"metadata": {"labels": {"x": "1"}}},
    ),
    (
        "Service",
        {
            "metadata": {"name": "web", "namespace": "kinds"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        },
        {"metadata": {"labels": {"x": "1"}}},
    ),
    (
        "Deployment",
        {
            "metadata": {"name": "web", "namespace": "kinds"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "weft/echo"}]},
                },
            },
        },
        {"spec": {"replicas": 3}},
    ),
    (
        "ConfigMap",
        {"metadata": {"name": "weft", "namespace": "weft-system"}, "data": {"mesh": "{}"}},
        {"metadata": {"labels": {"x": "1"}}},
    ),
    (
        "AuthorizationPolicy",
        {"metadata": {"name": "deny-admin", "namespace": "kinds"},
         "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}},
        {"metadata": {"labels": {"x": "1"}}},
    ),
    (
        "PeerAuthentication",
        {"metadata": {"name": "strict", "namespace": "kinds"}, "spec": {"mtls": {"mode": "STRICT"}}},
        {"metadata": {"labels": {"x": "1"}}},
    ),
    (
        "HTTPRoute",
        {"metadata": {"name": "r", "namespace": "kinds"},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}]}},
        {"metadata": {"labels": {"x": "1"}}},
    ),
    (
        "Gateway",
        {"metadata": {"name": "waypoint", "namespace": "kinds"},
         "spec": {"gatewayClassName": "weft-waypoint",
                  "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
        {"metadata": {"labels": {"x": "1"}}},
    ),
]  # fmt: skip


def test_every_kind_is_listed_then_followed_through_update_and_delete(
    kube_api: KubeAPI,  # noqa: F811
) -> None:
    for file in CRD_FILES:
        kube_api.kubectl("apply", "-f", str(file))
    for ns in ("kinds", "weft-system"):
        with contextlib.suppress(AssertionError):
            create(kube_api, namespace(ns))
    kinds = tuple(BY_KIND[k] for k, _, _ in EVERY_KIND)

    def full(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": BY_KIND[kind].api_version, "kind": kind, **obj}

    async def scenario() -> None:
        source = KubernetesSource(settings(kinds=kinds), kube_api.api_client)
        async with following(source) as seen:
            await seen.until(lambda: bool(seen.batches))
            for kind, obj, patch in EVERY_KIND:
                meta = obj["metadata"]
                key = src(kind, meta.get("namespace", ""), meta["name"])
                path = BY_KIND[kind].object_path(meta.get("namespace", ""), meta["name"])
                await asyncio.to_thread(create, kube_api, full(kind, obj))
                await seen.until(lambda key=key: key in seen.present)
                await asyncio.to_thread(call, kube_api, "PATCH", path, patch)
                await seen.until(
                    lambda key=key, kind=kind, patch=patch: _applied(seen.present[key], patch)
                )
                # every document the source hands on parses as weft's kind
                doc = Document(key, seen.present[key])
                assert parse_resource(doc).resource.kind == kind  # type: ignore[union-attr]
                await asyncio.to_thread(call, kube_api, "DELETE", path, {"gracePeriodSeconds": 0})
                await seen.until(lambda key=key: key not in seen.present)

    asyncio.run(scenario())


def _applied(doc: dict[str, Any], patch: dict[str, Any]) -> bool:
    if "metadata" in patch:
        return doc["metadata"].get("labels", {}).get("x") == "1"
    return doc["spec"].get("replicas") == patch["spec"]["replicas"]
