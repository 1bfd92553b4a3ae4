"""`python -m ztunnel run ...`: the node's L4 proxy."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import structlog
import uvloop

from meshcore import nodeoptions
from meshcore.identity.spiffe import node_id
from meshcore.logs import configure_logging
from meshcore.nodebootstrap import ensure_credential
from meshcore.signals import stop_requested
from ztunnel.app import DRAIN_TIMEOUT_S, LISTENERS, Ztunnel, ZtunnelConfig
from ztunnel.handover import HandoverError
from ztunnel.handoverio import take_over
from ztunnel.version import VERSION

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
@click.option(
    "--handover-socket",
    type=click.Path(path_type=Path),
    default=None,
    help="Listen here (a unix socket, node-local, root only) for a successor to take over "
    "the listeners: restarts and upgrades that drop no connection. Unset: none.",
)
@click.option(
    "--takeover",
    type=click.Path(path_type=Path),
    default=None,
    help="Take the listening sockets of the ztunnel listening at this handover socket, then "
    "tell it to drain; if none listens there, start afresh.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=DRAIN_TIMEOUT_S,
    show_default=True,
    help="Seconds a replaced ztunnel keeps relaying its open connections before it exits.",
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
    handover_socket: Path | None,
    takeover: Path | None,
    drain_timeout: float,
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
        handover_socket=handover_socket,
        drain_timeout=drain_timeout,
    )

    how = nodeoptions.bootstrap_from(bootstrap_token, bootstrap_controller, controller_roots)

    async def main() -> None:
        await ensure_credential(credential, node_id(trust_domain, node), how)
        ztunnel = Ztunnel(config)
        stop = stop_requested()
        taken = None
        if takeover is not None:
            try:
                taken = await take_over(takeover, node, VERSION, LISTENERS)
            except HandoverError as err:  # the running one serves on, untouched
                log.error("handover.failed", socket=str(takeover), reason=str(err))
                sys.exit(1)
        await ztunnel.start(taken)
        stopping = asyncio.ensure_future(stop.wait())
        drained = asyncio.ensure_future(ztunnel.drained.wait())
        await asyncio.wait({stopping, drained}, return_when=asyncio.FIRST_COMPLETED)
        if not drained.done() and ztunnel.draining_since is not None:
            # replaced, then asked to stop (Kubernetes deletes the old pod once the new one is
            # ready): drain on; the pod's grace period, sized to the drain timeout, bounds it
            log.info("ztunnel.drain_continues", node=node)
            await drained
        stopping.cancel()
        drained.cancel()
        await ztunnel.stop()
        log.info("ztunnel.stopped", node=node, drained=ztunnel.drained.is_set())

    uvloop.run(main())


if __name__ == "__main__":
    cli()
