"""Controller at scale (not a test): 10,000 pods, 1,000 services, 100 subscribed nodes.

    .venv/bin/python scripts/bench/controller_scale.py [--pods 10000] [--services 1000]
        [--nodes 100] [--changes 20] [--workers 2] [--csrs 500]
    .venv/bin/python scripts/bench/controller_scale.py --smoke   # tiny counts, for CI

A real controller process watches a folder of Kubernetes YAML (one file per pod and per
service, as the lab writes them). 100 real node clients (mutual TLS, the same ConfigClient
the node agent uses) run in --workers processes. Measured:
  - time to first full sync of every node (controller start -> last node has the snapshot);
  - one pod's labels changed --changes times: time from the file write to each node holding
    the new version (p50/p99 over all nodes and changes), and bytes pushed per node per change
    (the controller's delta push bytes / delta pushes);
  - controller peak RSS (VmHWM), and its RSS once the state is built (before any node
    subscribes) and once every node holds it;
  - controller CPU seconds (user+system from /proc): to build the state from the folder (until
    `weft_controller_state_resources` counts every pod and service), then to push it to every
    node (build -> last node synced), then per pod change pushed to every node (also net of
    its idle CPU, measured over 6 s with nothing changing); and its mean vCPU over the changes;
  - CSR signings per second through the Certificate RPC (32 in flight), and, as the
    reference peer, the same signing done in-process with no RPC (ratio reported).
Targets (issue 4): p99 propagation < 1 s, single-pod delta < 2 KB per node, RSS < 1 GiB.
Istio publishes istiod at 1 vCPU and 1.5 GB for 1000 services and 2000 pods (issue 16): the
report gives RSS and CPU as ratios to those (at 5x the pods by default).
Everything is on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import cpu_seconds  # noqa: E402

NAMESPACES = 20
ISTIOD_VCPU = 1.0  # Istio's published istiod figures at 1000 services, 2000 pods
ISTIOD_MIB = 1.5 * 1024
IDLE_WINDOW_S = 6.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_doc(
    i: int, nodes: int, services_per_ns: int, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    ns = f"ns-{i % NAMESPACES}"
    app = f"svc-{(i // NAMESPACES) % services_per_ns}"
    node = i % nodes
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{i}",
            "namespace": ns,
            "uid": f"uid-{i}",
            "labels": {"app": app, **(extra or {})},
        },
        "spec": {
            "nodeName": f"node-{node + 1}",
            "serviceAccountName": app,
            "containers": [
                {
                    "name": "app",
                    "image": "weft/http-echo",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}",
            "hostIP": f"198.18.{node // 250}.{node % 250 + 1}",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def vip(index: int) -> str:
    return f"10.96.{index // 250}.{index % 250 + 1}"


def write(folder: Path, name: str, doc: dict[str, Any]) -> None:
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, folder / name)


def build_source(folder: Path, pods: int, services: int, nodes: int) -> None:
    folder.mkdir(parents=True)
    per_ns = max(1, services // NAMESPACES)
    for n in range(NAMESPACES):
        write(
            folder,
            f"ns-{n}.yaml",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": f"ns-{n}", "labels": {"weft.dev/dataplane-mode": "ambient"}},
            },
        )
        for s in range(per_ns):
            write(
                folder,
                f"svc-{n}-{s}.yaml",
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": f"svc-{s}", "namespace": f"ns-{n}"},
                    "spec": {
                        "clusterIP": vip(n * per_ns + s),
                        "selector": {"app": f"svc-{s}"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                    },
                },
            )
            write(
                folder,
                f"sa-{n}-{s}.yaml",
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": f"svc-{s}", "namespace": f"ns-{n}"},
                },
            )
    for i in range(pods):
        write(folder, f"pod-{i}.yaml", pod_doc(i, nodes, per_ns))


# --- node clients, in worker processes ------------------------------------------------------


def worker(
    nodes: list[str],
    target: str,
    creds: str,
    results: Any,
    stop: Any,
    go: Any,
    csr_node: str | None,
    csrs: int,
) -> None:
    from meshcore.configclient import ConfigClient, NodeCredential
    from meshcore.logs import configure_logging

    configure_logging(json_output=True, level=40)

    async def main() -> None:
        received: dict[str, list[tuple[int, float]]] = {n: [] for n in nodes}
        clients = []
        for node in nodes:

            def record(applied: Any, node: str = node) -> None:
                received[node].append((applied.version, time.time()))

            c = ConfigClient(
                node, target, NodeCredential.load(Path(creds) / node), on_change=record
            )
            clients.append((c, asyncio.create_task(c.run())))
        for c, _ in clients:
            await c.synced.wait()
        results.put(("synced", time.time()))
        if csr_node is not None:
            while not go.is_set():
                await asyncio.sleep(0.05)
            results.put(("csr", await sign_many(clients, csr_node, csrs)))
        while not stop.is_set():
            await asyncio.sleep(0.1)
        results.put(("received", received))
        for c, t in clients:
            t.cancel()
            await c.close()

    asyncio.run(main())


async def sign_many(clients: list[Any], node: str, count: int) -> float:
    from meshcore.identity.certs import make_csr, new_private_key
    from meshcore.identity.spiffe import SpiffeId
    from meshcore.meshstate import Workload

    client = next(c for c, _ in clients if c.node == node)
    ids = sorted(
        {w.identity for w in client.state.values() if isinstance(w, Workload) and w.node == node}
    )
    csrs = [make_csr(new_private_key(), SpiffeId.parse(ids[i % len(ids)])) for i in range(count)]
    sem = asyncio.Semaphore(32)

    async def one(csr: bytes) -> None:
        async with sem:
            await client.certificate(csr)

    started = time.monotonic()
    await asyncio.gather(*(one(c) for c in csrs))
    return count / (time.monotonic() - started)


def in_process_signing_rate(state_dir: Path, count: int) -> float:
    from controller.ca import CertificateAuthority
    from meshcore.identity.certs import make_csr, new_private_key
    from meshcore.identity.spiffe import SpiffeId

    ca = CertificateAuthority.load_or_create(state_dir / "ca", "cluster.local")
    ident = SpiffeId.parse("spiffe://cluster.local/ns/ns-0/sa/svc-0")
    csrs = [make_csr(new_private_key(), ident) for _ in range(count)]
    started = time.monotonic()
    for csr in csrs:
        ca.sign_workload(csr, {ident})
    return count / (time.monotonic() - started)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def wait_built(port: int, resources: int, proc: subprocess.Popen[Any]) -> None:
    """Until the controller's state counts `resources` (every pod and service)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the controller exited {proc.returncode}")
        try:
            if metric(port, "weft_controller_state_resources") >= resources:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the controller did not build {resources} resources in 600s")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@click.command()
