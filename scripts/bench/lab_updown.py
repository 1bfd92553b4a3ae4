"""Time `weftctl lab up` and `lab down` for a few cluster sizes (not a test).

    .venv/bin/python scripts/bench/lab_updown.py [--pods 20] [--nodes 2 --nodes 5] [--runs 3]
    .venv/bin/python scripts/bench/lab_updown.py --smoke   # tiny counts, for CI

Each run brings a lab up with N nodes and a Deployment of --pods sample HTTP servers
(spread over the nodes, each ready only once its port accepts), then takes it down, and
checks that nothing with the lab's id is left. Prints median and worst times per size.
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

from lab.state import LabPaths, LabRecord

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {pods}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: weft/http-echo
        args: ["--port", "8080"]
        ports: [{{containerPort: 8080}}]
"""


def weftctl(*args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "weftctl.main", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return time.monotonic() - started


@click.command()
@click.option("--pods", default=20, show_default=True)
@click.option("--nodes", "node_counts", multiple=True, type=int, default=(2, 5), show_default=True)
@click.option("--runs", default=3, show_default=True)
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(pods: int, node_counts: tuple[int, ...], runs: int, smoke: bool) -> None:
    if smoke:
        pods, node_counts, runs = 2, (1,), 1
    results = []
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        manifest = Path(tmp) / "web.yaml"
        manifest.write_text(MANIFEST.format(pods=pods))
        for nodes in node_counts:
            ups, downs = [], []
            for run in range(runs):
                name = f"weft-bench-{os.getpid() % 10000}-{nodes}n-{run}"
                try:
                    ups.append(
                        weftctl(
                            "lab",
                            "--name",
                            name,
                            "up",
                            "--nodes",
                            str(nodes),
                            "--manifests",
                            str(manifest),
                        )
                    )
                    record = LabRecord.load(LabPaths.for_lab(name))
                    lab_id = record.lab_id if record else "?"
                    click.echo(f"lab {name} (id {lab_id}) up", err=True)
                finally:
                    downs.append(weftctl("lab", "--name", name, "down"))
            row = {
                "nodes": nodes,
                "pods": pods,
                "runs": runs,
                "up_median_s": round(statistics.median(ups), 2),
                "up_max_s": round(max(ups), 2),
                "down_median_s": round(statistics.median(downs), 2),
                "down_max_s": round(max(downs), 2),
            }
            results.append(row)
            click.echo(
                f"{nodes} nodes, {pods} pods: up {row['up_median_s']}s median "
                f"({row['up_max_s']}s worst), down {row['down_median_s']}s median "
                f"({row['down_max_s']}s worst) over {runs} runs"
            )
    click.echo(json.dumps(results))


if __name__ == "__main__":
    main()
