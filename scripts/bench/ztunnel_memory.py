"""ztunnel memory at node scale (not a test): idle RSS, then RSS with 1k, 10k and 50k workloads
and 5k services known, and the bytes each workload costs (Istio's ztunnel: about 528 B).

    .venv/bin/python scripts/bench/ztunnel_memory.py [--workloads 1000,10000,50000]
        [--services 5000] [--nodes 100] [--malloc-arena-max N]
    .venv/bin/python scripts/bench/ztunnel_memory.py --smoke   # tiny counts, for CI

For each count a real controller watches a folder of Kubernetes manifests (one file per pod,
service and service account, as controller_scale.py writes them: pods spread over --nodes
nodes) and a real ztunnel (`python -m ztunnel run --node node-1`, every listener up) subscribes
to it over mutual TLS. Once the ztunnel logs `ztunnel.ready` (state applied, its local
workloads' certificates fetched) and its RSS has settled, /proc gives:
  - rss: VmRSS (what `ps` and the issue's 77 MB figure report), split into anon (private heap,
    RssAnon) and file (mapped shared libraries and the interpreter, RssFile), and pss
    (smaps_rollup: shared pages divided among the processes mapping them);
  - cpu_s: the ztunnel's user+system CPU from its start to then (imports, TLS, applying state).
Bytes per workload are the slope between the two largest counts, (rss(b) - rss(a)) / (b - a):
the fixed cost (interpreter, libraries, 5k services) cancels out. The ztunnel's config dump is
read after the figures are taken (it is large; it would raise the peak) to check it holds every
workload.

Everything runs in a network namespace of its own (`unshare --net`, root), so the ztunnel's
fixed ports (15001, 15006, 15008, 15020, 15021) never meet another one's, and the controller is
on that namespace's 127.0.0.1. Processes and the working folder are removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _benchlib import cpu_seconds  # noqa: E402
from controller_scale import build_source  # noqa: E402

NODE = "node-1"
ISTIO_BYTES_PER_WORKLOAD = 528
READY_TIMEOUT_S = 600.0
SETTLE_S = 1.0  # RSS sampled this often; settled once two samples in a row agree within 1%
SETTLE_MAX_S = 30.0
IN_NETNS = "WEFT_BENCH_IN_NETNS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory(pid: int) -> dict[str, int]:
    """KiB figures of a process: rss (VmRSS), anon, file, hwm (VmHWM), pss."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "hwm"}
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[fields[name]] = int(value.split()[0])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            out["pss"] = int(line.split()[1])
    return out


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(proc: subprocess.Popen[Any], log: Path, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(
                f"{what} exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        if log.exists() and '"ztunnel.ready"' in log.read_text():
            return
        time.sleep(0.25)
    raise click.ClickException(f"{what} not ready after {READY_TIMEOUT_S:.0f}s")


def settled(pid: int) -> dict[str, int]:
    last = memory(pid)
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        time.sleep(SETTLE_S)
        now = memory(pid)
        if abs(now["rss"] - last["rss"]) <= last["rss"] / 100:
            return now
        last = now
    return last


def config_dump_workloads(admin_socket: Path) -> int:
    import asyncio

    from meshcore.adminclient import get_json

    dump = asyncio.run(get_json(admin_socket, "/config_dump", timeout=120))
    return len(dump["workloads"])


def run_one(tmp: Path, pods: int, services: int, nodes: int, env: dict[str, str]) -> dict[str, Any]:
    """A fresh controller and ztunnel over a folder of `pods` pods: the ztunnel's figures."""
    from controller.ca import CertificateAuthority
    from controller.main import write_node_credential

    work = tmp / f"run-{pods}"
    source, state, creds = work / "source", work / "state", work / "creds"
    if pods:
        build_source(source, pods, services, nodes)
    else:  # idle: the controller knows nothing but its own trust bundle
        source.mkdir(parents=True)
    ca = CertificateAuthority.load_or_create(state / "ca", "cluster.local")
    write_node_credential(ca, NODE, creds)
    grpc_port = free_port()
    controller = ztunnel = None
    try:
        controller = subprocess.Popen(
            [
                *(sys.executable, "-m", "controller", "run"),
                *("--source-dir", str(source), "--state-dir", str(state)),
                *("--grpc-listen", f"127.0.0.1:{grpc_port}", "--admin-addr", ""),
                *("--metrics-addr", "", "--readiness-addr", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        log = work / "ztunnel.log"
        admin = work / "ztunnel-admin.sock"
        with log.open("w") as out:
            ztunnel = subprocess.Popen(
                [
                    *(sys.executable, "-m", "ztunnel", "run", "--node", NODE, "--workers", "1"),
                    *("--controller", f"127.0.0.1:{grpc_port}", "--credential", str(creds)),
                    *("--admin-socket", str(admin)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=out,
                cwd=ROOT,
                env={**os.environ, **env},
            )
        started = time.monotonic()
        wait_ready(ztunnel, log, f"ztunnel with {pods} workloads")
        ready_s = time.monotonic() - started
        figures = settled(ztunnel.pid)
        cpu = cpu_seconds([ztunnel.pid])
        known = config_dump_workloads(admin)
        if known != pods:
            raise click.ClickException(f"the ztunnel holds {known} workloads, not {pods}")
        return {
            "workloads": pods,
            "services": services if pods else 0,
            "rss_mib": mib(figures["rss"]),
            "anon_mib": mib(figures["anon"]),
            "file_mib": mib(figures["file"]),
            "pss_mib": mib(figures["pss"]),
            "peak_rss_mib_before_dump": mib(figures["hwm"]),
            "ready_s": round(ready_s, 1),
            "cpu_s": round(cpu, 2),
            "_rss_kib": figures["rss"],
        }
    finally:
        stop(ztunnel)
        stop(controller)
        shutil.rmtree(work, ignore_errors=True)


def import_figures() -> dict[str, Any]:
    """RSS of a bare interpreter and of one that imported the ztunnel's entry point."""
    probe = (
        "import sys\n"
        "if sys.argv[1] == '1': import ztunnel.main\n"
        "d = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status')"
        " if l.startswith(('VmRSS', 'RssAnon', 'RssFile'))}\n"
        "print(d['VmRSS'], d['RssAnon'], d['RssFile'], len(sys.modules))\n"
    )
    out = {}
    for label, flag in (("python", "0"), ("after_imports", "1")):
        rss, anon, file, modules = map(
            int,
            subprocess.run(
                [sys.executable, "-c", probe, flag],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout.split(),
        )
        out[label] = {
            "rss_mib": mib(rss),
            "anon_mib": mib(anon),
            "file_mib": mib(file),
            "modules": modules,
        }
    return out


def enter_netns() -> None:
    """Run this script again in a new network namespace with its loopback up."""
    if os.environ.get(IN_NETNS):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.geteuid() != 0:
        raise click.ClickException("needs root: it runs in a network namespace of its own")
    os.environ[IN_NETNS] = "1"
    os.execvp("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv])


@click.command()
@click.option("--workloads", default="1000,10000,50000", show_default=True)
@click.option("--services", default=5000, show_default=True)
@click.option("--nodes", default=100, show_default=True)
@click.option(
    "--malloc-arena-max",
    type=int,
    default=0,
    help="Set MALLOC_ARENA_MAX for the ztunnel (0: leave the environment as it is).",
)
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(workloads: str, services: int, nodes: int, malloc_arena_max: int, smoke: bool) -> None:
    enter_netns()
    counts = [int(c) for c in workloads.split(",") if c.strip()]
    if smoke:
        counts, services, nodes = [20, 60], 10, 2
    env = {"MALLOC_ARENA_MAX": str(malloc_arena_max)} if malloc_arena_max else {}
    from meshcore.logs import configure_logging

    configure_logging(json_output=True, level=40)
    tmp = Path(tempfile.mkdtemp(prefix="weft-bench-ztunnel-memory-"))
    click.echo(f"working in {tmp}", err=True)
    try:
        report: dict[str, Any] = {"imports": import_figures(), "env": env}
        runs = [run_one(tmp, 0, 0, nodes, env)]  # idle: no workload, no service
        click.echo(f"idle: {runs[0]['rss_mib']} MiB", err=True)
        for n in counts:
            runs.append(run_one(tmp, n, services, nodes, env))
            click.echo(f"{n} workloads: {runs[-1]['rss_mib']} MiB", err=True)
        if len(runs) >= 3:
            a, b = runs[-2], runs[-1]
            per = (b["_rss_kib"] - a["_rss_kib"]) * 1024 / (b["workloads"] - a["workloads"])
            report["bytes_per_workload"] = round(per)
            report["vs_istio_528_b"] = round(per / ISTIO_BYTES_PER_WORKLOAD, 1)
        for r in runs:
            del r["_rss_kib"]
        report["runs"] = runs
        click.echo(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
