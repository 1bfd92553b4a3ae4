"""`python -m waypoint run --gateway NS/NAME ...`: the waypoint process. NOT RUNNABLE YET.

The data path is a library today (`waypoint.proxy.Waypoint`, tested in process on real mTLS
in tests/integration/waypoint/). What a process still lacks, and this command says so
instead of pretending:

- a credential of its own: the controller's CA signs workload certificates only for a
  node's ztunnel (node-scoped, `meshcore.configclient.NodeCredential`); a waypoint pod has
  no way yet to prove it runs as `spiffe://<td>/ns/<ns>/sa/<gateway>` (Istio uses the pod's
  ServiceAccount token) and so cannot fetch its SVID nor subscribe to the mesh state;
- the mesh state feed: `WaypointView.update()` takes what `ConfigClient.state` holds, but
  the controller does not yet send HTTPRoutes to a waypoint, nor accept a waypoint as a
  subscriber;
- the 15020 metrics and 15021 readiness listeners (meshcore.adminserver, as ztunnel's);
- the lab wiring: the controller's deployer starting this process in the waypoint's pods.
"""

from __future__ import annotations

import click

from meshcore.resources.errors import ManifestError
from meshcore.resources.names import check_dns_label

MISSING = (
    "the waypoint cannot run as a process yet: it has no credential to fetch its own "
    "certificate or subscribe to the mesh state (the controller serves nodes only), and no "
    "metrics/readiness listeners. Its data path is a library (waypoint.proxy) tested in "
    "process: see waypoint/README.md"
)


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
    callback=_gateway,
    help="The Gateway (class weft-waypoint) this waypoint serves, as NAMESPACE/NAME.",
)
@click.option("--controller", default="", help="host:port of the controller's gRPC.")
@click.option("--trust-domain", default="cluster.local", show_default=True)
def run(gateway: tuple[str, str], controller: str, trust_domain: str) -> None:
    """Serve HBONE on 15008 as the Gateway's identity (not runnable yet: says what is missing)."""
    namespace, name = gateway
    raise click.ClickException(
        f"waypoint {namespace}/{name} (spiffe://{trust_domain}/ns/{namespace}/sa/{name}): "
        + MISSING
    )


if __name__ == "__main__":
    cli()
