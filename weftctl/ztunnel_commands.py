"""`weftctl ztunnel-config ...`: what a node's ztunnel holds (as istioctl ztunnel-config)."""

from __future__ import annotations

from typing import Any

import click

from meshcore.adminclient import get_json
from weftctl.admin import fetch
from weftctl.labnodes import check_node, lab_paths
from weftctl.output import OUTPUT_OPTION, emit, table


def _dump(lab_name: str, node: str, path: str = "/config_dump") -> dict[str, Any]:
    paths = lab_paths(lab_name)
    check_node(paths, node)  # node-9 on a 2-node lab: say which nodes there are
    sock = paths.ztunnel_socket(node)
    data: dict[str, Any] = fetch(get_json(sock, path), f"the ztunnel of {node}", sock)
    return data


LAB_OPTION = click.option(
    "--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True
)
NODE_OPTION = click.option("--node", default="node-1", show_default=True)


@click.group("ztunnel-config")
def ztunnel_config() -> None:
    """Inspect a node's ztunnel: workloads, services, policies, certificates, connections."""


@ztunnel_config.command()
@LAB_OPTION
@NODE_OPTION
@OUTPUT_OPTION
def workloads(lab_name: str, node: str, output: str) -> None:
    """Workloads the ztunnel knows, with their identity and whether they are local."""
    data = _dump(lab_name, node)
    if emit(data["workloads"], output):
        return
    click.echo(
        table(
            ["NAMESPACE", "NAME", "ADDRESS", "NODE", "ENROLLED", "IDENTITY"],
            [
                [
                    w["namespace"],
                    w["name"],
                    ",".join(w["addresses"]),
                    w["node"],
                    w["enrolled"],
                    w["identity"],
                ]
                for w in data["workloads"]
            ],
        )
    )


@ztunnel_config.command()
@LAB_OPTION
@NODE_OPTION
@OUTPUT_OPTION
def certificates(lab_name: str, node: str, output: str) -> None:
    """Workload certificates held, with their expiry."""
    data = _dump(lab_name, node)
    if emit(data["certificates"], output):
        return
    click.echo(
        table(
            ["IDENTITY", "NOT-AFTER", "EXPIRES-IN"],
            [
                [c["identity"], c["not_after"], f"{c['expires_in_s'] // 3600}h"]
                for c in data["certificates"]
            ],
        )
    )


@ztunnel_config.command()
@LAB_OPTION
@NODE_OPTION
@OUTPUT_OPTION
def services(lab_name: str, node: str, output: str) -> None:
    """Services the ztunnel knows: VIPs, ports, endpoints (ready/total) and waypoint."""
    data = _dump(lab_name, node)
    if emit(data["services"], output):
        return
    click.echo(table(*services_table(data["services"])))


@ztunnel_config.command()
@LAB_OPTION
@NODE_OPTION
@OUTPUT_OPTION
def policies(lab_name: str, node: str, output: str) -> None:
    """AuthorizationPolicies and PeerAuthentications the ztunnel holds: scope, action, rules."""
    data = _dump(lab_name, node)
    rows = data.get("policy_details", [])
    if emit(rows, output):
        return
    click.echo(table(*policies_table(rows)))


@ztunnel_config.command()
@LAB_OPTION
@NODE_OPTION
@OUTPUT_OPTION
def connections(lab_name: str, node: str, output: str) -> None:
    """Connections the ztunnel relays now, inbound and outbound: source and destination with
    their identities, bytes so far, age."""
    data = _dump(lab_name, node, "/connections")
    if emit(data, output):
        return
    click.echo(table(*connections_table(data["connections"])))
    if data["listed"] < data["total"]:
        click.echo(f"({data['listed']} of {data['total']} listed, the oldest first)")


# --- pure: the tables ------------------------------------------------------------------------


Table = tuple[list[str], list[list[object]]]


def services_table(services: list[dict[str, Any]]) -> Table:
    rows: list[list[object]] = []
    for s in services:
        ready = sum(1 for e in s.get("endpoints", []) if e.get("ready"))
        ports = ",".join(f"{p['port']}/{p['protocol']}" for p in s.get("ports", []))
        rows.append(
            [
                s["namespace"],
                s["name"],
                ",".join(s["addresses"]),
                ports or "-",
                f"{ready}/{len(s.get('endpoints', []))}",
                s.get("waypoint") or "-",
            ]
        )
    return ["NAMESPACE", "NAME", "VIP", "PORTS", "ENDPOINTS", "WAYPOINT"], rows


def policies_table(policies: list[dict[str, Any]]) -> Table:
    rows: list[list[object]] = []
    for p in policies:
        rules = p.get("rules", [])
        rows.append(
            [
                p["namespace"],
                p["name"],
                p["kind"],
                p["scope"],
                p["action"],
                "; ".join(rules) if len(rules) <= 1 else f"{len(rules)} rules: {rules[0]}; ...",
            ]
        )
    return ["NAMESPACE", "NAME", "KIND", "SCOPE", "ACTION", "RULES"], rows


def _short(principal: str) -> str:
    parts = principal.split("/")
    if principal.startswith("spiffe://") and len(parts) == 7:
        return f"{parts[4]}/{parts[6]}"
    return principal or "-"


def connections_table(conns: list[dict[str, Any]]) -> Table:
    rows: list[list[object]] = [
        [
            c["direction"],
            c["source"] or "-",
            _short(c["source_principal"]),
            c["destination"],
            _short(c["destination_principal"]),
            c["security"],
            c["bytes_sent"],
            c["bytes_received"],
            f"{c['age_s']:g}s",
        ]
        for c in conns
    ]
    headers = ["DIRECTION", "SOURCE", "SOURCE-ID", "DESTINATION", "DESTINATION-ID", "SECURITY"]
    return [*headers, "SENT", "RECEIVED", "AGE"], rows


@ztunnel_config.command("all")
@LAB_OPTION
@NODE_OPTION
def dump(lab_name: str, node: str) -> None:
    """The whole config dump as JSON."""
    emit(_dump(lab_name, node), "json")
