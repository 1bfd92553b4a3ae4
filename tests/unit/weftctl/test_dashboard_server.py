"""`weftctl dashboard`'s API and page, against a stand-in Prometheus (an HTTP server that
answers `/api/v1/query` with recorded-shape vectors, or fails as a Prometheus can) and no
lab: bounds, error messages, read-only routes, the Host check, and the page in headless
Chromium (skipped when Debian's chromium is not installed)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.chromium import Chromium, chromium_binary
from tests.conftest import RUN_ID
from weftctl.dashboard import promql
from weftctl.dashboard.graph import GraphInput
from weftctl.dashboard.promql import Sample, parse_window
from weftctl.dashboard.server import Settings, make_app

Answer = Callable[[str], Awaitable[web.StreamResponse]]


def vector(samples: tuple[Sample, ...] | list[Sample]) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": dict(s.labels), "value": [1796081642.79, repr(s.value)]} for s in samples
            ],
        },
    }


def demo_answers(window: str = "1m") -> dict[str, dict[str, Any]]:
    """Each graph query of `window` -> the demo's answer (tests/unit/weftctl/test_dashboard_graph)."""
    from test_dashboard_graph import demo_input  # (same folder; pytest puts it on sys.path)

    data: GraphInput = demo_input()
    return {
        q: vector(getattr(data, name))
        for name, q in promql.graph_queries(parse_window(window)).items()
    }


class StandInPrometheus:
    """Answers each query from `answers` (by exact PromQL), else an empty vector; `fail`
    replaces every answer with what a broken Prometheus sends."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.fail: Answer | None = None
        self.queries: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = request.query.get("query", "")
        self.queries.append(query)
        if self.fail is not None:
            return await self.fail(query)
        return web.json_response(self.answers.get(query, vector([])))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def dashboard(
    tmp_path: Path, prometheus: StandInPrometheus | str | None, **settings: Any
) -> AsyncIterator[str]:
    """A dashboard of a lab that does not exist (no daemon under tmp_path), reading from the
    stand-in (or a URL, or the lab's Prometheus when None); its base URL."""
    lab = f"weft-e-{RUN_ID}-nolab"
    if isinstance(prometheus, StandInPrometheus):
        prom_app = web.Application()
        prom_app.router.add_get("/api/v1/query", prometheus.handle)
        async with serve(prom_app) as prom_url:
            app = make_app(
                Settings(lab_name=lab, prometheus_url=prom_url, state_root=tmp_path, **settings)
            )
            async with serve(app) as url:
                yield url
        return
    app = make_app(
        Settings(lab_name=lab, prometheus_url=prometheus, state_root=tmp_path, **settings)
    )
    async with serve(app) as url:
        yield url


async def get(url: str, **kw: Any) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as resp:
        body = await resp.read()
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = body.decode(errors="replace")
        return resp.status, data, dict(resp.headers)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


# --- the graph ------------------------------------------------------------------------------


def test_graph_of_the_demo_from_prometheus_and_a_warning_that_the_lab_is_not_answering(
    tmp_path: Path,
) -> None:
    prom = StandInPrometheus()
    prom.answers = demo_answers()

    async def go() -> None:
        async with dashboard(tmp_path, prom) as url:
            status, data, headers = await get(f"{url}/api/graph")
            assert status == 200, data
            assert data["window"] == "1m"
            ids = {e["id"] for e in data["graph"]["edges"]}
            assert "workload:demo/traffic->service:demo/frontend" in ids
            assert "workload:demo/frontend->service:demo/backend-v1" in ids
            assert data["dropped_series"] == 0
            # no lab: the graph is drawn from the metrics alone, and the page says why
            assert len(data["warnings"]) == 1 and "is not answering" in data["warnings"][0]
            assert all(n["enrolled"] is None for n in data["graph"]["nodes"])
            assert "default-src 'self'" in headers["Content-Security-Policy"]

    run(go())
    assert set(prom.queries) == set(promql.graph_queries(parse_window("1m")).values())


def test_no_prometheus_in_the_lab_is_a_message_saying_how_to_start_one(tmp_path: Path) -> None:
    async def go() -> None:
        async with dashboard(tmp_path, None) as url:
            status, data, _ = await get(f"{url}/api/graph")
            assert status == 503
            assert data["code"] == "no_prometheus"
            assert "weftctl lab up --prometheus" in data["error"]

    run(go())


def test_prometheus_not_answering_is_503_naming_it(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"

    async def go() -> None:
        async with dashboard(tmp_path, closed) as url:
            status, data, _ = await get(f"{url}/api/graph")
            assert status == 503
            assert data["code"] == "prometheus_unavailable"
            assert f"cannot reach Prometheus at {closed}" in data["error"]

    run(go())


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            lambda q: web.json_response(
                {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"},
                status=400,
            ),
            "Prometheus said bad_data: parse error at char 3",
        ),
        (
            lambda q: web.Response(text="<html>proxy error</html>", status=502),
            "answered HTTP 502, not JSON",
        ),
        (
            lambda q: web.json_response(
                {"status": "success", "data": {"resultType": "matrix", "result": []}}
            ),
            "data.resultType is 'matrix', expected 'vector'",
        ),
        (
            lambda q: web.json_response(
                {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}
            ),
            "data.result[0] is malformed",
        ),
    ],
)
def test_a_prometheus_error_is_502_with_its_message_not_a_traceback(
    tmp_path: Path, answer: Callable[[str], web.Response], message: str
) -> None:
    prom = StandInPrometheus()

    async def fail(query: str) -> web.StreamResponse:
        return answer(query)

    prom.fail = fail

    async def go() -> None:
        async with dashboard(tmp_path, prom) as url:
            status, data, _ = await get(f"{url}/api/graph")
            assert status == 502, data
            assert data["code"] == "prometheus_error"
            assert message in data["error"]
            assert "Traceback" not in json.dumps(data)

    run(go())


