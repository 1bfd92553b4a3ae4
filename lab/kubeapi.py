"""The lab's Kubernetes API server (`weftctl lab up --source kubernetes`).

etcd and weft-kube-apiserver (scripts/kube/build-apiserver.sh builds it from Debian's
packaged Kubernetes libraries; docs/kubernetes-test-apiserver.md) run in the control
plane's namespace, on its loopback, beside the controller that watches them. The daemon and
a user's kubectl reach them through a forward on the host's loopback (`lab.forward`);
`weftctl lab kubeconfig` prints the kubeconfig for it.

Once it is up the lab installs what a cluster with weft has: weft's CRDs (daemonset/crds),
stand-ins for the Gateway API CRDs (lab/kube/gateway-api-crds.yaml: kinds and versions, no
schema: the user's to install on a real cluster), and, as the node DaemonSet's pods, one pod
`weft-node-<node>` per node in weft-system with a projected token (audience weft) that the
node's agent and ztunnel trade for their node credential, as on Kubernetes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import structlog
import yaml
from kubernetes import client as kclient

from lab.forward import NetnsForward
from lab.images import node_process_env
from lab.naming import LabNames
from lab.netns import NETNS_DIR
from lab.processes import ProcessSpec, Supervised
from lab.state import LabPaths
from meshcore import kubehttp
from meshcore.resources import RestartPolicy
from meshcore.resources.security import ROOT_NAMESPACE

log = structlog.get_logger("lab.kubeapi")

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "kube" / "build-apiserver.sh"
WEFT_CRDS = ROOT / "daemonset" / "crds"
GATEWAY_CRDS = Path(__file__).resolve().parent / "kube" / "gateway-api-crds.yaml"
API_PORT, ETCD_PORT, ETCD_PEER_PORT = 6443, 2379, 2380
NODE_SERVICE_ACCOUNT = "weft-node"
START_TIMEOUT = 60.0


class KubeAPIError(Exception):
    pass


def apiserver_binary() -> Path:
    """Build weft-kube-apiserver (the first time on a machine, ~3.5 min) or find it cached."""
    done = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise KubeAPIError(f"cannot build weft-kube-apiserver ({BUILD_SCRIPT}): {tail[0]}")
    return Path(done.stdout.strip().splitlines()[-1])


def kubeconfig_text(server: str, ca: Path, token: str, cluster: str = "weft-lab") -> str:
    """A kubeconfig for `server` as the static admin (token), trusting `ca`."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": cluster, "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": "weft-admin", "user": {"token": token}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "weft-admin"}}],
            "current-context": cluster,
        },
        indent=2,
    )


