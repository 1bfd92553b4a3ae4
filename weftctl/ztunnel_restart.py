"""`weftctl ztunnel restart --node N`: replace a node's ztunnel without dropping a connection
(a new one takes the listeners over the handover socket; the old one drains, then exits).
In the lab, through its daemon, which supervises the ztunnels; on Kubernetes the DaemonSet's
rolling update does the same (docs/ztunnel-restart.md)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from lab import client
from weftctl.labnodes import check_node, lab_paths
from weftctl.output import OUTPUT_OPTION, emit


@click.group("ztunnel")
def ztunnel() -> None:
    """Operate the nodes' ztunnels (restart, upgrade)."""


@ztunnel.command()
@click.option("--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True)
@click.option("--node", required=True, help="Which node's ztunnel.")
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=600.0,
    show_default=True,
    help="Seconds the old ztunnel keeps relaying its open connections before it exits.",
)
@click.option(
    "--code",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Run the new ztunnel from this code tree (on PYTHONPATH): an upgrade.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 8),
    default=None,
    help="Worker processes of the new ztunnel (default: as the old one).",
)
@OUTPUT_OPTION
def restart(
    lab_name: str,
    node: str,
    drain_timeout: float,
    code: Path | None,
    workers: int | None,
    output: str,
) -> None:
    """Replace NODE's ztunnel: no connection refused, none reset."""
    paths = lab_paths(lab_name)
    check_node(paths, node)
    body = {
        "node": node,
        "drain_timeout_s": drain_timeout,
        "pythonpath": os.fspath(code.resolve()) if code else "",
        "workers": workers or 0,
    }
    try:
        result = client.request(paths, "POST", "/v1/ztunnel/restart", body, timeout=200)
    except client.LabUnavailable as err:
        raise click.ClickException(f"{err}; is the lab up? (`weftctl lab up`)") from None
    except client.LabRequestFailed as err:
        raise click.ClickException(f"ztunnel restart on {node} failed: {err}") from None
    if emit(result, output):
        return
    before = result.get("predecessor") or {}
    click.echo(
        f"ztunnel on {node}: pid {result['new_pid']} (version {result['version']}) took over "
        f"from pid {result['old_pid']} (version {before.get('version')}), which drains "
        f"{before.get('connections', 0)} connection(s) for up to {drain_timeout:g}s"
    )
