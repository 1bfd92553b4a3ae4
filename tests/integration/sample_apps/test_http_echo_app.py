"""http_echo as a subprocess on 127.0.0.1: HTTP/1.1, h2c, special paths, upstream, shutdown."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from sample_app_procs import LOOPBACK, App, Launcher

pytestmark = pytest.mark.timeout(30)

IDENTITY = {
    "POD_NAME": "echo-v1-7d9f",
    "POD_NAMESPACE": "demo",
    "POD_IP": "10.0.1.5",
    "NODE_NAME": "node-a",
    "VERSION": "v1",
    "SERVICE_ACCOUNT": "echo",
}


def h1_get(
    conn: http.client.HTTPConnection, path: str, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    conn.request(kwargs.pop("method", "GET"), path, **kwargs)
    response = conn.getresponse()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def h2_get_all(port: int, paths: list[str]) -> tuple[int, list[tuple[int, bytes]]]:
    """Send every path as its own stream on one h2c connection; (local port, answers in order)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        ids = []
        for path in paths:
            stream_id = conn.get_next_available_stream_id()
            headers = [(":method", "GET"), (":scheme", "http"), (":path", path)]
            conn.send_headers(
                stream_id, [*headers, (":authority", f"echo:{port}"), ("x-h2", "yes")]
            )
            conn.end_stream(stream_id)
            ids.append(stream_id)
        sock.sendall(conn.data_to_send())
        status: dict[int, int] = {}
        bodies: dict[int, bytes] = {sid: b"" for sid in ids}
        ended: set[int] = set()
        while ended != set(ids):
            data = sock.recv(65536)
            assert data, "server closed the h2c connection early"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    got = {str(k): str(v) for k, v in event.headers or []}
                    status[event.stream_id or 0] = int(got[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id or 0] += event.data or b""
                    conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id or 0
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id or 0)
            sock.sendall(conn.data_to_send())
        return sock.getsockname()[1], [(status[sid], bodies[sid]) for sid in ids]
    finally:
        sock.close()


@pytest.fixture
def echo(launch: Launcher) -> App:
    return launch.server("http_echo", env=IDENTITY)


def test_http1_keep_alive_echoes_identity_client_and_request(echo: App) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, echo.port, timeout=5)
    try:
        status, headers, raw = h1_get(conn, "/first?a=1", headers={"X-Trace": "abc"})
        local_port = conn.sock.getsockname()[1]
        status2, _, raw2 = h1_get(conn, "/second", method="POST", body=b"12345")
        assert conn.sock.getsockname()[1] == local_port, "client reconnected: no keep-alive"
    finally:
        conn.close()
    assert (status, status2) == (200, 200)
    assert headers["content-type"] == "application/json"
    assert headers["x-weft-pod"] == "echo-v1-7d9f" and headers["x-weft-version"] == "v1"
    first, second = json.loads(raw), json.loads(raw2)
    assert {k: first[k] for k in ("pod", "namespace", "version", "node", "service_account")} == {
        "pod": "echo-v1-7d9f",
        "namespace": "demo",
        "version": "v1",
        "node": "node-a",
        "service_account": "echo",
    }
    assert first["client"] == {"ip": LOOPBACK, "port": local_port}
    assert first["server"] == {"ip": LOOPBACK, "port": echo.port}
    assert first["protocol"] == "HTTP/1.1"
    assert first["request"]["method"] == "GET" and first["request"]["path"] == "/first?a=1"
    assert first["request"]["headers"]["x-trace"] == "abc"
    assert first["request"]["headers"]["host"] == f"{LOOPBACK}:{echo.port}"
    assert second["client"] == first["client"]
    assert (second["request"]["method"], second["body_bytes"]) == ("POST", 5)


def test_h2c_prior_knowledge_multiplexes_streams_on_one_connection(echo: App) -> None:
    local_port, answers = h2_get_all(echo.port, ["/delay/300", "/a", "/status/503"])
    assert [status for status, _ in answers] == [200, 200, 503]
    bodies = [json.loads(body) for _, body in answers]
    for body in bodies:
        assert body["protocol"] == "HTTP/2"
        assert body["client"] == {"ip": LOOPBACK, "port": local_port}
        assert body["request"]["headers"]["x-h2"] == "yes"
        assert body["request"]["headers"]["host"] == f"echo:{echo.port}"
        assert body["pod"] == "echo-v1-7d9f"
    assert [b["request"]["path"] for b in bodies] == ["/delay/300", "/a", "/status/503"]
    # The delayed stream did not hold the others back: they were logged first.
    paths = [e["path"] for e in echo.wait_events("http.request", 3)]
    assert paths.index("/a") < paths.index("/delay/300")


