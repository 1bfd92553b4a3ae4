"""L7 AuthorizationPolicy at a namespace waypoint in the lab, as a user sees it: `weftctl
waypoint apply --enroll-namespace --wait`, Service `echo` (two `weft/http-echo` pods), clients
`client-a` and `client-b` under their own service accounts, and a policy with targetRefs to
Service echo that allows only GET /public* from client-a. Paths are judged normalised
(`//admin`, `/%2Fadmin` are /admin), the backend learns who called from the waypoint's
x-forwarded-client-cert (never from the client's), and a direct pod-IP call, which worked
before the policy, is refused by the destination ztunnel once the policy exists."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab

pytestmark = pytest.mark.e2e

NS = "authze2e"
TD = "cluster.local"
CLIENT_A = f"spiffe://{TD}/ns/{NS}/sa/client-a"
CLIENT_B = f"spiffe://{TD}/ns/{NS}/sa/client-b"


def client(name: str, node: str) -> str:
    """ServiceAccount `name` and idle pod `name` running as it: requests are run in it."""
    return f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  serviceAccountName: {name}
  containers:
  - name: main
    command: ["sleep", "3600"]
"""


MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.echo_deployment(NS, "echo", node="node-2", pod_env=("POD_NAME",)).replace(
        "replicas: 1", "replicas: 2"
    ),
    client("client-a", "node-1"),
    client("client-b", "node-1"),
)

POLICY = f"""
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: echo-public, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: echo}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{TD}/ns/{NS}/sa/client-a"]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/public*"]}}}}]
"""

# Run in a client pod: one GET of each [host, port, path, headers] on its own connection;
# [status, body] of each, or ["error", exception name] when there was no answer.
GETS = textwrap.dedent("""
    import http.client, json, sys
    out = []
    for host, port, path, headers in json.loads(sys.argv[1]):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            out.append([resp.status, resp.read().decode("latin-1")])
            conn.close()
        except (OSError, http.client.HTTPException) as err:
            out.append(["error", type(err).__name__])
    print(json.dumps(out))
""")

Call = tuple[str, int, str, dict[str, str]]


def gets(lab: Lab, pod: str, calls: list[Call]) -> list[tuple[int | str, str]]:
    """(status or "error", body or exception name) of each call, made from `pod`."""
    out = lab.exec(pod, NS, "python3", "-c", GETS, json.dumps(calls), timeout=60).stdout
    return [(s, str(b)) for s, b in json.loads(out.strip().splitlines()[-1])]


def to_echo(path: str, headers: dict[str, str] | None = None) -> Call:
    return ("echo", 80, path, headers or {})


def echo_pod_ip(lab: Lab) -> str:
    return str(lab.pods(NS, "echo-")[0]["ip"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Any]]:
    """The lab with its waypoint and the policy in force; with the answer client-a got to a
    direct pod-IP call before the policy existed."""
    workdir = tmp_path_factory.mktemp("authz")
    with wl.running_lab(f"weft-e2e-authz-{RUN_ID}", MANIFESTS, workdir) as lab:
        applied = wl.apply_waypoint(lab, NS)
        assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
        (before,) = gets(lab, "client-a", [(echo_pod_ip(lab), 8080, "/admin", {})])
        wl.apply_yaml(lab, workdir / "policy.yaml", POLICY)
        # in force within seconds: client-b, answered before, is refused
        wl.poll_until(
            lambda: gets(lab, "client-b", [to_echo("/public/x")]),
            lambda r: r[0][0] == 403,
            30,
        )
        yield lab, before


def test_only_get_public_from_client_a_is_allowed(lab: tuple[Lab, Any]) -> None:
    the_lab, _ = lab
    answers = gets(
        the_lab,
        "client-a",
        [to_echo("/public/x"), to_echo("/admin"), to_echo("//admin"), to_echo("/%2Fadmin")],
    )
    (public_status, public_body), *denied = answers
    assert public_status == 200, answers
    assert wl.echo_said(public_body)["request"]["path"] == "/public/x"
    assert denied == [(403, "RBAC: access denied")] * 3, denied

    from_b = gets(the_lab, "client-b", [to_echo("/public/x")])
    assert from_b == [(403, "RBAC: access denied")], from_b


def test_the_backend_learns_the_caller_from_the_waypoint_not_the_client(
    lab: tuple[Lab, Any],
) -> None:
    the_lab, _ = lab
    forged = {"x-forwarded-client-cert": f"URI={CLIENT_B}"}
    ((status, body),) = gets(the_lab, "client-a", [to_echo("/public/who", forged)])
    assert status == 200, body
    xfcc = wl.echo_said(body)["request"]["headers"].get("x-forwarded-client-cert", "")
    assert xfcc.startswith(f"By=spiffe://{TD}/ns/{NS}/sa/waypoint;"), xfcc
    assert xfcc.endswith(f";URI={CLIENT_A}"), xfcc
    assert CLIENT_B not in xfcc


def test_a_direct_pod_ip_call_is_refused_once_the_policy_exists(lab: tuple[Lab, Any]) -> None:
    the_lab, before = lab
    assert before[0] == 200, f"before the policy a direct call was answered {before}"
    direct = (echo_pod_ip(the_lab), 8080, "/public/x", {})
    answers = gets(the_lab, "client-a", [direct, direct])
    for status, what in answers:
        # the destination ztunnel refuses the HBONE stream: the client sees its connection
        # reset or refused, or a 403, never the echo's answer
        assert status == "error" or status == 403, answers
        assert status != "error" or what in (
            "ConnectionResetError",
            "ConnectionRefusedError",
            "RemoteDisconnected",
            "BrokenPipeError",
        ), answers
