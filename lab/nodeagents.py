"""One weft node agent and one ztunnel per lab node, in the node's namespace and system
cgroup (where the node agent's SO_ORIGINAL_DST program is attached).

Each agent is fed by the lab's controller and pins its maps under
/sys/fs/bpf/weft-<id>/<node>; `lab down` removes the pins with the rest of the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from lab import cgroups
from lab.addressing import NodePlan
from lab.images import node_process_env
from lab.naming import LabNames
from lab.processes import ProcessSpec, State, Supervised
from lab.state import LabPaths
from meshcore.adminclient import get_json, get_ok
from meshcore.resources import RestartPolicy

log = structlog.get_logger("lab.nodeagents")

BPF_ROOT = Path("/sys/fs/bpf")


def pin_dir(names: LabNames, node: str) -> Path:
    return BPF_ROOT / names.cgroup_root / node


class NodeAgents:
    def __init__(
        self,
        names: LabNames,
        paths: LabPaths,
        controller: str,
        bootstrap: Callable[[str], list[str]] = lambda _node: [],
        ztunnel_workers: int = 1,
    ) -> None:
        """`bootstrap(node)`: the options by which a node with no credential gets one (the
        lab's Kubernetes source), none when the lab hands nodes their credentials."""
        self.names = names
        self.paths = paths
        self.controller = controller
        self.bootstrap = bootstrap
        self.agents: dict[str, Supervised] = {}
        self.ztunnels: dict[str, Supervised] = {}
        self.ztunnel_workers: dict[str, int] = {}  # per node: `lab up --ztunnel-workers`
        self._default_workers = ztunnel_workers
        # restarts: each node's plan, ztunnel generation, and the replaced ones still draining
        self._plans: dict[str, NodePlan] = {}
        self._generation: dict[str, int] = {}
        self._restarting: set[str] = set()
        self._retired: dict[str, list[Supervised]] = {}
        self._reaping: set[asyncio.Task[None]] = set()

    def agent_socket(self, node: str) -> Path:
        return self.paths.agent_socket(node)

    def ztunnel_socket(self, node: str) -> Path:
        return self.paths.ztunnel_socket(node)

    def handover_socket(self, node: str) -> Path:
        """Where a node's ztunnel waits for its successor (`weftctl ztunnel restart`)."""
        return self.paths.ztunnel_socket(node).with_name("ztunnel-handover.sock")

    def _ztunnel_args(self, node: str) -> list[str]:
        return [
            "--admin-socket",
            str(self.ztunnel_socket(node)),
            "--handover-socket",
            str(self.handover_socket(node)),
            "--workers",
            str(self.ztunnel_workers.get(node, self._default_workers)),
        ]

    def start_ztunnels(self, nodes: list[NodePlan]) -> None:
        for node in nodes:
            self._plans[node.name] = node
            self.ztunnels[node.name] = self._start_on_node(
                node, "ztunnel", "ztunnel", self._ztunnel_args(node.name), grace_seconds=3.0
            )

    async def restart_ztunnel(
        self,
        node: str,
        drain_timeout: float,
        pythonpath: str = "",
        workers: int = 0,
        timeout: float = 150,
    ) -> dict[str, Any]:
        """Replace a node's ztunnel without dropping a connection: a new one takes the
        listeners over the handover socket; the old one drains, then exits (not a crash:
        it is not restarted). `pythonpath`: run the new one from another code tree (an
        upgrade). RuntimeError, the old one serving on, if the new one does not take over."""
        old = self.ztunnels[node]
        if node in self._restarting:
            raise RuntimeError(f"a restart of the ztunnel of {node} is under way")
        self._restarting.add(node)
        before = self.ztunnel_workers.get(node)
        if workers:
            self.ztunnel_workers[node] = workers
        try:
            self._generation[node] = generation = self._generation.get(node, 1) + 1
            env = {"PYTHONPATH": pythonpath} if pythonpath else {}
            new = self._start_on_node(
                self._plans[node],
                f"ztunnel-{generation}",
                "ztunnel",
                [
                    *self._ztunnel_args(node),
                    "--takeover",
                    str(self.handover_socket(node)),
                    "--drain-timeout",
                    f"{drain_timeout:g}",
                ],
                grace_seconds=3.0,
                env=env,
                log_name="ztunnel",
            )
            try:
                dump = await self._until_serving(node, new, timeout)
            except BaseException:
                await new.stop()
                if before is None:
                    self.ztunnel_workers.pop(node, None)
                else:
                    self.ztunnel_workers[node] = before
                raise
            old.retire()
            self.ztunnels[node] = new
            self._retired.setdefault(node, []).append(old)
            task = asyncio.create_task(self._reap_retired(node, old))
            self._reaping.add(task)
            task.add_done_callback(self._reaping.discard)
        finally:
            self._restarting.discard(node)
        process = dump.get("process", {})
        log.info("ztunnel.replaced", node=node, old_pid=old.status.pid, new_pid=new.status.pid)
        return {
            "node": node,
            "old_pid": old.status.pid,
            "new_pid": new.status.pid,
            "version": process.get("version"),
            "predecessor": process.get("predecessor"),
            "drain_timeout_s": drain_timeout,
            "workers": len(dump.get("workers", [])) or 1,
        }

    async def _until_serving(self, node: str, new: Supervised, timeout: float) -> dict[str, Any]:
        """The new ztunnel's /config_dump once it serves the admin socket (so the old one
        has let go: the handover is done); RuntimeError if it exits or times out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if new.status.history:  # it exited (the supervisor may be restarting it)
                raise RuntimeError(
                    f"the new ztunnel of {node} exited before taking over; the old one serves "
                    f"on. Its log ends with:\n{_tail(new.spec.log_path)}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
                dump = await get_json(self.ztunnel_socket(node), "/config_dump", timeout=2)
                pid = dump.get("process", {}).get("pid")
                if pid is not None and pid == new.status.pid:
                    return dump
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the new ztunnel of {node} did not take over within {timeout:.0f}s")

    async def _reap_retired(self, node: str, old: Supervised) -> None:
        """Once a replaced ztunnel has drained and exited, its cgroup goes."""
        await old.exited()
        await old.stop()
        with contextlib.suppress(ValueError):
            self._retired.get(node, []).remove(old)
        log.info("ztunnel.drained", node=node, exit_code=old.status.exit_code)

    def _start_on_node(
        self,
        node: NodePlan,
        component: str,
        module: str,
        args: list[str],
        grace_seconds: float,
        env: dict[str, str] | None = None,
        log_name: str = "",
    ) -> Supervised:
        """One of a node's own processes: in the node's namespace and system cgroup, with
        the node's credential for the controller, always restarted."""
        spec = ProcessSpec(
            name=f"{node.name}/{component}",
            argv=[
                sys.executable,
                "-m",
                module,
                "run",
                "--node",
                node.name,
                "--controller",
                self.controller,
                "--credential",
                str(self.paths.node_credential(node.name)),
                *self.bootstrap(node.name),
                *args,
            ],
            env={**node_process_env(), **(env or {})},
            netns=self.names.node_netns(node.name),
            cgroup=f"{self.names.node_system_cgroup(node.name)}/{component}",
            log_path=self.paths.logs / f"{node.name}-{log_name or component}.log",
            restart=RestartPolicy.ALWAYS,
            grace_seconds=grace_seconds,
            host_mounts=True,
        )
        proc = Supervised(spec)
        proc.start()
        return proc

    async def wait_ztunnels(self, timeout: float = 60) -> None:
        async def ready(node: str) -> bool:
            return await get_ok(self.ztunnel_socket(node), "/healthz/ready")

        await _wait_all(
            "ztunnel", self.ztunnels, ready, timeout, keeps_exiting=lambda p: p.status.restarts >= 2
        )

    def start(self, nodes: list[NodePlan]) -> None:
        mount = cgroups.cgroup2_mount()
        for node in nodes:
            self.agents[node.name] = self._start_on_node(
                node,
                "node-agent",
                "node_agent",
                [
                    "--node-ip",
                    node.underlay_ip,
                    "--pin-dir",
                    str(pin_dir(self.names, node.name)),
                    "--pods-cgroup",
                    str(mount / self.names.node_pods_cgroup(node.name)),
                    "--system-cgroup",
                    str(mount / self.names.node_system_cgroup(node.name)),
                    "--admin-socket",
                    str(self.agent_socket(node.name)),
                ],
                grace_seconds=5.0,
            )

    async def ready(self, node: str) -> bool:
        return await get_ok(self.agent_socket(node), "/ready")

    async def enrolled(self, node: str) -> set[str]:
        """`namespace/pod` of the pods the node's agent has in its capture maps."""
        try:
            data = await get_json(self.agent_socket(node), "/debug/status", timeout=2)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return set()
        return {e["pod"] for e in data.get("enrolled", [])}

    async def wait_ready(self, timeout: float = 90) -> None:
        await _wait_all(
            "node agent",
            self.agents,
            self.ready,
            timeout,
            keeps_exiting=lambda p: p.status.state is State.TERMINATED and p.status.restarts >= 2,
            hint=f"; see {self.paths.logs}/",
        )

    async def stop(self) -> None:
        for task in list(self._reaping):
            task.cancel()
        retired = [z for zs in self._retired.values() for z in zs]
        await asyncio.gather(*(z.stop() for z in [*self.ztunnels.values(), *retired]))
        await asyncio.gather(*(a.stop() for a in self.agents.values()))

    def status(self) -> dict[str, Any]:
        return {
            node: {
                "state": a.status.state.value,
                "pid": a.status.pid,
                "restarts": a.status.restarts,
                "admin_socket": str(self.agent_socket(node)),
                "log": str(a.spec.log_path),
            }
            for node, a in self.agents.items()
        }


async def _wait_all(
    what: str,
    processes: dict[str, Supervised],
    ready: Callable[[str], Awaitable[bool]],
    timeout: float,
    *,
    keeps_exiting: Callable[[Supervised], bool],
    hint: str = "",
) -> None:
    """Until every node's process answers ready; a process that keeps exiting, or the
    timeout, is an error (with the end of its log)."""
    deadline = time.monotonic() + timeout
    waiting = set(processes)
    while waiting:
        for node in list(waiting):
            if await ready(node):
                waiting.discard(node)
                log.info(f"{what.replace(' ', '_')}.ready", node=node)
            elif keeps_exiting(processes[node]):
                raise RuntimeError(
                    f"the {what} of {node} keeps exiting; its log ends with:\n"
                    + _tail(processes[node].spec.log_path)
                )
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(
                f"{what}s not ready after {timeout:.0f}s: {', '.join(sorted(waiting))}{hint}"
            )
        await asyncio.sleep(0.2)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
