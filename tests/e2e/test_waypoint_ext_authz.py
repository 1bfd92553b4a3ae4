"""AuthorizationPolicy CUSTOM at a namespace waypoint in the lab, as a user sets it up (Istio's
"External Authorization" task): the sample ext_authz server (`weft/ext-authz`, gRPC on 9000,
HTTP on 8000) deployed as a pod of another enrolled namespace, ConfigMap weft-system/weft
declaring it as two providers (envoyExtAuthzHttp, envoyExtAuthzGrpc) plus two whose Service has
no endpoint (failOpen false / true), and CUSTOM policies with targetRefs to Service echo, one
path prefix per provider. A request with `x-ext-authz: allow` reaches the echo, which sees the
provider's `x-ext-authz-check-result: allowed`; one without gets the provider's 403 and body;
a provider that cannot be reached denies (403) or, with failOpen, lets the request through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.e2e.test_waypoint_authorization import gets
from tests.integration.lab.labtools import Lab

pytestmark = pytest.mark.e2e

NS = "authze2e"  # (the name `gets` runs its client pods in)
AUTHZ_NS = "extauthz"
DENIED_BODY = "denied by ext_authz for not found header `x-ext-authz: allow` in the request"
ALLOW = {"x-ext-authz": "allow"}

MESH_CONFIG = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: weft-system}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: weft, namespace: weft-system}}
data:
  mesh: |
    extensionProviders:
    - name: sample-http
      envoyExtAuthzHttp:
        service: ext-authz.{AUTHZ_NS}.svc.cluster.local
        port: 8000
        timeout: 2s
        includeRequestHeadersInCheck: ["x-ext-authz"]
        headersToUpstreamOnAllow: ["x-ext-authz-check-result"]
        headersToDownstreamOnDeny: ["x-ext-authz-check-result"]
    - name: sample-grpc
      envoyExtAuthzGrpc:
        service: ext-authz.{AUTHZ_NS}.svc.cluster.local
        port: 9000
        timeout: 2s
    - name: gone-closed
      envoyExtAuthzGrpc:
        service: {AUTHZ_NS}/ext-authz-gone.{AUTHZ_NS}.svc.cluster.local
        port: 9000
        timeout: 2s
    - name: gone-open
      envoyExtAuthzGrpc:
        service: ext-authz-gone.{AUTHZ_NS}.svc.cluster.local
        port: 9000
        timeout: 2s
        failOpen: true
"""

EXT_AUTHZ = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: ext-authz, namespace: {AUTHZ_NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: ext-authz}}}}
  template:
    metadata: {{labels: {{app: ext-authz}}}}
    spec:
      nodeName: node-2
      containers:
      - name: ext-authz
        image: weft/ext-authz
        args: ["--grpc-port", "9000", "--http-port", "8000"]
        ports: [{{name: grpc, containerPort: 9000}}, {{name: http, containerPort: 8000}}]
"""


def custom(name: str, provider: str, prefix: str) -> str:
    return f"""
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: ["{prefix}*"]}}}}]
"""


MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.enrolled_namespace(AUTHZ_NS),
    MESH_CONFIG,
    EXT_AUTHZ,
    wl.service(AUTHZ_NS, "ext-authz", {"app": "ext-authz"}, (("http", 8000), ("grpc", 9000)),
               target_port=8000).replace(
        "{name: grpc, port: 9000, targetPort: 8000}", "{name: grpc, port: 9000, targetPort: 9000}"
    ),
    wl.service(AUTHZ_NS, "ext-authz-gone", {"app": "nothing"}, (("grpc", 9000),)),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.echo_deployment(NS, "echo", node="node-2"),
    wl.client_pod(NS).replace("name: client,", "name: client-a,"),
)  # fmt: skip

POLICIES = wl.manifests(
    custom("ext-http", "sample-http", "/headers"),
    custom("ext-grpc", "sample-grpc", "/grpc-checked"),
    custom("ext-closed", "gone-closed", "/closed"),
    custom("ext-open", "gone-open", "/open"),
)


def to_echo(
    path: str, headers: dict[str, str] | None = None
) -> tuple[str, int, str, dict[str, str]]:
    return ("echo", 80, path, headers or {})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The lab with its waypoint, the mesh config and the CUSTOM policies in force."""
    workdir = tmp_path_factory.mktemp("extauthz")
    with wl.running_lab(f"weft-e2e-extauthz-{RUN_ID}", MANIFESTS, workdir) as lab:
        applied = wl.apply_waypoint(lab, NS)
        assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
        wl.apply_yaml(lab, workdir / "policies.yaml", POLICIES)
        # in force, and the provider up, once a request without the header gets its answer
        answer = wl.poll_until(
            lambda: gets(lab, "client-a", [to_echo("/headers")]),
            lambda r: r == [(403, DENIED_BODY)],
            30,
        )
        assert answer == [(403, DENIED_BODY)], answer
        yield lab


@pytest.mark.parametrize("prefix", ["/headers", "/grpc-checked"], ids=["http", "grpc"])
def test_the_provider_decides_and_its_header_reaches_the_backend(lab: Lab, prefix: str) -> None:
    allowed, denied, unchecked = gets(
        lab, "client-a", [to_echo(f"{prefix}/x", ALLOW), to_echo(f"{prefix}/x"), to_echo("/ip")]
    )
    assert allowed[0] == 200, allowed
    seen = wl.echo_said(allowed[1])["request"]["headers"]
    assert seen.get("x-ext-authz-check-result") == "allowed", seen
    assert denied == (403, DENIED_BODY), denied
    assert unchecked[0] == 200, unchecked  # no CUSTOM rule matches /ip


def test_an_unreachable_provider_denies_unless_fail_open(lab: Lab) -> None:
    closed, opened = gets(lab, "client-a", [to_echo("/closed", ALLOW), to_echo("/open")])
    assert closed[0] == 403, closed
    assert opened[0] == 200, opened
