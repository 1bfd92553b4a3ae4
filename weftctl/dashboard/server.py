"""`weftctl dashboard`'s web server (aiohttp): the page, and a read-only JSON API over the
lab's Prometheus (rates), the lab daemon (who is enrolled, which pods) and `weftctl why`.

Every failure of what it reads from becomes a JSON `{"error": ...}` with a status that says
whose fault it was (400 the request, 502/503/504 Prometheus, the lab or `why`), never a
traceback; the page shows the message.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from lab import client as lab_client
from lab.config import STATE_ROOT
from lab.state import LabPaths
from weftctl.dashboard import graph, inventory, prometheus, promql
from weftctl.dashboard.prometheus import PrometheusClient, PrometheusUnavailable

log = structlog.get_logger("weftctl.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
INVENTORY_TTL = (
    5.0  # seconds a lab status is reused: the page refreshes more often than pods change
)
WHY_TIMEOUT = 30.0  # seconds for one explanation
WHY_CONCURRENCY = 2  # explanations computed at once ...
WHY_QUEUE = 4  # ... and waiting; past that, 429
MAX_ARG = 300  # characters of a `why` argument
_WHY_SRC = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
_WHY_DST = re.compile(r"^[A-Za-z0-9]([-.A-Za-z0-9]*[A-Za-z0-9])?(/[-.a-z0-9]+)?(:[0-9]{1,5})?$")
NO_PROMETHEUS = (
    "lab {lab!r} runs no Prometheus, so there are no rates to show: start the lab with "
    "`weftctl lab up --prometheus`, or point the dashboard at one with --prometheus URL"
)

WhyFunction = Callable[[str, str, str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Settings:
    lab_name: str = "default"
    prometheus_url: str | None = None  # None: the lab's (lab.prometheus.prometheus_url)
    refresh_seconds: int = 5
    allowed_hosts: frozenset[str] = frozenset()  # Host headers served; empty: any
    state_root: Path | None = None  # None: $WEFT_LAB_STATE or the default
    query_timeout: float = prometheus.QUERY_TIMEOUT
    max_body: int = prometheus.MAX_BODY
    max_series: int = prometheus.MAX_SERIES

    @property
    def paths(self) -> LabPaths:
        root = self.state_root or Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT))
        return LabPaths.for_lab(self.lab_name, root)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _lab_why() -> WhyFunction | None:
    """C's `weftctl why` as data, when this build has it."""
    try:
        from weftctl.whylab import why_json
    except ImportError:
        return None

    async def why(lab_name: str, src: str, dst: str) -> dict[str, Any]:
        return await why_json(lab_name, src, dst)

    return why


