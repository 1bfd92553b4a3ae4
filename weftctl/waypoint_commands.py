"""`weftctl waypoint ...`: waypoints as istioctl's `waypoint` commands manage them.

A waypoint is a Gateway of class `weft-waypoint`; the controller's deployer turns it into a
Deployment, a ServiceAccount and a Service, and reports the Gateway's status. These commands
only write and read cluster objects, through a `Cluster`: the lab's API today
(`LabCluster`), the Kubernetes API the same way later.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import click
import yaml

from lab import client
from lab.config import STATE_ROOT
from lab.state import LabPaths
from meshcore.meshstate import (
    GATEWAY_NAME_LABEL,
    USE_WAYPOINT_LABEL,
    WAYPOINT_FOR_LABEL,
    WAYPOINT_GATEWAY_CLASS,
    TrafficType,
)
from weftctl.output import OUTPUT_OPTION, emit, table

GATEWAY_API = "gateway.networking.k8s.io/v1"
REPLICAS_ANNOTATION = "weft.dev/replicas"
DEFAULT_NAME = "waypoint"
FOR_CHOICE = click.Choice([t.value for t in TrafficType])


class ClusterError(Exception):
    """The cluster refused a request or could not be reached; the message says what to do."""


class Cluster(Protocol):
    def apply(self, objects: list[dict[str, Any]]) -> list[str]: ...

    def delete(self, objects: list[dict[str, Any]]) -> list[str]: ...

    def get(self, kind: str, namespace: str = "", name: str = "") -> list[dict[str, Any]]: ...


class LabCluster:
    """The lab's API (`/v1/apply`, `/v1/delete`, `/v1/objects`) over its unix socket."""

    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return client.request(self.paths, method, path, body, timeout=120)
        except client.LabRequestFailed as err:
            raise ClusterError(str(err)) from None
        except client.LabUnavailable as err:
            raise ClusterError(f"{err}; is the lab up? (`weftctl lab up`)") from None

    def apply(self, objects: list[dict[str, Any]]) -> list[str]:
        docs = [{"source": "weftctl waypoint", "raw": o} for o in objects]
        results: list[str] = self._request("POST", "/v1/apply", {"documents": docs})["results"]
        return results

    def delete(self, objects: list[dict[str, Any]]) -> list[str]:
        docs = [{"source": "weftctl waypoint", "raw": o} for o in objects]
        results: list[str] = self._request("POST", "/v1/delete", {"documents": docs})["results"]
        return results

    def get(self, kind: str, namespace: str = "", name: str = "") -> list[dict[str, Any]]:
        query = f"kind={kind}&namespace={namespace}&name={name}"
        items: list[dict[str, Any]] = self._request("GET", f"/v1/objects?{query}")["items"]
        return items

    def admin_dumps(self, namespace: str, pods: list[str]) -> dict[str, dict[str, Any] | None]:
        """Each pod's admin `/config_dump` (127.0.0.1:15000, inside its network namespace,
        as `weftctl lab exec` enters it); None for a pod that cannot be read."""
        running = {
            p["name"]: p
            for p in self._request("GET", "/v1/status").get("pods", [])
            if p.get("namespace") == namespace
        }
        out: dict[str, dict[str, Any] | None] = {}
        for pod in pods:
            info = running.get(pod)
            out[pod] = None
            if info is None or not info.get("netns"):
                continue
            try:
                done = subprocess.run(
                    ["ip", "netns", "exec", info["netns"], sys.executable, "-c", _GET_DUMP],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                if done.returncode == 0:
                    out[pod] = json.loads(done.stdout)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass  # shown as unreadable
        return out


_GET_DUMP = (
    "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
    "'http://127.0.0.1:15000/config_dump', timeout=3).read().decode())"
)


# --- pure: the Gateway, and what its status says ---------------------------------------------


def gateway_manifest(
    namespace: str, name: str, traffic_type: str, replicas: int | None = None
) -> dict[str, Any]:
    """The waypoint Gateway, as `istioctl waypoint generate` writes it."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if traffic_type != TrafficType.SERVICE.value:
        metadata["labels"] = {WAYPOINT_FOR_LABEL: traffic_type}
    if replicas is not None:
        metadata["annotations"] = {REPLICAS_ANNOTATION: str(replicas)}
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {
            "gatewayClassName": WAYPOINT_GATEWAY_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def _condition(gw: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in gw.get("status", {}).get("conditions", []):
        if c.get("type") == kind:
            return dict(c)
    return {}


def waypoint_summary(gw: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
    """One waypoint for people and scripts: its traffic type, status, address, replicas."""
    meta = gw.get("metadata", {})
    name = meta.get("name", "")
    own = [
        p for p in pods if p.get("metadata", {}).get("labels", {}).get(GATEWAY_NAME_LABEL) == name
    ]
    ready = sum(
        1
        for p in own
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in p.get("status", {}).get("conditions", [])
        )
    )
    desired = meta.get("annotations", {}).get(REPLICAS_ANNOTATION, "1")
    programmed = _condition(gw, "Programmed")
    accepted = _condition(gw, "Accepted")
    return {
        "namespace": meta.get("namespace", "default"),
        "name": name,
        "for": meta.get("labels", {}).get(WAYPOINT_FOR_LABEL, TrafficType.SERVICE.value),
        "programmed": programmed.get("status", "Unknown"),
        "addresses": [a.get("value", "") for a in gw.get("status", {}).get("addresses", [])],
        "replicas": {"ready": ready, "desired": int(desired) if desired.isdigit() else desired},
        "conditions": {
            "Accepted": accepted,
            "Programmed": programmed,
        },
    }


def outlier_rows(dumps: Mapping[str, Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """The endpoints each waypoint replica has ejected now (a DestinationRule's outlier
    detection), from their config dumps."""
    rows: list[dict[str, Any]] = []
    for pod, dump in sorted(dumps.items()):
        clusters = ((dump or {}).get("destination_rules") or {}).get("clusters") or []
        for c in clusters:
            for e in c.get("ejected") or []:
                rows.append(
                    {
                        "pod": pod,
                        "service": c.get("service", ""),
                        "subset": c.get("subset") or "",
                        "endpoint": e.get("endpoint", ""),
                        "times_ejected": e.get("times_ejected", 0),
                        "back_in_s": e.get("back_in_s", 0),
                    }
                )
    return rows


# --- commands ---------------------------------------------------------------------------------


def fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def lab_option(help: str) -> Any:
    """`--lab NAME` (env WEFT_LAB): the lab whose cluster a command group works on."""
    return click.option(
        "--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True, help=help
    )


def use_lab_cluster(ctx: click.Context, lab_name: str) -> None:
    """Point the group at that lab's cluster, unless a test handed in its own `Cluster`."""
    if ctx.obj is None:
        root = Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT))
        ctx.obj = LabCluster(LabPaths.for_lab(lab_name, root))


