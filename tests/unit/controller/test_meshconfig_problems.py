"""The mesh config reaches the state as MeshSettings (weft-system/weft only), and the controller
reports what in it, or in the CUSTOM policies that use it, cannot work as written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from controller.app import Controller, ControllerConfig
from controller.meshbuilder import MeshBuilder, Problem
from controller.sources import LocalSource
from meshcore.meshstate import StateValue, TrustBundle
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from meshcore.resources.meshconfig import ExtAuthzKind, MeshSettings
from waypoint.state import WaypointView

BUNDLE = TrustBundle(
    "cluster.local", ("-----BEGIN CERTIFICATE-----\nr\n-----END CERTIFICATE-----\n",)
)
SETTINGS = ResourceKey("MeshSettings", "weft-system", "weft")
CONFIGMAP = ResourceKey("ConfigMap", "weft-system", "weft")
POLICY = ResourceKey("AuthorizationPolicy", "shop", "ext")

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop, labels: {weft.dev/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports: [{name: http, port: 80}]
"""


def configmap(mesh: str, namespace: str = "weft-system") -> str:
    body = textwrap.indent(textwrap.dedent(mesh).strip(), "    ")
    return f"""
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: weft, namespace: {namespace}}}
data:
  mesh: |
{body}
"""


GOOD = """
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp: {service: ext-authz.shop.svc.cluster.local, port: 8000, timeout: 2s}
- name: grpc-authz
  envoyExtAuthzGrpc: {service: ext-authz.shop.svc.cluster.local, port: 9000}
"""


def custom(provider: str, scope: str = "targetRefs: [{kind: Service, group: '', name: cart}]"):
    return f"""
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: shop}}
spec:
  {scope}
  action: CUSTOM
  provider: {{name: {provider}}}
  rules: [{{to: [{{operation: {{paths: [/admin*]}}}}]}}]
"""


def build(text: str) -> tuple[dict[ResourceKey, StateValue], dict[ResourceKey, Problem]]:
    docs = documents_from_text(textwrap.dedent(text), "mesh.yaml")
    resources = {p.resource.key: p.resource for p in parse_documents(docs)}
    builder = MeshBuilder("cluster.local")
    state = builder.build(resources, BUNDLE)
    return state, builder.problems()


def test_the_mesh_configmap_becomes_mesh_settings_and_reaches_the_waypoint_view() -> None:
    state, problems = build(MESH + configmap(GOOD) + custom("grpc-authz"))
    settings = state[SETTINGS]
    assert isinstance(settings, MeshSettings)
    assert list(settings.ext_authz_providers) == ["http-authz", "grpc-authz"]
    assert problems == {}
    view = WaypointView("shop/waypoint")
    assert view.ext_authz_providers == {}
    view.update(state)
    assert view.ext_authz_providers["grpc-authz"].kind is ExtAuthzKind.GRPC
    assert view.ext_authz_providers["http-authz"].timeout == 2.0
    view.update({k: v for k, v in state.items() if k != SETTINGS})  # ConfigMap deleted
    assert view.ext_authz_providers == {}


def test_no_configmap_means_no_mesh_settings_value() -> None:
    state, problems = build(MESH)
    assert SETTINGS not in state and problems == {}


def test_bad_provider_entries_are_one_problem_on_the_configmap_and_the_rest_are_used() -> None:
    mesh = (
        GOOD
        + """
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: bad-port
  envoyExtAuthzGrpc: {service: ext-authz.shop.svc, port: 0}
"""
    )
    state, problems = build(MESH + configmap(mesh))
    settings = state[SETTINGS]
    assert isinstance(settings, MeshSettings)
    assert list(settings.ext_authz_providers) == ["http-authz", "grpc-authz"]
    problem = problems[CONFIGMAP]
    assert problem.field == "data.mesh.extensionProviders[2].zipkin"
    assert problem.reason.startswith("provider type zipkin is not supported by weft")
    assert "this entry is left out, the other providers are used" in problem.reason
    assert (
        "also left out: data.mesh.extensionProviders[3].envoyExtAuthzGrpc.port: must be at "
        "least 1, got 0" in problem.reason
    )


def test_many_bad_entries_are_listed_up_to_a_bound() -> None:
    bad = "\n".join(f"- {{name: b{i}, zipkin: {{}}}}" for i in range(20))
    _, problems = build(MESH + configmap(f"extensionProviders:\n{bad}"))
    reason = problems[CONFIGMAP].reason
    assert reason.count("provider type zipkin") == 6 and "and 14 more" in reason


def test_a_configmap_weft_in_another_namespace_is_ignored_and_reported() -> None:
    state, problems = build(MESH + configmap(GOOD, namespace="shop"))
    assert SETTINGS not in state
    problem = problems[ResourceKey("ConfigMap", "shop", "weft")]
    assert problem.field == "metadata.namespace"
    assert "ignored" in problem.reason and "ConfigMap weft-system/weft" in problem.reason


def test_other_configmaps_are_no_problem() -> None:
    other = """
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app-settings, namespace: shop}
data: {mesh: "not: [yaml"}
"""
    state, problems = build(MESH + other)
    assert SETTINGS not in state and problems == {}


