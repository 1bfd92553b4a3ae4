"""`python -m waypoint run --gateway NS/NAME ...`: the waypoint process (waypoint/app.py).

Every option falls back to the environment the controller's deployer (and the lab) give a
waypoint pod: `WEFT_GATEWAY`, `WEFT_CONTROLLER_ADDR`, `WEFT_TRUST_DOMAIN`, and
`WEFT_CREDENTIAL`, the folder of the pod's credential (key.pem, cert.pem, roots.pem for
`spiffe://<td>/ns/<ns>/sa/<gateway>`); `WEFT_OTLP_ENDPOINT`, where spans go (unset: none); and
`WEFT_REDIS_ADDR`, the Redis of Global RateLimitPolicy counters (unset: none);
`WEFT_OTLP_LOGS_ENDPOINT`, where access-log records go over OTLP (unset: none).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import structlog
import uvloop

from meshcore import nodeoptions
from meshcore.identity.certs import CertificateError
from meshcore.identity.spiffe import workload_id
from meshcore.logs import configure_logging
from meshcore.nodebootstrap import WAYPOINT_RPC, ensure_credential
from meshcore.resources.errors import ManifestError
from meshcore.resources.names import check_dns_label
from meshcore.signals import stop_requested
from waypoint import telemetry
from waypoint.app import WaypointProcess, WaypointProcessConfig
from waypoint.pathnorm import DEFAULT as DEFAULT_PATH_NORMALIZATION
from waypoint.pathnorm import PathNormalization, parse_mode

log = structlog.get_logger("waypoint")


def _gateway(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise click.BadParameter(f"{value!r} is not <namespace>/<gateway name>")
    try:
        check_dns_label(namespace, "namespace")
        check_dns_label(name, "name")
    except ManifestError as err:
        raise click.BadParameter(str(err)) from None
    return namespace, name


@click.group()
def cli() -> None:
    """weft waypoint: the L7 proxy of a namespace (or Service)."""


@cli.command()
@click.option(
    "--gateway",
    required=True,
    envvar="WEFT_GATEWAY",
    callback=_gateway,
    help="The Gateway (class weft-waypoint) this waypoint serves, as NAMESPACE/NAME.",
)
@click.option(
    "--controller",
    required=True,
    envvar="WEFT_CONTROLLER_ADDR",
    help="host:port of the controller's gRPC.",
)
@click.option(
    "--trust-domain", default="cluster.local", show_default=True, envvar="WEFT_TRUST_DOMAIN"
)
@click.option(
    "--credential",
    required=True,
    envvar="WEFT_CREDENTIAL",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="The pod's credential folder (key.pem, cert.pem, roots.pem) for the Gateway's "
    "service account.",
)
@click.option(
    "--hbone-addr",
    type=nodeoptions.ListenAddress(),
    default=WaypointProcessConfig.hbone_addr,
    show_default=True,
    help="host:port of the HBONE listener (mTLS, the waypoint's own certificate).",
)
@click.option(
    "--otlp-endpoint",
    default="",
    envvar="WEFT_OTLP_ENDPOINT",
    help="OTLP/gRPC collector for spans (host:port, or an http:// or https:// URL); "
    "unset: no spans (trace context is still propagated).",
)
@click.option(
    "--node",
    default="",
    envvar="NODE_NAME",
    help="The node this replica runs on (the deployer sets NODE_NAME from spec.nodeName), "
    "named in its access events.",
)
@click.option(
    "--otlp-logs-endpoint",
    default="",
    envvar="WEFT_OTLP_LOGS_ENDPOINT",
    help="OTLP/gRPC collector for the access log (host:port, or an http:// or https:// URL), "
    "one log record per request or TCP stream; unset: none.",
)
@click.option(
    "--redis-addr",
    default="",
    envvar="WEFT_REDIS_ADDR",
    help="Redis for Global RateLimitPolicy counters (host:port or unix:/path); unset: Global "
    "policies decide by their failureMode.",
)
@click.option(
    "--path-normalization",
    type=click.Choice([m.value for m in PathNormalization], case_sensitive=False),
    default=DEFAULT_PATH_NORMALIZATION.value,
    show_default=True,
    envvar="WEFT_PATH_NORMALIZATION",
    help="How request paths are normalised before AuthorizationPolicy paths are matched "
    "(Istio's meshConfig pathNormalization).",
)
@nodeoptions.bootstrap
@nodeoptions.ADMIN_SOCKET
@nodeoptions.admin_addr(WaypointProcessConfig.admin_addr)
@nodeoptions.metrics_addr(WaypointProcessConfig.metrics_addr)
@nodeoptions.readiness_addr(WaypointProcessConfig.readiness_addr)
def run(
    gateway: tuple[str, str],
    controller: str,
    trust_domain: str,
    credential: Path,
    hbone_addr: str,
    otlp_endpoint: str,
    node: str,
    otlp_logs_endpoint: str,
    redis_addr: str,
    path_normalization: str,
    bootstrap_token: Path | None,
    bootstrap_controller: str,
    controller_roots: Path | None,
    admin_socket: Path | None,
    admin_addr: str,
    metrics_addr: str,
    readiness_addr: str,
) -> None:
    """Serve HBONE on 15008 as the Gateway's identity and route what is bound to it."""
    configure_logging()
    namespace, name = gateway
    config = WaypointProcessConfig(
        namespace=namespace,
        name=name,
        controller=controller,
        credential=credential,
        trust_domain=trust_domain,
        hbone_addr=hbone_addr,
        admin_socket=admin_socket,
        admin_addr=admin_addr,
        metrics_addr=metrics_addr,
        readiness_addr=readiness_addr,
        otlp_endpoint=otlp_endpoint,
        otlp_logs_endpoint=otlp_logs_endpoint,
        node=node,
        redis_addr=redis_addr,
        path_normalization=parse_mode(path_normalization),
    )
    how = nodeoptions.bootstrap_from(bootstrap_token, bootstrap_controller, controller_roots)
    if how is not None:  # (Kubernetes: the pod's token for its credential, before starting)
        identity = workload_id(trust_domain, namespace, name)
        uvloop.run(ensure_credential(credential, identity, how, WAYPOINT_RPC))
    try:
        process = WaypointProcess(config)
    except (CertificateError, OSError) as err:
        raise click.ClickException(f"waypoint {namespace}/{name}: {err}") from None

    async def main() -> int:
        stop = stop_requested()
        telemetry.ACCESS_LOG.open(sys.stderr)
        await process.start()
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(process.failed.wait())}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await process.stop()
        telemetry.ACCESS_LOG.close()
        log.info("waypoint.stopped", gateway=f"{namespace}/{name}", failed=process.failed.is_set())
        return 1 if process.failed.is_set() else 0

    if uvloop.run(main()):
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
