"""`weftctl lab ...`: a Kubernetes-like cluster of network namespaces on this machine."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import click

from lab import client
from lab.addressing import node_plans
from lab.config import STATE_ROOT, LabConfig, LabConfigError
from lab.images import container_path
from lab.model import ClusterModel
from lab.naming import new_lab_id
from lab.preflight import PreflightError, check_machine
from lab.processes import ENTER_CGROUP
from lab.prometheus import prometheus_binary, prometheus_url
from lab.state import LabPaths, LabRecord, daemon_alive, list_labs, teardown
from meshcore.meshstate import WAYPOINT_GATEWAY_CLASS
from meshcore.resources import (
    Document,
    ManifestError,
    ManifestErrors,
    load_documents,
    parse_documents,
)
from weftctl.output import OUTPUT_OPTION, emit, table

DEMO_MANIFESTS = Path(__file__).resolve().parent.parent / "lab" / "demo"


@dataclasses.dataclass
class LabContext:
    name: str

    @property
    def paths(self) -> LabPaths:
        return LabPaths.for_lab(self.name, Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT)))


pass_lab = click.make_pass_decorator(LabContext)


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _manifest_errors(err: ManifestError | ManifestErrors) -> None:
    items = err.errors if isinstance(err, ManifestErrors) else [err]
    for e in items:
        click.secho(f"error: {e}", fg="red", err=True)
    click.echo("nothing was changed", err=True)
    sys.exit(1)


def _preflight() -> None:
    try:
        check_machine()
    except PreflightError as err:
        _fail(str(err))


def _running_record(ctx: LabContext) -> LabRecord:
    record = LabRecord.load(ctx.paths)
    if record is None:
        _fail(f"no lab named {ctx.name!r} is up; start one with `weftctl lab up`")
    assert record is not None
    if not daemon_alive(record):
        _fail(
            f"lab {ctx.name!r} (id {record.lab_id}) is not running (its daemon died); "
            "`weftctl lab down` cleans up what it left"
        )
    return record


def _status(ctx: LabContext) -> dict[str, Any]:
    try:
        data: dict[str, Any] = client.request(ctx.paths, "GET", "/v1/status", timeout=30)
    except client.LabUnavailable as err:
        _fail(f"{err}; is the lab up? (`weftctl lab up`)")
        raise
    return data


@click.group()
@click.option(
    "--name",
    default="default",
    envvar="WEFT_LAB",
    show_default=True,
    help="Which lab (several can run side by side). Env: WEFT_LAB.",
)
@click.pass_context
def lab(ctx: click.Context, name: str) -> None:
    """Run a whole cluster in network namespaces on this machine."""
    ctx.obj = LabContext(name)


# --- up / down ---------------------------------------------------------------------------


@lab.command()
@click.option("--nodes", default=2, show_default=True, help="Number of nodes (node-1 ... node-N).")
@click.option(
    "--manifests",
    "manifests",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder or file of Kubernetes YAML (default: the bundled demo). Repeatable.",
)
@click.option("--underlay-cidr", default=LabConfig.underlay_cidr, show_default=True)
@click.option("--pod-cidr", default=LabConfig.pod_cidr, show_default=True)
@click.option("--service-cidr", default=LabConfig.service_cidr, show_default=True)
@click.option(
    "--ztunnel/--no-ztunnel",
    default=True,
    show_default=True,
    help="Run a ztunnel per node (without, enrolled pods' connections fail closed).",
)
@click.option(
    "--otlp-endpoint",
    default="",
    help="OTLP/gRPC collector (host:port, or an http:// or https:// URL) the waypoints send "
    "their spans to; it must be reachable from the pods (e.g. on the control plane's address). "
    "Default: no spans.",
)
@click.option(
    "--source",
    type=click.Choice(["folder", "kubernetes"]),
    default="folder",
    show_default=True,
    help="Where the controller reads the cluster: the lab's objects as files, or a real "
    "Kubernetes API server the lab runs (built from Debian's Kubernetes libraries the first "
    "time, a few minutes; nodes then authenticate by TokenReview). `weftctl lab kubeconfig` "
    "prints its kubeconfig.",
)
@click.option(
    "--prometheus/--no-prometheus",
    default=None,
    envvar="WEFT_LAB_PROMETHEUS",
    help="Run a Prometheus server (Debian's prometheus) scraping every controller, agent, "
    "ztunnel and waypoint; `weftctl lab prometheus` prints its URL. Default: on when the "
    "prometheus binary is installed (it costs about 45 MB); env WEFT_LAB_PROMETHEUS=0 turns "
    "it off (the test suite does, except where a test asks for it).",
)
@click.option(
    "--prometheus-scrape-interval",
    default=LabConfig.prometheus_scrape_interval,
    show_default=True,
    help="Seconds between two scrapes of each target (1-60).",
)
@click.option(
    "--ztunnel-workers",
    default=LabConfig.ztunnel_workers,
    show_default=True,
    help="Worker processes per node's ztunnel (its --workers, 1-8): one per core on a real "
    "node; one keeps labs of many nodes light on a small machine.",
)
@click.option(
    "--wait",
    "wait_seconds",
    default=90.0,
    show_default=True,
    help="Seconds to wait for every pod to be ready and every waypoint programmed.",
)
@pass_lab
def up(
    ctx: LabContext,
    nodes: int,
    manifests: tuple[Path, ...],
    underlay_cidr: str,
    pod_cidr: str,
    service_cidr: str,
    ztunnel: bool,
    otlp_endpoint: str,
    source: str,
    prometheus: bool | None,
    prometheus_scrape_interval: float,
    ztunnel_workers: int,
    wait_seconds: float,
) -> None:
    """Create the lab and start its pods."""
    started = time.monotonic()
    _preflight()
    if prometheus is None:  # on when it can be: `weftctl dashboard` needs it
        prometheus = prometheus_binary() is not None
    sources = tuple(str(p.resolve()) for p in (manifests or (DEMO_MANIFESTS,)))
    config = LabConfig(
        name=ctx.name,
        nodes=nodes,
        underlay_cidr=underlay_cidr,
        pod_cidr=pod_cidr,
        service_cidr=service_cidr,
        manifests=sources,
        ztunnel=ztunnel,
        otlp_endpoint=otlp_endpoint,
        source=source,
        prometheus=prometheus,
        prometheus_scrape_interval=prometheus_scrape_interval,
        ztunnel_workers=ztunnel_workers,
    )
    try:
        config.validate()
    except LabConfigError as err:
        _fail(str(err))
    if prometheus and prometheus_binary() is None:
        _fail(
            "--prometheus: no prometheus binary; install Debian's prometheus package "
            "(scripts/setup.sh), or run without --prometheus"
        )
    # Check the manifests completely before creating anything.
    try:
        parsed = parse_documents(load_documents(Path(s) for s in sources))
        ClusterModel(node_plans(config), config.service_cidr).plan_apply(
            [p.resource for p in parsed]
        )
    except (ManifestError, ManifestErrors) as err:
        _manifest_errors(err)

    paths = ctx.paths
    existing = LabRecord.load(paths)
    if existing is not None:
        if daemon_alive(existing):
            _fail(
                f"lab {ctx.name!r} already exists (id {existing.lab_id}, "
                f"{existing.config.nodes} nodes); `weftctl lab down` removes it"
            )
        click.echo(f"cleaning up what a dead lab {ctx.name!r} (id {existing.lab_id}) left")
        for item in teardown(existing, paths):
            click.echo(f"  removed {item}")

    record = LabRecord(name=ctx.name, lab_id=new_lab_id(), config=config, created=time.time())
    record.save(paths)
    log_file = open(paths.daemon_log, "ab")  # noqa: SIM115 - handed to the daemon
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.daemon", "--state-dir", str(paths.root)],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=log_file,
        start_new_session=True,
        cwd="/",
    )
    log_file.close()
    record = dataclasses.replace(record, daemon_pid=proc.pid)
    click.echo(
        f"lab {ctx.name!r} (id {record.lab_id}): {nodes} nodes, "
        f"{len(parsed)} resources from {', '.join(sources)}"
    )
    status = _wait_ready(ctx, proc, wait_seconds)
    elapsed = time.monotonic() - started
    _print_status(status)
    not_ready = [p for p in status["pods"] if not p["ready"] and p["phase"] != "Succeeded"]
    click.echo(f"\nlab up in {elapsed:.1f}s")
    if not_ready:
        names = ", ".join(f"{p['namespace']}/{p['name']}" for p in not_ready)
        click.secho(
            f"warning: not ready after {wait_seconds:.0f}s: {names}; "
            "see `weftctl lab logs POD -n NS`",
            fg="yellow",
            err=True,
        )
        sys.exit(3)
    _print_hints(ctx, status)


BUILD_TIMEOUT = 300.0  # the daemon's own steps (mesh, pods) have timeouts well inside this


def _wait_ready(ctx: LabContext, proc: subprocess.Popen[bytes], wait: float) -> dict[str, Any]:
    """Until the lab is built (bounded by BUILD_TIMEOUT), then `wait` more seconds at most for
    its pods to be ready."""
    build_deadline = time.monotonic() + BUILD_TIMEOUT
    deadline: float | None = None
    last_line = ""
    status: dict[str, Any] = {}
    while True:
        if proc.poll() is not None:
            tail = deque(
                ctx.paths.daemon_log.read_text(errors="replace").splitlines()
                if ctx.paths.daemon_log.exists()
                else [],
                maxlen=15,
            )
            click.secho("error: the lab daemon exited while building the lab:", fg="red", err=True)
            for line in tail:
                click.echo(f"  {line}", err=True)
            record = LabRecord.load(ctx.paths)
            if record is not None:
                teardown(record, ctx.paths)
            else:
                ctx.paths.daemon_log.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    ctx.paths.root.rmdir()
            sys.exit(1)
        try:
            status = client.request(ctx.paths, "GET", "/v1/status", timeout=10)
        except client.LabUnavailable:
            time.sleep(0.05)
            continue
        pods = status["pods"]
        ready = sum(1 for p in pods if p["ready"] or p["phase"] == "Succeeded")
        line = f"  {status['phase']}: {ready}/{len(pods)} pods ready"
        waypoints: tuple[int, int] = (0, 0)
        if status["phase"] == "Ready" and ready == len(pods):
            # A waypoint's pods are made by the controller once it has seen the Gateway, so
            # they may not be listed yet: wait for the waypoints themselves.
            waypoints = _waypoints_settled(ctx)
            if waypoints[1]:
                line += f", {waypoints[0]}/{waypoints[1]} waypoints programmed"
        if line != last_line:
            click.echo(line)
            last_line = line
        if status["phase"] == "Ready" and ready == len(pods) and waypoints[0] == waypoints[1]:
            return status
        if status["phase"] in ("Failed", "Terminating"):
            continue  # the daemon is on its way out; the poll above reports it
        if status["phase"] == "Ready" and deadline is None:
            deadline = time.monotonic() + wait
        if time.monotonic() > (deadline if deadline is not None else build_deadline):
            return status
        time.sleep(0.2)


def _waypoints_settled(ctx: LabContext) -> tuple[int, int]:
    """(settled, all) of the lab's waypoint Gateways: settled is Programmed, or refused
    (Accepted=False, which `weftctl waypoint status` explains)."""
    try:
        gateways = client.request(ctx.paths, "GET", "/v1/objects?kind=Gateway", timeout=10)
    except (client.LabUnavailable, client.LabRequestFailed):
        return (0, 0)
    ours = [
        g
        for g in gateways["items"]
        if g.get("spec", {}).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS
    ]
    settled = 0
    for gw in ours:
        conditions = {
            c.get("type"): c.get("status") for c in gw.get("status", {}).get("conditions", [])
        }
        if conditions.get("Programmed") == "True" or conditions.get("Accepted") == "False":
            settled += 1
    return (settled, len(ours))


def _print_hints(ctx: LabContext, status: dict[str, Any]) -> None:
    prefix = "weftctl lab" + ("" if ctx.name == "default" else f" --name {ctx.name}")
    click.echo("\nTry:")
    click.echo(f"  {prefix} status")
    pods = status["pods"]
    if pods:
        p = pods[0]
        click.echo(f"  {prefix} exec {p['name']} -n {p['namespace']} -- ip addr")
        click.echo(f"  {prefix} logs {p['name']} -n {p['namespace']}")
    for svc in status["services"][:1]:
        port = svc["ports"][0]["port"] if svc["ports"] else 80
        click.echo(
            f"  {prefix} exec {pods[0]['name']} -n {pods[0]['namespace']} -- "
            f"curl -s http://{svc['name']}.{svc['namespace']}:{port}/"
        )
    if status.get("ztunnels"):
        lab_flag = "" if ctx.name == "default" else f" --lab {ctx.name}"
        click.echo(f"  weftctl ztunnel-config workloads{lab_flag} --node node-1   # the mesh")
        click.echo(f"  weftctl agent{lab_flag} status --node node-1")
        click.echo(f"  weftctl controller{lab_flag} nodes")
        click.echo(f"  weftctl status{lab_flag}                          # the mesh's health")
        if pods and status["services"]:
            src, svc = pods[0], status["services"][0]
            click.echo(
                f"  weftctl why{lab_flag} {src['namespace']}/{src['name']} "
                f"{svc['name']}.{svc['namespace']} --probe   # path and policies"
            )
            click.echo(f"  weftctl tap{lab_flag} -n {svc['namespace']} --count 5   # live traffic")
    if status.get("prometheus"):
        click.echo(f"  curl -s $({prefix} prometheus)/api/v1/targets   # metrics")
        lab_flag = "" if ctx.name == "default" else f" --lab {ctx.name}"
        click.echo(f"  weftctl dashboard{lab_flag}   # the service graph in a browser")
    click.echo(f"  {prefix} down")


@lab.command()
@pass_lab
def down(ctx: LabContext) -> None:
    """Remove the lab: every namespace, veth, cgroup, process and state file it made."""
    _preflight()
    started = time.monotonic()
    record = LabRecord.load(ctx.paths)
    if record is None:
        click.echo(f"no lab named {ctx.name!r}; nothing to remove")
        return
    if daemon_alive(record):
        try:
            client.request(ctx.paths, "POST", "/v1/shutdown", timeout=10)
            deadline = time.monotonic() + 60
            while daemon_alive(record) and time.monotonic() < deadline:
                time.sleep(0.05)
        except (client.LabUnavailable, client.LabRequestFailed) as err:
            click.echo(f"daemon did not answer ({err}); removing by force")
    leftovers = teardown(record, ctx.paths)
    for item in leftovers:
        click.echo(f"  removed {item}")
    click.echo(
        f"lab {ctx.name!r} (id {record.lab_id}) removed in {time.monotonic() - started:.1f}s"
    )


@lab.command("list")
@OUTPUT_OPTION
def list_command(output: str) -> None:
    """Labs on this machine."""
    labs = list_labs(Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT)))
    data = [
        {"name": r.name, "id": r.lab_id, "nodes": r.config.nodes, "running": alive}
        for r, alive in labs
    ]
    if not emit(data, output):
        click.echo(
            table(
                ["NAME", "ID", "NODES", "RUNNING"],
                [[d["name"], d["id"], d["nodes"], d["running"]] for d in data],
            )
        )


# --- inspect -----------------------------------------------------------------------------


def _print_status(status: dict[str, Any]) -> None:
    click.echo(f"lab {status['name']} (id {status['id']}): {status['phase']}")
    if status.get("error"):
        click.secho(f"error: {status['error']}", fg="red")
    ctl = status.get("controller")
    if ctl:
        click.echo(f"controller: {ctl['address']} ({ctl['state']}, restarts {ctl['restarts']})")
    prom = status.get("prometheus")
    if prom:
        click.echo(f"prometheus: {prom['url'] or prom['listen']} ({prom['state']})")
    click.echo("\nNODES")
    click.echo(
        table(
            ["NAME", "UNDERLAY-IP", "POD-CIDR", "PODS"],
            [[n["name"], n["underlay_ip"], n["pod_cidr"], n["pods"]] for n in status["nodes"]],
        )
    )
    click.echo("\nPODS")
    click.echo(
        table(
            ["NAMESPACE", "NAME", "READY", "PHASE", "RESTARTS", "NODE", "IP"],
            [
                [
                    p["namespace"],
                    p["name"],
                    _ready_column(p),
                    p["phase"],
                    p["restarts"],
                    p["node"],
                    p["ip"],
                ]
                for p in status["pods"]
            ],
        )
    )
    click.echo("\nSERVICES")
    rows = []
    for s in status["services"]:
        ports = ",".join(f"{p['port']}/{p['protocol']}" for p in s["ports"])
        endpoints = ",".join(e for p in s["ports"] for e in p["endpoints"]) or "<none>"
        rows.append([s["namespace"], s["name"], s["vip"], ports, endpoints])
    click.echo(table(["NAMESPACE", "NAME", "CLUSTER-IP", "PORTS", "ENDPOINTS"], rows))


def _ready_column(pod: dict[str, Any]) -> str:
    running = sum(c["state"] == "Running" for c in pod["containers"])
    return f"{running}/{len(pod['containers'])}" + ("" if pod["ready"] else " (not ready)")


@lab.command()
@OUTPUT_OPTION
@pass_lab
def status(ctx: LabContext, output: str) -> None:
    """Nodes, pods (node, IP, phase) and services (VIP, endpoints)."""
    data = _status(ctx)
    if not emit(data, output):
        _print_status(data)


def _find_pod(status: dict[str, Any], name: str, namespace: str) -> dict[str, Any]:
    for p in status["pods"]:
        if p["name"] == name and p["namespace"] == namespace:
            return p
    others = [p["name"] for p in status["pods"] if p["namespace"] == namespace]
    hint = f" (pods in {namespace}: {', '.join(others)})" if others else ""
    _fail(f"pod {namespace}/{name} not found{hint}")
    raise AssertionError


def _container(pod: dict[str, Any], container: str | None) -> dict[str, Any]:
    if not pod["containers"]:
        _fail(f"pod {pod['namespace']}/{pod['name']} has no containers yet")
    if container is None:
        return pod["containers"][0]
    for c in pod["containers"]:
        if c["name"] == container:
            return c
    _fail(
        f"container {container!r} not found in pod {pod['name']} "
        f"(containers: {', '.join(c['name'] for c in pod['containers'])})"
    )
    raise AssertionError


@lab.command("exec")
@click.argument("pod")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-c", "--container", default=None, help="Container (default: the first).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_lab
def exec_command(
    ctx: LabContext, pod: str, namespace: str, container: str | None, command: tuple[str, ...]
) -> None:
    """Run COMMAND inside a pod (its netns, cgroup and hosts file); exit code passed through.

    Example: weftctl lab exec frontend-... -n demo -- curl -s http://backend:8080/
    """
    from lab.cgroups import path as cgroup_path

    _preflight()
    info = _find_pod(_status(ctx), pod, namespace)
    target = _container(info, container)
    env = {
        **os.environ,
        **info["env"],
        "HOSTNAME": info["name"],
        "PATH": container_path(os.environ.get("PATH", "/usr/bin:/bin")),
    }
    argv = [
        "sh",
        "-c",
        ENTER_CGROUP,
        str(cgroup_path(target["cgroup"])),
        "ip",
        "netns",
        "exec",
        info["netns"],
        *command,
    ]
    sys.stdout.flush()
    os.execvpe("sh", argv, env)


@lab.command()
@click.argument("pod")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-c", "--container", default=None, help="Container (default: the first).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", default=-1, help="Only the last N lines.")
@pass_lab
def logs(
    ctx: LabContext, pod: str, namespace: str, container: str | None, follow: bool, tail: int
) -> None:
    """Print a container's output."""
    info = _find_pod(_status(ctx), pod, namespace)
    path = Path(_container(info, container)["log"])
    if not path.exists():
        return
    with open(path, errors="replace") as f:
        lines = f.readlines()
        for line in lines[-tail:] if tail >= 0 else lines:
            click.echo(line, nl=False)
        while follow:
            line = f.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.2)


