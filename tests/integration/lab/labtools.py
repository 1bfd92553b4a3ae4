"""Drive `weftctl lab` as a user would, from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.config import STATE_ROOT
from lab.state import LabPaths, LabRecord, teardown

WEFTCTL = [sys.executable, "-m", "weftctl.main"]


def weftctl(
    *args: str, timeout: float = 180, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*WEFTCTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"weftctl {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@dataclass
class Lab:
    name: str

    def run(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return weftctl("lab", "--name", self.name, *args, **kw)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("status", "-o", "json").stdout)
        return data

    def exec(
        self, pod: str, namespace: str, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.run("exec", pod, "-n", namespace, "--", *cmd, check=check, timeout=timeout)

    def python(
        self, pod: str, namespace: str, code: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.exec(pod, namespace, sys.executable, "-c", code, check=check)

    def pods(self, namespace: str, prefix: str = "") -> list[dict[str, Any]]:
        return [
            p
            for p in self.status()["pods"]
            if p["namespace"] == namespace and p["name"].startswith(prefix)
        ]

    def record(self) -> LabRecord | None:
        return LabRecord.load(LabPaths.for_lab(self.name))

    def force_down(self) -> None:
        """Last resort for fixtures: `lab down`, then the same teardown without the CLI."""
        self.run("down", check=False, timeout=120)
        record = self.record()
        if record is not None:
            teardown(record, LabPaths.for_lab(self.name))


def leftovers(lab_id: str) -> list[str]:
    """Everything on the machine that still carries this lab's id."""
    found: list[str] = []
    netns_dir = Path("/run/netns")
    if netns_dir.exists():
        found += [f"netns {p.name}" for p in netns_dir.iterdir() if lab_id in p.name]
    etc = Path("/etc/netns")
    if etc.exists():
        found += [f"/etc/netns/{p.name}" for p in etc.iterdir() if lab_id in p.name]
    bpffs = Path("/sys/fs/bpf")
    if bpffs.exists():
        found += [f"bpf pins {p}" for p in bpffs.iterdir() if lab_id in p.name]
    from lab.cgroups import cgroup2_mount

    mount = cgroup2_mount()
    found += [f"cgroup {p}" for p in mount.iterdir() if lab_id in p.name]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cgroup = (proc / "cgroup").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "Z":
            # Already dead: a killed orphan waits for init to reap it, which is not ours to do.
            continue
        if f"weft-{lab_id}" in cgroup or f"weft-{lab_id}" in cmdline:
            found.append(f"process {proc.name}: {cmdline.strip()}")
    return found


def state_dir(name: str) -> Path:
    return STATE_ROOT / name
