"""`weftctl route status`: the status the controller wrote on HTTPRoutes and GRPCRoutes.

For each Service parent of a route, its conditions (`Accepted`, `PartiallyInvalid` when some
rules were dropped, `ResolvedRefs`), as `kubectl get httproute -o yaml` would show them, in a
table (`controller/routestatus.py` says what each means). Reads cluster objects through the
same `Cluster` as `weftctl waypoint`.
"""

from __future__ import annotations

from typing import Any

import click

from weftctl.output import OUTPUT_OPTION, emit, table
from weftctl.waypoint_commands import Cluster, ClusterError, fail, lab_option, use_lab_cluster

ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")


def _parent_name(ref: dict[str, Any], route_namespace: str) -> str:
    name = f"{ref.get('namespace', route_namespace)}/{ref.get('name', '')}"
    if "port" in ref:
        name += f":{ref['port']}"
    elif ref.get("sectionName"):
        name += f":{ref['sectionName']}"
    return f"{ref.get('kind', 'Gateway')} {name}"


def route_summary(route: dict[str, Any]) -> dict[str, Any]:
    """One route for people and scripts: each parent the status names, with its conditions."""
    meta = route.get("metadata", {})
    namespace = meta.get("namespace", "default")
    parents = []
    for entry in route.get("status", {}).get("parents", []):
        parents.append(
            {
                "parent": _parent_name(entry.get("parentRef", {}), namespace),
                "controllerName": entry.get("controllerName", ""),
                "conditions": [
                    {k: c.get(k, "") for k in ("type", "status", "reason", "message")}
                    for c in entry.get("conditions", [])
                ],
            }
        )
    return {
        "namespace": namespace,
        "kind": route.get("kind", ""),
        "name": meta.get("name", ""),
        "parents": parents,
    }


def status_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in summaries:
        route = f"{s['kind']}/{s['name']}"
        if not s["parents"]:
            rows.append([s["namespace"], route, "-", "-", "-", "-", "no status yet"])
        for p in s["parents"]:
            for c in p["conditions"]:
                rows.append(
                    [
                        s["namespace"],
                        route,
                        p["parent"],
                        c["type"],
                        c["status"] or "Unknown",
                        c["reason"] or "-",
                        c["message"] or "-",
                    ]
                )
    return rows


@click.group()
@lab_option("The lab whose cluster to read. Env: WEFT_LAB.")
@click.pass_context
def route(ctx: click.Context, lab_name: str) -> None:
    """Gateway API routes (HTTPRoute, GRPCRoute) and what the mesh made of them."""
    use_lab_cluster(ctx, lab_name)


@route.command()
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True, help="Routes of every namespace.")
@click.argument("name", required=False, default="")
@OUTPUT_OPTION
@click.pass_context
def status(
    ctx: click.Context, namespace: str, all_namespaces: bool, name: str, output: str
) -> None:
    """Each route's status per Service parent: Accepted, ResolvedRefs, PartiallyInvalid."""
    cluster: Cluster = ctx.obj
    ns = "" if all_namespaces else namespace
    try:
        found = [r for kind in ROUTE_KINDS for r in cluster.get(kind, ns, name)]
    except ClusterError as err:
        fail(str(err))
    if name and not found:
        fail(f"no HTTPRoute or GRPCRoute {name} in namespace {namespace}")
    summaries = sorted(
        (route_summary(r) for r in found), key=lambda s: (s["namespace"], s["name"], s["kind"])
    )
    if emit({"routes": summaries}, output):
        return
    if not summaries:
        where = "any namespace" if all_namespaces else f"namespace {namespace}"
        click.echo(f"no routes in {where}")
        return
    click.echo(
        table(
            ["NAMESPACE", "ROUTE", "PARENT", "TYPE", "STATUS", "REASON", "MESSAGE"],
            status_rows(summaries),
        )
    )