@click.option("--pods", default=10_000, show_default=True)
@click.option("--services", default=1_000, show_default=True)
@click.option("--nodes", default=100, show_default=True)
@click.option("--changes", default=20, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--csrs", default=500, show_default=True)
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(
    pods: int, services: int, nodes: int, changes: int, workers: int, csrs: int, smoke: bool
) -> None:
    if smoke:
        pods, services, nodes, changes, workers, csrs = 40, 20, 2, 2, 1, 8
    from controller.ca import CertificateAuthority
    from controller.main import write_node_credential
    from meshcore.logs import configure_logging

    configure_logging(json_output=True, level=40)
    tmp = Path(tempfile.mkdtemp(prefix="weft-bench-controller-"))
    click.echo(f"working in {tmp}", err=True)
    proc = None
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    go = ctx.Event()
    procs: list[Any] = []
    try:
        source, state, creds = tmp / "source", tmp / "state", tmp / "creds"
        t0 = time.monotonic()
        build_source(source, pods, services, nodes)
        click.echo(f"wrote {pods} pods, {services} services in {time.monotonic() - t0:.1f}s")
        ca = CertificateAuthority.load_or_create(state / "ca", "cluster.local")
        names = [f"node-{i + 1}" for i in range(nodes)]
        for n in names:
            write_node_credential(ca, n, creds / n)
        grpc_port, http_port = free_port(), free_port()
        started = time.time()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "run",
                "--source-dir",
                str(source),
                "--state-dir",
                str(state),
                "--grpc-listen",
                f"127.0.0.1:{grpc_port}",
                "--admin-addr",
                "",
                "--metrics-addr",
                f"127.0.0.1:{http_port}",
                "--readiness-addr",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        per_ns = max(1, services // NAMESPACES)
        wait_built(http_port, pods + per_ns * NAMESPACES, proc)
        built_s = time.time() - started
        cpu_built = cpu_seconds([proc.pid])
        rss_built = rss_kib(proc.pid)
        click.echo(f"state built in {built_s:.2f}s, {cpu_built:.2f} CPU s", err=True)
        results = ctx.Queue()
        shards = [names[i::workers] for i in range(workers)]
        procs += [
            ctx.Process(
                target=worker,
                args=(
                    shard,
                    f"127.0.0.1:{grpc_port}",
                    str(creds),
                    results,
                    stop,
                    go,
                    "node-1" if "node-1" in shard else None,
                    csrs,
                ),
            )
            for shard in shards
        ]
        for p in procs:
            p.start()
        synced = [results.get(timeout=600)[1] for _ in procs]
        first_sync = max(synced) - started
        cpu_synced = cpu_seconds([proc.pid])
        rss_synced = rss_kib(proc.pid)
        click.echo(f"first full sync of {nodes} nodes: {first_sync:.2f}s")
        go.set()  # CSRs only now: their CPU is not the push's, their message not a "synced"
        kind, csr_rate = results.get(timeout=600)
        assert kind == "csr", kind

        bytes_before = metric(http_port, 'weft_controller_push_bytes_total{type="delta"}')
        pushes_before = metric(http_port, 'pilot_xds_pushes_total{type="delta"}')
        # idle first: what the controller spends with nothing changing (the folder source
        # rescans its 10k files every 2 s), to tell it from what a change costs
        idle_start, idle_wall_start = cpu_seconds([proc.pid]), time.monotonic()
        time.sleep(IDLE_WINDOW_S if not smoke else 0.5)
        idle_vcpu = (cpu_seconds([proc.pid]) - idle_start) / (time.monotonic() - idle_wall_start)
        cpu_changes_start, changes_start = cpu_seconds([proc.pid]), time.monotonic()
        writes: list[float] = []
        for c in range(changes):
            writes.append(time.time())
            write(source, "pod-7.yaml", pod_doc(7, nodes, per_ns, {"bench": str(c)}))
            time.sleep(0.5)
        time.sleep(1.5)
        cpu_changes = cpu_seconds([proc.pid]) - cpu_changes_start
        changes_wall = time.monotonic() - changes_start
        stop.set()
        received: dict[str, list[tuple[int, float]]] = {}
        for _ in procs:
            kind, value = results.get(timeout=60)
            while kind != "received":
                kind, value = results.get(timeout=60)
            received.update(value)
        for p in procs:
            p.join(30)
        delta_bytes = (
            metric(http_port, 'weft_controller_push_bytes_total{type="delta"}') - bytes_before
        )
        delta_pushes = metric(http_port, 'pilot_xds_pushes_total{type="delta"}') - pushes_before
        peak_kib = rss_kib(proc.pid, "VmHWM")

        # Latency of change c on a node: first receipt of a version after write c.
        latencies = []
        missing = 0
        for events in received.values():
            after_sync = sorted(t for _, t in events)
            for w in writes:
                later = [t for t in after_sync if t >= w]
                if later:
                    latencies.append(later[0] - w)
                else:
                    missing += 1
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        reference = in_process_signing_rate(state, min(csrs, 300))
        report = {
            "pods": pods,
            "services": services,
            "nodes": nodes,
            "changes": changes,
            "first_full_sync_s": round(first_sync, 2),
            "propagation_p50_ms": round(p50 * 1000, 1),
            "propagation_p99_ms": round(p99 * 1000, 1),
            "propagation_samples": len(latencies),
            "missing": missing,
            "delta_bytes_per_node": round(delta_bytes / max(delta_pushes, 1)),
            "controller_peak_rss_mib": round(peak_kib / 1024),
            "controller_rss_mib_built": round(rss_built / 1024),
            "controller_rss_mib_synced": round(rss_synced / 1024),
            "state_built_s": round(built_s, 2),
            "controller_cpu_s_build": round(cpu_built, 2),
            "controller_cpu_s_push_all_nodes": round(cpu_synced - cpu_built, 2),
            "controller_cpu_s_per_change": round(cpu_changes / changes, 3),
            "controller_vcpu_idle": round(idle_vcpu, 3),
            "controller_cpu_s_per_change_above_idle": round(
                max(0.0, cpu_changes - idle_vcpu * changes_wall) / changes, 3
            ),
            "controller_vcpu_during_changes": round(cpu_changes / changes_wall, 3),
            "rss_vs_istiod_1_5_gb": round(peak_kib / 1024 / ISTIOD_MIB, 2),
            "vcpu_during_changes_vs_istiod_1_vcpu": round(
                cpu_changes / changes_wall / ISTIOD_VCPU, 3
            ),
            "csr_per_s_rpc": round(csr_rate, 1),
            "csr_per_s_in_process": round(reference, 1),
            "csr_rpc_vs_in_process": round(csr_rate / reference, 2),
        }
        click.echo(json.dumps(report, indent=2))
        click.echo(
            f"targets: p99 {report['propagation_p99_ms']} ms (< 1000), delta "
            f"{report['delta_bytes_per_node']} B (< 2048), RSS "
            f"{report['controller_peak_rss_mib']} MiB (< 1024)"
        )
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
