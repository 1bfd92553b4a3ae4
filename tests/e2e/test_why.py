"""`weftctl why` against the data plane: one two-node lab, a table of 14 policy situations, each
applied with `weftctl lab apply` (and deleted after), then for each question asked of it:

- the real outcome of one connection + GET from the source pod (run with `lab exec`, judged
  here: an HTTP answer is an allow unless it is the waypoint's RBAC 403, a reset is a deny);
- `weftctl why SRC DST -o json`: its verdict must be that outcome (and the one the table
  expects), with the deciding policy and path kind the table expects, and its exit code 0/1;
- `weftctl why ... --probe -o json`: the probe's own connection must agree (`agrees`).

Before asking, the test waits until every subscriber of the controller (agents, ztunnels,
the waypoint) has ACKed the state holding the situation's resources: the data plane then
runs what `why` reads.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab, weftctl

pytestmark = pytest.mark.e2e

NS, OUT = "whyns", "outside"
TD = "cluster.local"
SYNC_TIMEOUT = 40.0


def _pod(ns: str, name: str, node: str, *, echo: bool, sa: str = "", tcp: bool = False) -> str:
    account = f"  serviceAccountName: {sa}\n" if sa else ""
    container = (
        '  - name: echo\n    image: weft/http-echo\n    args: ["--port", "8080"]\n'
        "    ports: [{name: http, containerPort: 8080}]\n"
        if echo
        else '  - name: main\n    command: ["sleep", "3600"]\n'
    )
    if tcp:
        container = (
            '  - name: echo\n    image: weft/tcp-echo\n    args: ["--port", "9000"]\n'
            "    ports: [{name: tcp, containerPort: 9000}]\n"
        )
    return (
        f"\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, "
        f"labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n{account}  containers:\n"
        + container
    )


def _service(ns: str, name: str, waypoint: str = "", port: str = "{name: http, port: 80, "
             "targetPort: http}") -> str:  # fmt: skip
    labels = f", labels: {{weft.dev/use-waypoint: {waypoint}}}" if waypoint else ""
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}{labels}}}
spec:
  selector: {{app: {name}}}
  ports: [{port}]
"""


