"""The README's first command, as a user runs it: the demo lab with traffic flowing."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers

pytestmark = pytest.mark.e2e


def weftctl_metrics(lab: Lab, node: str) -> str:
    sock = f"/run/weft/labs/{lab.name}/nodes/{node}/ztunnel.sock"
    return subprocess.run(
        ["curl", "-s", "--unix-socket", sock, "http://z/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_demo_lab_serves_traffic_through_services_and_goes_away_cleanly() -> None:
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
        report = json.loads(
            lab.exec(
                "traffic",
                "demo",
                sys.executable,
                "-m",
                "sample_apps.load_client",
                "http://backend.demo:8080/",
                "--count",
                "60",
                "--new-connections",
                "--duration",
                "30",
                "-o",
                "json",
            ).stdout
        )
        assert report["requests"]["failed"] == 0
        assert set(report["responses"]["by_version"]) == {"v1", "v2"}
        # ... and all of it crossed the mesh: the ztunnels counted it as mutual TLS between
        # the demo's identities.
        wanted = (
            'source_principal="spiffe://cluster.local/ns/demo/sa/frontend"',
            'destination_principal="spiffe://cluster.local/ns/demo/sa/backend"',
        )
        deadline = time.monotonic() + 20
        while True:  # the frontend's upstream connections are counted when they open
            metrics = "".join(weftctl_metrics(lab, node) for node in ("node-1", "node-2"))
            if all(w in metrics for w in wanted) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert all(w in metrics for w in wanted), metrics
        assert 'connection_security_policy="mutual_tls"' in metrics
        lab_id = status["id"]
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []
