"""A real controller process on 127.0.0.1 with a folder source, and node clients for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from controller.ca import CertificateAuthority
from controller.main import write_node_credential
from meshcore.configclient import ConfigClient, NodeCredential

TRUST_DOMAIN = "cluster.local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod_yaml(
    name: str,
    node: str,
    ip: str,
    *,
    namespace: str = "shop",
    sa: str = "default",
    labels: dict[str, str] | None = None,
    ready: bool = True,
) -> str:
    labels = labels or {"app": name.rsplit("-", 1)[0]}
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{name}",
                "labels": labels,
            },
            "spec": {
                "nodeName": node,
                "serviceAccountName": sa,
                "containers": [
                    {
                        "name": "app",
                        "image": "weft/http-echo",
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ],
            },
            "status": {
                "phase": "Running",
                "podIP": ip,
                "hostIP": {"node-1": "198.18.0.1", "node-2": "198.18.0.2"}.get(node, ""),
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
    )


BASE = {
    "00-ns.yaml": json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"weft.dev/dataplane-mode": "ambient"}},
        }
    ),
    "01-sa.yaml": "\n---\n".join(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": n, "namespace": "shop"},
            }
        )
        for n in ("web", "db")
    ),
    "10-web.yaml": json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "clusterIP": "198.19.0.10",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        }
    ),
    "20-pod-web-1.yaml": pod_yaml("web-1", "node-1", "198.18.128.1", sa="web"),
    "21-pod-web-2.yaml": pod_yaml("web-2", "node-2", "198.18.129.1", sa="web"),
    "22-pod-db-1.yaml": pod_yaml(
        "db-1",
        "node-2",
        "198.18.129.2",
        sa="db",
        labels={"app": "db", "weft.dev/dataplane-mode": "none"},
    ),
}


@dataclass
class ControllerProcess:
    root: Path
    grpc_port: int = field(default_factory=free_port)
    ready_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def source(self) -> Path:
        return self.root / "source"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def admin(self) -> Path:
        return self.root / "admin.sock"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def write(self, name: str, text: str) -> None:
        self.source.mkdir(parents=True, exist_ok=True)
        tmp = self.source / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.source / name)

    def ca(self) -> CertificateAuthority:
        return CertificateAuthority.load_or_create(self.state / "ca", TRUST_DOMAIN)

    def credential(self, node: str) -> NodeCredential:
        out = self.root / "nodes" / node
        write_node_credential(self.ca(), node, out)
        return NodeCredential.load(out)

    def start(self) -> None:
        log = open(self.root / "controller.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "run",
                "--source-dir",
                str(self.source),
                "--state-dir",
                str(self.state),
                "--grpc-listen",
                self.target,
                "--admin-addr",  # readiness, metrics and admin, all on localhost
                f"127.0.0.1:{self.ready_port}",
                "--metrics-addr",
                "",
                "--readiness-addr",
                "",
                "--admin-socket",
                str(self.admin),
                *self.extra_args,
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("controller exited:\n" + self.log())
            try:
                url = f"http://127.0.0.1:{self.ready_port}/ready"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("controller not ready:\n" + self.log())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.root / "controller.log"
        return path.read_text() if path.exists() else ""

    async def get(self, path: str, raw: bool = False) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            url = f"http://127.0.0.1:{self.ready_port}{path}"
            async with s.get(url) as resp:
                return await resp.text() if raw else await resp.json()


async def subscribed(
    node: str, target: str, credential: NodeCredential, **kw: Any
) -> tuple[ConfigClient, asyncio.Task[None]]:
    client = ConfigClient(node, target, credential, **kw)
    task = asyncio.create_task(client.run())
    async with asyncio.timeout(10):
        await client.synced.wait()
    return client, task


async def stop_client(client: ConfigClient, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()


async def until(predicate: Any, timeout: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)
