"""A real Kubernetes API server for tests: etcd (Debian's `etcd-server`) and weft-kube-apiserver
(scripts/kube/build-apiserver.sh builds it from Debian's packaged k8s.io libraries, cached), both
on loopback with free ports and a per-run folder /tmp/weft-kube-<runid>, always stopped and
removed. docs/kubernetes-test-apiserver.md says what the server serves and how it differs from a
real cluster (no controllers: tests create what kubelet and the controllers would).

Use the `kube_api` fixture (import it into the test module, or take it from a conftest); mark the
tests `@pytest.mark.kubernetes`. The fixture skips, naming why, when Debian's archive cannot be
reached to build the server or etcd is not installed; any other build failure fails the test."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from lab.kubeapi import kubeconfig_text
from tests.conftest import RUN_ID

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "kube" / "build-apiserver.sh"
UNREACHABLE = 3  # build-apiserver.sh's status when Debian's archive cannot be reached
ETCD_MISSING = "etcd is not installed (apt-get install etcd-server; scripts/setup.sh --test)"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class BuildSkipped(Exception):
    """The server cannot be built here for a reason that is not a bug (no archive)."""


@dataclass(frozen=True)
class KubeBinaries:
    apiserver: Path
    kubectl: Path


@cache
def _build() -> KubeBinaries | str:
    paths = []
    for flag in ([], ["--kubectl"]):
        done = subprocess.run(
            [str(BUILD_SCRIPT), *flag], capture_output=True, text=True, timeout=1800, check=False
        )
        if done.returncode == UNREACHABLE:
            return f"weft-kube-apiserver cannot be built: {done.stderr.strip().splitlines()[-1]}"
        if done.returncode != 0:
            raise RuntimeError(f"{BUILD_SCRIPT} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        paths.append(Path(done.stdout.strip().splitlines()[-1]))
    return KubeBinaries(apiserver=paths[0], kubectl=paths[1])


def binaries() -> KubeBinaries:
    """Build (first call per machine) or find the cached binaries; skip the test if impossible."""
    built = _build()
    if isinstance(built, str):
        pytest.skip(built)
    return built


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"


class KubeAPI:
    """One etcd and one API server. `api_client` talks to it as the static admin."""

    def __init__(
        self, folder: Path, bins: KubeBinaries, authorization: str = "AlwaysAllow"
    ) -> None:
        self.folder = folder
        self.bins = bins
        self.authorization = authorization  # or "RBAC": the stored roles and bindings decide
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.etcd_url = f"http://127.0.0.1:{free_port()}"
        self._etcd_peer = f"http://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca_path = folder / "apiserver.crt"
        self.kubeconfig = folder / "kubeconfig"
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._api_client: k8s.ApiClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        etcd = shutil.which("etcd")
        if etcd is None:
            pytest.skip(ETCD_MISSING)
        (self.folder / "tokens.csv").write_text(
            f'{self.admin_token},weft-admin,weft-admin,"system:masters"\n'
        )
        with open(self.folder / "etcd.log", "wb") as log:
            self._etcd = subprocess.Popen(
                [
                    etcd,
                    "--name", f"weft-{RUN_ID}",
                    "--data-dir", str(self.folder / "etcd"),
                    "--listen-client-urls", self.etcd_url,
                    "--advertise-client-urls", self.etcd_url,
                    "--listen-peer-urls", self._etcd_peer,
                    "--initial-advertise-peer-urls", self._etcd_peer,
                    "--initial-cluster", f"weft-{RUN_ID}={self._etcd_peer}",
                    "--quota-backend-bytes", str(1 << 30),
                    # Progress notifications move each watch cache to etcd's revision when its
                    # resource is quiet, so bookmarks carry a current resourceVersion.
                    "--experimental-watch-progress-notify-interval", "1s",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait(lambda: self._etcd_revision() > 0, self._etcd, self.folder / "etcd.log", "etcd")
        self.start_apiserver()
        self.kubeconfig.write_text(self._kubeconfig())

    def start_apiserver(self) -> None:
        with open(self.folder / "apiserver.log", "ab") as log:
            self._apiserver = subprocess.Popen(
                [
                    str(self.bins.apiserver),
                    "--etcd-servers", self.etcd_url,
                    "--secure-port", str(self.port),
                    "--data-dir", str(self.folder),
                    "--authorization-mode", self.authorization,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait(
            self._ready, self._apiserver, self.folder / "apiserver.log", "weft-kube-apiserver"
        )

    def stop_apiserver(self) -> None:
        _stop(self._apiserver)
        self._apiserver = None

    def restart_apiserver(self) -> None:
        """Stop the API server (open watches end) and start it again on the same port and data."""
        self.stop_apiserver()
        self.start_apiserver()

    def stop(self) -> None:
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
        self.stop_apiserver()
        _stop(self._etcd)
        self._etcd = None

    # -- what tests use ----------------------------------------------------------------------
    @property
    def api_client(self) -> k8s.ApiClient:
        if self._api_client is None:
            self._api_client = self.client_for(self.admin_token)
        return self._api_client

    def client_for(self, token: str) -> k8s.ApiClient:
        """An ApiClient authenticating with `token` (a service-account token, say)."""
        config = k8s.Configuration(host=self.url)
        config.ssl_ca_cert = str(self.ca_path)
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
        return k8s.ApiClient(config)

    def get_json(self, path: str, token: str | None = None) -> Any:
        """GET `path` (e.g. "/api/v1/namespaces") as the admin or `token`; the decoded JSON."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        headers = {
            "Authorization": f"Bearer {token or self.admin_token}",
            "Accept": "application/json",
        }
        req = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return json.loads(resp.read())

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision as kube-apiserver does every 5
        minutes: record it under compact_rev_key (which the API server watches), then compact.
        Returns the revision. Reads from etcd older than it get 410 Gone at once; the watch
        caches drop their older list snapshots within ~16 s (their compactor polls every 15 s),
        and keep serving watches from their own window (see docs/kubernetes-test-apiserver.md)."""
        revision = self._etcd_revision()
        key, value = base64.b64encode(b"compact_rev_key"), base64.b64encode(str(revision).encode())
        self._etcd_post("/v3/kv/put", {"key": key.decode(), "value": value.decode()})
        self._etcd_post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bins.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    # -- internals ---------------------------------------------------------------------------
    def _etcd_post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, object] = json.loads(resp.read())
            return result

    def _etcd_revision(self) -> int:
        try:
            header = self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
        except (OSError, urllib.error.URLError):
            return 0
        revision = header.get("header", {})
        return int(revision.get("revision", 0)) if isinstance(revision, dict) else 0

    def _ready(self) -> bool:
        if not self.ca_path.exists():
            return False
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        try:
            with urllib.request.urlopen(self.url + "/readyz", context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    @staticmethod
    def _wait(ready: object, proc: subprocess.Popen[bytes] | None, log: Path, what: str) -> None:
        assert callable(ready) and proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} was not ready within {START_TIMEOUT:.0f} s:\n{_tail(log)}")

    def _kubeconfig(self) -> str:
        return kubeconfig_text(self.url, self.ca_path, self.admin_token, cluster="weft")


@contextmanager
def running_kube_api(name: str = "kube", authorization: str = "AlwaysAllow") -> Iterator[KubeAPI]:
    """etcd and the API server in /tmp/weft-kube-<runid>-<name>; stopped and removed on exit.
    `authorization="RBAC"` evaluates the stored RBAC objects instead of allowing every
    authenticated user everything (the admin, in system:masters, is allowed either way)."""
    bins = binaries()
    folder = Path(f"/tmp/weft-kube-{RUN_ID}-{name}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    api = KubeAPI(folder, bins, authorization)
    try:
        api.start()
        yield api
    finally:
        api.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def kube_api(request: pytest.FixtureRequest) -> Iterator[KubeAPI]:
    """One API server per test module; tests keep apart by namespace."""
    with running_kube_api(request.module.__name__.rsplit(".", 1)[-1]) as api:
        yield api
