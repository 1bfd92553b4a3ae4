"""The HTTP side of a weft process (admin, readiness, metrics): one aiohttp app served on a
unix socket (for weftctl and the lab) and on TCP ports. The client is meshcore.adminclient."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def serve(
    routes: Iterable[web.RouteDef], *, socket: Path | None, host: str, ports: Iterable[int]
) -> web.AppRunner:
    """Start serving `routes`; ports of 0 are skipped. Call `cleanup()` on the result to stop."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    if socket is not None:
        socket.parent.mkdir(parents=True, exist_ok=True)
        socket.unlink(missing_ok=True)
        await web.UnixSite(runner, str(socket)).start()
    for port in ports:
        if port:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def metrics(_request: web.Request) -> web.Response:
    """Prometheus metrics of this process (the default registry)."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
