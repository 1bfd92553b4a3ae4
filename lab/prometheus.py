"""A real Prometheus server (Debian's `prometheus`) in the lab, scraping every controller, node
agent, ztunnel and waypoint replica (`weftctl lab up --prometheus`).

It runs in the control plane's namespace, which reaches every node over the underlay and every
pod through routes to the nodes' pod ranges, and listens on that namespace's loopback only, so
no pod or node can query it. The host reaches it through a forward on its own loopback
(`lab.forward`, which connects from inside the namespace, as for the lab's API server); `url`
in its folder records that address for `prometheus_url` (and so `weftctl lab prometheus`).
Its configuration, data and log live in the lab's state folder, and the process in the lab's
control cgroup, so `lab down`, and the teardown of a lab whose daemon died, remove both with
the rest of the lab.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from lab.addressing import NodePlan
from lab.forward import NetnsForward
from lab.naming import LabNames
from lab.netns import NETNS_DIR
from lab.processes import ProcessSpec, State, Supervised
from lab.prometheusconfig import (
    JOB_CONTROLLER,
    PROMETHEUS_PORT,
    WAYPOINT_SD_FILE,
    PodTarget,
    config_text,
    controller_target,
    file_sd_text,
    node_targets,
    prometheus_argv,
    waypoint_targets,
)
from lab.state import LabPaths, LabRecord, daemon_alive
from meshcore.resources import RestartPolicy

log = structlog.get_logger("lab.prometheus")

READY_TIMEOUT = 60.0
# One Go thread: the lab shares a small machine with the mesh it watches, and a few thousand
# series at a 5 s interval need far less than a core.
GOMAXPROCS = "1"


class PrometheusError(RuntimeError):
    """The lab's Prometheus cannot run, or did not become ready; says what to do."""


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def prometheus_url(paths: LabPaths) -> str | None:
    """`http://127.0.0.1:PORT` of the running lab's Prometheus, reachable from the host; None
    when the lab is not up or runs none."""
    try:
        url = (paths.prometheus / "url").read_text().strip()
    except OSError:
        return None
    record = LabRecord.load(paths)
    if not url or record is None or not daemon_alive(record):
        return None
    return url


class LabPrometheus:
    def __init__(
        self,
        names: LabNames,
        paths: LabPaths,
        *,
        control_ip: str,
        nodes: Sequence[NodePlan],
        ztunnel: bool,
        scrape_interval: float,
    ) -> None:
        self.names = names
        self.paths = paths
        self.folder = paths.prometheus
        self.listen = f"127.0.0.1:{PROMETHEUS_PORT}"  # the control namespace's loopback
        self.static_jobs = {
            JOB_CONTROLLER: [controller_target(control_ip)],
            **node_targets(nodes, ztunnel=ztunnel),
        }
        self.scrape_interval = scrape_interval
        self.process: Supervised | None = None
        self.forward = NetnsForward(NETNS_DIR / names.control_netns, "127.0.0.1", PROMETHEUS_PORT)
        self._waypoints_text = ""
        self.waypoints = 0

    @property
    def config_file(self) -> Path:
        return self.folder / "prometheus.yml"

    @property
    def sd_dir(self) -> Path:
        return self.folder / "sd"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def url_file(self) -> Path:
        return self.folder / "url"

    @property
    def log_path(self) -> Path:
        return self.paths.logs / "prometheus.log"

    def write_config(self) -> None:
        self.sd_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.set_waypoints([])
        _write_atomic(
            self.config_file,
            config_text(
                scrape_interval=self.scrape_interval,
                static_jobs=self.static_jobs,
                sd_dir=self.sd_dir,
            ),
        )

    async def start(self) -> None:
        """Start the server (in the control plane's namespace, which must exist) and the
        forward to it; `wait_ready` then waits for it to answer."""
        binary = prometheus_binary()
        if binary is None:
            raise PrometheusError(
                "no prometheus binary: install Debian's prometheus package (scripts/setup.sh), "
                "or run the lab with --no-prometheus"
            )
        await asyncio.to_thread(self.write_config)
        self.process = Supervised(
            ProcessSpec(
                name="control/prometheus",
                argv=prometheus_argv(
                    binary,
                    config_file=self.config_file,
                    data_dir=self.data_dir,
                    listen=self.listen,
                ),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GOMAXPROCS": GOMAXPROCS},
                netns=self.names.control_netns,
                cgroup=f"{self.names.control_cgroup}/prometheus",
                log_path=self.log_path,
                restart=RestartPolicy.ALWAYS,
                grace_seconds=5.0,
                host_mounts=True,
            )
        )
        self.process.start()
        port = await self.forward.start()
        log.info("prometheus.starting", listen=self.listen, forward=f"127.0.0.1:{port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.forward.local_port}"

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until `/-/ready` answers 200 through the forward, then record the URL."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                try:
                    async with session.get(f"{self.url}/-/ready") as resp:
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                proc = self.process
                if proc and proc.status.state is State.TERMINATED and proc.status.restarts >= 2:
                    raise PrometheusError(f"prometheus keeps exiting; see {self.log_path}")
                if time.monotonic() > deadline:
                    raise PrometheusError(
                        f"prometheus is not ready after {timeout:.0f}s; see {self.log_path}"
                    )
                await asyncio.sleep(0.2)
        _write_atomic(self.url_file, self.url + "\n")
        log.info("prometheus.ready", url=self.url)

    def set_waypoints(self, pods: Iterable[PodTarget]) -> bool:
        """Rewrite the waypoints' file_sd file if the set changed (atomically: Prometheus
        never reads half a file). Returns whether it did."""
        targets = waypoint_targets(pods)
        text = file_sd_text(targets)
        if text == self._waypoints_text:
            return False
        _write_atomic(self.sd_dir / WAYPOINT_SD_FILE, text)
        self._waypoints_text = text
        self.waypoints = len(targets)
        log.info("prometheus.waypoints_updated", targets=[t.address for t in targets])
        return True

    async def stop(self) -> None:
        self.url_file.unlink(missing_ok=True)
        await self.forward.stop()
        if self.process is not None:
            await self.process.stop()

    def status(self) -> dict[str, Any]:
        st = self.process.status if self.process else None
        return {
            "url": self.url if self.forward.local_port else "",
            "listen": self.listen,
            "state": st.state.value if st else "Waiting",
            "pid": st.pid if st else None,
            "restarts": st.restarts if st else 0,
            "scrape_interval": self.scrape_interval,
            "waypoint_targets": self.waypoints,
            "config": str(self.config_file),
            "data": str(self.data_dir),
            "log": str(self.log_path),
        }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
