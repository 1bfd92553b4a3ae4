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


def ztunnel_policy(name: str, scope: str, action: str, rules: str) -> str:
    return f"""
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: shop}}
spec:
  {scope}
  action: {action}
  rules: {rules}
"""


def test_l7_fields_in_a_policy_ztunnel_enforces_are_a_problem_naming_them(
    tmp_path: Path,
) -> None:
    ctl = controller(tmp_path)
    load(ctl, "00-ns.yaml", NAMESPACE)
    l7_rules = (
        "[{from: [{source: {principals: [a]}}]}, "
        "{to: [{operation: {methods: [GET], paths: [/api/*]}}], "
        "when: [{key: 'request.headers[x-user]', values: [bob]}]}]"
    )
    load(
        ctl,
        "10-selector.yaml",
        ztunnel_policy("selected", "selector: {matchLabels: {app: cart}}", "ALLOW", l7_rules),
    )
    load(ctl, "20-namespace.yaml", ztunnel_policy("whole-ns", "", "DENY", l7_rules))
    load(ctl, "30-l4.yaml", ztunnel_policy("l4-only", "selector: {}", "ALLOW", "[{}]"))
    load(ctl, "40-waypoint.yaml", TARGET_REFS.replace("rules: [{}]", f"rules: {l7_rules}"))
    ctl.recompute()
    by_resource = {p.resource: p for p in ctl.problems()}
    assert "AuthorizationPolicy shop/l4-only" not in by_resource
    # the targetRefs policy's problem is another: no waypoint serves its Service
    assert "enforced nowhere" in by_resource["AuthorizationPolicy shop/via-waypoint"].message
    selected = by_resource["AuthorizationPolicy shop/selected"]
    assert selected.source == "10-selector.yaml" and selected.field == "spec.rules[1]"
    assert selected.message == (
        "10-selector.yaml: AuthorizationPolicy shop/selected: spec.rules[1]: methods, paths, "
        "request.headers[x-user] need HTTP, and with its selector this policy is enforced by "
        "ztunnel, which treats it as Istio does: ALLOW rules with these fields never match, "
        "DENY rules apply without them, so it allows less than written; to enforce them, bind "
        "the workloads to a waypoint (weftctl waypoint apply) and attach the policy with "
        "targetRefs (the waypoint's Gateway or the Service) instead"
    )
    whole = by_resource["AuthorizationPolicy shop/whole-ns"].message
    assert "with no selector and no targetRefs this policy is enforced by ztunnel" in whole
    assert "so it matches more connections than written" in whole


def request_authn(name: str, scope: str) -> str:
    return f"""
apiVersion: security.weft.dev/v1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: shop}}
spec:
  {scope}
  jwtRules: [{{issuer: "https://issuer.example", jwksUri: "https://issuer.example/jwks"}}]
"""


def test_a_request_authentication_no_waypoint_enforces_is_a_problem(tmp_path: Path) -> None:
    ctl = controller(tmp_path)
    load(ctl, "00-ns.yaml", NAMESPACE)
    load(ctl, "10-sel.yaml", request_authn("by-selector", "selector: {matchLabels: {app: cart}}"))
    load(
        ctl,
        "20-ref.yaml",
        request_authn("by-ref", 'targetRefs: [{kind: Service, group: "", name: cart}]'),
    )
    ctl.recompute()
    by_resource = {p.resource: p for p in ctl.problems()}
    selected = by_resource["RequestAuthentication shop/by-selector"]
    assert selected.field == "spec.selector"
    assert "with a selector no waypoint validates these tokens" in selected.message
    referenced = by_resource["RequestAuthentication shop/by-ref"]
    assert referenced.field == "spec.targetRefs"
    assert "with its targetRefs no waypoint validates these tokens" in referenced.message
