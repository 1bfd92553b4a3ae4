"""Ask a Prometheus server instant queries over its HTTP API, with bounded answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import aiohttp
import structlog

from weftctl.dashboard.promql import PrometheusError, Vector, parse_vector

log = structlog.get_logger("weftctl.dashboard")

QUERY_TIMEOUT = 10.0  # seconds, for one query (Prometheus's own default is 2 min)
MAX_BODY = 8 * 1024 * 1024  # bytes of one answer read at most
MAX_SERIES = 5000  # series of one answer read at most (the rest counted as dropped)


class PrometheusUnavailable(PrometheusError):
    """Prometheus did not answer (refused, timed out, not HTTP)."""


class PrometheusClient:
    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout: float = QUERY_TIMEOUT,
        max_body: int = MAX_BODY,
        max_series: int = MAX_SERIES,
    ) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.max_body = max_body
        self.max_series = max_series

    async def query(self, name: str, promql: str) -> Vector:
        """One instant query; PrometheusError (naming `name`) on any failure."""
        try:
            async with self.session.get(
                f"{self.url}/api/v1/query",
                params={"query": promql},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                raw = await resp.content.read(self.max_body + 1)
                status = resp.status
        except TimeoutError:
            raise PrometheusUnavailable(
                f"query {name}: Prometheus at {self.url} did not answer in {self.timeout:g}s"
            ) from None
        except aiohttp.ClientError as err:
            raise PrometheusUnavailable(
                f"query {name}: cannot reach Prometheus at {self.url}: {err}"
            ) from None
        if len(raw) > self.max_body:
            raise PrometheusError(
                f"query {name}: answer larger than {self.max_body // 1024} KiB, not read"
            )
        try:
            body = json.loads(raw)
        except ValueError:
            raise PrometheusError(
                f"query {name}: Prometheus at {self.url} answered HTTP {status}, not JSON"
            ) from None
        vector = parse_vector(body, name, self.max_series)
        if vector.dropped:
            log.warning("dashboard.series_dropped", query=name, dropped=vector.dropped)
        return vector

    async def query_all(self, queries: Mapping[str, str]) -> dict[str, Vector]:
        """Several queries at once; the first failure is raised."""
        names = list(queries)
        results = await asyncio.gather(*(self.query(n, queries[n]) for n in names))
        return dict(zip(names, results, strict=True))
