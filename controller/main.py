"""`python -m controller run ...`: the controller process; and its bootstrap helpers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import structlog
import uvloop

from controller.app import Controller, ControllerConfig
from controller.bootstrap import TokenReviewer
from controller.ca import CertificateAuthority
from controller.kubesource import KubernetesSource, KubeSettings, api_client
from controller.kubewriter import KubernetesObjectWriter
from controller.nodeauth import NodeTokenPolicy
from controller.revocation import REVOKED_NODES_FILE, revoke
from controller.sources import LocalSource, Source
from meshcore import nodeoptions
from meshcore.configclient import NodeCredential
from meshcore.logs import configure_logging
from meshcore.signals import run_until_stopped, stop_requested

log = structlog.get_logger("controller")


@click.group()
def cli() -> None:
    """weft controller."""


@cli.command()
@click.option(
    "--source",
    "source_kind",
    type=click.Choice(["folder", "kubernetes"]),
    default="folder",
    show_default=True,
    help="Where the cluster is read from: a folder of YAML (--source-dir), or a Kubernetes "
    "API server (--kubeconfig, or in-cluster).",
)
@click.option(
    "--source-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of Kubernetes YAML to watch (the lab's manifests folder); --source folder.",
)
@click.option(
    "--kubeconfig",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="kubeconfig of the API server to watch (--source kubernetes); default: in-cluster.",
)
@click.option(
    "--bootstrap-listen",
    default="0.0.0.0:15013",
    show_default=True,
    help="--source kubernetes: where nodes trade their ServiceAccount token (audience weft) "
    "for a node credential; empty: off.",
)
@click.option(
    "--waypoint-image",
    default=ControllerConfig.waypoint_image,
    show_default=True,
    help="--source kubernetes: the image of the waypoint pods it deploys.",
)
@click.option(
    "--node-service-account",
    default="weft-system/weft-node",
    show_default=True,
    help="namespace/name of the node DaemonSet's ServiceAccount: the only one whose tokens "
    "make nodes.",
)
@click.option(
    "--state-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Where the CA root is kept (created 0700).",
)
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option(
    "--plugin-ca",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder with ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem.",
)
@click.option("--grpc-listen", default="0.0.0.0:15012", show_default=True)
@nodeoptions.admin_addr(ControllerConfig.admin_addr)
@nodeoptions.metrics_addr(ControllerConfig.metrics_addr)
@nodeoptions.readiness_addr(ControllerConfig.readiness_addr)
@nodeoptions.ADMIN_SOCKET
@click.option(
    "--extra-root",
    "extra_roots",
    multiple=True,
    type=click.Path(path_type=Path),
    help="PEM file of another root to trust (e.g. the next root while rotating); it is sent "
    "to every node in the trust bundle. Repeatable.",
)
@click.option(
    "--serving-address",
    "serving_addresses",
    multiple=True,
    help="Extra DNS name or IP for the serving certificate. Repeatable.",
)
@click.option(
    "--lab-api",
    type=click.Path(path_type=Path),
    default=None,
    help="The lab daemon's API socket: the waypoint deployer writes the Deployments, "
    "Services and ServiceAccounts it makes for waypoint Gateways, and their status, there.",
)
@click.option(
    "--waypoint-otlp-endpoint",
    envvar="WEFT_WAYPOINT_OTLP_ENDPOINT",
    default="",
    help="OTLP/gRPC collector for the spans of the waypoints it deploys (host:port, or an "
    "http:// or https:// URL), set as WEFT_OTLP_ENDPOINT in their pods; empty: no spans. "
    "Env: WEFT_WAYPOINT_OTLP_ENDPOINT.",
)
@click.option(
    "--waypoint-redis-addr",
    envvar="WEFT_WAYPOINT_REDIS_ADDR",
    default="",
    help="Redis for Global RateLimitPolicy counters (host:port or unix:/path), set as "
    "WEFT_REDIS_ADDR in the pods of the waypoints it deploys; empty: none (Global policies "
    "then decide by their failureMode). Env: WEFT_WAYPOINT_REDIS_ADDR.",
)
def run(
    source_kind: str,
    source_dir: Path | None,
    kubeconfig: Path | None,
    bootstrap_listen: str,
    waypoint_image: str,
    node_service_account: str,
    state_dir: Path,
    trust_domain: str,
    plugin_ca: Path | None,
    grpc_listen: str,
    admin_addr: str,
    metrics_addr: str,
    readiness_addr: str,
    admin_socket: Path | None,
    extra_roots: tuple[Path, ...],
    serving_addresses: tuple[str, ...],
    lab_api: Path | None,
    waypoint_otlp_endpoint: str,
    waypoint_redis_addr: str,
) -> None:
    """Watch the source, serve mesh state and certificates to nodes."""
    configure_logging()
    config = ControllerConfig(
        trust_domain=trust_domain,
        state_dir=state_dir,
        plugin_ca_dir=plugin_ca,
        grpc_listen=grpc_listen,
        admin_addr=admin_addr,
        metrics_addr=metrics_addr,
        readiness_addr=readiness_addr,
        admin_socket=admin_socket,
        serving_addresses=serving_addresses,
        extra_roots=extra_roots,
        lab_api=lab_api,
        waypoint_otlp_endpoint=waypoint_otlp_endpoint,
        waypoint_redis_addr=waypoint_redis_addr,
        bootstrap_listen=bootstrap_listen if source_kind == "kubernetes" else "",
        node_token_policy=NodeTokenPolicy(node_service_account),
        waypoint_image=waypoint_image,
    )
    if source_kind == "folder" and source_dir is None:
        raise click.UsageError("--source folder needs --source-dir")
    if "/" not in node_service_account:
        raise click.BadParameter("expected namespace/name", param_hint="--node-service-account")

    async def main() -> None:
        source: Source
        reviewer, cluster = None, None
        if source_kind == "kubernetes":
            settings = KubeSettings(kubeconfig=kubeconfig)
            api = api_client(settings)
            source = KubernetesSource(settings, api)
            reviewer = TokenReviewer(api, config.node_token_policy.audience)
            cluster = KubernetesObjectWriter(api)
        else:
            assert source_dir is not None
            source = LocalSource(source_dir)
        controller = Controller(config, source, reviewer, cluster)
        stop = stop_requested()
        await controller.start()
        follower = asyncio.create_task(controller.run())
        await run_until_stopped(follower, stop)
        if follower.done() and not follower.cancelled() and follower.exception():
            log.error("controller.source_failed", error=str(follower.exception()))
        await controller.stop()
        log.info("controller.stopped")

    uvloop.run(main())


@cli.command("issue-node-credential")
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--node", required=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for key.pem, cert.pem and roots.pem (created 0700).",
)
def issue_node_credential(state_dir: Path, trust_domain: str, node: str, out: Path) -> None:
    """Write a node's credential for talking to the controller (lab bootstrap)."""
    ca = CertificateAuthority.load_or_create(state_dir / "ca", trust_domain)
    write_node_credential(ca, node, out)
    click.echo(f"wrote {out}/key.pem, cert.pem, roots.pem for node {node}")


