"""The lab's control plane: the weft controller, in a namespace of its own on the underlay.

It watches the lab's objects folder (its source of truth), is the CA, and serves nodes on
`<control ip>:15012`. Node credentials are written when the nodes are created, signed by
the controller's CA (which this module creates first, in the controller's state folder);
waypoint pods get a credential for their service account from the same CA when they start.

Beside it, in the same namespace, a redis-server on `<control ip>:6379` (no persistence) for
Global RateLimitPolicy counters, given to every waypoint through the controller's
`--waypoint-redis-addr`; always while the lab is up (a few MB), when redis-server is installed.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from controller.ca import CertificateAuthority
from controller.main import write_node_credential, write_workload_credential
from lab import cgroups, network
from lab.addressing import control_plane_ip, node_plans
from lab.config import LabConfig
from lab.images import node_process_env
from lab.kubeapi import LabKubeAPI
from lab.naming import LabNames
from lab.processes import ProcessSpec, State, Supervised
from lab.state import LabPaths
from meshcore.adminclient import get_ok
from meshcore.resources import RestartPolicy

log = structlog.get_logger("lab.controlplane")

TRUST_DOMAIN = "cluster.local"
GRPC_PORT = 15012
BOOTSTRAP_PORT = 15013
REDIS_PORT = 6379


class ControlPlane:
    def __init__(self, config: LabConfig, names: LabNames, paths: LabPaths) -> None:
        self.config = config
        self.names = names
        self.paths = paths
        self.ip = control_plane_ip(config)
        self.process: Supervised | None = None
        self.redis: Supervised | None = None
        self.redis_binary = shutil.which("redis-server")
        # Global RateLimitPolicy counters; "" when redis-server is not installed
        self.redis_addr = f"{self.ip}:{REDIS_PORT}" if self.redis_binary else ""
        self.ca: CertificateAuthority | None = None
        # --source kubernetes: the API server the controller reads, and each node's token
        self.kube = LabKubeAPI(names, paths) if config.source == "kubernetes" else None
        self.node_tokens: dict[str, Path] = {}

    @property
    def address(self) -> str:
        return f"{self.ip}:{GRPC_PORT}"

    async def start(self, nodes: list[str]) -> None:
        await asyncio.to_thread(
            network.build_control_plane,
            self.names,
            self.ip,
            self.config.underlay_cidr,
            node_plans(self.config),
        )
        cgroups.create(self.names.control_cgroup)
        ca = await asyncio.to_thread(
            CertificateAuthority.load_or_create, self.paths.controller / "ca", TRUST_DOMAIN
        )
        self.ca = ca
        if self.kube is None:
            for node in nodes:
                await asyncio.to_thread(
                    write_node_credential, ca, node, self.paths.node_credential(node)
                )
        else:
            # As on Kubernetes: nodes get no credential, only their pod's token to trade
            await self.kube.start()
            await self.kube.install_crds()
            self.node_tokens = await self.kube.node_tokens(nodes, self.paths.root / "tokens")
            self.roots_file.write_text("".join(ca.trust_bundle))
        self.paths.manifests.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        spec = ProcessSpec(
            name="control/controller",
            argv=self.controller_argv(),
            env=node_process_env(),
            netns=self.names.control_netns,
            cgroup=f"{self.names.control_cgroup}/controller",
            log_path=self.paths.logs / "controller.log",
            restart=RestartPolicy.ALWAYS,
            grace_seconds=5.0,
            host_mounts=True,
        )
        self.process = Supervised(spec)
        self.process.start()
        log.info("controller.starting", address=self.address)

    def _start_redis(self) -> None:
        if not self.redis_binary:
            log.warning(
                "redis.not_installed",
                effect="Global RateLimitPolicy decides by failureMode",
                fix="apt-get install redis-server (scripts/setup.sh)",
            )
            return
        self.redis = Supervised(
            ProcessSpec(
                name="control/redis",
                argv=self.redis_argv(),
                env=node_process_env(),
                netns=self.names.control_netns,
                cgroup=f"{self.names.control_cgroup}/redis",
                log_path=self.paths.logs / "redis.log",
                restart=RestartPolicy.ALWAYS,
                grace_seconds=2.0,
                host_mounts=True,
            )
        )
        self.redis.start()
        log.info("redis.starting", address=self.redis_addr)

    def redis_argv(self) -> list[str]:
        """Counters only: in memory, no snapshot or append-only file, on the lab's address
        (reached by the pods over the underlay, so protected mode is off)."""
        return [
            self.redis_binary or "redis-server",
            "--bind", self.ip,
            "--port", str(REDIS_PORT),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(self.paths.controller),
        ]  # fmt: skip

    @property
    def roots_file(self) -> Path:
        """The CA root nodes trust the controller by (--source kubernetes)."""
        return self.paths.controller / "roots.pem"

    def node_bootstrap(self, node: str) -> list[str]:
        """A node process's bootstrap options (--source kubernetes), else none."""
        if self.kube is None:
            return []
        return [
            "--bootstrap-token", str(self.node_tokens[node]),
            "--bootstrap-controller", f"{self.ip}:{BOOTSTRAP_PORT}",
            "--controller-roots", str(self.roots_file),
        ]  # fmt: skip

    def controller_argv(self) -> list[str]:
        source = (
            ["--source-dir", str(self.paths.manifests)]
            if self.kube is None
            else [
                "--source", "kubernetes",
                "--kubeconfig", str(self.kube.controller_kubeconfig),
                "--bootstrap-listen", f"{self.ip}:{BOOTSTRAP_PORT}",
            ]
        )  # fmt: skip
        argv = [
            sys.executable,
            "-m",
            "controller",
            "run",
            *source,
            "--state-dir",
            str(self.paths.controller),
            "--trust-domain",
            TRUST_DOMAIN,
            "--admin-socket",
            str(self.paths.controller_admin),
            "--serving-address",
            self.ip,
            "--lab-api",
            str(self.paths.socket),
        ]
        if self.config.otlp_endpoint:
            argv += ["--waypoint-otlp-endpoint", self.config.otlp_endpoint]
        if self.redis_addr:
            argv += ["--waypoint-redis-addr", self.redis_addr]
        return argv

    def write_pod_credential(self, namespace: str, pod: str, service_account: str) -> Path:
        """A credential for a pod's service account, from the lab's CA (blocking): what the
        kubelet's projected ServiceAccount token is in Kubernetes. Returns its folder."""
        if self.ca is None:
            raise RuntimeError("the control plane has not started: no CA yet")
        out = self.paths.pod_credential(namespace, pod)
        write_workload_credential(self.ca, namespace, service_account, out)
        return out

    async def ready(self) -> bool:
        return await get_ok(self.paths.controller_admin, "/ready")

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if (
                self.process
                and self.process.status.state is State.TERMINATED
                and self.process.status.restarts > 3
            ):
                raise RuntimeError(
                    f"the controller keeps exiting; see {self.paths.logs}/controller.log"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the controller is not ready after {timeout:.0f}s; see "
                    f"{self.paths.logs}/controller.log"
                )
            await asyncio.sleep(0.1)
        log.info("controller.ready", address=self.address)

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()
        if self.redis is not None:
            await self.redis.stop()
        if self.kube is not None:
            await self.kube.stop()

    def status(self) -> dict[str, Any]:
        st = self.process.status if self.process else None
        return {
            "address": self.address,
            "netns": self.names.control_netns,
            "state": st.state.value if st else "Waiting",
            "pid": st.pid if st else None,
            "restarts": st.restarts if st else 0,
            "admin_socket": str(self.paths.controller_admin),
            "log": str(self.paths.logs / "controller.log"),
        }
