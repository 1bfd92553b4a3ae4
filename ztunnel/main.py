"""`python -m ztunnel run ...`: the node's L4 proxy."""

from __future__ import annotations

from pathlib import Path

import click
import structlog
import uvloop

from meshcore import nodeoptions
from meshcore.identity.spiffe import node_id
from meshcore.logs import configure_logging
from meshcore.nodebootstrap import ensure_credential
from meshcore.signals import stop_requested
from ztunnel.app import Ztunnel, ZtunnelConfig

log = structlog.get_logger("ztunnel")


@click.group()
def cli() -> None:
    """weft ztunnel."""


@cli.command()
@click.option("--node", required=True)
@nodeoptions.CONTROLLER
@nodeoptions.CREDENTIAL
@nodeoptions.bootstrap
@click.option("--trust-domain", default="cluster.local", show_default=True)
@nodeoptions.ADMIN_SOCKET
@nodeoptions.admin_addr(ZtunnelConfig.admin_addr)
@nodeoptions.metrics_addr(ZtunnelConfig.metrics_addr)
@nodeoptions.readiness_addr(ZtunnelConfig.readiness_addr)
@click.option(
    "--otlp-logs-endpoint",
    default="",
    envvar="WEFT_OTLP_LOGS_ENDPOINT",
    help="OTLP/gRPC collector for the access log (host:port, or an http:// or https:// URL), "
    "one log record per connection; unset: none.",
)
def run(
    node: str,
    controller: str,
    credential: Path,
    bootstrap_token: Path | None,
    bootstrap_controller: str,
    controller_roots: Path | None,
    trust_domain: str,
    admin_socket: Path | None,
    admin_addr: str,
    metrics_addr: str,
    readiness_addr: str,
    otlp_logs_endpoint: str,
) -> None:
    """Carry this node's enrolled pods' connections over mTLS HBONE."""
    configure_logging()
    config = ZtunnelConfig(
        node=node,
        controller=controller,
        credential=credential,
        trust_domain=trust_domain,
        admin_socket=admin_socket,
        admin_addr=admin_addr,
        metrics_addr=metrics_addr,
        readiness_addr=readiness_addr,
        otlp_logs_endpoint=otlp_logs_endpoint,
    )

    how = nodeoptions.bootstrap_from(bootstrap_token, bootstrap_controller, controller_roots)

    async def main() -> None:
        await ensure_credential(credential, node_id(trust_domain, node), how)
        ztunnel = Ztunnel(config)
        stop = stop_requested()
        await ztunnel.start()
        await stop.wait()
        await ztunnel.stop()
        log.info("ztunnel.stopped", node=node)

    uvloop.run(main())


if __name__ == "__main__":
    cli()
