"""Prometheus in the lab, as a user runs it: `weftctl lab up --prometheus` with the demo, then
`weftctl lab prometheus`. Every mesh process is a target and `up`; waypoint replicas come and
go without a restart; every query of every dashboard (dashboards/) runs there and every metric
name it reads exists, once the traffic each one needs has been made. Also: a target past the
per-scrape sample bound fails visibly (a real Prometheus on loopback).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from lab.prometheusconfig import SAMPLE_LIMIT, config_text, prometheus_argv
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers
from tests.unit.test_dashboards import (
    dashboard_names,
    load_dashboards,
    panels,
    variable_queries,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary"),
]

T = TypeVar("T")
SCRAPE = 2.0  # seconds: the lab's scrape interval here


def until(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `check` (bounded in time) until it returns something other than None."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last is not None:
            return last
        time.sleep(1.0)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def targets(url: str) -> list[dict[str, Any]]:
    return list(api(url, "/api/v1/targets", state="active")["activeTargets"])


def target_key(t: dict[str, Any]) -> tuple[str, str, str]:
    labels = t["labels"]
    return (labels["component"], labels["node"], labels.get("pod", ""))


DENY_FRONTEND = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: weft-d-deny-frontend
  namespace: demo
spec:
  selector:
    matchLabels: {app: tcp-echo}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/frontend"]
"""

EXTRA_NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata:
  name: extra
  labels: {weft.dev/dataplane-mode: ambient}
"""
EXTRA_WAYPOINT = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: extra-waypoint, namespace: extra}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""

# Run in a pod: `count` TCP connections to host:port, each sending a line and reading the
# echo; prints how many were answered and how many refused.
TCP_ROUNDS = """
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = refused = 0
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"weft-d\\n")
            ok += bool(s.recv(64))
    except OSError:
        refused += 1
print(json.dumps({"ok": ok, "refused": refused}))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(f"weft-d-{RUN_ID}")
    lab_id = ""
    try:
        lab.run(
            "up", "--prometheus", "--prometheus-scrape-interval", str(SCRAPE), "--wait", "90",
            timeout=300,
        )  # fmt: skip
        lab_id = lab.status()["id"]
        yield lab
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []


@pytest.fixture(scope="module")
def url(lab: Lab) -> str:
    out = lab.run("prometheus").stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", out), out
    return out


