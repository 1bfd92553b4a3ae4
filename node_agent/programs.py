"""Compile, load, attach and pin weft's eBPF programs (bcc), adopting what is already there.

Programs attached to a cgroup stay attached when the agent exits, and the maps they use are
pinned, so capture keeps working while the agent restarts. On start the agent compares what
is attached with what it would load (by a hash of the C sources): the same version is
adopted untouched; another version is replaced by attaching the new program before
detaching the old one, so there is never a moment without capture.

The bytecode comes from the compile cache (node_agent/bpfcache.py): compiled with bcc once
per machine and version, then loaded by each agent with its own node's maps patched in, so
an agent start costs milliseconds instead of seconds of clang. An agent that adopts every
program and map needs no bytecode at all.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from node_agent import bpfcache, bpfsys
from node_agent import bpfmaps as m
from node_agent.bpfcache import Entry

log = structlog.get_logger("node_agent.programs")

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
BPF_F_ALLOW_MULTI = 2


class KernelFeatureError(RuntimeError):
    """The kernel lacks something weft needs; the message names it."""


class MapLayoutError(RuntimeError):
    """A map pinned in the node's folder is not the map this agent's programs use (another
    weft version with another layout left it); the message names it and what to do."""


@dataclass(frozen=True)
class Table:
    """How Python sees one of the maps of bpf/weft_maps.h (a unit test holds the two
    together): its pin under the node's folder and its key and value types."""

    pin_name: str
    key: Any  # a ctypes type
    value: Any


TABLES = {
    "weft_enrolled": Table("enrolled", ctypes.c_uint64, m.Pod),
    "weft_enrolled_ips": Table("enrolled_ips", ctypes.c_uint32, m.PodIp),
    "weft_excluded_ports": Table("excluded_ports", m.PortKey, ctypes.c_uint8),
    "weft_dst_by_cookie": Table("dst_by_cookie", ctypes.c_uint64, m.Dst),
    "weft_dst_by_peer": Table("dst_by_peer", m.Peer, m.Dst),
    "weft_config": Table("config", ctypes.c_uint32, m.Config),
}


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

