"""Processes run inside a pod's (or node's) network namespace and cgroup, kubelet-style.

A container's process is started as

    sh -c 'echo $$ > CGROUP/cgroup.procs && exec "$@"' sh ip netns exec NETNS ARGV...

so it is in its cgroup before it runs any code of its own (eBPF attached to the cgroup sees
its first connect), in the namespace with the pod's hosts file bind-mounted over /etc/hosts
(`ip netns exec` does that from /etc/netns/NETNS/), and keeps one PID throughout (every step
execs), so signals reach the program itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from lab import cgroups
from meshcore.resources import RestartPolicy

log = structlog.get_logger("lab.processes")

# sh -c ENTER_CGROUP CGROUP_DIR ARGV...: joins the cgroup, then execs ARGV (one PID).
ENTER_CGROUP = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
BACKOFF_RESET_AFTER = 10.0  # a run this long counts as healthy: the next backoff starts over


class State(enum.Enum):
    WAITING = "Waiting"
    RUNNING = "Running"
    TERMINATED = "Terminated"


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    netns: str
    cgroup: str  # relative to the cgroup2 mount
    log_path: Path
    restart: RestartPolicy = RestartPolicy.ALWAYS
    grace_seconds: float = 5.0
    # Node processes (agent, controller) enter only the network namespace (nsenter) and see
    # the host's mounts, /sys/fs/bpf and the cgroup tree included; pods use `ip netns exec`,
    # which also remounts /sys and bind-mounts their /etc/hosts.
    host_mounts: bool = False

    def enter_argv(self) -> list[str]:
        if self.host_mounts:
            return ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
        return ["ip", "netns", "exec", self.netns]


@dataclass
class ProcessStatus:
    state: State = State.WAITING
    pid: int | None = None
    exit_code: int | None = None
    restarts: int = 0
    reason: str = ""
    started_at: float | None = None
    history: list[int] = field(default_factory=list)


class Supervised:
    """One program kept running according to its restart policy."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.status = ProcessStatus()
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.changed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"process:{self.spec.name}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        cgroup_dir = cgroups.create(self.spec.cgroup)
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(self.spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            return await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                ENTER_CGROUP,
                str(cgroup_dir),
                *self.spec.enter_argv(),
                *self.spec.argv,
                env=self.spec.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)

    async def _run(self) -> None:
        backoff = BACKOFF_START
        while not self._stopping:
            try:
                self._proc = await self._spawn()
            except OSError as err:
                self._set(State.TERMINATED, reason=f"cannot start: {err}", exit_code=127)
                log.error("container.start_failed", name=self.spec.name, error=str(err))
                return
            started = time.monotonic()
            self._set(State.RUNNING, pid=self._proc.pid, started_at=time.time())
            log.info("container.started", name=self.spec.name, pid=self._proc.pid)
            code = await self._proc.wait()
            self.status.history.append(code)
            self._set(
                State.TERMINATED, exit_code=code, reason="Completed" if code == 0 else "Error"
            )
            log.info("container.exited", name=self.spec.name, exit_code=code)
            if self._stopping or not self._should_restart(code):
                return
            if time.monotonic() - started > BACKOFF_RESET_AFTER:
                backoff = BACKOFF_START
            self.status.reason = "CrashLoopBackOff" if code != 0 else "Restarting"
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            self.status.restarts += 1

    def retire(self) -> None:
        """It was replaced (a ztunnel handed its listeners to a successor) and drains: its
        exit is expected, not a crash, and it is not restarted."""
        self._stopping = True
        self.status.reason = "Draining"

    async def exited(self) -> None:
        """Until its program has exited (and, retired or stopped, is not restarted)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def _should_restart(self, code: int) -> bool:
        if self.spec.restart is RestartPolicy.ALWAYS:
            return True
        return self.spec.restart is RestartPolicy.ON_FAILURE and code != 0

    def _set(self, state: State, **fields: object) -> None:
        self.status.state = state
        for key, value in fields.items():
            setattr(self.status, key, value)
        if state is not State.RUNNING:
            self.status.pid = None
        self.changed.set()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL (the whole cgroup) once the grace period is over."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.spec.grace_seconds)
            except TimeoutError:
                log.warning("container.kill", name=self.spec.name, after=self.spec.grace_seconds)
        await asyncio.to_thread(cgroups.kill, self.spec.cgroup)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(cgroups.remove, self.spec.cgroup)
