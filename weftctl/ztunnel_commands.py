"""`weftctl ztunnel-config ...`: what a node's ztunnel holds (as istioctl ztunnel-config)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from lab.config import STATE_ROOT
from lab.state import LabPaths
from meshcore.adminclient import get_json
from weftctl.admin import fetch
from weftctl.output import OUTPUT_OPTION, emit, table


def _dump(lab_name: str, node: str) -> dict[str, Any]:
    paths = LabPaths.for_lab(lab_name, Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT)))
    sock = paths.ztunnel_socket(node)
    data: dict[str, Any] = fetch(get_json(sock, "/config_dump"), f"the ztunnel of {node}", sock)
    return data


LAB_OPTION = click.option(
    "--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True
)
NODE_OPTION = click.option("--node", default="node-1", show_default=True)


@click.group("ztunnel-config")
def ztunnel_config() -> None:
    """Inspect a node's ztunnel: workloads, services, certificates, connection pool."""


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


@ztunnel_config.command("all")
@LAB_OPTION
@NODE_OPTION
def dump(lab_name: str, node: str) -> None:
    """The whole config dump as JSON."""
    emit(_dump(lab_name, node), "json")
