"""Named network namespaces (iproute2's /run/netns convention) and running code inside one."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from meshcore.nsenter import run_in_netns

NETNS_DIR = Path("/run/netns")
ETC_NETNS_DIR = Path("/etc/netns")  # `ip netns exec` bind-mounts files found here over /etc

T = TypeVar("T")


# Namespaces are added and deleted with iproute2 itself, and netlink work runs on a thread
# that entered the namespace (run_in) rather than through pyroute2's netns mode: that mode
# forks helpers, and a forked child that gets SIGTERM before it resets its signal handlers
# writes the signal into the parent's asyncio wakeup fd, so the daemon "receives" SIGTERM.


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def create(name: str) -> None:
    _ip("netns", "add", name)


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def delete(name: str) -> None:
    """Remove a named namespace; its interfaces go with it. Missing is fine."""
    if not exists(name):
        return
    _ip("netns", "delete", name)


def list_with_prefix(prefix: str) -> list[str]:
    if not NETNS_DIR.exists():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Call `fn` on a thread inside the named namespace (see meshcore.nsenter)."""
    return run_in_netns(NETNS_DIR / name, fn)


def write_sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl such as `net.ipv4.ip_forward` inside netns `name`."""
    path = Path("/proc/sys") / key.replace(".", "/")

    def write() -> None:
        path.write_text(value)

    run_in(name, write)
