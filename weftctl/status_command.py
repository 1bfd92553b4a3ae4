"""`weftctl status`: the whole mesh of a lab at a glance (controller, each node's agent and
ztunnel, waypoints, pods enrolled and captured per namespace, problems). Each process is read
through its admin API at once; one that cannot be reached is a row that says so. The rules
are `weftctl.statusreport`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any

import aiohttp
import click

from lab import client
from lab.state import LabPaths
from meshcore.adminclient import get_json
from meshcore.meshstate import WAYPOINT_GATEWAY_CLASS
from weftctl.labnodes import lab_paths
from weftctl.output import OUTPUT_OPTION, emit, table
from weftctl.statusreport import Read, Reads, lagging, report
from weftctl.waypoint_commands import ClusterError, LabCluster, waypoint_summary

READ_TIMEOUT = 5.0  # per admin API read
ACK_GRACE = 1.0  # seconds given to ACKs on their way before a version not ACKed is an issue


async def _read(get: Awaitable[Any]) -> Read:
    try:
        return Read(await get)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
        text = str(err) or type(err).__name__
        return Read(error=text)


def _waypoints(paths: LabPaths) -> Read:
    cluster = LabCluster(paths)
    try:
        gateways = [
            g
            for g in cluster.get("Gateway")
            if g.get("spec", {}).get("gatewayClassName") == WAYPOINT_GATEWAY_CLASS
        ]
        pods = cluster.get("Pod") if gateways else []
    except ClusterError as err:
        return Read(error=str(err))
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
        return Read(error=str(err) or type(err).__name__)
    return Read(
        [
            waypoint_summary(
                g,
                [
                    p
                    for p in pods
                    if p["metadata"].get("namespace") == g["metadata"].get("namespace")
                ],
            )
            for g in gateways
        ]
    )


async def gather(paths: LabPaths, lab: dict[str, Any]) -> Reads:
    nodes = [str(n["name"]) for n in lab.get("nodes", [])]
    ctl = paths.controller_admin
    reads = await asyncio.gather(
        _read(get_json(ctl, "/debug/nodes", READ_TIMEOUT)),
        _read(get_json(ctl, "/debug/problems", READ_TIMEOUT)),
        *(_read(get_json(paths.agent_socket(n), "/debug/status", READ_TIMEOUT)) for n in nodes),
        *(_read(get_json(paths.ztunnel_socket(n), "/config_dump", READ_TIMEOUT)) for n in nodes),
        asyncio.to_thread(_waypoints, paths),
    )
    count = len(nodes)
    controller_nodes = reads[0]
    if lagging(controller_nodes):  # an ACK on its way is not an issue: look once more
        await asyncio.sleep(ACK_GRACE)
        controller_nodes = await _read(get_json(ctl, "/debug/nodes", READ_TIMEOUT))
    return Reads(
        lab=lab,
        controller_nodes=controller_nodes,
        problems=reads[1],
        agents=dict(zip(nodes, reads[2 : 2 + count], strict=True)),
        ztunnels=dict(zip(nodes, reads[2 + count : 2 + 2 * count], strict=True)),
        waypoints=reads[-1],
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _expiry(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "EXPIRED"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _print(data: dict[str, Any]) -> None:
    c = data["controller"]
    health = "healthy" if data["healthy"] else f"NOT healthy ({len(data['issues'])} issue(s))"
    click.echo(f"lab {data['lab']}: {health}\n")
    click.echo(
        table(
            ["CONTROLLER", "REACHABLE", "STATE-VERSION", "EPOCH", "PROBLEMS"],
            [
                [
                    c["process"] or "-",
                    _yes(c["reachable"]) if c["reachable"] else f"NO: {c['error']}",
                    c["version"] if c["version"] is not None else "-",
                    c["epoch"] or "-",
                    c["problems"] if c["problems"] is not None else "-",
                ]
            ],
        )
    )
    rows = []
    for n in data["nodes"]:
        for component in ("agent", "ztunnel"):
            part = n[component]
            certs = part.get("certificates") or {}
            rows.append(
                [
                    n["node"],
                    component,
                    _yes(part["reachable"]) if part["reachable"] else f"NO: {part['error']}",
                    part["weft_version"] or "-",
                    part["sent_version"] if part["sent_version"] is not None else "-",
                    part["acked_version"] if part["acked_version"] is not None else "-",
                    certs.get("count", "-") if component == "ztunnel" else "",
                    _expiry(certs.get("earliest_expires_in_s")) if component == "ztunnel" else "",
                ]
            )
    click.echo()
    click.echo(
        table(
            ["NODE", "COMPONENT", "REACHABLE", "WEFT", "SENT", "ACKED", "CERTS", "EXPIRES-IN"],
            rows,
        )
    )
    if data["waypoints"]:
        click.echo()
        click.echo(
            table(
                ["WAYPOINT", "PROGRAMMED", "READY"],
                [
                    [
                        f"{w['namespace']}/{w['name']}",
                        w["programmed"],
                        f"{w['replicas']['ready']}/{w['replicas']['desired']}",
                    ]
                    for w in data["waypoints"]
                ],
            )
        )
    if data["waypoint_subscriptions"]:
        click.echo()
        click.echo(
            table(
                ["WAYPOINT-REPLICA", "WEFT", "SENT", "ACKED"],
                [
                    [r["identity"], r["weft_version"] or "-", r["sent_version"], r["acked_version"]]
                    for r in data["waypoint_subscriptions"]
                ],
            )
        )
    click.echo()
    click.echo(
        table(
            ["NAMESPACE", "MODE", "PODS", "ENROLLED", "CAPTURED"],
            [
                [n["namespace"], n["mode"] or "-", n["pods"], n["enrolled"], n["captured"]]
                for n in data["namespaces"]
            ],
        )
    )
    if data["issues"]:
        click.echo("\nISSUES")
        for issue in data["issues"]:
            click.echo(f"  {issue}")


@click.command("status")
@click.option(
    "--lab",
    "lab_name",
    default="default",
    envvar="WEFT_LAB",
    show_default=True,
    help="The lab to look at. Env: WEFT_LAB.",
)
@OUTPUT_OPTION
def status(lab_name: str, output: str) -> None:
    """The mesh at a glance: the controller (state version, problems), each node's agent and
    ztunnel (reachable, weft version, state version sent and ACKed, certificates and the
    earliest expiry), waypoints (Programmed, replicas ready), pods enrolled and captured per
    namespace, and every issue found.

    Exit code 0 when all is healthy, 1 otherwise (an unreachable process, a state version not
    ACKed, an expired certificate, a waypoint not ready, an enrolled pod not captured, a
    refused resource), 2 when the lab itself does not answer.
    """
    paths = lab_paths(lab_name)
    try:
        lab: dict[str, Any] = client.request(paths, "GET", "/v1/status", timeout=30)
    except client.LabUnavailable as err:
        click.secho(f"error: {err}; is the lab up? (`weftctl lab up`)", fg="red", err=True)
        sys.exit(2)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
        why = str(err) or type(err).__name__
        click.secho(
            f"error: the lab daemon at {paths.socket} did not answer: {why}", fg="red", err=True
        )
        sys.exit(2)
    data = report(asyncio.run(gather(paths, lab)))
    if not emit(data, output):
        _print(data)
    sys.exit(0 if data["healthy"] else 1)
