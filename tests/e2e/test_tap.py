"""`weftctl tap` in a two-node lab, as a user runs it: a connection seen within a second of
its end, a request through the namespace's waypoint with its response code (merged from the
waypoint replica's admin listener inside its pod), the ztunnel's subscriber bound, and
`weftctl ztunnel-config services|policies|connections` on the live ztunnels."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lab.state import LabPaths
from meshcore.accessevents import MAX_SUBSCRIBERS, TapFilter
from meshcore.adminclient import get_json
from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import WEFTCTL, Lab, weftctl
from weftctl.tap import LabTap, TapError, TapSource, open_tap

pytestmark = pytest.mark.e2e

L4, L7 = "demo", "tapwp"
DENY = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: demo}
spec:
  selector: {matchLabels: {app: blocked}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/default"]}}]}]
"""
MANIFESTS = wl.manifests(
    wl.enrolled_namespace(L4),
    wl.echo_deployment(L4, node="node-2"),
    wl.service(L4, "echo", {"app": "echo"}),
    wl.echo_deployment(L4, "blocked", node="node-2"),
    wl.service(L4, "blocked", {"app": "blocked"}),
    wl.client_pod(L4),
    wl.enrolled_namespace(L7),
    wl.echo_deployment(L7, node="node-2"),
    wl.service(L7, "echo", {"app": "echo"}),
    wl.client_pod(L7),
    DENY,
)

# Run in a client pod: one GET to host:port/path on a new connection, closed; the status and
# the unix time the connection was closed (or the error).
ONE_GET = textwrap.dedent("""
    import http.client, json, sys, time
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    try:
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        print(json.dumps({"status": resp.status, "closed": time.time()}))
    except OSError as err:
        print(json.dumps({"error": repr(err), "closed": time.time()}))
""")

