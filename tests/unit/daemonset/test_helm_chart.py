"""The Helm chart daemonset/helm/weft renders the kustomization's objects (modulo Helm's
managed-by label), its crds/ are daemonset/crds/ byte for byte, and each value lands where
the processes read it. Rendered by tests/unit/daemonset/helmrender.py (no helm binary can be
installed here); compared with `helm template` where one exists."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.meshconfig import mesh_config_of
from tests.unit.daemonset.crdschema import CRDS, DAEMONSET, ROOT
from tests.unit.daemonset.helmrender import Fail, TemplateError, render_chart
from tests.unit.daemonset.manifests import objects

CHART = DAEMONSET / "helm" / "weft"
MANAGED_BY = "app.kubernetes.io/managed-by"


def _key(o: dict[str, Any]) -> tuple[str, str, str]:
    return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])


def _without_helm_labels(o: dict[str, Any]) -> dict[str, Any]:
    labels = o["metadata"].get("labels", {})
    if labels.get(MANAGED_BY) == "Helm":
        o = {**o, "metadata": {**o["metadata"], "labels": {**labels}}}
        del o["metadata"]["labels"][MANAGED_BY]
    return o


def _by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {_key(d): d for d in docs}
    assert len(out) == len(docs), "an object rendered twice"
    return out


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _container(docs: list[dict[str, Any]], kind: str, name: str, c: str) -> dict[str, Any]:
    (found,) = [
        x for x in _find(docs, kind, name)["spec"]["template"]["spec"]["containers"]
        if x["name"] == c
    ]  # fmt: skip
    return found


def test_the_chart_crds_are_daemonsets_crds() -> None:
    ours = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == ours
    for name in ours:
        assert (CHART / "crds" / name).read_bytes() == (CRDS / name).read_bytes(), name


def test_chart_version_is_the_projects() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "weft"
    assert chart["appVersion"] == version


def test_defaults_render_the_kustomizations_objects() -> None:
    rendered = _by_key([_without_helm_labels(d) for d in render_chart(CHART)])
    expected = _by_key([o for o in objects() if o["kind"] != "Namespace"])
    assert set(rendered) == set(expected)
    for key, obj in expected.items():
        assert rendered[key] == obj, key
    with_ns = _by_key(
        [_without_helm_labels(d) for d in render_chart(CHART, {"namespace": {"create": True}})]
    )
    assert with_ns == _by_key(objects())


def test_every_rendered_object_carries_helms_label() -> None:
    for doc in render_chart(CHART, {"namespace": {"create": True}}):
        if doc["kind"] != "CustomResourceDefinition":  # (crds/ is not templated, as Helm's)
            assert doc["metadata"]["labels"][MANAGED_BY] == "Helm", _key(doc)


def test_values_land_where_the_processes_read_them() -> None:
    from controller.main import run as controller_run
    from node_agent.main import run as agent_run
    from ztunnel.main import run as ztunnel_run

    resources = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    mesh = {
        "extensionProviders": [
            {
                "name": "authz",
                "envoyExtAuthzHttp": {"service": "authz.auth.svc.cluster.local", "port": 8000},
            }
        ]
    }
    docs = render_chart(
        CHART,
        {
            "image": {"repository": "registry.example/weft", "tag": "9.9.9"},
            "trustDomain": "example.org",
            "logLevel": "debug",
            "ca": {"pluginSecret": "my-ca"},
            "meshConfig": mesh,
            "controller": {"resources": resources},
            "node": {"underlayDevice": "ens5"},
            "ztunnel": {"resources": resources},
            "gatewayClass": {"create": False},
        },
    )
    assert not [d for d in docs if d["kind"] == "GatewayClass"]
    controller = _container(docs, "Deployment", "weft-controller", "controller")
    agent = _container(docs, "DaemonSet", "weft-node", "agent")
    ztunnel = _container(docs, "DaemonSet", "weft-ztunnel", "ztunnel")
    for c in (controller, agent, ztunnel):
        assert c["image"] == "registry.example/weft:9.9.9"
        assert {"name": "WEFT_LOG_LEVEL", "value": "debug"} in c["env"]
    assert controller["resources"] == ztunnel["resources"] == resources
    assert agent["resources"]["limits"]["memory"] == "1Gi"  # (not overridden)

    def params(command: Any, args: list[str]) -> dict[str, Any]:
        with command.make_context("run", list(args[1:])) as ctx:
            return dict(ctx.params)

    p = params(controller_run, controller["args"])
    assert p["trust_domain"] == "example.org"
    assert str(p["plugin_ca"]) == "/etc/weft/ca"
    assert p["waypoint_image"] == "registry.example/weft:9.9.9"
    volumes = _find(docs, "Deployment", "weft-controller")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "plugin-ca"} | {"secret": {"secretName": "my-ca", "optional": True,
                                               "defaultMode": 0o440}} in volumes  # fmt: skip
    p = params(agent_run, agent["args"])
    assert (p["trust_domain"], p["underlay_device"]) == ("example.org", "ens5")
    assert params(ztunnel_run, ztunnel["args"])["trust_domain"] == "example.org"
    cm = yaml.safe_dump(_find(docs, "ConfigMap", "weft"))
    (parsed,) = parse_documents(documents_from_text(cm, "weft.yaml"))
    config = mesh_config_of(parsed.resource)  # type: ignore[arg-type]
    assert config.errors == () and set(config.settings.ext_authz_providers) == {"authz"}


def test_default_has_no_plugin_ca_argument() -> None:
    controller = _container(render_chart(CHART), "Deployment", "weft-controller", "controller")
    assert "--plugin-ca" not in controller["args"]


def test_a_release_outside_weft_system_fails_naming_why() -> None:
    with pytest.raises(Fail, match="weft-system"):
        render_chart(CHART, namespace="default")


def test_the_old_place_of_ztunnels_values_fails_naming_the_new_one() -> None:
    """ztunnel left the node pod for DaemonSet weft-ztunnel: its resources under node.ztunnel
    would be ignored without a word, so the chart refuses them."""
    resources = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
    with pytest.raises(Fail, match=r"node\.ztunnel is now ztunnel .* ztunnel\.resources"):
        render_chart(CHART, {"node": {"ztunnel": {"resources": resources}}})
    docs = render_chart(CHART, {"ztunnel": {"resources": resources}})
    (ds,) = [d for d in docs if d["metadata"]["name"] == "weft-ztunnel"]
    assert ds["spec"]["template"]["spec"]["containers"][0]["resources"] == resources


def test_the_renderer_refuses_what_it_does_not_know() -> None:
    from tests.unit.daemonset.helmrender import Renderer

    r = Renderer({"a": {"b": "x"}}, {"appVersion": "1", "version": "1"}, "weft-system")
    assert r.render("{{ .Values.a.b | quote }}") == '"x"'
    assert r.render("a\n  {{- if .Values.none }}no{{- else }} yes{{- end }}\n") == "a yes\n"
    for bad in ('{{ include "x" . }}', "{{ .Values.a.b | upper }}", "{{ if .Values.a }}"):
        with pytest.raises(TemplateError):
            r.render(bad)


@pytest.mark.skipif(shutil.which("helm") is None, reason="no helm binary on this machine")
def test_helm_template_agrees_with_this_renderer() -> None:  # pragma: no cover (no helm here)
    out = subprocess.run(
        ["helm", "template", "weft", str(CHART), "-n", "weft-system", "--include-crds"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    theirs = _by_key([d for d in yaml.safe_load_all(out) if d])
    assert theirs == _by_key(render_chart(CHART))
