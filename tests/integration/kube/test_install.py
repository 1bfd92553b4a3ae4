"""`weftctl install` / `uninstall` / `precheck` against a real Kubernetes API server
(tests/kubeapi.py: etcd and an API server built from Kubernetes' own libraries).

That server runs no controllers: no Deployment ever becomes available, and a deleted
Namespace goes at once, leaving its content (no namespace controller), so these tests install
with --no-wait, check that the waits give up at their timeout naming what they waited for,
and clean up by deleting each object. They run the manifests the user would install
(daemonset/, once it has its kustomization) and a small tree of the same shape that does not
depend on daemonset/'s progress."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from tests.conftest import RUN_ID
from tests.kubeapi import KubeAPI, running_kube_api
from weftctl.install import install, uninstall
from weftctl.kubeapi import KubeApi
from weftctl.manifests import DEFAULT_DIR, Manifest, load
from weftctl.precheck import precheck
from weftctl.render import ObjectRef, Rendered, RenderSettings, render

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

IMAGE = "ghcr.io/weft-mesh/weft:0.1.0"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "ratelimitpolicies.policy.weft.dev"},
    "spec": {
        "group": "policy.weft.dev",
        "scope": "Namespaced",
        "names": {
            "plural": "ratelimitpolicies",
            "singular": "ratelimitpolicy",
            "kind": "RateLimitPolicy",
            "listKind": "RateLimitPolicyList",
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
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


def workload(kind: str, name: str) -> dict[str, Any]:
    labels = {"app": name}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "serviceAccountName": name,
                "containers": [
                    {
                        "name": "main",
                        "image": IMAGE,
                        "args": [
                            "python",
                            "-m",
                            "controller",
                            "run",
                            "--trust-domain",
                            "cluster.local",
                        ],
                    }
                ],
            },
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "weft-system"},
        "spec": spec,
    }


SMALL_TREE: dict[str, Any] = {
    "kustomization.yaml": {"resources": ["namespace.yaml", "crds", "rbac.yaml", "workloads.yaml"]},
    "namespace.yaml": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft-system"}}
    ],
    "crds/kustomization.yaml": {"resources": ["ratelimitpolicies.yaml"]},
    "crds/ratelimitpolicies.yaml": [CRD],
    "rbac.yaml": [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": n, "namespace": "weft-system"},
        }
        for n in ("weft-controller", "weft-node")
    ]
    + [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "weft-controller"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        }
    ],
    "workloads.yaml": [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "weft", "namespace": "weft-system"},
            "data": {"mesh": ""},
        },
        workload("Deployment", "weft-controller"),
        workload("DaemonSet", "weft-node"),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "weft-waypoint"},
            "spec": {"controllerName": "weft.dev/waypoint-controller"},
        },
    ],
}


def write_tree(root: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            path.write_text(yaml.safe_dump_all(content))
        else:
            path.write_text(yaml.safe_dump(content))
    return root


def shipped_or_skip() -> Path:
    if not (DEFAULT_DIR / "kustomization.yaml").exists():
        pytest.skip("daemonset/ has no kustomization.yaml yet")
    return DEFAULT_DIR


@pytest.fixture(params=["small-tree", "daemonset"])
def manifests(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "daemonset":
        return shipped_or_skip()
    return write_tree(tmp_path / f"weft-{RUN_ID}-manifests", SMALL_TREE)


@pytest.fixture(scope="module")
def server() -> Iterator[KubeAPI]:
    """etcd and the API server for this module, in /tmp/weft-kube-<run>-install."""
    with running_kube_api("install") as api:
        yield api


@pytest.fixture
def kube(server: KubeAPI) -> Iterator[KubeApi]:
    api = KubeApi.from_kubeconfig(server.kubeconfig, None)
    yield api
    api.close()


def known_refs() -> list[ObjectRef]:
    """Everything these tests may have created: both trees' objects and the bad Service."""
    docs = [d for content in SMALL_TREE.values() if isinstance(content, list) for d in content]
    refs = [i.ref for i in render([Manifest("small", d) for d in docs], RenderSettings())]
    if (DEFAULT_DIR / "kustomization.yaml").exists():
        refs += [i.ref for i in render(load(DEFAULT_DIR), RenderSettings())]
    refs.append(ObjectRef("v1", "Service", f"weft-bad-{RUN_ID}", "weft-system"))
    return refs


def reset(kube: KubeApi) -> None:
    """Remove what the tests made, playing the namespace controller the test server lacks:
    the namespace's content first, then the namespace (and its finalizer, if any)."""
    refs = known_refs()
    for ref in refs:
        if ref.kind != "Namespace":
            kube.delete(ref)
    namespace = ObjectRef("v1", "Namespace", "weft-system")
    kube.delete(namespace)
    live = kube.get(namespace)
    if live is not None:
        live["spec"] = {"finalizers": []}
        kube.request("PUT", "/api/v1/namespaces/weft-system/finalize", "finalize", body=live)
    for ref in refs:
        for _ in range(50):  # bounded: CRDs are removed by the server's own cleanup
            if kube.get(ref) is None if kube.resource(ref) else True:
                break
            time.sleep(0.1)


