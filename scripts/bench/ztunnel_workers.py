"""ztunnel with 1 worker process per node against 2 (not a test).

    .venv/bin/python scripts/bench/ztunnel_workers.py [--seconds 5] [--rounds 3]
    .venv/bin/python scripts/bench/ztunnel_workers.py --smoke   # tiny counts, for CI

A two-node lab, enrolled pods: a client on node-1, an iperf3 server and the HTTP echo on
node-2, so every byte goes through both ztunnels. For each worker count (switched with
`weftctl ztunnel restart --workers N` on both nodes, which drops no connection): bulk
throughput with 1, 4 and 16 parallel iperf3 streams, and requests/s with 64 concurrent
kept-alive connections (the load client, each connection waiting for its answer). Worker
counts take turns round after round and each figure is the median over the rounds; reported
with the ratios workers=2 / workers=1. On a 2-core machine that also runs the pods, iperf3
and the load client, a ratio near 1 says the proxy was not the bottleneck, not that workers
do not scale. Every loop is bounded; the lab is removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _benchlib
import click
from _benchlib import medians

LAB = f"weft-bench-zw-{os.getpid() % 10000}"
MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh}
spec:
  nodeName: node-1
  containers: [{name: main, command: ["sleep", "7200"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: mesh}
spec:
  nodeName: node-2
  containers:
  - {name: iperf, command: ["iperf3", "-s", "-p", "5201"]}
  - {name: web, image: weft/http-echo, args: ["--port", "8080"]}
"""
CONCURRENCY = 64


def lab(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return _benchlib.lab(LAB, *args, check=check, timeout=timeout)


def in_client(*cmd: str, timeout: float = 120) -> str:
    return lab("exec", "client", "-n", "mesh", "--", *cmd, timeout=timeout).stdout


def set_workers(workers: int) -> None:
    for node in ("node-1", "node-2"):
        subprocess.run(
            [sys.executable, "-m", "weftctl.main", "ztunnel", "restart", "--lab", LAB,
             "--node", node, "--workers", str(workers), "--drain-timeout", "5"],
            capture_output=True, text=True, check=True, timeout=200,
        )  # fmt: skip


def throughput(host: str, streams: int, seconds: int) -> float:
    out = in_client(
        "iperf3", "-c", host, "-p", "5201", "-P", str(streams), "-t", str(seconds), "-J",
        timeout=seconds + 60,
    )  # fmt: skip
    return round(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9, 3)


def requests_per_s(url: str, count: int) -> tuple[float, int]:
    report = json.loads(
        in_client(
            sys.executable, "-m", "sample_apps.load_client", url, "--count", str(count),
            "--concurrency", str(CONCURRENCY), "--duration", "120", "-o", "json",
            timeout=180,
        )
    )  # fmt: skip
    return round(report["rate_achieved"], 1), int(report["requests"]["failed"])


@click.command()
@click.option("--seconds", default=5, show_default=True, help="Each iperf3 run.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds; medians kept.")
@click.option("--requests", default=6000, show_default=True, help="For requests/s.")
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(seconds: int, rounds: int, requests: int, smoke: bool) -> None:
    streams = (1, 4, 16)
    if smoke:
        seconds, rounds, requests, streams = 1, 1, 200, (1, 4)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        manifest = Path(tmp) / "bench.yaml"
        manifest.write_text(MANIFEST)
        try:
            lab("up", "--nodes", "2", "--manifests", str(manifest), "--no-prometheus")
            status = json.loads(lab("status", "-o", "json").stdout)
            click.echo(f"lab {LAB} (id {status['id']}) up", err=True)
            server = next(p for p in status["pods"] if p["name"] == "server")["ip"]
            rounds_seen: dict[str, list[dict[str, Any]]] = {"workers_1": [], "workers_2": []}
            for _ in range(rounds):
                for workers in (1, 2):
                    set_workers(workers)
                    rps, failed = requests_per_s(f"http://{server}:8080/", requests)
                    rounds_seen[f"workers_{workers}"].append(
                        {
                            **{
                                f"gbps_{n}_streams": throughput(server, n, seconds) for n in streams
                            },
                            f"requests_per_s_{CONCURRENCY}_conns": rps,
                            "failed": failed,
                        }
                    )
            results.update(medians(rounds_seen))
        finally:
            lab("down", check=False)
    one, two = results["workers_1"], results["workers_2"]
    results["ratios_2_vs_1"] = {
        key: round(two[key] / one[key], 3) if one[key] else None
        for key in one
        if key not in ("rounds", "failed")
    }
    results["cores"] = os.cpu_count()
    click.echo(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