# Run in a client pod: hold one connection to host:port open for `seconds`, then close it.
HOLD = textwrap.dedent("""
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    s.recv(65536)
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
    s.close()
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("tap")
    with wl.running_lab(f"weft-b-{RUN_ID}", MANIFESTS, workdir) as lab:
        wl.apply_waypoint(lab, L7)
        yield lab


def one_get(lab: Lab, ns: str, host: str, port: int = 80, path: str = "/") -> dict[str, Any]:
    result: dict[str, Any] = wl.in_client(lab, ns, ONE_GET, host, str(port), path)
    return result


def test_weftctl_tap_sees_a_connection_within_a_second(lab: Lab) -> None:
    tap = subprocess.Popen(
        [*WEFTCTL, "tap", "--lab", lab.name, "-n", L4, "--pod", "client", "-o", "json",
         "--count", "1", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert tap.stderr is not None
        started = tap.stderr.readline()  # "# tapping ...": every source said hello
        assert started.startswith("# tapping ") and "ztunnel node-2" in started, started
        got = one_get(lab, L4, "echo")
        assert got.get("status") == 200, got
        out, err = tap.communicate(timeout=60)
    finally:
        if tap.poll() is None:
            tap.kill()
            tap.wait(10)
    assert tap.returncode == 0, err
    (line,) = out.splitlines()
    event = json.loads(line)
    assert event["type"] == "event" and event["kind"] == "connection"
    assert event["verdict"] == "allow" and event["security"] == "mutual_tls"
    assert event["source_workload"] == "client" and event["source_namespace"] == L4
    assert event["source_principal"] == "spiffe://cluster.local/ns/demo/sa/default"
    assert event["destination_workload"].startswith("echo-")
    assert event["bytes_sent"] > 0 and event["bytes_received"] > 0
    # the bound: seen within a second of the connection's end
    lag = event["time"] - got["closed"]
    print(f"tap: the event is {lag * 1000:.1f} ms from the client's close")
    assert abs(lag) < 1.0, f"the event is {lag:.3f} s from the connection's end"


def test_a_denied_connection_carries_its_policy(lab: Lab) -> None:
    async def main() -> dict[str, dict[str, Any]]:
        async with LabTap(lab.name, TapFilter(namespace=L4, verdict="deny")) as tap:
            got = await asyncio.to_thread(one_get, lab, L4, "blocked")
            assert "error" in got, got  # reset: the policy denied it
            events = aiter(tap)  # both ends report it, in either order
            first = await asyncio.wait_for(anext(events), 20)
            second = await asyncio.wait_for(anext(events), 20)
            return {e["reporter"]: e for e in (first, second)}

    by_reporter = asyncio.run(main())
    destination, source = by_reporter["destination"], by_reporter["source"]
    assert destination["policy"] == "demo/no-client"
    assert destination["destination_workload"].startswith("blocked-")
    # the source's ztunnel is told only "denied" (which policy stays with the destination)
    assert source["policy"] == "" and source["reason"].startswith("403")
    assert source["source_workload"] == "client"


def test_a_request_through_the_waypoint_has_its_response_code(lab: Lab) -> None:
    async def main() -> tuple[list[str], dict[str, Any]]:
        async with LabTap(lab.name, TapFilter(namespace=L7)) as tap:
            got = await asyncio.to_thread(one_get, lab, L7, "echo", 80, "/status/418")
            assert got.get("status") == 418, got
            events = aiter(tap)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                event = await asyncio.wait_for(anext(events), deadline - time.monotonic())
                if event["kind"] == "request":
                    return tap.sources, event
        raise AssertionError("no request event")

    sources, event = asyncio.run(main())
    assert any(s.startswith(f"waypoint {L7}/waypoint-") for s in sources), sources
    assert (event["component"], event["reporter"]) == ("waypoint", "waypoint")
    assert event["node"] in ("node-1", "node-2")  # the replica's, from NODE_NAME
    assert event["response_code"] == 418 and event["path"] == "/status/418"
    assert event["method"] == "GET" and event["verdict"] == "allow"
    assert event["source_principal"] == f"spiffe://cluster.local/ns/{L7}/sa/default"
    assert event["destination_service"] == f"echo.{L7}.svc.cluster.local"


def test_the_seventeenth_tap_on_a_ztunnel_is_refused(lab: Lab) -> None:
    sock = LabPaths.for_lab(lab.name).ztunnel_socket("node-1")
    source = TapSource("ztunnel node-1", "ztunnel", socket=sock)

    def subscribers() -> int:
        return int(asyncio.run(get_json(sock, "/config_dump"))["tap"]["subscribers"])

    def released() -> None:  # the earlier tests' taps (gone clients are let go within 1 s)
        deadline = time.monotonic() + 10
        while subscribers() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert subscribers() == 0

    released()

    async def main() -> str:
        writers = []
        try:
            for _ in range(MAX_SUBSCRIBERS):
                writers.append((await open_tap(source, TapFilter()))[1])
            with pytest.raises(TapError) as refused:
                await open_tap(source, TapFilter())
            return str(refused.value)
        finally:
            for w in writers:
                w.close()

    assert "refused the tap (429): this ztunnel already serves 16 taps" in asyncio.run(main())
    released()  # the closed taps' places are freed


def test_ztunnel_config_services_policies_and_connections(lab: Lab) -> None:
    def config(what: str, node: str) -> Any:
        out = weftctl("ztunnel-config", what, "--lab", lab.name, "--node", node, "-o", "json")
        return json.loads(out.stdout)

    services = {f"{s['namespace']}/{s['name']}": s for s in config("services", "node-1")}
    echo = services[f"{L7}/echo"]
    assert echo["waypoint"] == f"{L7}/waypoint" and echo["ports"][0]["port"] == 80
    assert [e["ready"] for e in echo["endpoints"]] == [True]
    policies = {p["name"]: p for p in config("policies", "node-2")}
    assert policies["no-client"]["action"] == "DENY"
    assert policies["no-client"]["scope"] == "workloads: app=blocked"
    table = weftctl("ztunnel-config", "policies", "--lab", lab.name, "--node", "node-2").stdout
    assert "no-client" in table and "AuthorizationPolicy" in table

    held = subprocess.Popen(
        [*WEFTCTL, "lab", "--name", lab.name, "exec", "client", "-n", L4, "--",
         "python3", "-c", HOLD, "echo", "80", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:  # (lab exec hands the pod's output over at its end: poll while it holds)
        deadline = time.monotonic() + 8
        while True:
            outbound = config("connections", "node-1")
            inbound = config("connections", "node-2")
            if (outbound["total"] and inbound["total"]) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    finally:
        held_out, held_err = held.communicate(timeout=30)
    outs = [c for c in outbound["connections"] if c["source"] == f"{L4}/client"]
    assert len(outs) == 1, (outbound, inbound, held_out, held_err)
    out_conn = outs[0]
    assert out_conn["direction"] == "outbound" and out_conn["security"] == "mutual_tls"
    assert out_conn["destination"].startswith(f"{L4}/echo-") and out_conn["bytes_sent"] > 0
    assert out_conn["via"]  # node-2's address
    (in_conn,) = [c for c in inbound["connections"] if c["source"] == f"{L4}/client"]
    assert in_conn["source_principal"] == "spiffe://cluster.local/ns/demo/sa/default"
    assert in_conn["bytes_received"] > 0 and in_conn["age_s"] >= 0


def test_ctrl_c_stops_weftctl_tap_cleanly(lab: Lab) -> None:
    tap = subprocess.Popen(
        [*WEFTCTL, "tap", "--lab", lab.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tap.stderr is not None
        assert tap.stderr.readline().startswith("# tapping ")
        tap.send_signal(signal.SIGINT)
        _out, err = tap.communicate(timeout=10)
    finally:
        if tap.poll() is None:
            tap.kill()
            tap.wait(10)
    assert tap.returncode == 0, err
    assert "Traceback" not in err
