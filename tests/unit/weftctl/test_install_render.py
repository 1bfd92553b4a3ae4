"""`weftctl install`'s rendering: kustomization order, settings patched on the parsed objects
(image, trust domain, mesh config), CRDs first, uninstall in reverse, -o yaml|json round trips."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from weftctl.install import install
from weftctl.manifests import (
    DEFAULT_DIR,
    Manifest,
    ManifestSourceError,
    load,
    manifests_dir,
)
from weftctl.render import (
    RenderError,
    RenderSettings,
    documents,
    install_order,
    render,
    repository,
    uninstall_order,
)
from weftctl.rollout import crd_established, daemonset_rolled_out, deployment_available

IMAGE = "ghcr.io/weft-mesh/weft:0.1.0"

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "authorizationpolicies.security.weft.dev"},
    "spec": {"group": "security.weft.dev"},
}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "weft-system"}}
SA = {
    "apiVersion": "v1",
    "kind": "ServiceAccount",
    "metadata": {"name": "weft-controller", "namespace": "weft-system"},
}
MESH = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "weft", "namespace": "weft-system"},
    # A value that names the image and the trust domain: text substitution would change it.
    "data": {"mesh": "", "note": f"cluster.local {IMAGE}"},
}
CONTROLLER = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "weft-controller",
        "namespace": "weft-system",
        "annotations": {"weft.dev/built-from": IMAGE},
    },
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "controller",
                        "image": IMAGE,
                        "args": ["run", "--trust-domain", "cluster.local", "--source=kubernetes"],
                    },
                    {"name": "other", "image": "docker.io/library/busybox:1.36"},
                ]
            }
        }
    },
}
NODE = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "weft-node", "namespace": "weft-system"},
    "spec": {
        "template": {
            "spec": {
                "initContainers": [{"name": "init", "image": IMAGE}],
                "containers": [
                    {"name": "agent", "image": IMAGE, "command": ["python", "-m", "node_agent"]},
                    {"name": "ztunnel", "image": IMAGE + "@sha256:" + "0" * 64},
                ],
            }
        }
    },
}


def write_tree(root: Path, files: dict[str, Any]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, list):
            path.write_text(yaml.safe_dump_all(content))
        else:
            path.write_text(yaml.safe_dump(content))
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """namespace first in the kustomization, CRDs in a sub-kustomization listed last."""
    return write_tree(
        tmp_path,
        {
            "kustomization.yaml": {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["rbac.yaml", "namespace.yaml", "workloads.yaml", "crds"],
            },
            "namespace.yaml": NAMESPACE,
            "rbac.yaml": SA,
            "workloads.yaml": [MESH, CONTROLLER, NODE],
            "crds/kustomization.yaml": {"resources": ["ap.yaml"]},
            "crds/ap.yaml": CRD,
        },
    )


def names(items: list[Any]) -> list[str]:
    return [str(i.ref) for i in items]


def test_load_follows_the_kustomization_order_into_folders(tree: Path) -> None:
    loaded = load(tree)
    assert [m.source for m in loaded] == [
        "rbac.yaml#0",
        "namespace.yaml#0",
        "workloads.yaml#0",
        "workloads.yaml#1",
        "workloads.yaml#2",
        "crds/ap.yaml#0",
    ]


def test_install_order_puts_crds_then_namespaces_first_and_keeps_the_rest(tree: Path) -> None:
    crds, rest = install_order(render(load(tree), RenderSettings()))
    assert names(crds) == ["CustomResourceDefinition authorizationpolicies.security.weft.dev"]
    assert names(rest) == [
        "Namespace weft-system",
        "ServiceAccount weft-system/weft-controller",
        "ConfigMap weft-system/weft",
        "Deployment weft-system/weft-controller",
        "DaemonSet weft-system/weft-node",
    ]


def test_uninstall_is_the_reverse_and_keeps_crds_unless_purged(tree: Path) -> None:
    items = render(load(tree), RenderSettings())
    kept = uninstall_order(items, purge_crds=False)
    assert names(kept)[0] == "DaemonSet weft-system/weft-node"
    assert names(kept)[-1] == "Namespace weft-system"
    assert not any(i.ref.is_crd for i in kept)
    purged = uninstall_order(items, purge_crds=True)
    assert names(purged)[-1] == "CustomResourceDefinition authorizationpolicies.security.weft.dev"


def test_image_replaces_every_weft_container_and_nothing_else(tree: Path) -> None:
    items = render(load(tree), RenderSettings(image="registry.local/weft:dev"))
    by = {str(i.ref): i.obj for i in items}
    controller = by["Deployment weft-system/weft-controller"]
    pod = controller["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["containers"]] == [
        "registry.local/weft:dev",
        "docker.io/library/busybox:1.36",
    ]
    assert controller["metadata"]["annotations"]["weft.dev/built-from"] == IMAGE
    node = by["DaemonSet weft-system/weft-node"]["spec"]["template"]["spec"]
    assert node["initContainers"][0]["image"] == "registry.local/weft:dev"
    assert [c["image"] for c in node["containers"]] == ["registry.local/weft:dev"] * 2
    assert by["ConfigMap weft-system/weft"]["data"]["note"] == f"cluster.local {IMAGE}"


def test_image_also_goes_to_the_waypoints_the_controller_deploys(tmp_path: Path) -> None:
    controller = json.loads(json.dumps(CONTROLLER))
    main = controller["spec"]["template"]["spec"]["containers"][0]
    main["command"] = ["python", "-m", "controller"]
    main["args"] = ["run", "--trust-domain", "cluster.local"]
    given = json.loads(json.dumps(controller))
    given["metadata"]["name"] = "given"
    given["spec"]["template"]["spec"]["containers"][0]["args"] += ["--waypoint-image", IMAGE]
    root = write_tree(
        tmp_path, {"kustomization.yaml": {"resources": ["d.yaml"]}, "d.yaml": [controller, given]}
    )
    items = render(load(root), RenderSettings(image="r/weft:2"))
    args = [i.obj["spec"]["template"]["spec"]["containers"][0]["args"] for i in items]
    assert args == [
        ["run", "--trust-domain", "cluster.local", "--waypoint-image", "r/weft:2"],
        ["run", "--trust-domain", "cluster.local", "--waypoint-image", "r/weft:2"],
    ]
    # the node's containers (python -m node_agent) take no such flag
    node = render([Manifest("n", NODE)], RenderSettings(image="r/weft:2"))[0].obj
    agent = node["spec"]["template"]["spec"]["containers"][0]
    assert "args" not in agent


def test_rendering_never_changes_the_loaded_objects(tree: Path) -> None:
    loaded = load(tree)
    before = json.dumps([m.obj for m in loaded], sort_keys=True)
    render(loaded, RenderSettings(image="x/y:1", trust_domain="example.org", mesh_config="{}"))
    assert json.dumps([m.obj for m in loaded], sort_keys=True) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--trust-domain", "cluster.local"], ["--trust-domain", "example.org"]),
        (["--trust-domain=cluster.local"], ["--trust-domain=example.org"]),
        (["run", "--trust-domain", "a", "-v"], ["run", "--trust-domain", "example.org", "-v"]),
    ],
)
def test_trust_domain_is_set_in_either_flag_form(
    tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    deployment = json.loads(json.dumps(CONTROLLER))
    deployment["spec"]["template"]["spec"]["containers"][0]["args"] = args
    root = write_tree(
        tmp_path, {"kustomization.yaml": {"resources": ["d.yaml"]}, "d.yaml": deployment}
    )
    items = render(load(root), RenderSettings(trust_domain="example.org"))
    assert items[0].obj["spec"]["template"]["spec"]["containers"][0]["args"] == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (RenderSettings(trust_domain="Example.org"), "--trust-domain 'Example.org'"),
        (RenderSettings(trust_domain="a/b"), "--trust-domain 'a/b'"),
        (RenderSettings(mesh_config="extensionProviders: ["), "--set-mesh-config"),
        (RenderSettings(mesh_config="notAKey: 1"), "notAKey"),
        (
            RenderSettings(mesh_config="extensionProviders:\n- name: x\n  envoyExtAuthzHttp: {}\n"),
            "extensionProviders[0]",
        ),
    ],
)
def test_bad_settings_are_refused_by_name(
    tree: Path, settings: RenderSettings, message: str
) -> None:
    with pytest.raises(RenderError, match=message.replace("[", r"\[").replace("]", r"\]")):
        render(load(tree), settings)


def test_mesh_config_goes_in_the_weft_configmap_mesh_key(tree: Path) -> None:
    text = (
        "extensionProviders:\n- name: authz\n  envoyExtAuthzGrpc:\n"
        "    service: authz.foo.svc.cluster.local\n    port: 9000\n"
    )
    items = render(load(tree), RenderSettings(mesh_config=text))
    cm = next(i.obj for i in items if i.ref.kind == "ConfigMap")
    assert cm["data"]["mesh"] == text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (RenderSettings(image="x/y:1"), "no container in the manifests runs"),
        (RenderSettings(trust_domain="a.b"), "no container .* takes --trust-domain"),
        (RenderSettings(mesh_config=""), "no ConfigMap weft-system/weft"),
    ],
)
def test_a_setting_with_nowhere_to_go_is_an_error(
    tmp_path: Path, settings: RenderSettings, message: str
) -> None:
    root = write_tree(
        tmp_path,
        {"kustomization.yaml": {"resources": ["namespace.yaml"]}, "namespace.yaml": NAMESPACE},
    )
    with pytest.raises(RenderError, match=message):
        render(load(root), settings)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"kustomization.yaml": {"resources": ["missing.yaml"]}},
            "resource missing.yaml does not exist",
        ),
        ({"kustomization.yaml": {"resources": ["../x.yaml"]}}, "outside"),
        ({"kustomization.yaml": {"resources": "a.yaml"}}, "resources must be a list"),
        (
            {"kustomization.yaml": {"resources": [], "patches": [{"path": "p.yaml"}]}},
            "patches not supported",
        ),
        (
            {"kustomization.yaml": {"resources": ["a.yaml"]}, "a.yaml": "a: [\n"},
            "a.yaml: not valid YAML",
        ),
        (
            {"kustomization.yaml": {"resources": ["a.yaml"]}, "a.yaml": "- 1\n"},
            "a.yaml#0: not a mapping",
        ),
    ],
)
def test_bad_kustomizations_name_the_file(
    tmp_path: Path, files: dict[str, Any], message: str
) -> None:
    root = write_tree(tmp_path / "m", files)
    with pytest.raises(ManifestSourceError, match=message):
        load(root)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"kind": "Namespace", "metadata": {"name": "a"}}, "a.yaml#0: apiVersion is missing"),
        ({"apiVersion": "v1", "metadata": {"name": "a"}}, "a.yaml#0: kind is missing"),
        (
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {}},
            "Namespace has no metadata.name",
        ),
    ],
)
def test_objects_without_identity_are_refused(tmp_path: Path, doc: Any, message: str) -> None:
    root = write_tree(tmp_path, {"kustomization.yaml": {"resources": ["a.yaml"]}, "a.yaml": doc})
    with pytest.raises(RenderError, match=message):
        render(load(root), RenderSettings())


def test_the_same_object_twice_is_refused(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {"kustomization.yaml": {"resources": ["a.yaml", "b.yaml"]}, "a.yaml": SA, "b.yaml": SA},
    )
    with pytest.raises(
        RenderError,
        match=re.escape("b.yaml#0: ServiceAccount weft-system/weft-controller is also in a.yaml#0"),
    ):
        render(load(root), RenderSettings())


def test_manifests_dir_refuses_a_folder_without_kustomization(tmp_path: Path) -> None:
    with pytest.raises(ManifestSourceError, match=re.escape("no kustomization.yaml")):
        manifests_dir(tmp_path)


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("ghcr.io/weft-mesh/weft:0.1.0", "ghcr.io/weft-mesh/weft"),
        ("ghcr.io/weft-mesh/weft@sha256:abc", "ghcr.io/weft-mesh/weft"),
        ("ghcr.io/weft-mesh/weft:0.1@sha256:abc", "ghcr.io/weft-mesh/weft"),
        ("localhost:5000/weft:dev", "localhost:5000/weft"),
        ("busybox", "busybox"),
    ],
)
def test_repository(image: str, repo: str) -> None:
    assert repository(image) == repo


def test_output_yaml_round_trips_in_install_order(tree: Path) -> None:
    result = CliRunner().invoke(
        install, ["--manifests", str(tree), "-o", "yaml", "--image", "r/weft:2"]
    )
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert docs == documents(render(load(tree), RenderSettings(image="r/weft:2")))
    assert docs[0]["kind"] == "CustomResourceDefinition"
    assert docs[1]["kind"] == "Namespace"


def test_output_json_is_a_list(tree: Path) -> None:
    result = CliRunner().invoke(install, ["--manifests", str(tree), "-o", "json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["kind"] == "List"
    assert [d["kind"] for d in listed["items"]][:2] == ["CustomResourceDefinition", "Namespace"]


def test_install_reports_a_bad_setting_without_touching_a_cluster(tree: Path) -> None:
    result = CliRunner().invoke(
        install, ["--manifests", str(tree), "--trust-domain", "Bad", "--kubeconfig", "/nonexistent"]
    )
    assert result.exit_code == 1
    assert "--trust-domain 'Bad'" in result.output


@pytest.mark.skipif(
    not (DEFAULT_DIR / "kustomization.yaml").exists(), reason="daemonset/ not written yet"
)
def test_the_shipped_daemonset_renders_with_every_setting() -> None:
    items = render(
        load(manifests_dir()),
        RenderSettings(
            image="registry.local/weft:dev", trust_domain="example.org", mesh_config="{}\n"
        ),
    )
    crds, rest = install_order(items)
    assert crds, "daemonset/ ships weft's CRDs"
    assert rest[0].ref.kind == "Namespace" and rest[0].ref.name == "weft-system"
    kinds = {(i.ref.kind, i.ref.name) for i in rest}
    assert {
        ("Deployment", "weft-controller"),
        ("DaemonSet", "weft-node"),
        ("DaemonSet", "weft-ztunnel"),
    } <= kinds
    # ztunnel's own DaemonSet gets the settings too
    (ztunnel,) = [i.obj for i in rest if i.ref.name == "weft-ztunnel"]
    (c,) = ztunnel["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.local/weft:dev"
    assert c["args"][c["args"].index("--trust-domain") + 1] == "example.org"


# --- readiness ---------------------------------------------------------------------------


def test_crd_established_reads_the_condition() -> None:
    assert not crd_established({}).ready
    names_refused = {
        "status": {"conditions": [{"type": "NamesAccepted", "status": "False", "message": "taken"}]}
    }
    assert crd_established(names_refused).why == "names not accepted: taken"
    ok = {"status": {"conditions": [{"type": "Established", "status": "True"}]}}
    assert crd_established(ok).ready


@pytest.mark.parametrize(
    ("status", "ready", "why"),
    [
        ({}, False, "0 of 1 replicas updated"),
        ({"observedGeneration": 1}, False, "has not seen the new spec"),
        (
            {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 2},
            False,
            "1 old replicas left",
        ),
        (
            {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 1},
            False,
            "0 of 1 updated replicas available",
        ),
        (
            {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 1, "availableReplicas": 1},
            False,
            "not Available",
        ),
        (
            {
                "observedGeneration": 2,
                "updatedReplicas": 1,
                "replicas": 1,
                "availableReplicas": 1,
                "conditions": [{"type": "Available", "status": "True"}],
            },
            True,
            "1 replicas available",
        ),
    ],
)
def test_deployment_available(status: dict[str, Any], ready: bool, why: str) -> None:
    obj = {"metadata": {"generation": 2}, "spec": {"replicas": 1}, "status": status}
    if status == {}:
        obj["metadata"] = {}
    state = deployment_available(obj)
    assert state.ready is ready
    assert why in state.why


@pytest.mark.parametrize(
    ("status", "ready", "why"),
    [
        ({"observedGeneration": 0}, False, "has not seen"),
        (
            {"observedGeneration": 3, "desiredNumberScheduled": 3, "updatedNumberScheduled": 2},
            False,
            "2 of 3 nodes updated",
        ),
        (
            {
                "observedGeneration": 3,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 1,
            },
            False,
            "1 of 3 nodes available",
        ),
        (
            {
                "observedGeneration": 3,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 3,
            },
            True,
            "3 of 3",
        ),
    ],
)
def test_daemonset_rolled_out(status: dict[str, Any], ready: bool, why: str) -> None:
    state = daemonset_rolled_out({"metadata": {"generation": 3}, "status": status})
    assert state.ready is ready
    assert why in state.why
