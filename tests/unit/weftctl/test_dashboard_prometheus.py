"""The dashboard's queries run by a real Prometheus (Debian's, on loopback) over metrics
exported with weft's own label sets (ztunnel.metrics, waypoint.telemetry): the PromQL parses,
the graph comes out with the demo's edges, and a counter series born inside the window (a
burst of refusals seen once) counts from zero instead of vanishing into rate()'s baseline.
Skipped without a prometheus binary."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tests.conftest import RUN_ID
from waypoint import telemetry
from weftctl.dashboard.server import Settings, make_app
from ztunnel import metrics as ztunnel_metrics

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus")

SCRAPE = 1  # second


class Exporter:
    """Istio's metrics with weft's label sets, in a registry of its own, served over HTTP."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        tcp = ztunnel_metrics.LABELS
        self.opened = Counter("istio_tcp_connections_opened", "", tcp, registry=self.registry)
        self.closed = Counter("istio_tcp_connections_closed", "", tcp, registry=self.registry)
        self.sent = Counter("istio_tcp_sent_bytes", "", tcp, registry=self.registry)
        self.received = Counter("istio_tcp_received_bytes", "", tcp, registry=self.registry)
        l7 = telemetry.LABELS
        self.requests = Counter("istio_requests", "", l7, registry=self.registry)
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "",
            l7,
            buckets=telemetry.DURATION_BUCKETS,
            registry=self.registry,
        )

    async def handle(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


def tcp_labels(
    src: str, dst: str, service: str, reporter: str = "source", flags: str = "-"
) -> dict[str, str]:
    return {
        "reporter": reporter,
        "source_workload": src,
        "source_workload_namespace": "demo",
        "source_principal": f"spiffe://cluster.local/ns/demo/sa/{src}",
        "destination_service": f"{service}.demo.svc.cluster.local" if service else "unknown",
        "destination_workload": dst,
        "destination_workload_namespace": "demo",
        "destination_principal": f"spiffe://cluster.local/ns/demo/sa/{dst}",
        "connection_security_policy": "mutual_tls",
        "response_flags": flags,
    }


def request_labels(src: str, dst: str, service: str, code: str) -> dict[str, str]:
    labels = dict.fromkeys(telemetry.LABELS, "")
    labels.update(
        reporter="waypoint",
        source_workload=src,
        source_workload_namespace="demo",
        destination_workload=dst,
        destination_workload_namespace="demo",
        destination_service=f"{service}.demo.svc.cluster.local",
        destination_service_name=service,
        destination_service_namespace="demo",
        response_code=code,
        response_flags="-",
        connection_security_policy="mutual_tls",
    )
    return labels


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(URL of a Prometheus scraping 127.0.0.1:<exporter port> every second, that port)."""
    exporter_port, port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {SCRAPE}s, evaluation_interval: {SCRAPE}s}}\n"
        "scrape_configs:\n"
        f"- job_name: weft-e-{RUN_ID}\n"
        f"  static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, f"prometheus exited {proc.returncode}"
                assert time.monotonic() < deadline, "prometheus not ready in 30s"
                time.sleep(0.2)
        yield url, exporter_port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def get_json(url: str) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def test_graph_queries_run_on_a_real_prometheus_and_count_new_series_from_zero(
    tmp_path: Path, prometheus: tuple[str, int]
) -> None:
    prom_url, exporter_port = prometheus
    exporter = Exporter()
    # what has happened by the first scrape
    exporter.opened.labels(**tcp_labels("traffic", "frontend", "frontend")).inc(6)
    for _ in range(30):
        exporter.requests.labels(
            **request_labels("frontend", "backend-v1", "backend-v1", "200")
        ).inc()
        exporter.duration.labels(
            **request_labels("frontend", "backend-v1", "backend-v1", "200")
        ).observe(4)

    async def go() -> None:
        app = web.Application()
        app.router.add_get("/metrics", exporter.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", exporter_port).start()
        dash = web.AppRunner(
            make_app(
                Settings(
                    lab_name=f"weft-e-{RUN_ID}-nolab",
                    prometheus_url=prom_url,
                    state_root=tmp_path,
                )
            ),
            access_log=None,
        )
        await dash.setup()
        site = web.TCPSite(dash, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{dash.addresses[0][1]}"
        try:
            await asyncio.sleep(3 * SCRAPE)
            # then: a burst of refusals, all of it between two scrapes (a new series)
            denied = tcp_labels("traffic", "tcp-echo", "tcp-echo", flags="UAEX")
            exporter.opened.labels(**denied).inc(3)
            exporter.closed.labels(**denied).inc(3)
            deadline = time.monotonic() + 20
            while True:
                data = await get_json(f"{base}/api/graph?window=1m")
                edges = {e["id"]: e for e in data["graph"]["edges"]}
                refused = edges.get("workload:demo/traffic->service:demo/tcp-echo")
                if refused or time.monotonic() > deadline:
                    break
                await asyncio.sleep(SCRAPE)
            assert refused is not None, edges
            # three refusals in a one-minute window, though Prometheus saw the series at 3 first
            assert refused["denial_rate"] == pytest.approx(3 / 60)
            assert refused["connection_rate"] == pytest.approx(3 / 60)
            v1 = edges["workload:demo/frontend->service:demo/backend-v1"]
            assert v1["request_rate"] == pytest.approx(30 / 60)
            assert v1["protocol"] == "http" and v1["security"] == "mutual_tls"
            frontend = edges["workload:demo/traffic->service:demo/frontend"]
            assert frontend["active_connections"] == 6  # opened, none closed
            signals = await get_json(f"{base}/api/service/demo/backend-v1?window=1m")
            assert signals["signals"]["request_rate"] == pytest.approx(30 / 60)
            assert signals["signals"]["error_ratio"] == 0.0
            # all 30 took 4 ms: the quantiles fall in the (1, 5] ms bucket
            assert 1 < signals["signals"]["p50_ms"] <= 5
            tcp_echo = await get_json(f"{base}/api/service/demo/tcp-echo?window=1m")
            assert tcp_echo["signals"]["denied_connection_rate"] == pytest.approx(3 / 60)
        finally:
            await dash.cleanup()
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(go(), 90))
