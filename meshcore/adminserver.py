"""The HTTP side of a weft process (admin, readiness, metrics), as Istio splits it: each job
is its own listener with only its own routes, bound to the narrowest address the job allows.

- admin (config dumps, debug state): the unix socket (weftctl, the lab) and localhost only;
- metrics: `/metrics` and nothing else, where a scraper reaches it;
- readiness: the readiness path and nothing else, where a prober reaches it.

The client is meshcore.adminclient.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshcore.ports import PortError, parse_port

Handler = Callable[[web.Request], Awaitable[web.Response]]
log = structlog.get_logger("adminserver")


class AddressError(ValueError):
    """A listener address setting that is not `host:port`."""

    def __init__(self, setting: str, value: str, reason: str) -> None:
        super().__init__(f"{setting}: {value!r}: {reason} (want host:port, e.g. 127.0.0.1:15000)")
        self.setting = setting
        self.value = value


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_addr(value: str, setting: str = "address") -> Address | None:
    """`127.0.0.1:15000`, `[::1]:15000`, `0.0.0.0:15020` -> Address; `""` or port 0 -> None
    (the listener is off). The host must be an IP address: a listener says where it binds."""
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise AddressError(setting, value, "no host")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(setting, value, "an IPv6 address goes in brackets, [::1]:15000")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(setting, value, f"{host!r} is not an IP address") from None
    if port_text == "0":
        return None  # off
    try:
        port = parse_port(port_text)
    except PortError as err:
        raise AddressError(setting, value, str(err)) from None
    return Address(host, port)


@dataclass(frozen=True)
class Listener:
    """One HTTP listener: its job (for logs), the routes the job needs, and where it binds.
    `addr` is a setting as parse_addr reads it (`""` or port 0: no TCP listener); `socket`
    is a unix socket serving the same routes."""

    job: str
    routes: tuple[web.RouteDef, ...]
    addr: str = ""
    socket: Path | None = None


async def serve(listeners: Iterable[Listener]) -> list[web.AppRunner]:
    """Start every listener, each with only its own routes (anything else is a 404). Call
    `cleanup()` on each runner returned to stop."""
    runners: list[web.AppRunner] = []
    try:
        for listener in listeners:
            runners.append(await _serve_one(listener))
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners


async def _serve_one(listener: Listener) -> web.AppRunner:
    addr = parse_addr(listener.addr, f"{listener.job}_addr")
    app = web.Application()
    app.add_routes(listener.routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        if listener.socket is not None:
            listener.socket.parent.mkdir(parents=True, exist_ok=True)
            listener.socket.unlink(missing_ok=True)
            await web.UnixSite(runner, str(listener.socket)).start()
        if addr is not None:
            await web.TCPSite(runner, addr.host, addr.port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info(
        "http.listening",
        job=listener.job,
        addr=str(addr) if addr else None,
        socket=str(listener.socket) if listener.socket else None,
        paths=sorted({r.path for r in listener.routes}),
    )
    return runner


async def metrics(_request: web.Request) -> web.Response:
    """Prometheus metrics of this process (the default registry)."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve_proxy(
    config_dump: Handler,
    ready: asyncio.Event,
    *,
    admin_addr: str,
    admin_socket: Path | None,
    metrics_addr: str,
    readiness_addr: str,
    admin_routes: Iterable[web.RouteDef] = (),
) -> list[web.AppRunner]:
    """A data-path proxy's three listeners (ztunnel, waypoint), as Istio's: admin
    (`/config_dump`, readiness, metrics, and `admin_routes`: `/tap`...) on `admin_addr` and
    the unix socket; metrics only on `metrics_addr`; `/healthz/ready` (200 once `ready` is
    set, else 503) only on `readiness_addr`."""

    async def readiness(_request: web.Request) -> web.Response:
        if ready.is_set():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    ready_route = web.get("/healthz/ready", readiness)
    metric_routes = (
        web.get("/metrics", metrics),
        web.get("/stats/prometheus", metrics),
    )
    admin = (web.get("/config_dump", config_dump), ready_route, *metric_routes, *admin_routes)
    return await serve(
        [
            Listener("admin", admin, admin_addr, admin_socket),
            Listener("metrics", metric_routes, metrics_addr),
            Listener("readiness", (ready_route,), readiness_addr),
        ]
    )
