"""daemonset/ against a real Kubernetes API server (tests/kubeapi.py): weft's CRDs install
and become Established (the server compiles their CEL rules and checks their cost), every
manifest passes a server-side dry run, and the schemas judge custom resources as the unit
tests say: every example weft's parser accepts is created (v1 and v1beta1), every invalid one
is refused with a message naming the field or the rule.

The Gateway API CRDs are the user's to install; for gatewayclass.yaml's dry run the test
installs a minimal GatewayClass CRD in their place."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.conftest import RUN_ID
from tests.kubeapi import KubeAPI, running_kube_api
from tests.unit.daemonset import invalid
from tests.unit.daemonset.crdschema import CRDS, DAEMONSET, load_crds
from tests.unit.daemonset.examples import examples
from tests.unit.daemonset.helmrender import render_chart

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

NAMESPACE = f"weft-crs-{RUN_ID}"
ESTABLISHED_TIMEOUT = 60.0

GATEWAY_CLASS_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {
        "name": "gatewayclasses.gateway.networking.k8s.io",
        # (a *.k8s.io group needs it; the Gateway API's own CRDs carry their PR's URL)
        "annotations": {
            "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"
        },
    },
    "spec": {
        "group": "gateway.networking.k8s.io",
        "scope": "Cluster",
        "names": {"kind": "GatewayClass", "plural": "gatewayclasses", "singular": "gatewayclass"},
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
                                "required": ["controllerName"],
                                "properties": {
                                    "controllerName": {"type": "string"},
                                    "description": {"type": "string"},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def kubectl(
    api: KubeAPI, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(api.bins.kubectl), "--kubeconfig", str(api.kubeconfig), *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def api() -> Iterator[KubeAPI]:
    with running_kube_api("manifests") as server:
        kubectl(server, "apply", "--server-side", "-f", str(CRDS))
        kubectl(server, "create", "-f", "-", input_text=json.dumps(GATEWAY_CLASS_CRD))
        names = [c["metadata"]["name"] for c in load_crds().values()]
        names.append(GATEWAY_CLASS_CRD["metadata"]["name"])
        kubectl(
            server,
            "wait",
            "--for=condition=Established",
            f"--timeout={int(ESTABLISHED_TIMEOUT)}s",
            *(f"crd/{n}" for n in names),
            timeout=ESTABLISHED_TIMEOUT + 10,
        )
        kubectl(server, "create", "namespace", NAMESPACE)
        yield server


def test_weft_crds_are_established_with_their_versions(api: KubeAPI) -> None:
    ext = k8s.ApiextensionsV1Api(api.api_client)
    for crd in load_crds().values():
        live = ext.read_custom_resource_definition(crd["metadata"]["name"])
        conditions = {c.type: c.status for c in live.status.conditions}
        assert conditions.get("Established") == "True", crd["metadata"]["name"]
        assert conditions.get("NamesAccepted") == "True"
        assert [v.name for v in live.spec.versions] == [v["name"] for v in crd["spec"]["versions"]]
        assert live.status.stored_versions == ["v1"]


def test_every_manifest_passes_a_server_side_dry_run(api: KubeAPI) -> None:
    # (a dry run creates nothing: the namespace must exist for what lives in it)
    kubectl(api, "apply", "--server-side", "-f", str(DAEMONSET / "namespace.yaml"))
    done = kubectl(
        api, "apply", "--server-side", "--dry-run=server", "--validate=strict", "-k", str(DAEMONSET)
    )
    applied = [line for line in done.stdout.splitlines() if line.strip()]
    kinds = {line.split("/")[0] for line in applied}
    assert len(applied) == sum(
        1
        for name in yaml.safe_load((DAEMONSET / "kustomization.yaml").read_text())["resources"]
        for d in yaml.safe_load_all((DAEMONSET / name).read_text())
        if d
    ), done.stdout
    for kind in ("daemonset.apps", "deployment.apps", "clusterrole.rbac.authorization.k8s.io",
                 "gatewayclass.gateway.networking.k8s.io", "configmap"):  # fmt: skip
        assert kind in kinds, done.stdout
    # nothing was created by the dry run
    apps = k8s.AppsV1Api(api.api_client)
    assert apps.list_namespaced_daemon_set("weft-system").items == []


def test_the_helm_charts_objects_pass_a_server_side_dry_run(api: KubeAPI) -> None:
    """`helm template | kubectl apply --dry-run=server`, with the chart rendered by
    tests/unit/daemonset/helmrender.py (no helm binary here), default and custom values."""
    kubectl(api, "apply", "--server-side", "-f", str(DAEMONSET / "namespace.yaml"))
    for values in (
        {},
        {"trustDomain": "example.org", "ca": {"pluginSecret": "weft-ca"}, "logLevel": "debug",
         "meshConfig": {"extensionProviders": [
             {"name": "a", "envoyExtAuthzGrpc": {"service": "a.b.svc.cluster.local", "port": 9000}}
         ]}},
    ):  # fmt: skip
        docs = render_chart(DAEMONSET / "helm" / "weft", values)
        text = yaml.safe_dump_all(docs)
        done = kubectl(
            api, "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
            input_text=text,
        )  # fmt: skip
        assert len([line for line in done.stdout.splitlines() if line.strip()]) == len(docs)


def _dry_run_daemonset(api: KubeAPI, doc: dict[str, Any]) -> tuple[int, Any]:
    """Create `doc` in the test namespace with dryRun=All and strict field validation:
    (201, the object as the server would store it, defaults filled) or (status, message)."""
    body = {**doc, "metadata": {**doc["metadata"], "namespace": NAMESPACE}}
    apps = k8s.AppsV1Api(api.api_client)
    try:
        created = apps.create_namespaced_daemon_set(
            NAMESPACE,
            body,  # type: ignore[arg-type]  # (the client sends a dict as it is)
            dry_run="All",
            field_validation="Strict",
        )
    except k8s.ApiException as err:
        return err.status, json.loads(err.body or "{}").get("message", "")
    return 201, api.api_client.sanitize_for_serialization(created)


def test_the_ztunnel_daemonset_is_kept_by_the_server_as_written(api: KubeAPI) -> None:
    """daemonset/ztunnel.yaml through the test API server (schema, strict field validation,
    defaulting; not kube-apiserver's per-kind validation, which it lacks: see
    docs/kubernetes-test-apiserver.md): the surge strategy, the absence of ports, the exec
    probe and the grace period are kept as written."""
    (doc,) = [d for d in yaml.safe_load_all((DAEMONSET / "ztunnel.yaml").read_text()) if d]
    status, stored = _dry_run_daemonset(api, doc)
    assert status == 201, stored
    assert stored["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = stored["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 630
    assert pod["hostNetwork"] is True and pod["shareProcessNamespace"] is True
    (c,) = pod["containers"]
    assert "ports" not in c
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["readinessProbe"]["exec"]["command"][-1] == "/var/run/weft/admin/ztunnel.sock"
    assert apps_list(api) == []  # a dry run keeps nothing


def apps_list(api: KubeAPI) -> list[Any]:
    return list(k8s.AppsV1Api(api.api_client).list_namespaced_daemon_set(NAMESPACE).items)


def _plural(kind: str) -> tuple[str, str]:
    for crd in load_crds().values():
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["group"], crd["spec"]["names"]["plural"]
    raise KeyError(kind)


def _create(api: KubeAPI, doc: dict[str, Any], name: str) -> tuple[int, str]:
    """Create `doc` as `name` in the test namespace (strict field validation, as kubectl);
    (HTTP status, the server's message)."""
    group, plural = _plural(doc["kind"])
    version = doc["apiVersion"].partition("/")[2]
    body = {**doc, "metadata": {"name": name, "namespace": NAMESPACE}}
    objects = k8s.CustomObjectsApi(api.api_client)
    try:
        objects.create_namespaced_custom_object(
            group, version, NAMESPACE, plural, body, field_validation="Strict"
        )
    except k8s.ApiException as err:
        try:
            message = json.loads(err.body).get("message", "")
        except (TypeError, ValueError):
            message = str(err.body)
        return err.status, message
    return 201, ""


def test_every_example_weft_accepts_is_created(api: KubeAPI) -> None:
    refused = []
    accepted = [e for e in examples() if e.accepted]
    assert len(accepted) >= 100
    for i, e in enumerate(accepted):
        status, message = _create(api, e.doc, f"ok-{i}")
        if status != 201:
            refused.append(f"{e.source}: {status} {message}")
    assert refused == []


def test_v1beta1_is_served_for_the_istio_mirrored_kinds(api: KubeAPI) -> None:
    for kind, spec in (
        ("AuthorizationPolicy", {"action": "ALLOW", "rules": [{}]}),
        ("PeerAuthentication", {"mtls": {"mode": "STRICT"}}),
        ("RequestAuthentication", {"jwtRules": [{"issuer": "https://issuer.example"}]}),
        ("VirtualService", {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}]}]}),
        ("DestinationRule", {"host": "a"}),
    ):
        group = _plural(kind)[0]
        doc = invalid.document(kind, f"{group}/v1beta1", spec)
        assert _create(api, doc, f"beta-{kind.lower()}") == (201, "")