@pytest.fixture
def clean(kube: KubeApi) -> Iterator[None]:
    """Each test starts and ends without any of weft's objects, even when it fails."""
    reset(kube)
    yield
    reset(kube)
    kube.forget_discovery()


def content(live: dict[str, Any] | None) -> dict[str, Any]:
    """An object without the server's bookkeeping of writes. (The test server records no
    managedFields when apply creates an object, so the next apply adds them and bumps
    resourceVersion even when nothing changed; a real server does neither.)"""
    assert live is not None
    meta = {
        k: v for k, v in live["metadata"].items() if k not in ("resourceVersion", "managedFields")
    }
    return {**live, "metadata": meta}


def run(command: Any, *args: str) -> Result:
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def objects(manifests: Path) -> list[Rendered]:
    return render(load(manifests), RenderSettings())


def expected_present(kube: KubeApi, items: list[Rendered]) -> list[Rendered]:
    """Everything but what needs Gateway API, which the test server does not have."""
    return [i for i in items if i.ref.group != "gateway.networking.k8s.io"]


def test_dry_run_is_checked_by_the_server_and_creates_nothing(
    server: KubeAPI,
    kube: KubeApi,
    manifests: Path,
    clean: None,
) -> None:
    items = objects(manifests)
    already = {str(i.ref) for i in items if kube.get(i.ref) is not None}
    result = run(
        install,
        "--kubeconfig",
        str(server.kubeconfig),
        "--manifests",
        str(manifests),
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    assert "(server dry run)" in result.output
    assert "nothing was kept" in result.output
    created = [
        str(i.ref) for i in items if str(i.ref) not in already and kube.get(i.ref) is not None
    ]
    assert created == []


def test_install_applies_everything_and_again_changes_nothing(
    server: KubeAPI,
    kube: KubeApi,
    manifests: Path,
    clean: None,
) -> None:
    kubeconfig = str(server.kubeconfig)
    result = run(install, "--kubeconfig", kubeconfig, "--manifests", str(manifests), "--no-wait")
    assert result.exit_code == 0, result.output
    assert "weft is installed" in result.output
    items = objects(manifests)
    if any(i.ref.kind == "GatewayClass" for i in items):
        assert (
            "GatewayClass weft-waypoint: skipped: Gateway API CRDs are not installed"
            in result.output
        )
    present = expected_present(kube, items)
    versions = {}
    for item in present:
        live = kube.get(item.ref)
        assert live is not None, f"{item.ref} was not created"
        # The test server keeps no managedFields for built-in kinds (a real one does): where
        # it keeps them, weftctl must be the manager.
        managers = {m["manager"] for m in live["metadata"].get("managedFields") or ()}
        assert "weftctl" in managers or (not managers and not item.ref.is_crd), item.ref
        versions[str(item.ref)] = content(live)
    for item in present:
        if item.ref.is_crd:
            conditions = kube.get(item.ref)["status"]["conditions"]  # type: ignore[index]
            assert {"type": "Established", "status": "True"}.items() <= next(
                c for c in conditions if c["type"] == "Established"
            ).items()

    again = run(install, "--kubeconfig", kubeconfig, "--manifests", str(manifests), "--no-wait")
    assert again.exit_code == 0, again.output
    unchanged = {str(i.ref): content(kube.get(i.ref)) for i in present}
    assert unchanged == versions, "a second install with the same manifests changed objects"


def test_install_patches_settings_onto_the_live_objects(
    server: KubeAPI,
    kube: KubeApi,
    tmp_path: Path,
    clean: None,
) -> None:
    manifests = write_tree(tmp_path / "m", SMALL_TREE)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("extensionProviders: []\n")
    result = run(
        install,
        "--kubeconfig", str(server.kubeconfig),
        "--manifests", str(manifests),
        "--no-wait",
        "--image", "registry.local/weft:dev",
        "--trust-domain", "example.org",
        "--set-mesh-config", str(mesh),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    deployment = kube.get(ObjectRef("apps/v1", "Deployment", "weft-controller", "weft-system"))
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/weft:dev"
    assert container["args"][-4:] == [
        "--trust-domain",
        "example.org",
        "--waypoint-image",
        "registry.local/weft:dev",
    ]
    cm = kube.get(ObjectRef("v1", "ConfigMap", "weft", "weft-system"))
    assert cm is not None and cm["data"]["mesh"] == "extensionProviders: []\n"


def test_a_refused_object_is_named_with_the_servers_reason_and_the_rest_applied(
    server: KubeAPI,
    kube: KubeApi,
    tmp_path: Path,
    clean: None,
) -> None:
    tree = dict(SMALL_TREE)
    bad_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"weft-bad-{RUN_ID}", "namespace": "weft-system"},
        "spec": {"ports": [{"port": 80, "portz": 81}]},  # a typo
    }
    tree["workloads.yaml"] = [bad_service, *SMALL_TREE["workloads.yaml"]]
    manifests = write_tree(tmp_path / "m", tree)
    result = CliRunner().invoke(
        install,
        ["--kubeconfig", str(server.kubeconfig), "--manifests", str(manifests), "--no-wait"],
    )
    assert result.exit_code == 1, result.output
    assert (
        f"workloads.yaml#0: apply Service weft-system/weft-bad-{RUN_ID}: the API server refused it"
        in result.output
    )
    assert "portz" in result.output  # the server's own message
    assert "1 object(s) not applied" in result.output
    assert kube.get(ObjectRef("apps/v1", "DaemonSet", "weft-node", "weft-system")) is not None