@pytest.mark.parametrize(
    ("mesh", "provider", "says"),
    [
        (None, "my-authz", "is not in meshConfig extensionProviders"),
        (GOOD, "my-authz", "is not in meshConfig extensionProviders"),
        (
            GOOD + "- {name: my-authz, envoyExtAuthzGrpc: {service: x.y.svc, port: 0}}",
            "my-authz",
            "is in meshConfig extensionProviders (ConfigMap weft-system/weft, key mesh) but was "
            "left out",
        ),
    ],
    ids=["no configmap", "not defined", "refused entry"],
)
def test_a_waypoint_custom_policy_without_its_provider_is_reported_as_denying(
    mesh: str | None, provider: str, says: str
) -> None:
    text = MESH + (configmap(mesh) if mesh is not None else "") + custom(provider)
    state, problems = build(text)
    assert POLICY in state  # still sent: the waypoint denies what its rules match
    problem = problems[POLICY]
    assert problem.field == "spec.provider.name"
    assert f"provider {provider!r} " in problem.reason and says in problem.reason
    assert "(ConfigMap weft-system/weft, key mesh)" in problem.reason
    assert "requests its rules match are denied (fail closed" in problem.reason


def test_a_custom_policy_served_by_no_waypoint_is_reported_as_enforced_nowhere() -> None:
    scope = "targetRefs: [{kind: Service, group: '', name: nope}]"
    _, problems = build(MESH + configmap(GOOD) + custom("grpc-authz", scope))
    assert problems[POLICY].field == "spec.targetRefs"
    assert "enforced nowhere" in problems[POLICY].reason


@pytest.mark.parametrize(
    ("scope", "field", "says"),
    [
        ("selector: {matchLabels: {app: cart}}", "spec.selector", "with a selector"),
        ("", "spec.action", "with no selector and no targetRefs"),
    ],
)
def test_a_ztunnel_enforced_custom_policy_is_reported_as_denying(
    scope: str, field: str, says: str
) -> None:
    state, problems = build(MESH + configmap(GOOD) + custom("grpc-authz", scope))
    assert POLICY in state
    problem = problems[POLICY]
    assert problem.field == field
    assert says in problem.reason
    assert "ztunnel, which cannot call an ext_authz provider ('grpc-authz')" in problem.reason
    assert "connections its rules match are denied (fail closed)" in problem.reason


def _controller(tmp_path: Path) -> Controller:
    return Controller(
        ControllerConfig(state_dir=tmp_path / "state"), LocalSource(tmp_path / "source")
    )


def _load(ctl: Controller, source: str, text: str) -> None:
    ctl.store.set_source(source, documents_from_text(textwrap.dedent(text), source))


def test_a_mesh_text_that_is_not_yaml_keeps_the_last_good_settings(tmp_path: Path) -> None:
    ctl = _controller(tmp_path)
    _load(ctl, "00-mesh.yaml", MESH)
    _load(ctl, "10-weft.yaml", configmap(GOOD))
    ctl.recompute()
    good = ctl.state.values[SETTINGS]
    assert isinstance(good, MeshSettings) and len(good.ext_authz_providers) == 2
    _load(ctl, "10-weft.yaml", configmap("extensionProviders: [unclosed"))
    ctl.recompute()
    assert ctl.state.values[SETTINGS] == good  # the last good mesh config stays in force
    [problem] = ctl.problems()
    assert problem.source == "10-weft.yaml" and problem.keeps_last_good
    assert (problem.resource, problem.field) == ("ConfigMap weft-system/weft", "data.mesh")
    # lines of the mesh text (the literal block adds a final newline)
    assert "not valid YAML at line 2, column 1 of the mesh text" in problem.reason
    _load(ctl, "10-weft.yaml", configmap("extensionProviders: []\nmixerCheckServer: x"))
    ctl.recompute()
    [problem] = ctl.problems()
    assert (problem.field, problem.reason) == ("data.mesh.mixerCheckServer", "unknown field")
    ctl.store.remove_source("10-weft.yaml")
    ctl.recompute()
    assert SETTINGS not in ctl.state.values and ctl.problems() == []


def test_a_problem_of_the_mesh_configmap_names_its_file(tmp_path: Path) -> None:
    ctl = _controller(tmp_path)
    _load(ctl, "00-mesh.yaml", MESH)
    _load(ctl, "10-weft.yaml", configmap(GOOD + "- {name: z, prometheus: {}}"))
    _load(ctl, "20-policy.yaml", custom("nope"))
    ctl.recompute()
    by_resource = {p.resource: p for p in ctl.problems()}
    assert by_resource["ConfigMap weft-system/weft"].message.startswith(
        "10-weft.yaml: ConfigMap weft-system/weft: data.mesh.extensionProviders[2].prometheus: "
        "provider type prometheus is not supported by weft"
    )
    assert by_resource["AuthorizationPolicy shop/ext"].message.startswith(
        "20-policy.yaml: AuthorizationPolicy shop/ext: spec.provider.name: provider 'nope' is "
        "not in meshConfig extensionProviders"
    )
