"""Overhead of eBPF capture alone (not a test), measured in one run.

    .venv/bin/python scripts/bench/capture_overhead.py [--connections 3000] [--rounds 3]
    .venv/bin/python scripts/bench/capture_overhead.py --smoke   # tiny counts, for CI

A one-node lab with one pod and no ztunnel (`lab up --no-ztunnel`): in its place, a listener
in the node's namespace (in the node's system cgroup, like ztunnel) accepts and closes
connections on 15001, so capture is measured without a proxy. From the pod, a client makes
--connections sequential connects (connect, read EOF, close) and times each:
  - detached: the pod is not enrolled, it connects to the listener directly (169.254.1.1:15001);
  - attached: the pod is enrolled, it connects to another pod's address and the programs send
    it to the same listener (connect4 rewrite, sockops re-keying, original-destination maps).
Rounds alternate so drift hits both alike. Reported: connections/s and p50/p99 connect
latency for each, and the ratios attached/detached. Bounded by count; stops by itself.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from lab.cgroups import cgroup2_mount
from lab.state import LabPaths

ROOT = Path(__file__).resolve().parents[2]

CLIENT = r"""
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lat = []
start = time.perf_counter()
for _ in range(count):
    t = time.perf_counter()
    s = socket.create_connection((host, port), timeout=5)
    lat.append(time.perf_counter() - t)
    s.recv(1)
    s.close()
total = time.perf_counter() - start
lat.sort()
print(json.dumps({"rate": count / total, "p50_us": lat[len(lat) // 2] * 1e6,
                  "p99_us": lat[int(len(lat) * 0.99)] * 1e6}))
"""

LISTENER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", 15001))
except OSError as err:
    print(f"cannot listen on 15001 in the node: {err}", flush=True)
    sys.exit(1)
s.listen(1024)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {{name: bench, labels: {labels}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: bench}}
spec:
  containers: [{{name: main, command: ["sleep", "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: target, namespace: bench}}
spec:
  containers: [{{name: main, command: ["sleep", "3600"]}}]
"""


def weftctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weftctl.main", "lab", "--name", LAB, *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=300,
    )


LAB = f"weft-bench-cap-{os.getpid() % 10000}"


def set_enrolled(folder: Path, enrolled: bool) -> None:
    labels = "{weft.dev/dataplane-mode: ambient}" if enrolled else "{}"
    path = folder / "bench.yaml"
    path.write_text(MANIFEST.format(labels=labels))
    weftctl("apply", "-f", str(path))


def wait_agent(enrolled: bool) -> None:
    sock = LabPaths.for_lab(LAB).agent_socket("node-1")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["curl", "-s", "--unix-socket", str(sock), "http://agent/debug/status"],
            capture_output=True,
            text=True,
        )
        if out.stdout and (("bench/client" in out.stdout) == enrolled):
            return
        time.sleep(0.2)
    raise SystemExit("the agent did not follow the label change")


@click.command()
@click.option("--connections", default=3000, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(connections: int, rounds: int, smoke: bool) -> None:
    if smoke:
        connections, rounds = 20, 1
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        folder = Path(tmp)
        (folder / "bench.yaml").write_text(MANIFEST.format(labels="{}"))
        listener = None
        try:
            # No ztunnel: the bench's own listener takes its port (15001).
            weftctl("up", "--nodes", "1", "--no-ztunnel", "--manifests", str(folder / "bench.yaml"))
            status = json.loads(weftctl("status", "-o", "json").stdout)
            click.echo(f"lab {LAB} (id {status['id']}) up", err=True)
            node_ns = status["nodes"][0]["netns"]
            # In the lab's cgroup tree, so `lab down` removes it (and kills what is left in it).
            cgroup = cgroup2_mount() / f"weft-{status['id']}/node-1/system/bench"
            cgroup.mkdir(parents=True, exist_ok=True)
            listener = subprocess.Popen(
                [
                    "sh",
                    "-c",
                    'echo $$ > "$0/cgroup.procs" && exec "$@"',
                    str(cgroup),
                    "nsenter",
                    f"--net=/run/netns/{node_ns}",
                    "--",
                    sys.executable,
                    "-c",
                    LISTENER,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert listener.stdout is not None
            said = listener.stdout.readline().strip()
            if said != "listening":
                raise SystemExit(f"the bench listener did not start: {said or 'no output'}")
            target_ip = next(p["ip"] for p in status["pods"] if p["name"] == "target")
            results: dict[str, list[dict[str, float]]] = {"detached": [], "attached": []}
            for _ in range(rounds):
                for mode in ("detached", "attached"):
                    set_enrolled(folder, mode == "attached")
                    wait_agent(mode == "attached")
                    host = "169.254.1.1" if mode == "detached" else target_ip
                    out = weftctl(
                        "exec",
                        "client",
                        "-n",
                        "bench",
                        "--",
                        sys.executable,
                        "-c",
                        CLIENT,
                        host,
                        "15001" if mode == "detached" else "9",
                        str(connections),
                    ).stdout
                    results[mode].append(json.loads(out))
            summary = {}
            for mode, runs in results.items():
                summary[mode] = {
                    k: round(statistics.median(r[k] for r in runs), 1)
                    for k in ("rate", "p50_us", "p99_us")
                }
            report = {
                "connections_per_round": connections,
                "rounds": rounds,
                **summary,
                "rate_ratio_attached_vs_detached": round(
                    summary["attached"]["rate"] / summary["detached"]["rate"], 3
                ),
                "p99_ratio_attached_vs_detached": round(
                    summary["attached"]["p99_us"] / summary["detached"]["p99_us"], 3
                ),
                "p50_ratio_attached_vs_detached": round(
                    summary["attached"]["p50_us"] / summary["detached"]["p50_us"], 3
                ),
            }
            click.echo(json.dumps(report, indent=2))
        finally:
            if listener is not None:
                listener.terminate()
                try:
                    listener.wait(5)
                except subprocess.TimeoutExpired:
                    listener.kill()
                    listener.wait()
            weftctl("down", check=False)


if __name__ == "__main__":
    main()