def _gateway(name: str, replicas: int | None = None) -> str:
    annotations = (
        f", annotations: {{weft.dev/replicas: '{replicas}'}}" if replicas is not None else ""
    )
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {NS}{annotations}}}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
"""


MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    f"\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {OUT}}}\n",
    f"\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: client, namespace: {NS}}}\n",
    _pod(NS, "client", "node-1", echo=False, sa="client"),
    _pod(OUT, "legacy", "node-1", echo=False),
    _pod(NS, "echo", "node-2", echo=True),
    _service(NS, "echo"),
    _pod(NS, "web", "node-2", echo=True),
    _service(NS, "web", waypoint="waypoint"),
    _gateway("waypoint"),
    _pod(NS, "dark", "node-2", echo=True),
    _pod(NS, "tcp", "node-2", echo=False, tcp=True),
    _service(NS, "tcp", waypoint="waypoint", port="{name: tcp, port: 9000, targetPort: tcp}"),
    _pod(OUT, "plain", "node-2", echo=True),
    _service(OUT, "plain"),
)


def _policy(name: str, spec: str, kind: str = "AuthorizationPolicy") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"\napiVersion: security.weft.dev/v1\nkind: {kind}\n"
        f"metadata: {{name: {name}, namespace: {NS}}}\nspec:\n{body}\n"
    )


CLIENT = f"{TD}/ns/{NS}/sa/client"
WEB_PUBLIC = _policy(
    "web-public",
    """
    targetRefs: [{kind: Service, group: "", name: web}]
    action: ALLOW
    rules:
    - to: [{operation: {paths: ["/public*"]}}]
    """,
)


@dataclass(frozen=True)
class Ask:
    """One `why` question and what the table expects of it."""

    src: str
    dst: str
    verdict: str
    deciding: str | None = None
    path_kind: str = ""
    path: str = ""  # --path (and the GET's path)
    tcp: bool = False  # a TCP echo: the real outcome is whether a line comes back


@dataclass(frozen=True)
class Situation:
    name: str
    yaml: str
    asks: tuple[Ask, ...] = field(default_factory=tuple)


ECHO = "echo.whyns"
SITUATIONS = [
    Situation(
        "no-policy",
        "",
        (
            Ask("whyns/client", ECHO, "allow", None, "ztunnel-to-ztunnel"),
            Ask("whyns/client", "tcp.whyns:9000", "allow", None, "waypoint", tcp=True),
        ),
    ),
    Situation(
        "allow-matching-principal",
        _policy(
            "allow-client",
            f"""
            selector: {{matchLabels: {{app: echo}}}}
            action: ALLOW
            rules: [{{from: [{{source: {{principals: ["{CLIENT}"]}}}}]}}]
            """,
        ),
        (Ask("whyns/client", ECHO, "allow", "whyns/allow-client"),),
    ),
    Situation(
        "allow-not-matching",
        _policy(
            "allow-other",
            f"""
            selector: {{matchLabels: {{app: echo}}}}
            action: ALLOW
            rules: [{{from: [{{source: {{principals: ["{TD}/ns/{NS}/sa/other"]}}}}]}}]
            """,
        ),
        (Ask("whyns/client", ECHO, "deny", "whyns/allow-other"),),
    ),
    Situation(
        "deny-matching",
        _policy(
            "deny-client",
            f"""
            action: DENY
            rules: [{{from: [{{source: {{principals: ["{CLIENT}"]}}}}]}}]
            """,
        ),
        (Ask("whyns/client", ECHO, "deny", "whyns/deny-client"),),
    ),
    Situation(
        "deny-other-port",
        _policy(
            "deny-9090",
            """
            action: DENY
            rules: [{to: [{operation: {ports: ["9090"]}}]}]
            """,
        ),
        (Ask("whyns/client", ECHO, "allow", None),),
    ),
    Situation(
        "strict-unenrolled-source",
        _policy("strict", "mtls: {mode: STRICT}", kind="PeerAuthentication"),
        (Ask("outside/legacy", ECHO, "deny", "whyns/strict", "plaintext"),),
    ),
    Situation(
        "permissive-unenrolled-source",
        _policy("permissive", "mtls: {mode: PERMISSIVE}", kind="PeerAuthentication"),
        (Ask("outside/legacy", ECHO, "allow", None, "plaintext"),),
    ),
    Situation(
        "unenrolled-destination",
        "",
        (Ask("whyns/client", "plain.outside", "allow", None, "passthrough"),),
    ),
    Situation(
        "waypoint-l7-allow-on-path",
        WEB_PUBLIC,
        (
            Ask("whyns/client", "web.whyns", "allow", "whyns/web-public", "waypoint", "/public/x"),
            Ask("whyns/client", "web.whyns", "deny", "whyns/web-public", "waypoint", "/admin"),
            # the bypass: the pod IP around the waypoint, refused by the destination ztunnel
            Ask("whyns/client", "whyns/web:8080", "deny", None, "ztunnel-to-ztunnel"),
        ),
    ),
    Situation(
        # a TCP port through the waypoint is judged as at L4: an ALLOW rule of HTTP fields
        # never matches a connection
        "waypoint-tcp-port-with-http-only-allow",
        _policy(
            "tcp-public",
            """
            targetRefs: [{kind: Service, group: "", name: tcp}]
            action: ALLOW
            rules: [{to: [{operation: {paths: ["/public*"]}}]}]
            """,
        ),
        (Ask("whyns/client", "tcp.whyns:9000", "deny", "whyns/tcp-public", "waypoint", tcp=True),),
    ),
    Situation(
        "waypoint-without-replica",
        wl.manifests(_gateway("idle", replicas=0), _service(NS, "dark", waypoint="idle")),
        (Ask("whyns/client", "dark.whyns", "deny", None, "refused"),),
    ),
    Situation(
        "allow-nothing-namespace-wide",
        _policy("allow-nothing", "{}"),
        (Ask("whyns/client", ECHO, "deny", "whyns/allow-nothing"),),
    ),
    Situation(
        "allow-nothing-selecting-another-workload",
        _policy("allow-nothing-other", "selector: {matchLabels: {app: other}}"),
        (Ask("whyns/client", ECHO, "allow", None),),
    ),
    Situation(
        "namespace-wide-deny-beats-selector-allow",
        wl.manifests(
            _policy(
                "allow-client-echo",
                f"""
                selector: {{matchLabels: {{app: echo}}}}
                action: ALLOW
                rules: [{{from: [{{source: {{principals: ["{CLIENT}"]}}}}]}}]
                """,
            ),
            _policy(
                "deny-namespace",
                f"""
                action: DENY
                rules: [{{from: [{{source: {{namespaces: ["{NS}"]}}}}]}}]
                """,
            ),
        ),
        (Ask("whyns/client", ECHO, "deny", "whyns/deny-namespace"),),
    ),
]

# Run in the source pod: one connection and one GET; [outcome, status, body start].
GET = textwrap.dedent("""
    import http.client, json, sys
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        print(json.dumps(["response", resp.status, resp.read()[:100].decode("latin-1")]))
    except (OSError, http.client.HTTPException) as err:
        print(json.dumps(["error", 0, type(err).__name__]))