# --- change ------------------------------------------------------------------------------


def _documents(files: tuple[Path, ...]) -> list[Document]:
    try:
        return load_documents(files)
    except (ManifestError, ManifestErrors) as err:
        _manifest_errors(err)
        raise


def _send(ctx: LabContext, path: str, files: tuple[Path, ...]) -> None:
    _running_record(ctx)
    docs = _documents(files)
    # Parse locally first: errors show without a round trip, and the daemon checks again.
    try:
        parse_documents(docs)
    except (ManifestError, ManifestErrors) as err:
        _manifest_errors(err)
    body = {"documents": [{"source": d.source, "raw": d.raw} for d in docs]}
    try:
        result = client.request(ctx.paths, "POST", path, body)
    except client.LabRequestFailed as err:
        for e in err.errors:
            click.secho(f"error: {e.get('message')}", fg="red", err=True)
        click.echo("nothing was changed", err=True)
        sys.exit(1)
    except client.LabUnavailable as err:
        _fail(str(err))
    for line in result["results"]:
        click.echo(line)


FILES_OPTION = click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="File or folder of YAML. Repeatable.",
)


@lab.command()
@pass_lab
def kubeconfig(ctx: LabContext) -> None:
    """Print the kubeconfig of the lab's API server (`lab up --source kubernetes`), for
    kubectl on this machine: `weftctl lab kubeconfig > k; kubectl --kubeconfig k get pods -A`."""
    path = ctx.paths.root / "kube" / "kubeconfig"
    if not path.exists():
        _fail(
            f"lab {ctx.name!r} has no API server (it was not brought up with --source kubernetes)"
        )
    click.echo(path.read_text())


@lab.command("prometheus")
@pass_lab
def prometheus_command(ctx: LabContext) -> None:
    """Print the URL of the lab's Prometheus (`lab up --prometheus`), on this machine's
    loopback: `curl $(weftctl lab prometheus)/api/v1/targets`."""
    url = prometheus_url(ctx.paths)
    if url is None:
        record = _running_record(ctx)
        _fail(
            f"lab {ctx.name!r} (id {record.lab_id}) runs no Prometheus; bring it up with "
            "`weftctl lab up --prometheus`"
        )
    click.echo(url)


@lab.command()
@FILES_OPTION
@pass_lab
def apply(ctx: LabContext, files: tuple[Path, ...]) -> None:
    """Create or update resources in the running lab (all or nothing)."""
    _send(ctx, "/v1/apply", files)


@lab.command()
@FILES_OPTION
@pass_lab
def delete(ctx: LabContext, files: tuple[Path, ...]) -> None:
    """Delete the resources named in the files (all or nothing)."""
    _send(ctx, "/v1/delete", files)