@pytest.mark.parametrize(
    ("kind", "api_version", "spec", "where"),
    invalid.OPENAPI + invalid.CEL,
    ids=[f"{k}-{i}" for i, (k, *_rest) in enumerate(invalid.OPENAPI + invalid.CEL)],
)
def test_the_server_refuses_what_weft_refuses(
    api: KubeAPI, kind: str, api_version: str, spec: dict, where: str
) -> None:
    doc = invalid.document(kind, api_version, spec)
    name = f"bad-{kind.lower()}-{abs(hash(json.dumps(spec, sort_keys=True))) % 10**8}"
    status, message = _create(api, doc, name)
    # 422 Invalid from the schema; 400 BadRequest from strict decoding (an unknown field)
    assert status in (400, 422), f"created ({status}): {spec}"
    assert where in re.sub(r"\[(\d+)\]", r".\1", message), message


def test_a_created_policy_reads_back_as_written(api: KubeAPI) -> None:
    """Nothing weft reads is pruned or defaulted away by the schema."""
    spec = {
        "action": "DENY",
        "selector": {"matchLabels": {"app": "api"}},
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"]}}],
                "to": [{"operation": {"ports": ["8080"], "methods": ["POST"], "paths": ["/x/*"]}}],
                "when": [{"key": "request.headers[x-user]", "values": ["bob"]}],
            }
        ],
    }
    doc = invalid.document("AuthorizationPolicy", "security.weft.dev/v1", spec)
    assert _create(api, doc, "readback") == (201, "")
    objects = k8s.CustomObjectsApi(api.api_client)
    live = objects.get_namespaced_custom_object(
        "security.weft.dev", "v1", NAMESPACE, "authorizationpolicies", "readback"
    )
    assert live["spec"] == spec
    # and the printer column shows the action
    deadline = time.monotonic() + 10
    while True:
        out = kubectl(api, "get", "authorizationpolicies", "-n", NAMESPACE, "readback").stdout
        if "DENY" in out or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "ACTION" in out and "DENY" in out, out


def test_kubectl_describe_of_an_invalid_object_is_never_reached(api: KubeAPI) -> None:
    """(kubectl's own path: apply of a file with an invalid policy fails with the rule's
    message, and nothing is stored)."""
    doc = invalid.document("AuthorizationPolicy", "security.weft.dev/v1", {"action": "DENY"})
    doc["metadata"]["namespace"] = NAMESPACE
    done = kubectl(api, "apply", "-f", "-", input_text=yaml.safe_dump(doc), check=False)
    assert done.returncode != 0
    assert "never matches" in done.stderr
    got = kubectl(api, "get", "authorizationpolicies", "-n", NAMESPACE, "bad", check=False)
    assert got.returncode != 0 and "NotFound" in got.stderr
