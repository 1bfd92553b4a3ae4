"""`weftctl controller ...`: the controller's view of the mesh."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import aiohttp
import click

from lab.config import STATE_ROOT
from lab.state import LabPaths
from meshcore.adminclient import get_json
from weftctl.admin import fetch
from weftctl.output import OUTPUT_OPTION, emit, table


async def _get(admin: str, path: str) -> Any:
    if not admin.startswith(("http://", "https://")):
        return await get_json(admin, path)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(admin.rstrip("/") + path) as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


def _fetch(ctx: click.Context, path: str) -> Any:
    admin: str = ctx.obj
    return fetch(_get(admin, path), "the controller's admin API", admin)


@click.group()
@click.option(
    "--lab",
    "lab_name",
    default="default",
    envvar="WEFT_LAB",
    show_default=True,
    help="Read the controller of this lab.",
)
@click.option(
    "--admin",
    default=None,
    help="The controller's admin API instead: a unix socket path, or http://127.0.0.1:15000 "
    "from the controller's own host (the admin API listens on localhost only).",
)
@click.pass_context
def controller(ctx: click.Context, lab_name: str, admin: str | None) -> None:
    """Inspect the controller: connected nodes, refused resources, state sent to a node."""
    state_root = Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT))
    ctx.obj = admin or str(LabPaths.for_lab(lab_name, state_root).controller_admin)


def _ago(ts: float) -> str:
    seconds = max(0, int(dt.datetime.now().timestamp() - ts))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@controller.command()
@OUTPUT_OPTION
@click.pass_context
def nodes(ctx: click.Context, output: str) -> None:
    """Processes subscribed to the mesh state (each node's agent and ztunnel, waypoints),
    with the versions they were sent and ACKed."""
    data = _fetch(ctx, "/debug/nodes")
    if emit(data, output):
        return
    click.echo(f"state version {data['version']} (epoch {data['epoch']})")
    click.echo(
        table(
            ["NODE", "COMPONENT", "CONNECTED", "SENT", "ACKED", "NACKS", "SINCE", "PEER"],
            [
                [
                    n["node"],
                    n.get("component") or "?",
                    "yes" if n["connected"] else "no",
                    n["sent_version"],
                    n["acked_version"],
                    len(n["nacks"]),
                    _ago(n["connected_at"]),
                    n["peer"],
                ]
                for n in sorted(data["nodes"], key=lambda n: (n["node"], n.get("component", "")))
            ],
        )
    )
    for n in data["nodes"]:
        for nack in n["nacks"]:
            who = f"{n['node']} ({n.get('component') or '?'})"
            click.echo(f"  {who} NACKed version {nack['version']}: {nack['reason']}")


@controller.command()
@OUTPUT_OPTION
@click.pass_context
def problems(ctx: click.Context, output: str) -> None:
    """Resources the controller refused, and why (the last good version stays in force)."""
    data = _fetch(ctx, "/debug/problems")
    if emit(data, output):
        return
    if not data["problems"]:
        click.echo("no invalid resources")
        return
    for p in data["problems"]:
        kept = " (last good version kept)" if p["keeps_last_good"] else " (skipped)"
        click.echo(f"{p['message']}{kept}")


@controller.command()
@click.option("--node", default="", help="Show the ACKed version of this node too.")
@OUTPUT_OPTION
@click.pass_context
def state(ctx: click.Context, node: str, output: str) -> None:
    """The mesh state the controller sends to nodes."""
    data = _fetch(ctx, f"/debug/state?node={node}")
    if emit(data, output):
        return
    acked = f", node {node} ACKed {data['acked_version']}" if node else ""
    click.echo(f"state version {data['version']} (epoch {data['epoch']}){acked}")
    rows = []
    for r in data["resources"]:
        key = r["key"]
        body = next((k for k in r if k != "key"), "")
        detail = ""
        if body == "workload":
            w = r[body]
            detail = (
                f"{','.join(w.get('addresses', []))} node={w.get('node', '')} "
                f"enrolled={w.get('enrolled', False)} {w.get('identity', '')}"
            )
        elif body == "service":
            s = r[body]
            detail = f"{','.join(s.get('addresses', []))} {s.get('hostname', '')}"
        rows.append([key.get("kind", ""), key.get("namespace", ""), key.get("name", ""), detail])
    click.echo(table(["KIND", "NAMESPACE", "NAME", "DETAIL"], rows))