TC_FUNCTIONS = ("weft_inbound", "weft_guard")
TC_NEEDS = "tc programs with bpf_sk_assign and bpf_skc_lookup_tcp (Linux 5.7+)"

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
    """The node's programs: loaded on demand from the compile cache, attached to the
    node's cgroups, pinned; and the node's own maps, pinned in its folder."""

    def __init__(
        self,
        pin_dir: Path,
        pods_cgroup: Path,
        system_cgroup: Path,
        cache_dir: Path | None = None,
    ) -> None:
        self.pin_dir = pin_dir
        self.cgroups = {"pods": pods_cgroup, "system": system_cgroup}
        self.version = source_hash(pin_dir)
        self.cache = bpfcache.Cache(cache_dir or bpfcache.DEFAULT_DIR)
        self.code_source = ""  # "hit" or "compiled" once the bytecode was needed
        self._entry: Entry | None = None
        self._maps: dict[str, bpfsys.PinnedMap] = {}
        self._progs: dict[str, int] = {}  # function -> fd of the loaded program

    def code(self) -> Entry:
        """The compiled programs: from the cache, or compiled now (once per machine)."""
        if self._entry is None:
            started = time.monotonic()
            include = f"-I{BPF_DIR}"
            inputs = bpfcache.key_inputs(BPF_DIR, ["-I<bpf dir>"])
            functions = [s.function for s in CGROUP_PROGRAMS] + list(TC_FUNCTIONS)

            def build(key: str) -> Entry:
                from node_agent.bpfcompile import compile_all

                return compile_all(BPF_DIR, key, [include])

            self._entry, self.code_source = self.cache.get(inputs, functions, build)
            log.info(
                "programs.code",
                source=self.code_source,
                key=self._entry.key,
                seconds=round(time.monotonic() - started, 3),
            )
        return self._entry

    def maps(self) -> dict[str, bpfsys.PinnedMap]:
        """The node's maps by table name, adopted from the pin folder or created there."""
        if not self._maps:
            self.pin_dir.mkdir(parents=True, exist_ok=True)
            for name, table in TABLES.items():
                self._maps[name] = self._open_map(name, table)
        return self._maps

    def _open_map(self, name: str, table: Table) -> bpfsys.PinnedMap:
        path = self.pin_dir / table.pin_name
        try:
            fd = bpfsys.obj_get(path)
        except FileNotFoundError:
            fd = self._create_map(name, path)
        info = bpfsys.map_info(fd)
        sizes = (ctypes.sizeof(table.key), ctypes.sizeof(table.value))
        if (info.key_size, info.value_size) != sizes:
            os.close(fd)
            raise MapLayoutError(
                f"the map pinned at {path} has {info.key_size}-byte keys and "
                f"{info.value_size}-byte values, but {name} has {sizes[0]} and {sizes[1]} "
                "in this version: another weft version left it; remove the node's pin "
                f"folder {self.pin_dir} (weftctl lab down) and start again"
            )
        return bpfsys.PinnedMap(name, fd, table.key, table.value)

    def _create_map(self, name: str, path: Path) -> int:
        d = self.code().map_def(name)
        shape = bpfsys.MapInfo(d.map_type, d.key_size, d.value_size, d.max_entries, d.flags)
        try:
            fd = bpfsys.map_create(name, shape)
        except bpfsys.BpfError as err:
            raise KernelFeatureError(f"cannot create map {name}: {err}") from None
        try:
            bpfsys.obj_pin(fd, path)
        except bpfsys.BpfError as err:
            os.close(fd)
            if err.errno != errno.EEXIST:
                raise
            return bpfsys.obj_get(path)  # pinned by someone else meanwhile: that one
        log.info("map.created", map=name, path=str(path))
        return fd

    def _load(self, function: str, prog_type: str, attach_type: str, needs: str) -> int:
        """fd of one program loaded from the cached bytecode, with this node's maps."""
        if function in self._progs:
            return self._progs[function]
        entry = self.code()
        code = entry.program(function)
        maps = self.maps()
        fds = {}
        for _index, name in code.relocations:
            want, have = entry.map_def(name), bpfsys.map_info(maps[name].fd)
            shape = (want.map_type, want.key_size, want.value_size, want.max_entries, want.flags)
            if have.shape() != shape or want.pin_name != TABLES[name].pin_name:
                raise MapLayoutError(
                    f"the map pinned at {self.pin_dir / TABLES[name].pin_name} is "
                    f"{have.shape()} (type, key, value, entries, flags), but {function} "
                    f"was compiled for {shape}: another weft version left it; remove the "
                    f"node's pin folder {self.pin_dir} (weftctl lab down) and start again"
                )
            fds[name] = maps[name].fd
        try:
            fd = bpfsys.prog_load(
                function,
                bpfsys.PROG_TYPES[prog_type],
                bpfcache.patch(code, fds),
                code.license,
                code.kern_version,
                bpfsys.ATTACH_TYPES.get(attach_type, 0),
            )
        except bpfsys.BpfError as err:
            raise KernelFeatureError(
                f"cannot load {function}: this kernel lacks {needs} ({err})"
            ) from None
        self._progs[function] = fd
        return fd

    def tc_program(self, function: str) -> tuple[int, str]:
        """(fd, filter name) of a tc program, loaded on first use; the name carries the
        version so a filter of this version is recognised and adopted."""
        key = f"tc:{function}"
        if key not in self._progs:
            fd = self._load(function, "SCHED_CLS", "", TC_NEEDS)
            self._pin(fd, function)
            self._progs[key] = fd
        return self._progs[key], f"{function}-{self.version}"

    def _pin_path(self, function: str) -> Path:
        """Programs are pinned with their version in the name (bpffs holds no plain files)."""
        return self.pin_dir / f"prog_{function}_{self.version}"

    def ensure_attached(self) -> dict[str, str]:
        """Attach every program (or adopt the attached ones); returns name -> what was done."""
        started = time.monotonic()
        done: dict[str, str] = {}
        for spec in CGROUP_PROGRAMS:
            cgroup = self.cgroups[spec.target]
            current = [p for p in attached(cgroup) if spec.is_this(p)]
            if current and self._pin_path(spec.function).exists():
                done[spec.function] = f"adopted (id {current[0]['id']})"
                continue
            prog = self._load(spec.function, spec.prog_type, spec.attach_type, spec.needs)
            fd = os.open(cgroup, os.O_RDONLY)
            try:
                bpfsys.prog_attach(
                    prog, fd, bpfsys.ATTACH_TYPES[spec.attach_type], BPF_F_ALLOW_MULTI
                )
            except bpfsys.BpfError as err:
                raise KernelFeatureError(
                    f"cannot attach {spec.function} to {cgroup}: this kernel lacks "
                    f"{spec.needs} ({err})"
                ) from None
            finally:
                os.close(fd)
            self._pin(prog, spec.function)
            for old in current:  # the new one is attached first: no gap in capture
                detach(cgroup, spec.attach_type, int(old["id"]))
            done[spec.function] = "attached" + (" (replaced an older version)" if current else "")
        for name, what in done.items():
            log.info("program.ready", program=name, action=what)
        log.info(
            "programs.attached",
            code=self.code_source or "not needed",
            seconds=round(time.monotonic() - started, 3),
        )
        return done

    def _pin(self, fd: int, function: str) -> None:
        for old in self.pin_dir.glob(f"prog_{function}_*"):
            old.unlink()
        path = self._pin_path(function)
        try:
            bpfsys.obj_pin(fd, path)
        except bpfsys.BpfError as err:
            log.warning("program.pin_failed", program=function, path=str(path), error=str(err))
