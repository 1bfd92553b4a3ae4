"""Compile, load, attach and pin weft's eBPF programs (bcc), adopting what is already there.

Programs attached to a cgroup stay attached when the agent exits, and the maps they use are
pinned, so capture keeps working while the agent restarts. On start the agent compares what
is attached with what it would load (by a hash of the C sources): the same version is
adopted untouched; another version is replaced by attaching the new program before
detaching the old one, so there is never a moment without capture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("node_agent.programs")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
BPF_F_ALLOW_MULTI = 2


class KernelFeatureError(RuntimeError):
    """The kernel lacks something weft needs; the message names it."""


@dataclass(frozen=True)
class ProgramSpec:
    source: str  # file in bpf/
    function: str
    prog_type: str  # bcc BPF.<name>
    attach_type: str  # bcc BPFAttachType.<name>
    target: str  # "pods" or "system": which cgroup subtree of the node
    needs: str  # what to tell the user when the kernel refuses it

    def is_this(self, shown: dict[str, Any]) -> bool:
        """Is an entry of `bpftool cgroup show` this program? (bpftool prints the full name
        from BTF where it can, else the kernel's 15-character one)."""
        return shown.get("name") in (self.function, self.function[:15]) and shown.get(
            "attach_type"
        ) in (_BPFTOOL_ATTACH_SHOWN[self.attach_type], _BPFTOOL_ATTACH[self.attach_type])


CGROUP_PROGRAMS = (
    ProgramSpec(
        "sock_connect.c",
        "weft_connect4",
        "CGROUP_SOCK_ADDR",
        "CGROUP_INET4_CONNECT",
        "pods",
        "cgroup/connect4 with bpf_get_netns_cookie (Linux 5.7+)",
    ),
    ProgramSpec(
        "sock_connect.c",
        "weft_connect6",
        "CGROUP_SOCK_ADDR",
        "CGROUP_INET6_CONNECT",
        "pods",
        "cgroup/connect6 (Linux 5.7+)",
    ),
    ProgramSpec(
        "sock_ops.c",
        "weft_sockops",
        "SOCK_OPS",
        "CGROUP_SOCK_OPS",
        "pods",
        "sockops with bpf_sock_ops_cb_flags_set (Linux 4.16+)",
    ),
    ProgramSpec(
        "sock_getpeername.c",
        "weft_getpeername4",
        "CGROUP_SOCK_ADDR",
        "CGROUP_INET4_GETPEERNAME",
        "pods",
        "cgroup/getpeername4 (Linux 5.8+)",
    ),
    ProgramSpec(
        "sockopt_origdst.c",
        "weft_getsockopt",
        "CGROUP_SOCKOPT",
        "CGROUP_GETSOCKOPT",
        "system",
        "cgroup/getsockopt (Linux 5.3+)",
    ),
)

# bpftool's names for the attach types above: as it prints them (JSON) and as it takes them.
_BPFTOOL_ATTACH_SHOWN = {
    "CGROUP_INET4_CONNECT": "cgroup_inet4_connect",
    "CGROUP_INET6_CONNECT": "cgroup_inet6_connect",
    "CGROUP_SOCK_OPS": "cgroup_sock_ops",
    "CGROUP_INET4_GETPEERNAME": "cgroup_inet4_getpeername",
    "CGROUP_GETSOCKOPT": "cgroup_getsockopt",
}
_BPFTOOL_ATTACH = {
    "CGROUP_INET4_CONNECT": "connect4",
    "CGROUP_INET6_CONNECT": "connect6",
    "CGROUP_SOCK_OPS": "sock_ops",
    "CGROUP_INET4_GETPEERNAME": "getpeername4",
    "CGROUP_GETSOCKOPT": "getsockopt",
}


def check_kernel() -> None:
    """Fail at start, with a named reason, when the machine cannot run weft's programs."""
    if not Path("/sys/fs/bpf").is_dir() or not os.path.ismount("/sys/fs/bpf"):
        raise KernelFeatureError(
            "the BPF filesystem is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)"
        )
    if not Path("/sys/kernel/btf/vmlinux").exists():
        log.warning("kernel.no_btf", detail="no /sys/kernel/btf/vmlinux; continuing")
    if shutil.which("bpftool") is None:
        raise KernelFeatureError("bpftool is not installed (Debian package bpftool)")
    if shutil.which("nft") is None:
        raise KernelFeatureError("nft is not installed (Debian package nftables)")
    try:
        import bcc  # noqa: F401
    except ImportError as err:
        raise KernelFeatureError(
            f"the bcc Python module is not importable ({err}); install "
            "python3-bpfcc and use a venv with system site packages"
        ) from None


def source_hash(pin_dir: Path) -> str:
    h = hashlib.sha256(str(pin_dir).encode())
    for path in sorted(BPF_DIR.glob("*.[ch]")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def attached(cgroup: Path) -> list[dict[str, Any]]:
    """What bpftool says is attached to a cgroup (effective-less, this level only)."""
    proc = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    data = json.loads(proc.stdout)
    return data if isinstance(data, list) else []


def detach(cgroup: Path, attach_type: str, prog_id: int) -> None:
    subprocess.run(
        [
            "bpftool",
            "cgroup",
            "detach",
            str(cgroup),
            _BPFTOOL_ATTACH[attach_type],
            "id",
            str(prog_id),
        ],
        capture_output=True,
        check=False,
    )


class Programs:
    """The node's programs: compiled on demand, attached to the node's cgroups, pinned."""

    def __init__(self, pin_dir: Path, pods_cgroup: Path, system_cgroup: Path) -> None:
        self.pin_dir = pin_dir
        self.cgroups = {"pods": pods_cgroup, "system": system_cgroup}
        self.version = source_hash(pin_dir)
        self._modules: dict[str, Any] = {}

    def module(self, source: str) -> Any:
        """The bcc module for one source file; opening it creates or adopts the pinned maps."""
        if source not in self._modules:
            from bcc import BPF

            self.pin_dir.mkdir(parents=True, exist_ok=True)
            self._modules[source] = BPF(
                src_file=str(BPF_DIR / source),
                cflags=[f'-DWEFT_PIN_DIR="{self.pin_dir}"', f"-I{BPF_DIR}"],
            )
        return self._modules[source]

    def maps(self) -> Any:
        """A module whose tables are the shared pinned maps."""
        return self.module("sock_connect.c")

    def tc_program(self, function: str) -> tuple[int, str]:
        """(fd, filter name) of a tc program, loaded on first use; the name carries the
        version so a filter of this version is recognised and adopted."""
        from bcc import BPF

        key = f"tc:{function}"
        if key not in self._modules:
            module = self.module("tc_inbound.c")
            try:
                fn = module.load_func(function, BPF.SCHED_CLS)
            except Exception as err:  # bcc raises bare Exception with the kernel's reason
                raise KernelFeatureError(
                    f"cannot load {function}: this kernel lacks tc programs with "
                    f"bpf_sk_assign and bpf_skc_lookup_tcp (Linux 5.7+) ({err})"
                ) from None
            self._pin(fn.fd, function)
            self._modules[key] = fn
        return int(self._modules[key].fd), f"{function}-{self.version}"

    def _pin_path(self, function: str) -> Path:
        """Programs are pinned with their version in the name (bpffs holds no plain files)."""
        return self.pin_dir / f"prog_{function}_{self.version}"

    def ensure_attached(self) -> dict[str, str]:
        """Attach every program (or adopt the attached ones); returns name -> what was done."""
        from bcc import BPF, BPFAttachType, BPFProgType

        done: dict[str, str] = {}
        for spec in CGROUP_PROGRAMS:
            cgroup = self.cgroups[spec.target]
            current = [p for p in attached(cgroup) if spec.is_this(p)]
            if current and self._pin_path(spec.function).exists():
                done[spec.function] = f"adopted (id {current[0]['id']})"
                continue
            module = self.module(spec.source)
            try:
                fn = module.load_func(
                    spec.function,
                    getattr(BPFProgType, spec.prog_type),
                    attach_type=getattr(BPFAttachType, spec.attach_type),
                )
            except Exception as err:  # bcc raises bare Exception with the kernel's reason
                raise KernelFeatureError(
                    f"cannot load {spec.function}: this kernel lacks {spec.needs} ({err})"
                ) from None
            fd = os.open(cgroup, os.O_RDONLY)
            try:
                BPF.attach_func(fn, fd, getattr(BPFAttachType, spec.attach_type), BPF_F_ALLOW_MULTI)
            finally:
                os.close(fd)
            self._pin(fn.fd, spec.function)
            for old in current:  # the new one is attached first: no gap in capture
                detach(cgroup, spec.attach_type, int(old["id"]))
            done[spec.function] = "attached" + (" (replaced an older version)" if current else "")
        for name, what in done.items():
            log.info("program.ready", program=name, action=what)
        return done

    def _pin(self, fd: int, function: str) -> None:
        from bcc import libbcc

        for old in self.pin_dir.glob(f"prog_{function}_*"):
            old.unlink()
        path = self._pin_path(function)
        if libbcc.lib.bpf_obj_pin(fd, str(path).encode()) != 0:
            log.warning("program.pin_failed", program=function, path=str(path))
