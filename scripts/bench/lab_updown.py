"""Time `weftctl lab up` and `lab down` for a few cluster sizes (not a test).

    .venv/bin/python scripts/bench/lab_updown.py [--pods 20] [--nodes 2 --nodes 5] [--runs 3]
    .venv/bin/python scripts/bench/lab_updown.py --bpf-cache keep --bpf-cache cold \
        --bpf-cache per-agent   # warm cache, one compile per lab, every agent compiles
    .venv/bin/python scripts/bench/lab_updown.py --smoke   # tiny counts, for CI

Each run brings a lab up with N nodes and a Deployment of --pods sample HTTP servers
(spread over the nodes, each ready only once its port accepts), then takes it down, and
checks that nothing with the lab's id is left. Runs of the sizes are interleaved (2, 5, 2,
5, ...) so that a busy spell of the machine does not land on one size. Prints median and
worst times per size, and per node agent the time from its start to ready (from the lab's
daemon log) and how many agents compiled the eBPF programs rather than loading them from
the compile cache (node_agent/bpfcache.py; `--bpf-cache` sets it up before each run).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import click

from lab.state import LabPaths, LabRecord

# node_agent/bpfcache.py's default folder and the event an agent logs when it compiled.
BPF_CACHE_DIR = Path("/var/cache/weft/bpf")
COMPILED_EVENT = "bpf_cache.compiled"

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


def _events(path: Path) -> list[dict[str, object]]:
    events = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _seconds(timestamp: object) -> float:
    return datetime.fromisoformat(str(timestamp).replace("Z", "+00:00")).timestamp()


def agent_times(paths: LabPaths) -> list[float]:
    """Per node agent, seconds from its process start to its ready (the daemon's log)."""
    started: dict[str, float] = {}
    ready: dict[str, float] = {}
    for e in _events(paths.daemon_log):
        name = str(e.get("name", ""))
        if e.get("event") == "container.started" and name.endswith("/node-agent"):
            started.setdefault(name.split("/")[0], _seconds(e["timestamp"]))
        elif e.get("event") == "node_agent.ready":
            ready.setdefault(str(e.get("node")), _seconds(e["timestamp"]))
    return [ready[n] - started[n] for n in started if n in ready]


def program_times(paths: LabPaths) -> list[float]:
    """Per node agent, seconds its programs took to compile or load, and attach (the
    `programs.attached` event; agents from before the compile cache do not log it)."""
    return [
        float(str(e["seconds"]))
        for log in paths.logs.glob("*-node-agent.log")
        for e in _events(log)[:200]
        if e.get("event") == "programs.attached" and "seconds" in e
    ][:1000]


def compiles(paths: LabPaths) -> int:
    """How many of the lab's node agents compiled programs (0: all came from the cache)."""
    return sum(
        any(e.get("event") == COMPILED_EVENT for e in _events(log))
        for log in paths.logs.glob("*-node-agent.log")
    )


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def prepare_cache(mode: str) -> None:
    """keep: as it is; cold: emptied, so one agent of the lab compiles; per-agent: a folder
    others may write, which node_agent/bpfcache.py refuses to use, so every agent compiles
    for itself as all did before the cache (the old behaviour, for an interleaved A/B)."""
    if mode == "cold":
        shutil.rmtree(BPF_CACHE_DIR, ignore_errors=True)
    BPF_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    BPF_CACHE_DIR.chmod(0o777 if mode == "per-agent" else 0o700)


@click.command()
@click.option("--pods", default=20, show_default=True)
@click.option("--nodes", "node_counts", multiple=True, type=int, default=(2, 5), show_default=True)
@click.option("--runs", default=3, show_default=True)
@click.option(
    "--bpf-cache",
    "modes",
    type=click.Choice(["keep", "cold", "per-agent"]),
    multiple=True,
    default=("keep",),
    show_default=True,
    help=f"How {BPF_CACHE_DIR} is before each run (repeatable: the modes are interleaved). "
    "cold: emptied, one agent per lab compiles; per-agent: unusable, every agent compiles.",
)
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(
    pods: int, node_counts: tuple[int, ...], runs: int, modes: tuple[str, ...], smoke: bool
) -> None:
    if smoke:
        pods, node_counts, runs, modes = 2, (1,), 1, ("keep",)
    cases = [(mode, nodes) for mode in modes for nodes in node_counts]
    ups: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    downs: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    agents: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    compiled: dict[tuple[str, int], list[int]] = {c: [] for c in cases}
    loads: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        manifest = Path(tmp) / "web.yaml"
        manifest.write_text(MANIFEST.format(pods=pods))
        try:
            for run in range(runs):
                for case in cases:
                    mode, nodes = case
                    prepare_cache(mode)
                    name = f"weft-bench-{os.getpid() % 10000}-{nodes}n-{run}"
                    paths = LabPaths.for_lab(name)
                    try:
                        ups[case].append(
                            weftctl(
                                "lab",
                                "--name",
                                name,
                                "up",
                                "--nodes",
                                str(nodes),
                                "--manifests",
                                str(manifest),
                                "--no-prometheus",
                            )
                        )
                        record = LabRecord.load(paths)
                        lab_id = record.lab_id if record else "?"
                        agents[case].extend(agent_times(paths))
                        compiled[case].append(compiles(paths))
                        loads[case].extend(program_times(paths))
                        click.echo(
                            f"lab {name} (id {lab_id}) up in {ups[case][-1]:.2f}s "
                            f"(cache {mode}), {compiled[case][-1]} agent(s) compiled",
                            err=True,
                        )
                    finally:
                        downs[case].append(weftctl("lab", "--name", name, "down"))
        finally:
            prepare_cache("keep")
    results = []
    for case in cases:
        mode, nodes = case
        row = {
            "nodes": nodes,
            "pods": pods,
            "runs": runs,
            "bpf_cache": mode,
            "up_s": [round(u, 2) for u in ups[case]],
            "up_median_s": _median(ups[case]),
            "up_max_s": round(max(ups[case]), 2),
            "down_median_s": _median(downs[case]),
            "down_max_s": round(max(downs[case]), 2),
            "agent_ready_median_s": _median(agents[case]),
            "agent_ready_max_s": round(max(agents[case], default=float("nan")), 2),
            "agents_compiled_per_lab": compiled[case],
            "agent_programs_median_s": _median(loads[case]),
            "agent_programs_max_s": round(max(loads[case], default=float("nan")), 3),
        }
        results.append(row)
        click.echo(
            f"{nodes} nodes, {pods} pods, cache {mode}: up {row['up_median_s']}s median "
            f"({row['up_max_s']}s worst), down {row['down_median_s']}s median "
            f"({row['down_max_s']}s worst) over {runs} runs; node agent start to ready "
            f"{row['agent_ready_median_s']}s median ({row['agent_ready_max_s']}s worst); "
            f"agents that compiled, per lab: {compiled[case]}; programs compiled or "
            f"loaded, and attached, per agent {row['agent_programs_median_s']}s median "
            f"({row['agent_programs_max_s']}s worst)"
        )
    click.echo(json.dumps(results))


if __name__ == "__main__":
    main()
