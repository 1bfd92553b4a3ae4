"""What the lab needs from the machine, checked up front with messages that say what to do."""

from __future__ import annotations

import os
import shutil
import subprocess

from lab import cgroups


class PreflightError(RuntimeError):
    pass


def check_machine() -> None:
    if os.geteuid() != 0:
        raise PreflightError(
            "the lab creates network namespaces and cgroups and must run as root (try sudo)"
        )
    try:
        cgroups.cgroup2_mount()
    except cgroups.CgroupError as err:
        raise PreflightError(str(err)) from None
    if not os.path.ismount("/sys/fs/bpf"):
        # The node agents pin their maps here (a DaemonSet mounts it from the host).
        proc = subprocess.run(
            ["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise PreflightError(
                f"the BPF filesystem is not mounted at /sys/fs/bpf and mounting it failed: "
                f"{proc.stderr.strip()}"
            )
    for tool, package in (
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("sh", "dash"),
        ("bpftool", "bpftool"),
    ):
        if shutil.which(tool) is None:
            raise PreflightError(
                f"'{tool}' is not installed (Debian package {package}); run scripts/setup.sh"
            )