def _cluster(ctx: click.Context) -> Cluster:
    cluster: Cluster = ctx.obj
    return cluster


@click.group()
@lab_option("The lab whose cluster to work on. Env: WEFT_LAB.")
@click.pass_context
def waypoint(ctx: click.Context, lab_name: str) -> None:
    """Manage waypoints (L7 proxies): Gateways of class weft-waypoint."""
    use_lab_cluster(ctx, lab_name)


NAMESPACE = click.option("-n", "--namespace", default="default", show_default=True)
NAME = click.option("--name", default=DEFAULT_NAME, show_default=True, help="The Gateway's name.")
FOR = click.option(
    "--for",
    "traffic_type",
    type=FOR_CHOICE,
    default=TrafficType.SERVICE.value,
    show_default=True,
    help="Which traffic it takes (label weft.dev/waypoint-for).",
)


@waypoint.command()
@NAMESPACE
@NAME
@FOR
def generate(namespace: str, name: str, traffic_type: str) -> None:
    """Print the waypoint's Gateway YAML."""
    click.echo(yaml.safe_dump(gateway_manifest(namespace, name, traffic_type), sort_keys=False))


@waypoint.command()
@NAMESPACE
@NAME
@FOR
@click.option(
    "--enroll-namespace",
    is_flag=True,
    help=f"Also label the namespace {USE_WAYPOINT_LABEL}=<name>: its traffic uses it.",
)
@click.option(
    "--replicas",
    type=click.IntRange(0, 100),
    default=None,
    help="Waypoint replicas (annotation weft.dev/replicas; default 1).",
)
@click.option("--wait", is_flag=True, help="Wait until the waypoint is Programmed.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds --wait waits.")
@click.pass_context
def apply(
    ctx: click.Context,
    namespace: str,
    name: str,
    traffic_type: str,
    enroll_namespace: bool,
    replicas: int | None,
    wait: bool,
    timeout: float,
) -> None:
    """Create or update a waypoint (and enroll its namespace)."""
    cluster = _cluster(ctx)
    objects = [gateway_manifest(namespace, name, traffic_type, replicas)]
    try:
        if enroll_namespace:
            objects.insert(0, _labelled_namespace(cluster, namespace, name))
        for line in cluster.apply(objects):
            click.echo(line)
    except ClusterError as err:
        fail(str(err))
    if enroll_namespace:
        click.echo(f"namespace {namespace} labelled {USE_WAYPOINT_LABEL}={name}")
    if wait:
        _wait_programmed(cluster, namespace, name, timeout)