def test_a_slow_prometheus_times_out_as_a_message(tmp_path: Path) -> None:
    prom = StandInPrometheus()

    async def slow(query: str) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response(vector([]))

    prom.fail = slow

    async def go() -> None:
        async with dashboard(tmp_path, prom, query_timeout=0.3) as url:
            status, data, _ = await get(f"{url}/api/graph")
            assert status == 503
            assert "did not answer in 0.3s" in data["error"]

    run(go())


def test_an_answer_past_the_size_bound_is_not_read(tmp_path: Path) -> None:
    prom = StandInPrometheus()
    big = [
        Sample({"source_workload": f"w{i}", "reporter": "source", "padding": "x" * 200}, 1.0)
        for i in range(200)
    ]
    prom.answers = {q: vector(big) for q in promql.graph_queries(parse_window("1m")).values()}

    async def go() -> None:
        async with dashboard(tmp_path, prom, max_body=16 * 1024) as url:
            status, data, _ = await get(f"{url}/api/graph")
            assert status == 502
            assert "answer larger than 16 KiB, not read" in data["error"]

    run(go())


def test_series_past_the_bound_are_dropped_and_counted(tmp_path: Path) -> None:
    prom = StandInPrometheus()
    q = promql.graph_queries(parse_window("1m"))["tcp_opened"]
    prom.answers = {
        q: vector(
            [
                Sample(
                    {
                        "reporter": "source",
                        "source_workload": "client",
                        "source_workload_namespace": "demo",
                        "destination_workload": f"server-{i}",
                        "destination_workload_namespace": "demo",
                        "connection_security_policy": "mutual_tls",
                    },
                    1.0,
                )
                for i in range(25)
            ]
        )
    }

    async def go() -> None:
        async with dashboard(tmp_path, prom, max_series=10) as url:
            status, data, _ = await get(f"{url}/api/graph")
            assert status == 200
            assert data["dropped_series"] == 15
            assert len(data["graph"]["edges"]) == 10
            assert any("15 series past the dashboard's bound" in w for w in data["warnings"])

    run(go())


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("2d", "window: expected a duration such as 1m or 30s, got '2d'"),
        ("10s", "window: must be between 30s and 60m, got 10s"),
        ("2h", "window: must be between 30s and 60m, got 2h"),
        ("1m]) or vector(1", "window: expected a duration"),
        ("0m", "window: expected a duration"),
    ],
)
def test_windows_are_bounded(tmp_path: Path, window: str, message: str) -> None:
    prom = StandInPrometheus()

    async def go() -> None:
        async with dashboard(tmp_path, prom) as url:
            status, data, _ = await get(f"{url}/api/graph", params={"window": window})
            assert status == 400
            assert message in data["error"]

    run(go())
    assert prom.queries == []  # nothing reached Prometheus


def test_a_namespace_filter_must_be_a_kubernetes_name(tmp_path: Path) -> None:
    prom = StandInPrometheus()
    prom.answers = demo_answers()

    async def go() -> None:
        async with dashboard(tmp_path, prom) as url:
            status, data, _ = await get(f"{url}/api/graph", params={"namespace": 'demo"}'})
            assert status == 400 and "namespace: not a Kubernetes name" in data["error"]
            status, data, _ = await get(f"{url}/api/graph", params={"namespace": "demo"})
            assert status == 200 and data["namespace"] == "demo" and data["graph"]["edges"]
            status, data, _ = await get(f"{url}/api/graph", params={"namespace": "elsewhere"})
            assert status == 200 and data["graph"]["edges"] == []

    run(go())


