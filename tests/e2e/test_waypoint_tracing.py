"""The waypoint's spans in the lab, set up as a user would: `weftctl lab up --otlp-endpoint`
names a collector (an OTLP receiver on the control plane's address, which the lab's pods
reach as a cluster's pods reach a collector outside it), the controller's deployer puts it in
the waypoint pod's WEFT_OTLP_ENDPOINT, and a request through the waypoint arrives there as a
server span and a client span whose id the backend received in `traceparent`."""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.addressing import control_plane_ip
from lab.config import LabConfig
from lab.naming import LabNames
from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab

pytestmark = pytest.mark.e2e

NS = "wptrace"
REPO = Path(__file__).resolve().parents[2]
OTLP_ENDPOINT = f"{control_plane_ip(LabConfig())}:4317"  # the default underlay's

MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.echo_deployment(NS),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.client_pod(NS),
)

# Run in the client pod: one request with the given traceparent; the traceparent the echo got.
CLIENT = textwrap.dedent("""
    import http.client, json, sys
    try:
        conn = http.client.HTTPConnection("echo", 80, timeout=5)
        conn.request("GET", "/traced", headers={"traceparent": sys.argv[1], "baggage": "k=v"})
        resp = conn.getresponse()
        headers = json.loads(resp.read())["request"]["headers"]
        print(json.dumps({"status": resp.status, "headers": headers}))
    except (OSError, ValueError) as err:
        print(json.dumps({"error": repr(err)}))
""")


class Receiver:
    """The OTLP receiver in the control plane's namespace; its spans as they come."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-m",
                "tests.integration.waypoint.otlp_receiver",
                "--listen",
                OTLP_ENDPOINT,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.lines.get(timeout=20)
        assert first == {"listening": OTLP_ENDPOINT}, first
        self.spans: list[dict[str, Any]] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def trace(self, trace_id: str, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            ours = [s for s in self.spans if s["trace_id"] == trace_id]
            if len(ours) >= count:
                return ours
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(ours)} spans of trace {trace_id}, {count} expected")
            try:
                self.spans.append(self.lines.get(timeout=left))
            except queue.Empty:
                continue

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("wptrace")
    up_args = ("--otlp-endpoint", OTLP_ENDPOINT)
    with wl.running_lab(f"weft-e2e-tr-{RUN_ID}", MANIFESTS, workdir, up_args) as lab:
        yield lab


@pytest.fixture
def receiver(lab: Lab) -> Iterator[Receiver]:
    r = Receiver(LabNames(lab.status()["id"]).control_netns)
    try:
        yield r
    finally:
        r.stop()


def test_the_waypoint_sends_its_spans_to_the_labs_otlp_endpoint(
    lab: Lab, receiver: Receiver
) -> None:
    wl.apply_waypoint(lab, NS)
    # until the namespace's traffic goes through the waypoint (which, tracing, replaces the
    # parent; without tracing it would pass the traceparent on as it came)
    for _ in range(30):
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        got = wl.in_client(lab, NS, CLIENT, f"00-{trace_id}-{parent_id}-01")
        if got.get("status") == 200 and parent_id not in got["headers"].get("traceparent", ""):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(
            f"the backend never got the waypoint's traceparent (not through it, or no spans): {got}"
        )
    sent = got["headers"]
    assert sent["baggage"] == "k=v"

    spans = receiver.trace(trace_id, 2)
    (server,) = [s for s in spans if s["kind"] == 2]  # SPAN_KIND_SERVER
    (client,) = [s for s in spans if s["kind"] == 3]  # SPAN_KIND_CLIENT
    assert server["parent_span_id"] == parent_id
    assert client["parent_span_id"] == server["span_id"]
    assert sent["traceparent"] == f"00-{trace_id}-{client['span_id']}-01"
    assert server["resource"]["service.name"] == f"waypoint.{NS}"
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["attributes"]["destination_service"] == f"echo.{NS}.svc.cluster.local"
    assert client["attributes"]["upstream_cluster"] == f"outbound|80||echo.{NS}.svc.cluster.local"
