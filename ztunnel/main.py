"""`python -m ztunnel run ...`: the node's L4 proxy."""

from __future__ import annotations

import asyncio
import os
import shutil
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
from ztunnel.supervisor import (
    MAX_WORKERS,
    MULTIPROC_ENV,
    Supervisor,
    default_workers,
    metrics_dir,
)
from ztunnel.version import VERSION
from ztunnel.worker import run_worker

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
@click.option(
    "--after-drain",
    type=click.Choice(["exit", "wait"]),
    default="exit",
    show_default=True,
    help="What a replaced ztunnel does once drained: exit (the lab), or wait for SIGTERM "
    "(Kubernetes: an exit before the old pod is deleted would be restarted by the kubelet, "
    "take the sockets back, and then be stopped while serving).",
)
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    help="Worker processes relaying connections (15001/15008 one SO_REUSEPORT socket each, "
    "15006 shared): a number up to 8, or `auto` for the node's cores (at most 8). With more "
    "than one, a parent process holds the controller stream, the certificates and the HTTP "
    "listeners for all. Each is a Python process (about 67 MB): `--workers 1` on a node whose "
    "traffic does not need the cores; the lab runs 1 per node (`lab up --ztunnel-workers`).",
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
    after_drain: str,
    workers: str,
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
    count = parse_workers(workers)
    if count > 1 and not os.environ.get(MULTIPROC_ENV):
        # prometheus_client picks its multiprocess mode at import: start again with it set,
        # so this process and its workers write metric files the parent's /metrics merges
        os.environ[MULTIPROC_ENV] = str(metrics_dir(node))
        os.execv(sys.executable, [sys.executable, "-m", "ztunnel", *sys.argv[1:]])

    async def main() -> None:
        await ensure_credential(credential, node_id(trust_domain, node), how)
        ztunnel: Ztunnel | Supervisor = Supervisor(config, count) if count > 1 else Ztunnel(config)
        stop = stop_requested()
        taken = None
        if takeover is not None:
            try:
                taken = await take_over(takeover, node, VERSION, LISTENERS)
            except HandoverError as err:  # the running one serves on, untouched
                log.error("handover.failed", socket=str(takeover), reason=str(err))
                sys.exit(1)
        try:
            await ztunnel.start(taken)
        except HandoverError as err:  # the old one gave up on us: it serves on, we go
            log.error("handover.failed", socket=str(takeover), reason=str(err))
            await ztunnel.stop()
            sys.exit(1)
        stopping = asyncio.ensure_future(stop.wait())
        drained = asyncio.ensure_future(ztunnel.drained.wait())
        await asyncio.wait({stopping, drained}, return_when=asyncio.FIRST_COMPLETED)
        if not drained.done() and ztunnel.draining_since is not None:
            # replaced, then asked to stop (Kubernetes deletes the old pod once the new one is
            # ready): drain on; the pod's grace period, sized to the drain timeout, bounds it
            log.info("ztunnel.drain_continues", node=node)
            await drained
        elif not stopping.done() and after_drain == "wait":
            await ztunnel.stop()  # nothing left to relay: hold no socket, wait to be deleted
            log.info("ztunnel.drained_waiting", node=node)
            await stopping
            log.info("ztunnel.stopped", node=node, drained=True)
            return
        stopping.cancel()
        drained.cancel()
        await ztunnel.stop()
        log.info("ztunnel.stopped", node=node, drained=ztunnel.drained.is_set())

    try:
        uvloop.run(main())
    finally:
        # this ztunnel's own metric files (made before the exec, with this same pid)
        if count > 1 and os.environ.get(MULTIPROC_ENV, "").endswith(f"-{os.getpid()}"):
            shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)


def parse_workers(value: str) -> int:
    if value == "auto":
        return default_workers()
    try:
        count = int(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: want a number or auto", param_hint="--workers"
        ) from None
    if not 1 <= count <= MAX_WORKERS:
        raise click.BadParameter(f"{count}: want 1 to {MAX_WORKERS}", param_hint="--workers")
    return count


@cli.command(hidden=True)
@click.option("--node", required=True)
@click.option("--trust-domain", default="cluster.local")
@click.option("--index", type=int, required=True)
@click.option("--inbound-port", type=int, required=True)
@click.option("--control-fd", type=int, required=True)
@click.option("--listener", "listeners", multiple=True, help="KIND=FD, a listening socket.")
def worker(
    node: str,
    trust_domain: str,
    index: int,
    inbound_port: int,
    control_fd: int,
    listeners: tuple[str, ...],
) -> None:
    """One worker of `ztunnel run --workers N` (started by its parent, not by hand)."""
    configure_logging()
    fds = []
    for item in listeners:
        kind, _, fd = item.partition("=")
        fds.append((kind, int(fd)))
    uvloop.run(run_worker(node, trust_domain, index, inbound_port, control_fd, fds))


if __name__ == "__main__":
    cli()
