"""Fixtures that start sample apps as subprocesses and always stop them, even on failure."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sample_app_procs import LOOPBACK, Launcher


@pytest.fixture
def launch() -> Iterator[Launcher]:
    launcher = Launcher()
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((LOOPBACK, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