def test_wait_gives_up_at_its_timeout_naming_what_is_not_ready(
    server: KubeAPI,
    tmp_path: Path,
    clean: None,
) -> None:
    manifests = write_tree(tmp_path / "m", SMALL_TREE)
    result = CliRunner().invoke(
        install,
        ["--kubeconfig", str(server.kubeconfig), "--manifests", str(manifests), "--timeout", "2"],
    )
    assert result.exit_code == 1, result.output
    assert "not ready after 2s: Deployment weft-system/weft-controller" in result.output
    assert "DaemonSet weft-system/weft-node" in result.output


def test_uninstall_removes_in_reverse_and_keeps_crds_unless_purged(
    server: KubeAPI,
    kube: KubeApi,
    manifests: Path,
    clean: None,
) -> None:
    kubeconfig = str(server.kubeconfig)
    assert (
        run(
            install, "--kubeconfig", kubeconfig, "--manifests", str(manifests), "--no-wait"
        ).exit_code
        == 0
    )
    items = expected_present(kube, objects(manifests))
    result = run(uninstall, "--kubeconfig", kubeconfig, "--manifests", str(manifests), "--no-wait")
    assert result.exit_code == 0, result.output
    assert "CRDs are kept" in result.output
    for item in items:
        live = kube.get(item.ref)
        if item.ref.is_crd:
            assert live is not None, f"{item.ref} was removed without --purge-crds"
        elif item.ref.kind == "Namespace":
            # Terminating on a real cluster until its content is gone; gone at once here.
            assert live is None or live["metadata"].get("deletionTimestamp")
        else:
            assert live is None, f"{item.ref} is still there"
    lines = [line for line in result.output.splitlines() if line.endswith(" deleted")]
    assert lines[-1].startswith("namespace/")  # namespaced objects went first

    purged = run(
        uninstall,
        "--kubeconfig",
        kubeconfig,
        "--manifests",
        str(manifests),
        "--no-wait",
        "--purge-crds",
    )
    assert purged.exit_code == 0, purged.output
    for item in items:
        if item.ref.is_crd:
            live = kube.get(item.ref)
            assert live is None or live["metadata"].get("deletionTimestamp"), item.ref
    again = run(uninstall, "--kubeconfig", kubeconfig, "--manifests", str(manifests), "--no-wait")
    assert again.exit_code == 0, again.output  # nothing left is not an error