def test_special_paths(echo: App) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, echo.port, timeout=5)
    try:
        status, headers, body = h1_get(conn, "/healthz")
        assert (status, body) == (200, b"ok\n")
        assert headers["content-type"].startswith("text/plain")
        status, _, body = h1_get(conn, "/status/418")
        assert status == 418 and json.loads(body)["request"]["path"] == "/status/418"
        started = time.monotonic()
        status, _, body = h1_get(conn, "/delay/250")
        assert status == 200 and time.monotonic() - started >= 0.25
        status, _, body = h1_get(conn, "/status/1")
        assert status == 400 and "error" in json.loads(body)
    finally:
        conn.close()


def test_upstream_chaining_embeds_the_backend_answer(launch: Launcher) -> None:
    backend = launch.server("http_echo", env={"POD_NAME": "backend-0", "VERSION": "v2"})
    frontend = launch.server(
        "http_echo",
        "--upstream",
        f"http://{LOOPBACK}:{backend.port}/from-frontend",
        env={"POD_NAME": "frontend-0"},
    )
    conn = http.client.HTTPConnection(LOOPBACK, frontend.port, timeout=10)
    try:
        answers = [h1_get(conn, "/page") for _ in range(2)]
        health = h1_get(conn, "/healthz")
    finally:
        conn.close()
    for status, _, raw in answers:
        body = json.loads(raw)
        assert status == 200 and body["pod"] == "frontend-0"
        upstream = body["upstream"]
        assert upstream["status"] == 200
        assert upstream["body"]["pod"] == "backend-0" and upstream["body"]["version"] == "v2"
        assert upstream["body"]["request"]["path"] == "/from-frontend"
        assert upstream["body"]["client"]["ip"] == LOOPBACK
    assert health[0] == 200
    # One session for the process, kept alive: both backend calls came over one connection,
    # and /healthz did not call the backend at all.
    calls = backend.wait_events("http.request", 2)
    assert len(calls) == 2 and calls[0]["client"] == calls[1]["client"]


def test_upstream_failure_answers_502_with_the_error(launch: Launcher, closed_port: int) -> None:
    frontend = launch.server("http_echo", "--upstream", f"http://{LOOPBACK}:{closed_port}/")
    conn = http.client.HTTPConnection(LOOPBACK, frontend.port, timeout=10)
    try:
        status, _, raw = h1_get(conn, "/")
    finally:
        conn.close()
    assert status == 502
    upstream = json.loads(raw)["upstream"]
    assert set(upstream) == {"error"} and "Connect" in upstream["error"]
    (logged,) = frontend.wait_events("http.request", 1)
    assert logged["status"] == 502 and "upstream_error" in logged


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_server_within_a_second_despite_open_connections(
    echo: App, sig: signal.Signals
) -> None:
    idle = socket.create_connection((LOOPBACK, echo.port))
    busy = socket.create_connection((LOOPBACK, echo.port))
    busy.sendall(b"GET /delay/20000 HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        time.sleep(0.2)
        started = time.monotonic()
        echo.proc.send_signal(sig)
        assert echo.wait_exit(timeout=5) == 0
        assert time.monotonic() - started < 1.0
    finally:
        idle.close()
        busy.close()
    assert [e["event"] for e in echo.logs[-3:]] == [
        "signal.received",
        "server.stopping",
        "server.stopped",
    ]


def test_every_log_line_is_one_json_object(echo: App) -> None:
    conn = http.client.HTTPConnection(LOOPBACK, echo.port, timeout=5)
    try:
        h1_get(conn, "/x")
    finally:
        conn.close()
    echo.stop()
    assert echo.raw_lines and len(echo.raw_lines) == len(echo.logs)
    (listening,) = echo.events("server.listening")
    assert listening["port"] == echo.port and listening["pod"] == "echo-v1-7d9f"
    (request,) = echo.events("http.request")
    assert request["path"] == "/x" and request["status"] == 200 and request["level"] == "info"
