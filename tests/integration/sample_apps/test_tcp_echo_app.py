"""tcp_echo as a subprocess on 127.0.0.1: prefixes, half-close, shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import pytest
from sample_app_procs import LOOPBACK, Launcher

pytestmark = pytest.mark.timeout(30)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


def recv_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_prefix_tells_replicas_apart(launch: Launcher) -> None:
    v1 = launch.server("tcp_echo", "--prefix", "v1 ")
    v2 = launch.server("tcp_echo", "--prefix", "v2 ")
    for app, expected in ((v1, b"v1 ping\n"), (v2, b"v2 ping\n")):
        with socket.create_connection((LOOPBACK, app.port), timeout=5) as sock:
            sock.sendall(b"ping\n")
            assert recv_exactly(sock, len(expected)) == expected
            sock.sendall(b"again\n")  # a second chunk gets its own prefix
            assert recv_exactly(sock, 9) == expected[:3] + b"again\n"


def test_half_close_gets_every_byte_back_then_eof(launch: Launcher) -> None:
    app = launch.server("tcp_echo")
    payload = os.urandom(2 * 1024 * 1024)  # beyond socket buffers: exercises backpressure
    with socket.create_connection((LOOPBACK, app.port), timeout=5) as sock:
        received = bytearray()
        sent = 0
        sock.setblocking(False)
        # Interleave so neither side's buffers fill up and deadlock the test.
        while sent < len(payload):
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(payload[sent : sent + 65536])
            try:
                received += sock.recv(65536)
            except BlockingIOError:
                time.sleep(0.001)
        sock.setblocking(True)
        sock.shutdown(socket.SHUT_WR)
        received += recv_to_eof(sock)  # the server closes after the last echo
    assert bytes(received) == payload
    closed = app.wait_events("tcp.connection.closed", 1)
    assert closed[0]["bytes"] == len(payload) and closed[0]["reason"] == "client_closed"


def test_sigterm_stops_with_open_connection(launch: Launcher) -> None:
    app = launch.server("tcp_echo", "--prefix", "x")
    with socket.create_connection((LOOPBACK, app.port), timeout=5) as sock:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 3) == b"xhi"
        started = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        assert app.wait_exit(timeout=5) == 0
        assert time.monotonic() - started < 1.0
        assert recv_to_eof(sock) == b""
    reasons = [e["reason"] for e in app.events("tcp.connection.closed")]
    assert reasons == ["server_stopping"]
