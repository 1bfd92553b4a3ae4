"""What the waypoint end-to-end tests share: the manifests of their lab apps (an enrolled
namespace, Services, the client pod, the lab's `weft/http-echo` Deployments), a two-node lab
that is up for the duration of a `with` and leaves nothing behind, the namespace waypoint
applied as a user applies it, the client pod's requests, and bounded polling."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tests.integration.lab.labtools import Lab, leftovers, weftctl

T = TypeVar("T")

# The downward API fields an echo pod can be given, by environment variable.
POD_FIELDS = {"POD_NAME": "metadata.name", "POD_IP": "status.podIP"}


def _flow(mapping: Mapping[str, str]) -> str:
    """A mapping as a YAML flow mapping: `{app: echo, version: v1}`."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def manifests(*documents: str) -> str:
    """YAML documents (each as the functions here write them) as one multi-document file."""
    return "---".join(documents)


def enrolled_namespace(ns: str) -> str:
    """A Namespace enrolled in the mesh (ambient data plane mode)."""
    return f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels: {{weft.dev/dataplane-mode: ambient}}
"""


def service(
    ns: str,
    name: str,
    selector: Mapping[str, str],
    ports: Sequence[tuple[str, int]] = (("http", 80),),
    target_port: str | int = "http",
) -> str:
    """A Service `name` selecting `selector`, each (port name, port) to `target_port`."""
    listed = ", ".join(
        f"{{name: {port_name}, port: {port}, targetPort: {target_port}}}"
        for port_name, port in ports
    )
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {_flow(selector)}
  ports: [{listed}]
"""


def client_pod(ns: str, node: str = "node-1") -> str:
    """Pod `client` (label app: client) on `node`, idle: the tests' requests are run in it."""
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{app: client}}}}
spec:
  nodeName: {node}
  containers:
  - name: main
    command: ["sleep", "3600"]
"""


def echo_deployment(
    ns: str,
    app: str = "echo",
    version: str | None = None,
    node: str | None = None,
    pod_env: Sequence[str] = (),
) -> str:
    """A one-replica Deployment of the lab's `weft/http-echo` on port 8080 (named http),
    labelled app: `app`; with a `version`, named `app-version`, labelled and answering with
    it; on `node` if given (else where the lab puts it); `pod_env` names POD_FIELDS to set."""
    labels = {"app": app} if version is None else {"app": app, "version": version}
    name = app if version is None else f"{app}-{version}"
    args = '"--port", "8080"' + ("" if version is None else f', "--version", "{version}"')
    placed = "" if node is None else f"      nodeName: {node}\n"
    env = "".join(
        f"        - name: {var}\n"
        f"          valueFrom: {{fieldRef: {{fieldPath: {POD_FIELDS[var]}}}}}\n"
        for var in pod_env
    )
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {_flow(labels)}}}
  template:
    metadata: {{labels: {_flow(labels)}}}
    spec:
{placed}      containers:
      - name: echo
        image: weft/http-echo
        args: [{args}]
        ports: [{{name: http, containerPort: 8080}}]
""" + ("        env:\n" + env if env else "")


def versioned_echo(
    ns: str,
    app: str,
    version: str,
    node: str | None = None,
    pod_env: Sequence[str] = (),
    ports: Sequence[tuple[str, int]] = (("http", 80),),
) -> str:
    """echo_deployment `app-version` and a Service of the same name selecting only it."""
    return manifests(
        echo_deployment(ns, app, version, node, pod_env),
        service(ns, f"{app}-{version}", {"app": app, "version": version}, ports),
    )


@contextmanager
def running_lab(name: str, app: str, workdir: Path, up_args: Sequence[str] = ()) -> Iterator[Lab]:
    """Lab `name` up on two nodes with the manifests `app` (written into `workdir`), and
    `up_args` given to `weftctl lab up`; forced down after, and then nothing on the machine
    may carry its id (checked only when the body did not raise)."""
    path = workdir / "app.yaml"
    path.write_text(app)
    lab = Lab(name)
    lab_id = ""
    try:
        lab.run("up", "--nodes", "2", "--manifests", str(path), *up_args, "--wait", "60")
        lab_id = lab.status()["id"]
        yield lab
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []


def apply_waypoint(lab: Lab, ns: str, *options: str) -> subprocess.CompletedProcess[str]:
    """`weftctl waypoint apply -n ns --enroll-namespace [options] --wait --timeout 30`."""
    return weftctl(
        "waypoint", "--lab", lab.name, "apply", "-n", ns, "--enroll-namespace", *options,
        "--wait", "--timeout", "30",
    )  # fmt: skip


def apply_yaml(lab: Lab, path: Path, yaml: str) -> None:
    """`yaml` written to `path` and applied with `weftctl lab apply -f`."""
    path.write_text(yaml)
    lab.run("apply", "-f", str(path))


def in_client(lab: Lab, ns: str, script: str, *args: str, timeout: float = 60) -> Any:
    """Run python `script` with `args` in pod `client` of `ns`: its last line of output, as
    JSON."""
    out = lab.exec("client", ns, "python3", "-c", script, *args, timeout=timeout).stdout
    return json.loads(out.strip().splitlines()[-1])


# Run in the client pod: `count` GETs of `path` to host:port over one kept-alive connection
# (each routed by the waypoint on its own), with the JSON headers; [status, body] of each.
KEEPALIVE_GETS = textwrap.dedent("""
    import http.client, json, sys
    host, port, path, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    headers = json.loads(sys.argv[5])
    conn = http.client.HTTPConnection(host, port, timeout=5)
    out = []
    for _ in range(count):
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        out.append([resp.status, resp.read().decode("latin-1")])
    print(json.dumps(out))
""")


def keepalive_gets(
    lab: Lab,
    ns: str,
    path: str,
    count: int,
    to: tuple[str, int] = ("echo", 80),
    headers: Mapping[str, str] | None = None,
) -> list[tuple[int, str]]:
    """(status, body) of `count` GETs of `path` from the client pod over one connection."""
    host, port = to
    args = (host, str(port), path, str(count), json.dumps(dict(headers or {})))
    return [(int(s), str(b)) for s, b in in_client(lab, ns, KEEPALIVE_GETS, *args)]


def echo_said(body: str) -> dict[str, Any]:
    """The lab echo's JSON answer, or {} for a body that is not one (an error's)."""
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def poll_until(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.5
) -> T:
    """`fetch()` until `done` holds for its value or `timeout` seconds have passed, `interval`
    seconds apart: the last value (the caller asserts on it, to show what was wrong)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(interval)