""")


# Run in the source pod: one line to a TCP echo; ["echoed", 0, line] or ["error", 0, why].
LINE = textwrap.dedent("""
    import json, socket, sys
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        s.sendall(b"weft why\\n")
        back = s.recv(100)
        print(json.dumps(["echoed" if back else "error", 0, back.decode("latin-1")]))
    except OSError as err:
        print(json.dumps(["error", 0, type(err).__name__]))
""")


def real_outcome(lab: Lab, ask: Ask, host: str, port: int) -> tuple[str, list[Any]]:
    """What one GET (or echoed line) from the source really met: allow, or deny (a reset,
    the RBAC 403, no echo)."""
    ns, name = ask.src.split("/")
    if ask.tcp:
        out = lab.exec(name, ns, "python3", "-c", LINE, host, str(port), timeout=60)
        said = json.loads(out.stdout.strip().splitlines()[-1])
        return ("allow" if said[0] == "echoed" else "deny"), said
    out = lab.exec(name, ns, "python3", "-c", GET, host, str(port), ask.path or "/", timeout=60)
    said = json.loads(out.stdout.strip().splitlines()[-1])
    if said[0] == "response" and not (said[1] == 403 and said[2].startswith("RBAC")):
        return "allow", said
    return "deny", said


def _target(lab: Lab, dst: str) -> tuple[str, int]:
    """Where the GET goes: a Service by its DNS name, a pod by its IP."""
    if "/" in dst:
        ref, _, port = dst.partition(":")
        ns, name = ref.split("/")
        (pod,) = [p for p in lab.pods(ns) if p["name"] == name]
        return str(pod["ip"]), int(port)
    host, _, port = dst.partition(":")
    return host, int(port or 80)


# A resource's kind in the mesh state, where it differs from the manifest's.
STATE_KIND = {"Gateway": "Waypoint"}


def _keys(text: str) -> set[tuple[str, str, str]]:
    """The state keys of the resources in `text`."""
    return {
        (
            STATE_KIND.get(d["kind"], d["kind"]),
            d["metadata"].get("namespace", ""),
            d["metadata"]["name"],
        )
        for d in yaml.safe_load_all(text)
        if d
    }


def wait_synced(lab: Lab, keys: set[tuple[str, str, str]], present: bool) -> None:
    """Until the controller's state has (or no longer has) `keys` and every subscriber has
    ACKed that version."""
    deadline = time.monotonic() + SYNC_TIMEOUT
    ctl = ("controller", "--lab", lab.name)
    while True:
        state = json.loads(weftctl(*ctl, "state", "-o", "json").stdout)
        held = {(r["key"]["kind"], r["key"].get("namespace", ""), r["key"]["name"])
                for r in state["resources"]}  # fmt: skip
        if (keys <= held) if present else not (keys & held):
            nodes = json.loads(weftctl(*ctl, "nodes", "-o", "json").stdout)["nodes"]
            acked = [n for n in nodes if n["connected"]]
            if acked and all(n["acked_version"] >= state["version"] for n in acked):
                return
        assert time.monotonic() < deadline, f"state not synced: {sorted(keys)} {present}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    workdir = tmp_path_factory.mktemp("why")
    with wl.running_lab(f"weft-c-{RUN_ID}", MANIFESTS, workdir) as the_lab:
        yield the_lab, workdir


def why(lab: Lab, ask: Ask, *extra: str) -> tuple[int, dict[str, Any]]:
    args = ["why", "--lab", lab.name, ask.src, ask.dst, "-o", "json", *extra]
    if ask.path:
        args += ["--path", ask.path]
    proc = weftctl(*args, check=False, timeout=90)
    assert proc.returncode in (0, 1), (proc.returncode, proc.stdout, proc.stderr)
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("situation", SITUATIONS, ids=[s.name for s in SITUATIONS])
def test_why_agrees_with_the_data_plane(lab: tuple[Lab, Path], situation: Situation) -> None:
    the_lab, workdir = lab
    path = workdir / f"{situation.name}.yaml"
    keys = _keys(situation.yaml) if situation.yaml else set()
    if keys:
        wl.apply_yaml(the_lab, path, situation.yaml)
    try:
        wait_synced(the_lab, keys, present=True)
        for ask in situation.asks:
            host, port = _target(the_lab, ask.dst)
            real, said = real_outcome(the_lab, ask, host, port)
            code, data = why(the_lab, ask)
            context = json.dumps({"real": said, "why": data}, indent=1)
            assert data["verdict"] == real == ask.verdict, context
            assert code == (0 if real == "allow" else 1), context
            assert data["deciding_policy"] == ask.deciding, context
            if ask.path_kind:
                assert data["path"]["kind"] == ask.path_kind, context
            code, probed = why(the_lab, ask, "--probe")
            report = probed["probe"]
            assert report["agrees"] is True, json.dumps(report, indent=1)
            assert report["observed"] == real, json.dumps(report, indent=1)
            # every situation has a ztunnel on its path: it reported the probe's connection
            assert report["events"], json.dumps(report, indent=1)
    finally:
        if keys:
            the_lab.run("delete", "-f", str(path))
            wait_synced(the_lab, keys, present=False)


def test_unknown_destination_names_close_matches(lab: tuple[Lab, Path]) -> None:
    the_lab, _ = lab
    proc = weftctl("why", "--lab", the_lab.name, "whyns/client", "ech.whyns", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "did you mean" in proc.stderr and "echo.whyns" in proc.stderr, proc.stderr
    proc = weftctl("why", "--lab", the_lab.name, "whyns/client", "whyns/echo", check=False)
    assert proc.returncode == 2 and "whyns/echo:PORT" in proc.stderr, proc.stderr


def test_the_text_form_says_the_verdict_path_and_sides(lab: tuple[Lab, Path]) -> None:
    the_lab, _ = lab
    proc = weftctl("why", "--lab", the_lab.name, "whyns/client", "web.whyns", "--path", "/x")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ALLOW: whyns/client -> "), proc.stdout
    assert "pod whyns/client" in proc.stdout and "enrolled, captured" in proc.stdout
    assert "waypoint: source ztunnel (node-1) -> waypoint whyns/waypoint" in proc.stdout
    assert "certificate held by its ztunnel" in proc.stdout
