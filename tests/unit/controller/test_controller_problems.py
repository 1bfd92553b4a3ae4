"""The controller's problems: invalid manifests (the store) and resources the mesh builder could
not build or cannot enforce, each named with the file it came from; none stops the controller."""

from __future__ import annotations

import textwrap
from pathlib import Path

from controller.app import Controller, ControllerConfig
from controller.sources import LocalSource
from meshcore.meshstate import Workload
from meshcore.resources import ResourceKey, documents_from_text

NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
"""


def pod(name: str, ip: str, exclude: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  annotations: {{weft.dev/exclude-outbound-ports: "{exclude}"}}
spec:
  nodeName: node-a
  containers: [{{name: app, image: app:1}}]
status: {{phase: Running, podIP: {ip}, hostIP: 192.168.50.11}}
"""


TARGET_REFS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: via-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: cart}]
  rules: [{}]
"""


def controller(tmp_path: Path) -> Controller:
    config = ControllerConfig(state_dir=tmp_path / "state")
    return Controller(config, LocalSource(tmp_path / "source"))


def load(ctl: Controller, source: str, text: str) -> None:
    ctl.store.set_source(source, documents_from_text(textwrap.dedent(text), source))


def test_a_bad_pod_annotation_is_a_problem_named_with_its_file_and_the_mesh_goes_on(
    tmp_path: Path,
) -> None:
    ctl = controller(tmp_path)
    load(ctl, "00-ns.yaml", NAMESPACE)
    load(ctl, "10-good.yaml", pod("good", "10.244.1.1", "5432"))
    load(ctl, "20-bad.yaml", pod("bad", "10.244.1.2", "\u00b2"))
    load(ctl, "30-policy.yaml", TARGET_REFS)
    ctl.recompute()  # raised ValueError (int("\u00b2")) before: the controller crash-looped
    good = ctl.state.values[ResourceKey("Workload", "shop", "good")]
    assert isinstance(good, Workload) and good.excluded_ports == (5432,)
    bad_workload = ctl.state.values[ResourceKey("Workload", "shop", "bad")]
    assert isinstance(bad_workload, Workload) and bad_workload.excluded_ports == ()
    by_resource = {p.resource: p for p in ctl.problems()}
    assert by_resource.keys() == {"Pod shop/bad", "AuthorizationPolicy shop/via-waypoint"}
    bad = by_resource["Pod shop/bad"]
    assert bad.message.startswith(
        "20-bad.yaml: Pod shop/bad: "
        "metadata.annotations[weft.dev/exclude-outbound-ports]: '\u00b2' is not a port number"
    )
    policy = by_resource["AuthorizationPolicy shop/via-waypoint"]
    assert policy.source == "30-policy.yaml" and "enforced nowhere" in policy.message


def test_store_and_builder_problems_are_listed_together(tmp_path: Path) -> None:
    ctl = controller(tmp_path)
    load(ctl, "00-ns.yaml", NAMESPACE)
    load(ctl, "10-bad.yaml", pod("bad", "10.244.1.2", "80,"))
    load(ctl, "20-invalid.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: 7\n")
    ctl.recompute()
    sources = sorted(p.source for p in ctl.problems())
    assert sources == ["10-bad.yaml", "20-invalid.yaml"]
