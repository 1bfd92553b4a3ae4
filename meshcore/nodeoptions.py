"""Command-line options every node process (node agent, ztunnel) takes the same way: how it
reaches the controller, the credential it does so with, and its admin socket."""

from __future__ import annotations

from pathlib import Path

import click

CONTROLLER = click.option("--controller", required=True, help="host:port of the controller's gRPC.")
CREDENTIAL = click.option(
    "--credential",
    required=True,
    type=click.Path(path_type=Path),
    help="The node credential folder (key.pem, cert.pem, roots.pem).",
)
ADMIN_SOCKET = click.option("--admin-socket", type=click.Path(path_type=Path), default=None)