def test_windows_accepted() -> None:
    assert parse_window("30s") == promql.Window(30, "30s")
    assert parse_window("90s").seconds == 90
    assert parse_window("1h").seconds == 3600


# --- golden signals ----------------------------------------------------------------------


def test_golden_signals_of_a_service(tmp_path: Path) -> None:
    prom = StandInPrometheus()
    target = promql.Target.of("service", "demo", "backend-v1")
    queries = promql.signal_queries(target, parse_window("1m"))
    values = {
        "request_rate": 2.0,
        "error_rate": 0.5,
        "p50_ms": 3.1,
        "p90_ms": 4.7,
        "p99_ms": float("nan"),  # histogram_quantile of too few observations
    }
    prom.answers = {queries[k]: vector([Sample({}, v)]) for k, v in values.items()}

    async def go() -> None:
        async with dashboard(tmp_path, prom) as url:
            status, data, _ = await get(f"{url}/api/service/demo/backend-v1")
            assert status == 200, data
            s = data["signals"]
            assert s["request_rate"] == 2.0
            assert s["error_ratio"] == 0.25
            assert (s["p50_ms"], s["p90_ms"], s["p99_ms"]) == (3.1, 4.7, None)
            assert s["connection_rate"] is None  # no TCP series: no data, not zero

    run(go())
    assert (
        'destination_service_name="backend-v1",destination_service_namespace="demo"'
        in queries["request_rate"]
    )
    assert 'destination_service=~"backend-v1\\\\.demo\\\\.svc\\\\..+"' in queries["connection_rate"]
    assert "istio_request_duration_milliseconds_bucket" in queries["p99_ms"]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/service/Demo/backend", 400, "namespace: not a Kubernetes name"),
        ('/api/workload/demo/x",a=~".*', 400, "name: not a Kubernetes name"),
        ("/api/pods/demo/x", 404, ""),
    ],
)
def test_signals_refuse_names_that_are_not_kubernetes_names(
    tmp_path: Path, path: str, status: int, message: str
) -> None:
    prom = StandInPrometheus()

    async def go() -> None:
        async with dashboard(tmp_path, prom) as url:
            got, data, _ = await get(f"{url}{path}")
            assert got == status
            if message:
                assert message in data["error"]

    run(go())
    assert prom.queries == []


# --- why, read-only, Host ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"src": "demo", "dst": "frontend.demo"}, "src: expected NAMESPACE/POD"),
        ({"src": "demo/traffic", "dst": "frontend.demo;rm"}, "dst: expected"),
        ({"src": "demo/traffic"}, "dst: expected"),
        ({"src": "demo/" + "a" * 400, "dst": "frontend.demo"}, "src: expected"),
    ],
)
def test_why_refuses_malformed_arguments(
    tmp_path: Path, query: dict[str, str], message: str
) -> None:
    async def go() -> None:
        async with dashboard(tmp_path, StandInPrometheus()) as url:
            status, data, _ = await get(f"{url}/api/why", params=query)
            assert status == 400
            assert message in data["error"]

    run(go())


def test_why_of_a_lab_that_is_not_up_is_a_message(tmp_path: Path) -> None:
    async def go() -> None:
        async with dashboard(tmp_path, StandInPrometheus()) as url:
            status, data, _ = await get(
                f"{url}/api/why", params={"src": "demo/traffic", "dst": "frontend.demo"}
            )
            assert status in (501, 502), data
            assert data["error"]
            assert "Traceback" not in data["error"]

    run(go())


def test_the_api_is_read_only(tmp_path: Path) -> None:
    async def go() -> None:
        async with dashboard(tmp_path, StandInPrometheus()) as url, aiohttp.ClientSession() as s:
            for path in ("/api/graph", "/api/why", "/api/service/demo/backend", "/"):
                for method in ("POST", "PUT", "DELETE"):
                    async with s.request(method, f"{url}{path}") as resp:
                        assert resp.status == 405, (method, path)

    run(go())


def test_requests_for_another_host_name_are_refused(tmp_path: Path) -> None:
    async def go() -> None:
        port_hosts = frozenset({"127.0.0.1:1", "localhost:1"})
        async with dashboard(tmp_path, StandInPrometheus(), allowed_hosts=port_hosts) as url:
            status, data, _ = await get(f"{url}/api/graph", headers={"Host": "evil.example:1"})
            assert status == 421
            assert "is not this dashboard's address" in data["error"]
            status, _, _ = await get(f"{url}/api/config", headers={"Host": "localhost:1"})
            assert status == 200

    run(go())