def test_lab_prometheus_prints_a_url_on_loopback_that_answers(lab: Lab, url: str) -> None:
    with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as resp:
        assert resp.status == 200
    status = lab.status()["prometheus"]
    assert status["url"] == url
    assert status["state"] == "Running"
    # It listens on the control plane namespace's loopback: the host's forward is the only
    # way in. A pod reaches the control plane's address (the controller's metrics answer it),
    # not Prometheus there; nor does a node.
    assert status["listen"] == "127.0.0.1:9090"
    control_ip = lab.status()["controller"]["address"].rpartition(":")[0]

    def http_code(port: int) -> str:
        return lab.exec(
            "traffic", "demo", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
            "--max-time", "5", f"http://{control_ip}:{port}/metrics", check=False,
        ).stdout.strip()  # fmt: skip

    assert http_code(15014) == "200"
    assert http_code(9090) == "000"
    record = lab.record()
    assert record is not None
    node = subprocess.run(
        ["nsenter", f"--net=/run/netns/weft-{record.lab_id}-node-1", "--",
         "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
         f"http://{control_ip}:9090/-/ready"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert node.stdout.strip() == "000"


def test_every_mesh_process_is_a_target_and_up(lab: Lab, url: str) -> None:
    status = lab.status()
    waypoints = {
        (p["node"], p["name"])
        for p in status["pods"]
        if p["labels"].get("gateway.networking.k8s.io/gateway-name")
    }
    assert len(waypoints) == 1, status["pods"]  # the demo's waypoint, one replica
    expected = {("controller", "control-plane", "")}
    for node in ("node-1", "node-2"):
        expected |= {("agent", node, ""), ("ztunnel", node, "")}
    expected |= {("waypoint", node, pod) for node, pod in waypoints}

    def all_up() -> list[dict[str, Any]] | None:
        found = targets(url)
        if {target_key(t) for t in found} == expected and all(t["health"] == "up" for t in found):
            return found
        return None

    try:
        found = until("every target up", all_up, timeout=30)
    except AssertionError:
        seen = {target_key(t): (t["health"], t["lastError"]) for t in targets(url)}
        raise AssertionError(f"expected {sorted(expected)} all up, got {seen}") from None
    jobs = {t["labels"]["job"] for t in found}
    assert jobs == {"weft-controller", "weft-node-agent", "weft-ztunnel", "weft-waypoint"}
    (wp,) = [t for t in found if t["labels"]["component"] == "waypoint"]
    assert wp["labels"]["namespace"] == "demo"
    assert wp["labels"]["gateway"] == "waypoint"


def test_a_new_waypoint_becomes_a_target_without_a_restart(
    lab: Lab, url: str, tmp_path: Path
) -> None:
    pid = lab.status()["prometheus"]["pid"]
    namespace = tmp_path / "extra-namespace.yaml"
    namespace.write_text(EXTRA_NAMESPACE)
    manifest = tmp_path / "extra-waypoint.yaml"
    manifest.write_text(EXTRA_WAYPOINT)
    lab.run("apply", "-f", str(namespace), "-f", str(manifest))

    def extra_up() -> dict[str, Any] | None:
        found = [t for t in targets(url) if t["labels"].get("namespace") == "extra"]
        return found[0] if found and found[0]["health"] == "up" else None

    target = until("the extra waypoint's target up", extra_up, timeout=60)
    assert target["labels"]["gateway"] == "extra-waypoint"
    lab.run("delete", "-f", str(manifest))
    until(
        "the extra waypoint's target gone",
        lambda: (
            True
            if not [t for t in targets(url) if t["labels"].get("namespace") == "extra"]
            else None
        ),
        timeout=60,
    )
    assert lab.status()["prometheus"]["pid"] == pid  # rediscovered, not restarted


def make_traffic(lab: Lab, tmp_path: Path) -> None:
    """What the dashboards' metrics need beyond the demo's own traffic pod (HTTP through the
    waypoint): TCP connections that close (bytes counted at close) and a refused one."""
    answered = json.loads(
        lab.exec("traffic", "demo", "python3", "-c", TCP_ROUNDS, "tcp-echo.demo", "9000", "5")
        .stdout.strip()
        .splitlines()[-1]
    )
    assert answered == {"ok": 5, "refused": 0}
    policy = tmp_path / "deny.yaml"
    policy.write_text(DENY_FRONTEND)
    lab.run("apply", "-f", str(policy))
    frontend = next(
        p["name"]
        for p in lab.status()["pods"]
        if p["namespace"] == "demo" and p["name"].startswith("frontend-")
    )

    def refused() -> bool | None:
        out = lab.exec(
            frontend, "demo", "python3", "-c", TCP_ROUNDS, "tcp-echo.demo", "9000", "2"
        ).stdout
        return True if json.loads(out.strip().splitlines()[-1])["refused"] == 2 else None

    until("the DENY policy refusing frontend -> tcp-echo", refused, timeout=30)


# A value for each dashboard variable: sets of values, each where some traffic exists; a
# panel must have data with at least one of them.
VARIABLE_VALUES = [
    {"service": "backend-v1.demo.svc.cluster.local", "namespace": "demo", "workload": "frontend"},
    {"service": "tcp-echo.demo.svc.cluster.local", "namespace": "demo", "workload": "backend-v1"},
    {"service": "frontend.demo.svc.cluster.local", "namespace": "demo", "workload": "tcp-echo"},
    {"service": "frontend.demo.svc.cluster.local", "namespace": "demo", "workload": "traffic"},
]


def substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "1m")
    for name, value in {**values, "node": ".*"}.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


def test_every_dashboard_metric_exists_and_every_query_runs(
    lab: Lab, url: str, tmp_path: Path
) -> None:
    make_traffic(lab, tmp_path)
    boards = load_dashboards()
    wanted = set().union(*(dashboard_names(b).metrics for b in boards.values()))

    def all_present() -> set[str] | None:
        present = set(api(url, "/api/v1/label/__name__/values"))
        return present if wanted <= present else None

    try:
        until("every dashboard metric in Prometheus", all_present, timeout=60)
    except AssertionError:
        missing = wanted - set(api(url, "/api/v1/label/__name__/values"))
        raise AssertionError(f"not in the lab's Prometheus: {sorted(missing)}") from None
    labels = set(api(url, "/api/v1/labels"))
    for name, board in boards.items():
        unknown = dashboard_names(board).labels - labels
        assert not unknown, f"{name}: no series has the labels {sorted(unknown)}"

    # Each panel query is valid PromQL for this Prometheus, and has data for at least one of
    # the variable values (a rate needs two scrapes after the traffic: wait for them)
    time.sleep(3 * SCRAPE)
    empty: list[str] = []
    for name, board in boards.items():
        for _, query in variable_queries(board):
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert inner is not None, query
            values = api(
                url,
                f"/api/v1/label/{inner.group(2)}/values",
                **{"match[]": substitute(inner.group(1), VARIABLE_VALUES[0])},
            )
            assert values, f"{name}: variable query {query} finds nothing"
        for panel in panels(board):
            for target in panel.get("targets", []):
                results = [
                    api(url, "/api/v1/query", query=substitute(target["expr"], values))["result"]
                    for values in VARIABLE_VALUES
                ]
                if not any(results):
                    empty.append(f"{name} {panel['title']!r} {target['refId']}")
    assert empty == [], f"queries with no data: {empty}"


def test_lab_down_of_a_crashed_lab_removes_prometheus_and_its_data(lab: Lab) -> None:
    """Last in this module: the daemon is killed, as a crash would; `lab down` then removes
    the Prometheus it left running, its data and its URL."""
    record = lab.record()
    assert record is not None
    status = lab.status()
    pid = status["prometheus"]["pid"]
    data = Path(status["prometheus"]["data"])
    assert data.is_dir()
    os.kill(record.daemon_pid, signal.SIGKILL)
    until(
        "the daemon gone",
        lambda: True if not Path(f"/proc/{record.daemon_pid}").exists() else None,
        10,
    )
    assert Path(f"/proc/{pid}").exists(), "Prometheus should outlive the daemon until teardown"
    out = lab.run("prometheus", check=False)
    assert out.returncode != 0 and out.stdout == ""  # no URL for a lab whose daemon died
    lab.run("down")
    assert not data.exists()
    state = Path(f"/proc/{pid}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert leftovers(record.lab_id) == []


# --- the per-scrape bound, past it -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exporter(series: dict[str, int]) -> ThreadingHTTPServer:
    """/<name>/metrics: `series[name]` gauge series, on a loopback port of its own."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            count = series.get(self.path.strip("/").split("/")[0], 0)
            lines = ["# TYPE weft_d_sample gauge"]
            lines += [f'weft_d_sample{{i="{i}"}} 1' for i in range(count)]
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_target_past_the_sample_bound_fails_its_scrape_visibly(tmp_path: Path) -> None:
    """The lab's per-scrape bound on a real Prometheus (loopback only), with the lab's own
    job settings: a target exposing one series more than SAMPLE_LIMIT is down, with
    Prometheus' reason, and counted; one at the bound is up."""
    series = {"at": SAMPLE_LIMIT, "past": SAMPLE_LIMIT + 1}
    exporter = _exporter(series)
    lab_job = yaml.safe_load(
        config_text(scrape_interval=1.0, static_jobs={}, sd_dir=tmp_path / "sd")
    )["scrape_configs"][0]
    limits = {k: v for k, v in lab_job.items() if k.endswith("_limit")}
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": name,
                **limits,
                "metrics_path": f"/{name}/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{exporter.server_port}"]}],
            }
            for name in series
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    binary = shutil.which("prometheus")
    assert binary is not None
    port = _free_port()
    server = subprocess.Popen(
        prometheus_argv(
            binary, config_file=config_file, data_dir=tmp_path / "data", listen=f"127.0.0.1:{port}"
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def both_scraped() -> dict[str, dict[str, Any]] | None:
            try:
                found = {t["labels"]["job"]: t for t in targets(url)}
            except OSError:
                return None
            if set(found) == set(series) and all(t["health"] != "unknown" for t in found.values()):
                return found
            return None

        found = until("both targets scraped", both_scraped, timeout=30)
        assert found["at"]["health"] == "up", found["at"]["lastError"]
        assert found["past"]["health"] == "down"
        assert "sample limit" in found["past"]["lastError"]
        # Counted by Prometheus itself (its own /metrics)
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            own = resp.read().decode()
        counted = re.search(
            r"^prometheus_target_scrapes_exceeded_sample_limit_total (\S+)$", own, re.M
        )
        assert counted is not None and float(counted.group(1)) >= 1
    finally:
        server.terminate()
        server.wait(timeout=10)
        exporter.shutdown()