class LabKubeAPI:
    def __init__(self, names: LabNames, paths: LabPaths) -> None:
        self.names = names
        self.paths = paths
        self.folder = paths.root / "kube"
        self.token = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")
        self.ca_path = self.folder / "apiserver.crt"
        self.kubeconfig = self.folder / "kubeconfig"  # the host's: through the forward
        self.controller_kubeconfig = self.folder / "controller.kubeconfig"  # in the namespace
        self.forward = NetnsForward(NETNS_DIR / names.control_netns, "127.0.0.1", API_PORT)
        self.etcd: Supervised | None = None
        self.apiserver: Supervised | None = None
        self._api: kclient.ApiClient | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        binary = await asyncio.to_thread(apiserver_binary)
        etcd = await asyncio.to_thread(_which, "etcd")
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        (self.folder / "tokens.csv").write_text(
            f'{self.token},weft-admin,weft-admin,"system:masters"\n'
        )
        local = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        self.etcd = self._process(
            "etcd",
            [
                etcd,
                "--name", "weft-lab",
                "--data-dir", str(self.folder / "etcd"),
                "--listen-client-urls", local,
                "--advertise-client-urls", local,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"weft-lab={peer}",
                "--experimental-watch-progress-notify-interval", "1s",
            ],
        )  # fmt: skip
        self.apiserver = self._process(
            "apiserver",
            [
                str(binary),
                "--etcd-servers", local,
                "--bind-address", "127.0.0.1",
                "--secure-port", str(API_PORT),
                "--data-dir", str(self.folder),
            ],
        )  # fmt: skip
        port = await self.forward.start()
        self.kubeconfig.write_text(
            kubeconfig_text(f"https://127.0.0.1:{port}", self.ca_path, self.token)
        )
        self.controller_kubeconfig.write_text(
            kubeconfig_text(f"https://127.0.0.1:{API_PORT}", self.ca_path, self.token)
        )
        os.chmod(self.kubeconfig, 0o600)
        os.chmod(self.controller_kubeconfig, 0o600)
        await self._wait_ready(port)
        log.info("kubeapi.ready", kubeconfig=str(self.kubeconfig), forward_port=port)

    def _process(self, name: str, argv: list[str]) -> Supervised:
        proc = Supervised(
            ProcessSpec(
                name=f"control/{name}",
                argv=argv,
                env=node_process_env(),
                netns=self.names.control_netns,
                cgroup=f"{self.names.control_cgroup}/{name}",
                log_path=self.paths.logs / f"{name}.log",
                restart=RestartPolicy.ALWAYS,
                grace_seconds=5.0,
                host_mounts=True,
            )
        )
        proc.start()
        return proc

    async def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT

        def ready() -> bool:
            if not self.ca_path.exists():
                return False
            context = ssl.create_default_context(cafile=str(self.ca_path))
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/readyz", context=context, timeout=2
                ) as resp:
                    return bool(resp.status == 200)
            except (OSError, urllib.error.URLError, ssl.SSLError):
                return False

        while not await asyncio.to_thread(ready):
            if time.monotonic() > deadline:
                raise KubeAPIError(
                    f"the lab's API server is not ready after {START_TIMEOUT:.0f}s; see "
                    f"{self.paths.logs}/apiserver.log and etcd.log"
                )
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._api is not None:
            self._api.close()
        await self.forward.stop()
        for proc in (self.apiserver, self.etcd):
            if proc is not None:
                await proc.stop()

    # --- what the lab writes ----------------------------------------------------------------

    @property
    def api(self) -> kclient.ApiClient:
        if self._api is None:
            config = kclient.Configuration(host=self.server)
            config.ssl_ca_cert = str(self.ca_path)
            config.api_key = {"authorization": self.token}
            config.api_key_prefix = {"authorization": "Bearer"}
            self._api = kclient.ApiClient(config)
        return self._api

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.forward.local_port}"

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        code, data = kubehttp.exchange(
            self.api, method, path, body=body, content_type=content_type, query=query
        )
        if code >= 300:
            raise KubeAPIError(f"{method} {path}: HTTP {code}: {data[:400]!r}")
        return json.loads(data) if data else {}

    def _apply(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.call(
            "PATCH",
            path,
            obj,
            "application/apply-patch+yaml",
            [("fieldManager", "weft-lab"), ("force", "true")],
        )

    async def install_crds(self) -> None:
        """weft's CRDs and the Gateway API stand-ins, applied, then waited for Established."""
        files = [*sorted(WEFT_CRDS.glob("*.yaml")), GATEWAY_CRDS]
        names = []
        for file in files:
            for doc in yaml.safe_load_all(file.read_text()):
                if not doc:
                    continue
                name = doc["metadata"]["name"]
                path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
                await asyncio.to_thread(self._apply, path, doc)
                names.append(name)
        deadline = time.monotonic() + 30
        for name in names:
            path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
            while True:
                crd = await asyncio.to_thread(self.call, "GET", path)
                conditions = (crd.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    break
                if time.monotonic() > deadline:
                    raise KubeAPIError(f"CRD {name} is not Established after 30 s")
                await asyncio.sleep(0.1)
        log.info("kubeapi.crds_installed", crds=len(names))

    async def node_tokens(self, nodes: list[str], out: Path) -> dict[str, Path]:
        """As the node DaemonSet's pods: one per node, each with its projected token (audience
        weft) written to `out/<node>.token` (0600). Returns the token files by node."""
        ns = ROOT_NAMESPACE
        await asyncio.to_thread(
            self._apply,
            f"/api/v1/namespaces/{ns}",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        )
        await asyncio.to_thread(
            self._apply,
            f"/api/v1/namespaces/{ns}/serviceaccounts/{NODE_SERVICE_ACCOUNT}",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": NODE_SERVICE_ACCOUNT, "namespace": ns},
            },
        )
        out.mkdir(parents=True, exist_ok=True)
        os.chmod(out, 0o700)
        tokens = {}
        for node in nodes:
            pod = f"weft-node-{node}"
            await asyncio.to_thread(
                self._apply,
                f"/api/v1/namespaces/{ns}/pods/{pod}",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": pod, "namespace": ns, "labels": {"app": "weft-node"}},
                    "spec": {
                        "nodeName": node,
                        "serviceAccountName": NODE_SERVICE_ACCOUNT,
                        "hostNetwork": True,
                        "containers": [{"name": "agent", "image": "weft/node"}],
                    },
                },
            )
            await asyncio.to_thread(
                self.call,
                "PATCH",
                f"/api/v1/namespaces/{ns}/pods/{pod}/status",
                {
                    "status": {
                        "phase": "Running",
                        "conditions": [{"type": "Ready", "status": "True"}],
                    }
                },
                "application/merge-patch+json",
            )
            request = {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": ["weft"],
                    "expirationSeconds": 86400,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod},
                },
            }
            answer = await asyncio.to_thread(
                self.call,
                "POST",
                f"/api/v1/namespaces/{ns}/serviceaccounts/{NODE_SERVICE_ACCOUNT}/token",
                request,
            )
            path = out / f"{node}.token"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(answer["status"]["token"])
            tokens[node] = path
        return tokens


def _which(name: str) -> str:

    found = shutil.which(name)
    if found is None:
        raise KubeAPIError(
            f"{name} is not installed (apt-get install etcd-server; scripts/setup.sh)"
        )
    return found
