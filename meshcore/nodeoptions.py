"""Command-line options every node process (node agent, ztunnel) takes the same way: how it
reaches the controller, the credential it does so with, its admin socket, and where its HTTP
listeners bind (the controller takes these last ones too)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from meshcore.adminserver import AddressError, parse_addr
from meshcore.nodebootstrap import Bootstrap

F = TypeVar("F", bound=Callable[..., Any])

CONTROLLER = click.option("--controller", required=True, help="host:port of the controller's gRPC.")
CREDENTIAL = click.option(
    "--credential",
    required=True,
    type=click.Path(path_type=Path),
    help="The node credential folder (key.pem, cert.pem, roots.pem).",
)


def bootstrap(fn: F) -> F:
    """--bootstrap-token, --bootstrap-controller, --controller-roots: on Kubernetes, how a
    node with no credential in its --credential folder gets one (meshcore.nodebootstrap).
    The function receives them as `bootstrap_token`, `bootstrap_controller`,
    `controller_roots`; `bootstrap_from` turns them into a `Bootstrap`."""
    options = (
        click.option(
            "--bootstrap-token",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            envvar="WEFT_BOOTSTRAP_TOKEN",
            help="Projected ServiceAccount token (audience weft) to trade for a node "
            "credential when --credential has none (Kubernetes).",
        ),
        click.option(
            "--bootstrap-controller",
            default="",
            envvar="WEFT_BOOTSTRAP_CONTROLLER",
            help="host:port of the controller's bootstrap listener (15013), with "
            "--bootstrap-token.",
        ),
        click.option(
            "--controller-roots",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            envvar="WEFT_CONTROLLER_ROOTS",
            help="PEM roots the controller's certificate chains to, with --bootstrap-token.",
        ),
    )
    for option in reversed(options):
        fn = option(fn)
    return fn


def bootstrap_from(token: Path | None, controller: str, roots: Path | None) -> Bootstrap | None:
    """The three bootstrap options as one value; all or none must be given."""
    given = [bool(token), bool(controller), bool(roots)]
    if not any(given):
        return None
    if not all(given):
        raise click.UsageError(
            "--bootstrap-token, --bootstrap-controller and --controller-roots go together"
        )
    assert token is not None and roots is not None
    return Bootstrap(token, controller, roots)


ADMIN_SOCKET = click.option(
    "--admin-socket",
    type=click.Path(path_type=Path),
    default=None,
    help="Unix socket for the admin API (what weftctl and the lab read).",
)


class ListenAddress(click.ParamType):
    """`host:port` of a listener, with an IP address for host; "" (or port 0) is off."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            parse_addr(text, param.name if param and param.name else "address")
        except AddressError as err:
            self.fail(str(err), param, ctx)
        return text


def _listener(flag: str, what: str) -> Callable[[str], Callable[[F], F]]:
    def option(default: str) -> Callable[[F], F]:
        return click.option(
            flag, type=ListenAddress(), default=default, show_default=True, help=f'{what} "": off.'
        )

    return option


admin_addr = _listener(
    "--admin-addr",
    "host:port of the admin API (config and state dumps, readiness, metrics). Keep it on "
    "localhost: pods reach their node's other addresses.",
)
metrics_addr = _listener("--metrics-addr", "host:port serving /metrics and nothing else.")
readiness_addr = _listener("--readiness-addr", "host:port serving readiness and nothing else.")