@cli.command("revoke-node")
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
@click.option("--node", required=True)
def revoke_node(state_dir: Path, node: str) -> None:
    """Stop serving a node whatever credential it presents, and stop renewing its credential
    (takes effect on a running controller within seconds)."""
    revoke(state_dir / REVOKED_NODES_FILE, node)
    click.echo(f"revoked node {node} (listed in {state_dir / REVOKED_NODES_FILE})")


def write_node_credential(ca: CertificateAuthority, node: str, out: Path) -> None:
    """A new credential for `node` in `out` (key.pem, cert.pem, roots.pem: 0600, folder 0700),
    valid for NODE_CREDENTIAL_TTL; the node renews it from then on."""
    key_pem, cert_pem = ca.issue_node_credential(node)
    NodeCredential(key_pem, cert_pem, "".join(ca.trust_bundle).encode()).save(out)


def write_workload_credential(
    ca: CertificateAuthority, namespace: str, service_account: str, out: Path
) -> None:
    """A pod's credential for `namespace`/`service_account` in `out` (as `write_node_credential`
    writes a node's): what the lab gives a waypoint replica, as the kubelet projects a
    ServiceAccount token. Valid for WORKLOAD_CREDENTIAL_TTL; the pod's SVID replaces it."""
    key_pem, cert_pem = ca.issue_workload_credential(namespace, service_account)
    NodeCredential(key_pem, cert_pem, "".join(ca.trust_bundle).encode()).save(out)


if __name__ == "__main__":
    cli()
