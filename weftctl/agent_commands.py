"""`weftctl agent ...`: what a node agent has done to the kernel, in words."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lab.config import STATE_ROOT
from lab.state import LabPaths
from meshcore.adminclient import get_json
from weftctl.admin import fetch
from weftctl.labnodes import check_node
from weftctl.output import OUTPUT_OPTION, emit, table


@click.group()
@click.option("--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True)
@click.pass_context
def agent(ctx: click.Context, lab_name: str) -> None:
    """Inspect node agents: enrolled pods, attached programs, map contents."""
    ctx.obj = LabPaths.for_lab(lab_name, Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT)))


@agent.command()
@click.option("--node", required=True, help="Which node's agent.")
@OUTPUT_OPTION
@click.pass_context
def status(ctx: click.Context, node: str, output: str) -> None:
    """Enrolled pods, programs and what the maps hold, for one node."""
    paths: LabPaths = ctx.obj
    check_node(paths, node)
    sock = paths.agent_socket(node)
    data = fetch(get_json(sock, "/debug/status"), f"the node agent of {node}", sock)
    if emit(data, output):
        return
    ctl = data["controller"]
    click.echo(
        f"node {data['node']}: {'ready' if data['ready'] else 'NOT ready'}, "
        f"controller {ctl['target']} ({'connected' if ctl['connected'] else 'away'}, "
        f"version {ctl['version']}), pins in {data['pin_dir']}"
    )
    click.echo("\nENROLLED PODS")
    click.echo(
        table(
            ["POD", "IP", "NETNS-COOKIE"],
            [[e["pod"], e["ip"], e["netns_cookie"]] for e in data["enrolled"]],
        )
    )
    if data["pending"]:
        click.echo(f"pending (no process yet): {', '.join(data['pending'])}")
    click.echo("\nPROGRAMS")
    click.echo(
        table(
            ["PROGRAM", "HOOK", "CGROUP", "IDS"],
            [
                [
                    p["program"],
                    p["hook"],
                    p["cgroup"],
                    ",".join(map(str, p["attached_ids"])) or "NOT ATTACHED",
                ]
                for p in data["programs"]
            ],
        )
    )
    click.echo("\nTC PROGRAMS")
    click.echo(
        table(
            ["DEVICE", "DIRECTION", "STATE"],
            [[t["device"], t["direction"], t["action"]] for t in data["tc"]],
        )
    )
    steering = data.get("dnat_steering")
    if steering:
        state = (
            f"current ({steering.get('enrolled_ips', 0)} enrolled addresses)"
            if steering.get("current")
            else f"NOT current: {steering.get('error', 'not written yet')}"
        )
        click.echo(f"\nSERVICE STEERING (nftables {steering['table']}): {state}")
    if data["excluded_ports"]:
        click.echo("\nEXCLUDED PORTS")
        click.echo(table(["POD", "PORT"], [[e["pod"], e["port"]] for e in data["excluded_ports"]]))
    click.echo("\nCAPTURED CONNECTIONS")
    click.echo(
        table(
            ["POD", "CLIENT", "ORIGINAL-DESTINATION"],
            [
                [c["pod"], c["client"], c["original_destination"]]
                for c in data["captured_connections"]
            ],
        )
    )
