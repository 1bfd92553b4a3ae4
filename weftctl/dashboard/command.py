"""`weftctl dashboard`: serve the live service graph of a lab in a web page."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass

import click
from aiohttp import web

from weftctl.dashboard.server import Settings, make_app

DEFAULT_ADDRESS = "127.0.0.1:15400"


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    loopback: bool

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def allowed_hosts(self) -> frozenset[str]:
        """Host headers a browser sends for this address (names of loopback included)."""
        if not self.loopback:
            return frozenset()
        hosts = {self.url_host, "localhost", "127.0.0.1", "[::1]"}
        return frozenset(f"{h}:{self.port}" for h in hosts)


def parse_address(text: str) -> Address:
    """`HOST:PORT` (`[V6]:PORT` for IPv6); ValueError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port: not a number in {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port: must be 1..65535, got {port}")
    if host == "localhost":
        return Address("127.0.0.1", port, True)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host: {host!r} is not an IP address (or localhost)") from None
    return Address(str(ip), port, ip.is_loopback)


@click.command()
@click.option(
    "--lab", "lab_name", default="default", envvar="WEFT_LAB", show_default=True, help="Which lab."
)
@click.option(
    "--address",
    default=DEFAULT_ADDRESS,
    show_default=True,
    help="HOST:PORT to serve on; a loopback address unless --allow-remote.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a non-loopback --address. The page shows every workload's identity and runs "
    "`weftctl why` for whoever asks, without authentication: only on a network you trust.",
)
@click.option(
    "--prometheus",
    "prometheus_url",
    default=None,
    metavar="URL",
    help="Prometheus to read rates from (default: the lab's, from `weftctl lab up --prometheus`).",
)
@click.option(
    "--refresh",
    type=click.IntRange(2, 300),
    default=5,
    show_default=True,
    help="Seconds between the page's refreshes.",
)
def dashboard(
    lab_name: str, address: str, allow_remote: bool, prometheus_url: str | None, refresh: int
) -> None:
    """Serve a web view of the mesh: the live service graph (request and connection rates,
    errors, mTLS, policy denials), each Service's golden signals, and `weftctl why` for an
    edge you click. Read-only; rates come from Prometheus."""
    try:
        addr = parse_address(address)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--address") from None
    if not addr.loopback and not allow_remote:
        raise click.BadParameter(
            f"{addr.host} is not a loopback address; the page shows identities and runs "
            "`why` without authentication, so serving it beyond this machine needs "
            "--allow-remote",
            param_hint="--address",
        )
    settings = Settings(
        lab_name=lab_name,
        prometheus_url=prometheus_url,
        refresh_seconds=refresh,
        allowed_hosts=addr.allowed_hosts(),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, addr))


async def _serve(settings: Settings, addr: Address) -> None:
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, addr.host, addr.port, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            raise click.ClickException(f"cannot listen on {addr.host}:{addr.port}: {err}") from None
        click.echo(
            f"dashboard of lab {settings.lab_name!r} at http://{addr.url_host}:{addr.port}/ "
            "(Ctrl-C to stop)",
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