class Dashboard:
    """The state behind the routes: one HTTP session, the cached lab inventory."""

    def __init__(self, settings: Settings, why: WhyFunction | None) -> None:
        self.settings = settings
        self.why = why
        self.session: aiohttp.ClientSession | None = None
        self._inventory: tuple[float, inventory.Inventory, str] | None = None
        self._why_slots = asyncio.Semaphore(WHY_CONCURRENCY)
        self._why_waiting = 0

    # --- sources -------------------------------------------------------------------------

    def prometheus(self) -> PrometheusClient:
        url = self.settings.prometheus_url
        if url is None:
            from lab.prometheus import prometheus_url

            url = prometheus_url(self.settings.paths)
        if url is None:
            raise ApiError(503, NO_PROMETHEUS.format(lab=self.settings.lab_name), "no_prometheus")
        assert self.session is not None
        return PrometheusClient(
            url,
            self.session,
            timeout=self.settings.query_timeout,
            max_body=self.settings.max_body,
            max_series=self.settings.max_series,
        )

    async def inventory(self) -> tuple[inventory.Inventory, str]:
        """The lab's inventory (cached briefly), and a warning when it could not be read: the
        graph is still drawn from the metrics alone, without enrollment and pods."""
        now = time.monotonic()
        if self._inventory is not None and now - self._inventory[0] < INVENTORY_TTL:
            return self._inventory[1], self._inventory[2]
        warning = ""
        inv = inventory.Inventory()
        try:
            status = await asyncio.to_thread(
                lab_client.request, self.settings.paths, "GET", "/v1/status", None, 10
            )
            inv = inventory.from_status(status)
        except lab_client.LabUnavailable as err:
            warning = f"lab {self.settings.lab_name!r} is not answering ({err}): no pods known"
        except (lab_client.LabRequestFailed, inventory.InventoryError) as err:
            warning = f"lab {self.settings.lab_name!r} status unreadable: {err}"
        if warning:
            log.warning("dashboard.inventory_failed", lab=self.settings.lab_name, reason=warning)
        self._inventory = (now, inv, warning)
        return inv, warning

    async def vectors(self, queries: Mapping[str, str]) -> dict[str, promql.Vector]:
        client = self.prometheus()
        try:
            return await client.query_all(queries)
        except PrometheusUnavailable as err:
            raise ApiError(503, str(err), "prometheus_unavailable") from None
        except promql.PrometheusError as err:
            raise ApiError(502, str(err), "prometheus_error") from None

    # --- routes --------------------------------------------------------------------------

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "lab": self.settings.lab_name,
                "refresh_seconds": self.settings.refresh_seconds,
                "window": promql.DEFAULT_WINDOW,
                "why": self.why is not None,
            }
        )

    async def graph(self, request: web.Request) -> web.Response:
        window = _window(request)
        namespace = request.query.get("namespace", "")
        try:
            if namespace:
                promql.check_name("namespace", namespace)
        except promql.QueryError as err:
            raise ApiError(400, str(err), "bad_request") from None
        vectors = await self.vectors(promql.graph_queries(window))
        inv, warning = await self.inventory()
        data = graph.GraphInput(**{k: v.samples for k, v in vectors.items()})
        built = graph.build(data, inv, namespace=namespace)
        dropped = sum(v.dropped for v in vectors.values())
        warnings = [warning] if warning else []
        if dropped:
            warnings.append(f"{dropped} series past the dashboard's bound were not read")
        if built.dropped_nodes:
            warnings.append(f"{built.dropped_nodes} least busy nodes left out of the picture")
        return web.json_response(
            {
                "lab": self.settings.lab_name,
                "window": window.text,
                "namespace": namespace,
                "time": time.time(),
                "graph": built.to_json(),
                "dropped_series": dropped,
                "warnings": warnings,
            }
        )

    async def signals(self, request: web.Request) -> web.Response:
        window = _window(request)
        try:
            target = promql.Target.of(
                request.match_info["kind"], request.match_info["ns"], request.match_info["name"]
            )
        except promql.QueryError as err:
            raise ApiError(400, str(err), "bad_request") from None
        vectors = await self.vectors(promql.signal_queries(target, window))
        values = {k: promql.scalar(v) for k, v in vectors.items()}
        requests = values.get("request_rate")
        errors = values.get("error_rate")
        return web.json_response(
            {
                "kind": target.kind,
                "namespace": target.namespace,
                "name": target.name,
                "window": window.text,
                "signals": {
                    **values,
                    "error_ratio": (errors or 0.0) / requests if requests else None,
                },
            }
        )

    async def explain(self, request: web.Request) -> web.Response:
        src = request.query.get("src", "")
        dst = request.query.get("dst", "")
        if not _WHY_SRC.match(src[:MAX_ARG]) or len(src) > MAX_ARG:
            raise ApiError(400, f"src: expected NAMESPACE/POD, got {src[:80]!r}", "bad_request")
        if not _WHY_DST.match(dst[:MAX_ARG]) or len(dst) > MAX_ARG:
            raise ApiError(
                400,
                f"dst: expected NAMESPACE/POD[:PORT], SERVICE.NAMESPACE[:PORT] or IP:PORT, "
                f"got {dst[:80]!r}",
                "bad_request",
            )
        if self.why is None:
            raise ApiError(501, "this weftctl has no `why` (weftctl.whylab)", "no_why")
        if self._why_waiting >= WHY_CONCURRENCY + WHY_QUEUE:
            raise ApiError(429, "too many explanations asked at once; try again", "busy")
        self._why_waiting += 1
        try:
            async with self._why_slots:
                answer = await asyncio.wait_for(
                    self.why(self.settings.lab_name, src, dst), WHY_TIMEOUT
                )
        except TimeoutError:
            raise ApiError(504, f"why {src} {dst}: no answer in {WHY_TIMEOUT:g}s", "why") from None
        except ApiError:
            raise
        except Exception as err:  # whatever `why` raises is the page's message, not a 500
            log.warning("dashboard.why_failed", src=src, dst=dst, error=repr(err))
            raise ApiError(502, f"why {src} {dst}: {err}", "why") from None
        finally:
            self._why_waiting -= 1
        return web.json_response({"src": src, "dst": dst, "why": answer})

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")


def _window(request: web.Request) -> promql.Window:
    try:
        return promql.parse_window(request.query.get("window", promql.DEFAULT_WINDOW))
    except promql.QueryError as err:
        raise ApiError(400, str(err), "bad_request") from None


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ApiError as err:
        log.info("dashboard.api_error", path=request.path, status=err.status, error=err.message)
        response = web.json_response({"error": err.message, "code": err.code}, status=err.status)
    # The page loads nothing from elsewhere and runs no inline script.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def _host_check(allowed: frozenset[str]) -> Middleware:
    """Serve only requests addressed to us by name: a page elsewhere that rebinds its own
    DNS name to 127.0.0.1 must not read the mesh's identities through a loopback dashboard."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if allowed and request.host.lower() not in allowed:
            return web.json_response(
                {"error": f"Host {request.host[:100]!r} is not this dashboard's address"},
                status=421,
            )
        return await handler(request)

    return check


def make_app(settings: Settings) -> web.Application:
    dashboard = Dashboard(settings, _lab_why())
    app = web.Application(middlewares=[_host_check(settings.allowed_hosts), _errors])

    async def session(app: web.Application) -> Any:
        dashboard.session = aiohttp.ClientSession()
        yield
        await dashboard.session.close()

    app.cleanup_ctx.append(session)
    app.router.add_get("/", dashboard.index)
    app.router.add_get("/api/config", dashboard.config)
    app.router.add_get("/api/graph", dashboard.graph)
    app.router.add_get(r"/api/{kind:service|workload}/{ns}/{name}", dashboard.signals)
    app.router.add_get("/api/why", dashboard.explain)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app