def _labelled_namespace(cluster: Cluster, namespace: str, waypoint_name: str) -> dict[str, Any]:
    found = cluster.get("Namespace", name=namespace)
    new: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    doc: dict[str, Any] = {k: v for k, v in (found[0] if found else new).items() if k != "status"}
    meta = dict(doc.get("metadata", {}))
    meta["labels"] = {**meta.get("labels", {}), USE_WAYPOINT_LABEL: waypoint_name}
    doc["metadata"] = meta
    return doc


def _wait_programmed(cluster: Cluster, namespace: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    summary: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            found = cluster.get("Gateway", namespace, name)
            pods = cluster.get("Pod", namespace)
        except ClusterError as err:
            fail(str(err))
        if found:
            summary = waypoint_summary(found[0], pods)
            accepted = summary["conditions"]["Accepted"]
            if accepted.get("status") == "False":
                fail(f"waypoint {namespace}/{name} is not accepted: {accepted.get('message')}")
            if summary["programmed"] == "True":
                address = ", ".join(summary["addresses"])
                click.echo(f"waypoint {namespace}/{name} is programmed at {address}")
                return
        time.sleep(0.5)
    message = summary.get("conditions", {}).get("Programmed", {}).get("message", "no status yet")
    fail(
        f"waypoint {namespace}/{name} not programmed after {timeout:.0f}s ({message}); see "
        f"`weftctl waypoint status -n {namespace} --name {name}` and `weftctl controller problems`"
    )


@waypoint.command("list")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True, help="Waypoints of every namespace.")
@OUTPUT_OPTION
@click.pass_context
def list_command(ctx: click.Context, namespace: str, all_namespaces: bool, output: str) -> None:
    """List waypoints."""
    cluster = _cluster(ctx)
    ns = "" if all_namespaces else namespace
    try:
        gateways = [
            g
            for g in cluster.get("Gateway", ns)
            if g.get("spec", {}).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS
        ]
        pods = cluster.get("Pod", ns) if gateways else []
    except ClusterError as err:
        fail(str(err))
    summaries = [
        waypoint_summary(
            g, [p for p in pods if p["metadata"].get("namespace") == g["metadata"].get("namespace")]
        )
        for g in gateways
    ]
    if emit({"waypoints": summaries}, output):
        return
    if not summaries:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        click.echo(f"no waypoints in {where}")
        return
    click.echo(
        table(
            ["NAMESPACE", "NAME", "FOR", "PROGRAMMED", "ADDRESS", "READY"],
            [
                [
                    s["namespace"],
                    s["name"],
                    s["for"],
                    s["programmed"],
                    ", ".join(s["addresses"]) or "-",
                    f"{s['replicas']['ready']}/{s['replicas']['desired']}",
                ]
                for s in summaries
            ],
        )
    )


