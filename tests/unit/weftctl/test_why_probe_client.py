"""The client `weftctl why --probe` runs in the source pod (weftctl.whyprobe.CLIENT), against
servers on loopback that answer as the mesh's ends do: an HTTP answer, the waypoint's RBAC
403, a TCP echo that never closes, a silent server, a reset, nothing listening. Each outcome
must read as the verdict the data plane gave."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from weftctl.whyprobe import CLIENT, observed_verdict

Serve = Callable[[socket.socket], None]


@contextmanager
def server(serve: Serve) -> Iterator[int]:
    """A one-connection server on 127.0.0.1 running `serve` on the accepted socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def run() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            serve(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(timeout=10)


def run_client(port: int) -> dict[str, object]:
    argv = [sys.executable, "-c", CLIENT, "127.0.0.1", str(port), "GET", "/x", "h", "[]", "2"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _read_request(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def http_ok(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")


def rbac_403(conn: socket.socket) -> None:
    _read_request(conn)
    body = b"RBAC: access denied"
    conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def echo_forever(conn: socket.socket) -> None:
    conn.settimeout(5)
    try:
        conn.sendall(conn.recv(4096))
        conn.recv(4096)  # until the client goes away; never closes first
    except OSError:
        pass


def silent(conn: socket.socket) -> None:
    conn.settimeout(5)
    try:
        conn.recv(4096)
        conn.recv(4096)
    except OSError:
        pass


def reset(conn: socket.socket) -> None:
    _read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def close_silently(conn: socket.socket) -> None:
    _read_request(conn)


@pytest.mark.parametrize(
    ("serve", "outcome", "verdict"),
    [
        (http_ok, "response", "allow"),
        (rbac_403, "response", "deny"),
        (echo_forever, "data", "allow"),
        (silent, "open", "allow"),
        (reset, "reset", "deny"),
        (close_silently, "reset", "deny"),
    ],
    ids=["http-200", "rbac-403", "tcp-echo", "silent", "reset", "closed-without-answer"],
)
def test_the_probe_client_reads_each_end_as_the_data_plane_decided(
    serve: Serve, outcome: str, verdict: str
) -> None:
    with server(serve) as port:
        result = run_client(port)
    assert result["outcome"] == outcome, result
    assert observed_verdict(result) == verdict, result


def test_nothing_listening_is_a_refused_deny() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # bound once, not listening: connects are refused
    result = run_client(port)
    assert result["outcome"] == "refused" and observed_verdict(result) == "deny", result


def test_the_probe_keeps_its_own_connection_not_the_pods_other_traffic() -> None:
    from weftctl.whyprobe import same_connection

    source = {"component": "ztunnel", "reporter": "source", "source_address": "10.0.0.1:40001"}
    assert same_connection(source, 40001, "backend.demo.svc.cluster.local")
    assert not same_connection(source, 40002, "backend.demo.svc.cluster.local")
    assert same_connection(source, None, "x")  # the client could not say its port: kept
    assert same_connection({**source, "source_address": "10.0.0.1"}, 40002, "x")  # nor the event
    request = {"component": "waypoint", "kind": "request"}
    host = "backend.demo.svc.cluster.local"
    assert same_connection({**request, "authority": "Backend.demo.svc.cluster.local:8080"}, 1, host)
    assert same_connection({**request, "authority": host}, 1, host)
    assert not same_connection({**request, "authority": "backend.demo:8080"}, 1, host)
    assert same_connection({"component": "ztunnel", "reporter": "destination"}, 1, host)
