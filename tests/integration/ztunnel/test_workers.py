"""ztunnel with two worker processes per node (`lab up --ztunnel-workers 2`): both workers
take connections on their own SO_REUSEPORT sockets, one certificate request per identity per
node serves every worker, the admin endpoints answer for the whole ztunnel, a killed worker
is replaced on its sockets, and a restart (handing every worker's sockets over, to one
process and back to two) drops no connection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.state import LabPaths
from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.e2e.test_ztunnel_restart import LOAD, MANIFESTS, NS, PLAIN, dump, restart
from tests.integration.lab.labtools import WEFTCTL, Lab

CLIENT = "spiffe://cluster.local/ns/ztr/sa/default"

# Run in the client pod: `count` new connections to host:port in a row, each echoing a line;
# how many were answered and how each failure failed.
ROUNDS = """
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok, errors = 0, {}
for i in range(count):
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"round %d" % i)
            ok += s.recv(64) == b"round %d" % i
    except OSError as err:
        errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
print(json.dumps({"ok": ok, "errors": errors}))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("ztunnel-workers")
    up = ["--no-prometheus", "--ztunnel-workers", "2"]
    with wl.running_lab(f"weft-zw-{RUN_ID}", MANIFESTS, workdir, up) as lab:
        yield lab


def rounds(lab: Lab, count: int, ns: str = NS) -> dict[str, Any]:
    got: dict[str, Any] = wl.in_client(lab, ns, ROUNDS, f"tcp-echo.{NS}", "9000", str(count))
    return got


def test_both_workers_take_connections_on_their_own_sockets(lab: Lab) -> None:
    got = rounds(lab, 40)
    assert got == {"ok": 40, "errors": {}}
    # plaintext from an unenrolled pod: node-2's one 15006 socket, which both workers accept on
    assert rounds(lab, 20, PLAIN) == {"ok": 20, "errors": {}}
    for node in ("node-1", "node-2"):
        workers = dump(lab, node)["workers"]
        assert [w["index"] for w in workers] == [0, 1] and all(w["ready"] for w in workers)
        assert workers[0]["listeners"] == ["hbone/0", "outbound/0", "plaintext"]
        assert workers[1]["listeners"] == ["hbone/1", "outbound/1", "plaintext"]
        assert workers[0]["pid"] != workers[1]["pid"]
    # 40 source ports hash over node-1's two 15001 sockets: each worker dialled node-2 with
    # its own pool (the chance that one took none is 2^-39)
    pool = dump(lab, "node-1")["pool"]
    assert {p["worker"] for p in pool} == {0, 1}, pool


def test_one_certificate_request_per_identity_serves_every_worker(lab: Lab) -> None:
    rounds(lab, 10)
    data = dump(lab, "node-1")
    assert CLIENT in {c["identity"] for c in data["certificates"]}
    for worker in data["workers"]:
        assert CLIENT in worker["certificates"], worker
    log = LabPaths.for_lab(lab.name).logs / "node-1-ztunnel.log"
    issued = [
        line for line in log.read_text().splitlines() if '"cert.issued"' in line and CLIENT in line
    ]
    assert len(issued) == 1, issued  # the parent's one CSR, not one per worker


def test_the_admin_endpoints_answer_for_the_whole_ztunnel(lab: Lab) -> None:
    from tests.integration.lab.labtools import weftctl

    out = weftctl("ztunnel-config", "connections", "--lab", lab.name, "--node", "node-2",
                  "-o", "json").stdout  # fmt: skip
    assert json.loads(out)["total"] == 0
    metrics = subprocess.run(
        ["curl", "-s", "--unix-socket", str(LabPaths.for_lab(lab.name).ztunnel_socket("node-2")),
         "http://x/metrics"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    before = opened(metrics)
    rounds(lab, 10)
    metrics = subprocess.run(
        ["curl", "-s", "--unix-socket", str(LabPaths.for_lab(lab.name).ztunnel_socket("node-2")),
         "http://x/metrics"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    assert opened(metrics) - before == 10  # both workers' counts, merged


def opened(metrics: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
        and 'reporter="destination"' in line
    )


def test_a_killed_worker_is_replaced_on_its_sockets(lab: Lab) -> None:
    before = dump(lab, "node-1")["workers"][0]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = dump(lab, "node-1")["workers"][0]
        if now["pid"] != before["pid"] and now["ready"]:
            break
        time.sleep(0.2)
    assert now["restarts"] == before["restarts"] + 1 and now["listeners"] == before["listeners"]
    assert rounds(lab, 20) == {"ok": 20, "errors": {}}


def test_restarts_across_worker_counts_drop_no_connection(lab: Lab, tmp_path: Path) -> None:
    stop_file = tmp_path / "stop"
    load = subprocess.Popen(
        [*WEFTCTL, "lab", "--name", lab.name, "exec", "client", "-n", NS, "--",
         "python3", "-c", LOAD, f"tcp-echo.{NS}", "9000", str(stop_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert load.stdout is not None and load.stdout.readline().strip() == "started"
        time.sleep(2)
        for node, workers in (("node-2", "2"), ("node-1", "1"), ("node-1", "2")):
            result = restart(lab, node, "--drain-timeout", "120", "--workers", workers)
            assert result["workers"] == int(workers), result
            time.sleep(3)
    finally:
        stop_file.touch()
        out, err = load.communicate(timeout=120)
    lines = out.strip().splitlines()
    assert lines, err
    stats = json.loads(lines[-1])
    print(f"across restarts 2->2, 2->1, 1->2 workers: {stats}")
    assert stats["resets"] == 0 and stats["refused"] == 0, stats
    assert stats["timeouts"] == 0 and stats["eof"] == 0 and stats["other"] == [], stats
    assert stats["mismatch"] == 0 and stats["long_ok"] == 50, stats
    assert stats["new_ok"] == stats["new_started"] > 150, stats
    # node-1 took over node-1's sockets twice: both workers serve the 2-socket groups again
    assert [w["listeners"] for w in dump(lab, "node-1")["workers"]] == [
        ["hbone/0", "outbound/0", "plaintext"],
        ["hbone/1", "outbound/1", "plaintext"],
    ]


def test_tap_sees_the_workers_connections(lab: Lab) -> None:
    tap = subprocess.Popen(
        [*WEFTCTL, "tap", "--lab", lab.name, "-n", NS, "--pod", "client", "-o", "json",
         "--count", "2", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert tap.stderr is not None
        started = tap.stderr.readline()  # "# tapping ...": every source said hello
        assert started.startswith("# tapping "), started
        assert rounds(lab, 1) == {"ok": 1, "errors": {}}
        out, err = tap.communicate(timeout=60)
    finally:
        if tap.poll() is None:
            tap.kill()
            tap.wait(10)
    assert tap.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    # the connection's end, from the source side (node-1's worker) and the destination side
    assert {e["reporter"] for e in events} == {"source", "destination"}, events
    assert all(e["source_workload"] == "client" and e["bytes_sent"] > 0 for e in events)