@waypoint.command()
@NAMESPACE
@NAME
@OUTPUT_OPTION
@click.pass_context
def status(ctx: click.Context, namespace: str, name: str, output: str) -> None:
    """A waypoint's status: conditions, address, replicas ready."""
    cluster = _cluster(ctx)
    try:
        found = cluster.get("Gateway", namespace, name)
        pods = cluster.get("Pod", namespace)
    except ClusterError as err:
        fail(str(err))
    if not found:
        fail(
            f"no waypoint {namespace}/{name}; create one with "
            f"`weftctl waypoint apply -n {namespace} --name {name}`"
        )
    summary = waypoint_summary(found[0], pods)
    if isinstance(cluster, LabCluster):  # what the replicas hold: their admin config dumps
        replicas = [
            p["metadata"]["name"]
            for p in pods
            if p.get("metadata", {}).get("labels", {}).get(GATEWAY_NAME_LABEL) == name
        ]
        try:
            summary["outlier_ejections"] = outlier_rows(cluster.admin_dumps(namespace, replicas))
        except ClusterError as err:
            fail(str(err))
    if emit(summary, output):
        return
    click.echo(
        table(
            ["NAMESPACE", "NAME", "TYPE", "STATUS", "REASON", "MESSAGE"],
            [
                [
                    namespace,
                    name,
                    kind,
                    c.get("status", "Unknown"),
                    c.get("reason", "-"),
                    c.get("message", "") or "-",
                ]
                for kind, c in summary["conditions"].items()
            ],
        )
    )
    click.echo(f"\naddress:  {', '.join(summary['addresses']) or '- (none yet)'}")
    replicas = summary["replicas"]
    click.echo(f"replicas: {replicas['ready']}/{replicas['desired']} ready")
    ejections = summary.get("outlier_ejections")
    if ejections is not None:
        click.echo("\nendpoints ejected (DestinationRule outlierDetection):")
        if not ejections:
            click.echo("  none")
        else:
            click.echo(
                table(
                    ["REPLICA", "SERVICE", "SUBSET", "ENDPOINT", "TIMES", "BACK IN"],
                    [
                        [
                            r["pod"],
                            r["service"],
                            r["subset"] or "-",
                            r["endpoint"],
                            str(r["times_ejected"]),
                            f"{r['back_in_s']:g}s",
                        ]
                        for r in ejections
                    ],
                )
            )


@waypoint.command()
@NAMESPACE
@click.argument("names", nargs=-1)
@click.option("--all", "delete_all", is_flag=True, help="Every waypoint of the namespace.")
@click.pass_context
def delete(ctx: click.Context, namespace: str, names: tuple[str, ...], delete_all: bool) -> None:
    """Delete waypoints (their Deployment, Service and ServiceAccount go with them)."""
    if not names and not delete_all:
        fail("name the waypoints to delete, or give --all")
    cluster = _cluster(ctx)
    try:
        gateways = [
            g
            for g in cluster.get("Gateway", namespace)
            if g.get("spec", {}).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS
            and (delete_all or g["metadata"]["name"] in names)
        ]
        missing = set(names) - {g["metadata"]["name"] for g in gateways}
        if missing:
            fail(f"no waypoint {', '.join(sorted(missing))} in namespace {namespace}")
        if not gateways:
            click.echo(f"no waypoints in namespace {namespace}")
            return
        for line in cluster.delete(gateways):
            click.echo(line)
    except ClusterError as err:
        fail(str(err))
