"""The README's first command, as a user runs it: the demo lab with traffic flowing, through
the demo's waypoint: its canary split, its header A/B and the README's blue-green switch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers, weftctl

pytestmark = pytest.mark.e2e


def weftctl_metrics(lab: Lab, node: str) -> str:
    sock = f"/run/weft/labs/{lab.name}/nodes/{node}/ztunnel.sock"
    return subprocess.run(
        ["curl", "-s", "--unix-socket", sock, "http://z/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


ROOT = Path(__file__).parents[2]


def readme_blue_green(into: Path) -> dict[str, Path]:
    """The README's blue-green `sed` commands, run as written from the checkout (writing into
    `into` instead of /tmp): {"blue": route file, "green": route file}."""
    out = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("sed ") and "lab/demo/40-waypoint.yaml" in line:
            command = line.replace("/tmp/", f"{into}/")
            subprocess.run(["sh", "-c", command], cwd=ROOT, check=True)
            target = Path(command.rsplit("> ", 1)[1].strip())
            out[target.stem] = target
    assert set(out) == {"blue", "green"}, out
    return out


def load(lab: Lab, url: str, count: int) -> dict[str, Any]:
    """The load client's JSON report for `count` requests from the traffic pod."""
    out = lab.exec(
        "traffic",
        "demo",
        sys.executable,
        "-m",
        "sample_apps.load_client",
        url,
        "--count",
        str(count),
        "--new-connections",
        "--duration",
        "30",
        "-o",
        "json",
    ).stdout
    report: dict[str, Any] = json.loads(out)
    return report


def versions(lab: Lab, count: int, *curl_args: str) -> set[str]:
    """The backend versions `count` curl requests from the traffic pod reached."""
    script = f'for i in $(seq {count}); do curl -s --max-time 5 "$@" http://backend.demo:8080/; echo; done'
    out = lab.exec("traffic", "demo", "sh", "-c", script, "sh", *curl_args).stdout
    return {json.loads(line).get("version", "?") for line in out.splitlines() if line.strip()}


def principal_pairs(metrics: str) -> set[str]:
    """`source_principal="...",destination_principal="..."` of every TCP connection counted."""
    out = set()
    for line in metrics.splitlines():
        if line.startswith("istio_tcp_connections_opened_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out.add(
                f'source_principal="{labels.get("source_principal", "")}",'
                f'destination_principal="{labels.get("destination_principal", "")}"'
            )
    return out


def test_demo_lab_serves_traffic_through_services_and_goes_away_cleanly(tmp_path: Path) -> None:
    lab = Lab(f"weft-e2e-{RUN_ID}")
    try:
        up = lab.run("up")  # the bundled demo, two nodes
        assert "lab up in" in up.stdout
        assert "Try:" in up.stdout
        status = lab.status()
        assert [n["name"] for n in status["nodes"]] == ["node-1", "node-2"]
        assert all(p["ready"] for p in status["pods"]), status["pods"]
        assert all(a["state"] == "Running" for a in status["node_agents"].values())

        # The traffic pod's load client reports successful requests to the frontend, and
        # nothing failed from its start: a new user's first look shows no failures.
        deadline = time.monotonic() + 20
        interim: dict = {}
        events: list[dict] = []
        while time.monotonic() < deadline:
            lines = lab.run("logs", "traffic", "-n", "demo").stdout.splitlines()
            events = [json.loads(line) for line in lines if line.startswith("{")]
            interim = next((e for e in reversed(events) if e["event"] == "load.interim"), {})
            if interim.get("succeeded", 0) >= 4:
                break
            time.sleep(1)
        assert interim.get("succeeded", 0) >= 4, interim
        assert [e for e in events if e["event"] == "load.request_failed"] == []
        interims = [e for e in events if e["event"] == "load.interim"]
        assert all(e["failed"] == 0 for e in interims), interims

        # frontend -> backend through the Service, both by name; backend is v1 and v2.
        answer = json.loads(
            lab.exec("traffic", "demo", "curl", "-s", "--max-time", "5", "http://frontend/").stdout
        )
        assert answer["namespace"] == "demo"
        assert answer["upstream"]["status"] == 200
        assert answer["upstream"]["body"]["version"] in ("v1", "v2")
        # The canary: the demo's HTTPRoute sends 10 % of the backend's requests to v2 (over
        # 400 requests, 5 % either way is 3.3 standard deviations: about 1 run in 1,000).
        report = load(lab, "http://backend.demo:8080/", 400)
        assert report["requests"]["failed"] == 0
        by_version = report["responses"]["by_version"]
        v2 = by_version.get("v2", 0) / sum(by_version.values())
        assert 0.05 <= v2 <= 0.15, f"v2 got {v2:.1%}: {by_version}"
        # The header A/B: x-canary: true always reaches v2.
        assert versions(lab, 20, "-H", "x-canary: true") == {"v2"}
        # The route's status says so, and the waypoint is programmed.
        (route,) = json.loads(
            weftctl("route", "--lab", lab.name, "status", "-n", "demo", "-o", "json").stdout
        )["routes"]
        (parent,) = route["parents"]
        assert [(c["type"], c["status"]) for c in parent["conditions"]] == [
            ("Accepted", "True"),
            ("ResolvedRefs", "True"),
        ]
        waypoint = json.loads(
            weftctl("waypoint", "--lab", lab.name, "status", "-n", "demo", "-o", "json").stdout
        )
        assert waypoint["programmed"] == "True"
        # Blue-green, as the README shows it: everything on v1 (blue), then everything on v2
        # (green), then back, each one `weftctl lab apply` of the route with other weights.
        routes = readme_blue_green(tmp_path)
        for color, version in (("blue", "v1"), ("green", "v2"), ("blue", "v1")):
            lab.run("apply", "-f", str(routes[color]))
            deadline = time.monotonic() + 20
            while versions(lab, 20) != {version} and time.monotonic() < deadline:
                time.sleep(0.5)
            assert versions(lab, 20) == {version}

        # ... and all of it crossed the mesh: the ztunnels counted it as mutual TLS between
        # the demo's identities: the frontend to the waypoint, the waypoint to the backend.
        wanted = (
            'source_principal="spiffe://cluster.local/ns/demo/sa/frontend",'
            'destination_principal="spiffe://cluster.local/ns/demo/sa/waypoint"',
            'source_principal="spiffe://cluster.local/ns/demo/sa/waypoint",'
            'destination_principal="spiffe://cluster.local/ns/demo/sa/backend"',
        )
        deadline = time.monotonic() + 20
        while True:  # the frontend's upstream connections are counted when they open
            metrics = "".join(weftctl_metrics(lab, node) for node in ("node-1", "node-2"))
            pairs = principal_pairs(metrics)
            if all(w in pairs for w in wanted) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert all(w in pairs for w in wanted), metrics
        assert 'connection_security_policy="mutual_tls"' in metrics
        lab_id = status["id"]
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []
