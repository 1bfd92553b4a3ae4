"""load_client as a subprocess against http_echo on 127.0.0.1: reports and exit codes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sample_app_procs import LOOPBACK, App, Launcher

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def echo(launch: Launcher) -> App:
    return launch.server("http_echo", env={"POD_NAME": "echo-v2-xyz", "VERSION": "v2"})


def run_json(launch: Launcher, *args: str) -> tuple[int, dict[str, Any], App]:
    rc, stdout, app = launch.client(*args, "-o", "json")
    return rc, json.loads(stdout), app


def test_count_with_concurrency_over_keep_alive(launch: Launcher, echo: App) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/svc"
    rc, report, _ = run_json(launch, url, "--count", "30", "--concurrency", "4")
    assert rc == 0
    assert report["protocol"] == "HTTP/1.1"
    assert report["requests"] == {"sent": 30, "succeeded": 30, "failed": 0, "unfinished": 0}
    assert report["failures"] == {"by_error": {}, "by_status": {}}
    assert report["responses"] == {"by_pod": {"echo-v2-xyz": 30}, "by_version": {"v2": 30}}
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    clients = {e["client"] for e in echo.wait_events("http.request", 30)}
    assert len(clients) <= 4  # kept-alive: at most one connection per worker


def test_count_over_h2c_multiplexes_one_connection(launch: Launcher, echo: App) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/"
    rc, report, _ = run_json(launch, url, "--count", "20", "--concurrency", "5", "--http2")
    assert rc == 0
    assert report["protocol"] == "HTTP/2"
    assert report["requests"]["succeeded"] == 20
    logged = echo.wait_events("http.request", 20)
    assert {e["protocol"] for e in logged} == {"HTTP/2"}
    assert len({e["client"] for e in logged}) == 1


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_new_connections_uses_one_connection_per_request(
    launch: Launcher, echo: App, http2: bool
) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/"
    args = [url, "--count", "6", "--new-connections", *(["--http2"] if http2 else [])]
    rc, report, _ = run_json(launch, *args)
    assert rc == 0 and report["requests"]["succeeded"] == 6
    assert len({e["client"] for e in echo.wait_events("http.request", 6)}) == 6


def test_rate_for_a_short_duration(launch: Launcher, echo: App) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/"
    rc, report, _ = run_json(launch, url, "--rate", "40", "--duration", "1", "--interval", "0.4")
    assert rc == 0
    requests = report["requests"]
    assert 38 <= requests["sent"] <= 40  # open loop: one every 25 ms for 1 s
    assert requests["failed"] == 0
    assert requests["succeeded"] + requests["unfinished"] == requests["sent"]
    assert 0.9 <= report["elapsed_s"] <= 1.5
    assert 30 <= report["rate_achieved"] <= 45


def test_interim_lines_go_to_stderr_and_stdout_is_only_the_report(
    launch: Launcher, echo: App
) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/"
    rc, stdout, app = launch.client(url, "--rate", "20", "--duration", "0.7", "--interval", "0.2")
    assert rc == 0
    assert stdout.startswith("URL:") and "By version:  v2" in stdout
    interim = app.events("load.interim")
    assert 2 <= len(interim) <= 4
    assert {"sent", "succeeded", "failed", "in_flight", "rate", "p50_ms"} <= set(interim[0])


def test_non_2xx_answers_are_failures_by_status(launch: Launcher, echo: App) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/status/503"
    rc, report, _ = run_json(launch, url, "--count", "4")
    assert rc == 1
    assert report["requests"]["failed"] == 4
    assert report["failures"]["by_status"] == {"503": 4}
    assert report["latency_ms"] is None
    assert report["responses"]["by_pod"] == {"echo-v2-xyz": 4}


def test_timeouts_are_counted_as_failures(launch: Launcher, echo: App) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/delay/3000"
    rc, report, _ = run_json(launch, url, "--count", "2", "--concurrency", "2", "--timeout", "0.2")
    assert rc == 1
    assert report["failures"]["by_error"] == {"timeout": 2}


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_closed_port_exits_1_with_connect_errors(
    launch: Launcher, closed_port: int, http2: bool
) -> None:
    url = f"http://{LOOPBACK}:{closed_port}/"
    rc, report, app = run_json(launch, url, "--count", "5", *(["--http2"] if http2 else []))
    assert rc == 1
    assert report["requests"] == {"sent": 5, "succeeded": 0, "failed": 5, "unfinished": 0}
    assert report["failures"]["by_error"] == {"connect_error": 5}
    assert len(app.events("load.request_failed")) == 1  # one line per distinct error


def test_duration_bounds_a_run_that_cannot_finish(launch: Launcher, echo: App) -> None:
    url = f"http://{LOOPBACK}:{echo.port}/delay/5000"
    rc, report, _ = run_json(launch, url, "--count", "3", "--duration", "0.5")
    assert rc == 1  # nothing succeeded
    assert report["requests"] == {"sent": 1, "succeeded": 0, "failed": 0, "unfinished": 1}
    assert report["elapsed_s"] < 1.0