def test_the_page_and_its_files_are_served_from_the_package(tmp_path: Path) -> None:
    async def go() -> None:
        async with dashboard(tmp_path, StandInPrometheus()) as url:
            status, page, _ = await get(f"{url}/")
            assert status == 200 and '<section id="graph"' in page
            assert "http://" not in page and "https://" not in page  # nothing from elsewhere
            for name in ("app.js", "style.css"):
                status, body, _ = await get(f"{url}/static/{name}")
                assert status == 200 and "http://" not in body.replace(
                    "http://www.w3.org/2000/svg", ""
                )
            status, _, _ = await get(f"{url}/static/../server.py")
            assert status in (403, 404)

    run(go())


# --- the page in headless Chromium ---------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    chromium_binary() is None, reason="no chromium (scripts/setup.sh --test installs it)"
)


def keep_artifact(path: Path) -> None:
    """Copy a screenshot to $WEFT_TEST_ARTIFACTS when it is set (CI keeps that folder)."""
    target = os.environ.get("WEFT_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


@needs_chromium
def test_page_draws_the_graph_shows_signals_and_says_when_there_is_no_traffic(
    tmp_path: Path,
) -> None:
    prom = StandInPrometheus()
    prom.answers = demo_answers()
    target = promql.Target.of("service", "demo", "backend-v1")
    signal_queries = promql.signal_queries(target, parse_window("1m"))
    prom.answers[signal_queries["request_rate"]] = vector([Sample({}, 2.0)])
    prom.answers[signal_queries["p99_ms"]] = vector([Sample({}, 21.5)])

    async def go() -> None:
        async with (
            dashboard(tmp_path, prom, refresh_seconds=2) as url,
            Chromium(tmp_path) as browser,
        ):
            await browser.goto(url + "/")
            count = await browser.wait_for("document.querySelectorAll('#graph svg .edge').length")
            assert count == 6
            edge = await browser.evaluate(
                "(() => { const e = document.querySelector("
                '\'.edge[data-source="workload:demo/frontend"][data-target="service:demo/backend-v1"]\');'
                " return {cls: e.getAttribute('class'), rps: +e.dataset.requestRate,"
                " text: e.textContent, lock: !!e.querySelector('.lock')}; })()"
            )
            assert "mtls" in edge["cls"] and "warn" in edge["cls"]  # 10% of requests failed
            assert edge["rps"] == pytest.approx(2.0)
            assert "2.0 rps" in edge["text"] and "via demo/waypoint" in edge["text"]
            assert edge["lock"]
            names = await browser.evaluate(
                "[...document.querySelectorAll('.node')].map(n => n.dataset.name)"
            )
            assert {"traffic", "frontend", "backend-v1", "backend-v2"} <= set(names)
            options = await browser.evaluate(
                "[...document.querySelectorAll('#namespace option')].map(o => o.value)"
            )
            assert options == ["", "demo"]
            shot = await browser.screenshot(tmp_path / "dashboard-standin-graph.png")
            keep_artifact(shot)

            await browser.click('.node[data-id="service:demo/backend-v1"]')
            rows = await browser.wait_for(
                "document.querySelector('#panel table.signals') && "
                "[...document.querySelectorAll('#panel tr')].map(r => r.innerText)"
            )
            assert any("requests" in r and "2.0 rps" in r for r in rows), rows
            assert any("latency p99" in r and "21.5 ms" in r for r in rows), rows

            # no lab, so no pod to ask `why` about: the panel says so
            await browser.click(
                '.edge[data-source="workload:demo/traffic"][data-target="service:demo/frontend"]'
            )
            text = await browser.wait_for(
                "document.getElementById('panel').innerText.includes('No pod') &&"
                " document.getElementById('panel').innerText"
            )
            assert "nothing to ask `why` about" in text

            # the traffic stops: the next refresh says so instead of drawing stale edges
            prom.answers = {}
            text = await browser.wait_for(
                "document.querySelector('#graph .empty') && "
                "document.querySelector('#graph .empty').innerText",
                timeout=15,
            )
            assert "No traffic in the last 1m" in text
            assert [c for c in browser.console if "uncaught" in c] == []

    run(go())
    assert (tmp_path / "dashboard-standin-graph.png").stat().st_size > 10_000


@needs_chromium
def test_page_without_prometheus_tells_how_to_start_one(tmp_path: Path) -> None:
    async def go() -> None:
        async with dashboard(tmp_path, None) as url, Chromium(tmp_path) as browser:
            await browser.goto(url + "/")
            status = await browser.wait_for(
                "document.getElementById('status').className === 'error' && "
                "document.getElementById('status').innerText"
            )
            assert "weftctl lab up --prometheus" in status
            empty = await browser.evaluate("document.querySelector('#graph .empty').innerText")
            assert "without Prometheus" in empty

    run(go())