def test_uninstall_waits_for_finalizers_only_until_its_timeout(
    server: KubeAPI, kube: KubeApi, tmp_path: Path, clean: None
) -> None:
    """A finalizer nobody removes (as a stuck controller's would) holds the ClusterRole.
    (Cluster-scoped: the test server removes a Namespace at once, leaving its content.)"""
    tree = dict(SMALL_TREE)
    rbac = [dict(d) for d in SMALL_TREE["rbac.yaml"]]
    role = next(d for d in rbac if d["kind"] == "ClusterRole")
    role["metadata"] = {**role["metadata"], "finalizers": [f"weft.dev/test-hold-{RUN_ID}"]}
    tree["rbac.yaml"] = rbac
    manifests = write_tree(tmp_path / "m", tree)
    kubeconfig = str(server.kubeconfig)
    held = ObjectRef("rbac.authorization.k8s.io/v1", "ClusterRole", "weft-controller")
    try:
        assert (
            run(
                install, "--kubeconfig", kubeconfig, "--manifests", str(manifests), "--no-wait"
            ).exit_code
            == 0
        )
        started = time.monotonic()
        waited = CliRunner().invoke(
            uninstall, ["--kubeconfig", kubeconfig, "--manifests", str(manifests), "--timeout", "2"]
        )
        assert waited.exit_code == 1, waited.output
        assert "ClusterRole weft-controller still there after 2s" in waited.output
        assert time.monotonic() - started < 30
        assert (
            kube.get(ObjectRef("apps/v1", "Deployment", "weft-controller", "weft-system")) is None
        )
    finally:
        kube.request(
            "PATCH",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/weft-controller",
            "release the test finalizer",
            body={"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )
    for _ in range(50):  # bounded: removing the last finalizer ends the deletion
        if kube.get(held) is None:
            break
        time.sleep(0.1)
    assert kube.get(held) is None


def test_precheck_reads_the_cluster(server: KubeAPI) -> None:
    result = CliRunner().invoke(
        precheck, ["--no-node", "--kubeconfig", str(server.kubeconfig), "-o", "json"]
    )
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert set(checks) == {"kubernetes", "gateway-api", "weft", "istio"}
    assert checks["gateway-api"]["verdict"] == "warn"
    assert checks["istio"]["verdict"] == "ok"
    assert result.exit_code == (1 if any(c["verdict"] == "fail" for c in checks.values()) else 0)


def test_precheck_names_an_unreachable_cluster(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    result = CliRunner().invoke(precheck, ["--no-node", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 1
    assert "cannot reach the API server at https://127.0.0.1:1" in result.output


def _play_rollout(kube: KubeApi, kind: str, name: str) -> None:
    """What the Deployment/DaemonSet controller and a kubelet would report once every pod is
    up (the test server runs neither): the status `weftctl install --wait` reads."""
    plural = {"Deployment": "deployments", "DaemonSet": "daemonsets"}[kind]
    path = f"/apis/apps/v1/namespaces/weft-system/{plural}/{name}"
    live = kube.get(ObjectRef("apps/v1", kind, name, "weft-system"))
    assert live is not None, f"{kind} {name} was not applied"
    generation = live["metadata"]["generation"]
    if kind == "Deployment":
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": 1,
            "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "Test"}],
        }
    else:
        status = {
            "observedGeneration": generation,
            "currentNumberScheduled": 1,
            "desiredNumberScheduled": 1,
            "updatedNumberScheduled": 1,
            "numberReady": 1,
            "numberAvailable": 1,
            "numberMisscheduled": 0,
        }
    kube.request(
        "PATCH",
        f"{path}/status",
        f"{kind} {name} status",
        body={"status": status},
        content_type="application/merge-patch+json",
    )


def _output_until(out: Path, proc: subprocess.Popen[bytes], text: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        seen = out.read_text()
        if text in seen or proc.poll() is not None:
            return seen
        time.sleep(0.2)
    return out.read_text()


def test_install_waits_for_the_ztunnel_daemonset_too(
    server: KubeAPI, kube: KubeApi, tmp_path: Path, clean: None
) -> None:
    """The shipped manifests, installed with --wait: done only once the controller, the node
    agent's DaemonSet and ztunnel's own DaemonSet (daemonset/ztunnel.yaml) are all rolled out.
    The test plays their controllers by writing each one's status in turn."""
    manifests = shipped_or_skip()
    workloads = [
        (i.ref.kind, i.ref.name)
        for i in objects(manifests)
        if i.ref.group == "apps" and i.ref.kind in ("Deployment", "DaemonSet")
    ]
    assert workloads == [
        ("Deployment", "weft-controller"),
        ("DaemonSet", "weft-node"),
        ("DaemonSet", "weft-ztunnel"),
    ]
    out = tmp_path / f"weft-{RUN_ID}-install.out"
    argv = [sys.executable, "-c", "from weftctl.main import cli; cli()", "install"]
    argv += ["--kubeconfig", str(server.kubeconfig), "--manifests", str(manifests)]
    with out.open("wb") as sink:
        proc = subprocess.Popen([*argv, "--timeout", "90"], stdout=sink, stderr=subprocess.STDOUT)
    try:
        seen = _output_until(out, proc, "Deployment weft-system/weft-controller: waiting", 60)
        assert proc.poll() is None, seen
        _play_rollout(kube, "Deployment", "weft-controller")
        _play_rollout(kube, "DaemonSet", "weft-node")
        seen = _output_until(out, proc, "DaemonSet weft-system/weft-ztunnel: waiting", 30)
        assert "DaemonSet weft-system/weft-node: 1 of 1 nodes available" in seen
        assert "DaemonSet weft-system/weft-ztunnel: waiting" in seen, seen
        time.sleep(1.5)  # more than one poll: still waiting, for ztunnel alone
        assert proc.poll() is None, out.read_text()
        assert "weft is installed" not in out.read_text()
        _play_rollout(kube, "DaemonSet", "weft-ztunnel")
        assert proc.wait(timeout=30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    seen = out.read_text()
    assert "DaemonSet weft-system/weft-ztunnel: 1 of 1 nodes available" in seen, seen
    assert seen.rstrip().endswith("weft is installed"), seen
