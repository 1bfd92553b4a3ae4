"""Sample apps as real subprocesses on 127.0.0.1 (port 0); the fixtures in conftest reap them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
IDENTITY_VARS = ("POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE_NAME", "VERSION", "SERVICE_ACCOUNT")


@dataclass
class App:
    """A running sample app; its stderr is read continuously so logging can never block it."""

    proc: subprocess.Popen[bytes]
    logs: list[dict[str, Any]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)
    port: int = 0
    _listening: threading.Event = field(default_factory=threading.Event)
    _reader: threading.Thread | None = None

    def start_reading(self) -> None:
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.raw_lines.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # asserted on separately: every line should be JSON
            self.logs.append(entry)
            if entry.get("event") == "server.listening":
                self.port = int(entry["port"])
                self._listening.set()

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = "\n".join(self.raw_lines)
                raise AssertionError(f"app did not start (rc={self.proc.poll()}):\n{output}")

    def events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in list(self.logs) if entry.get("event") == name]

    def wait_events(self, name: str, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
        """Events of a live app: its log lines reach us a little after its answers do."""
        deadline = time.monotonic() + timeout
        while len(found := self.events(name)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return found

    def wait_exit(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=2)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        if self._reader is not None:
            self._reader.join(timeout=2)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


class Launcher:
    def __init__(self) -> None:
        self.apps: list[App] = []

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in (*IDENTITY_VARS, "PORT")}
        base["PYTHONPATH"] = str(REPO)
        base.update(env or {})
        return base

    def _spawn(self, module: str, args: list[str], env: dict[str, str] | None, stdout: int) -> App:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"sample_apps.{module}", *args],
            cwd=REPO,
            env=self._env(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
        )
        app = App(proc)
        self.apps.append(app)
        app.start_reading()
        return app

    def server(self, module: str, *args: str, env: dict[str, str] | None = None) -> App:
        """Start a server on an ephemeral loopback port and wait for `server.listening`."""
        argv = ["--host", LOOPBACK, "--port", "0", *args]
        app = self._spawn(module, argv, env, subprocess.DEVNULL)
        app.wait_listening()
        return app

    def client(self, *args: str, timeout: float = 15.0) -> tuple[int, str, App]:
        """Run the load client to completion; returns (exit code, stdout, app)."""
        app = self._spawn("load_client", list(args), None, subprocess.PIPE)
        rc = app.wait_exit(timeout)  # the report is far below a pipe's buffer: read it after
        assert app.proc.stdout is not None
        return rc, app.proc.stdout.read().decode(), app

    def stop_all(self) -> None:
        for app in self.apps:
            app.stop()
