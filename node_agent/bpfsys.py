"""The bpf(2) calls the node agent makes itself: create, pin and open maps, load and attach
programs from bytecode, and read and write map entries.

bcc is the compiler (node_agent/bpfcompile.py); once the bytecode is in the compile cache,
loading it for a node needs no clang and no bcc module, only these calls. The layouts are
the kernel's stable uapi (union bpf_attr, struct bpf_map_info in linux/bpf.h).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bpf(2)'s number per architecture (asm/unistd.h).
_SYS_BPF = {"x86_64": 321, "aarch64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_OBJ_GET_INFO_BY_FD = 15

OBJ_NAME_LEN = 16  # BPF_OBJ_NAME_LEN, with the NUL
LOG_SIZE = 1 << 20  # verifier log kept when a load fails

# The kernel's numbers for the bcc names node_agent/programs.py uses (enum bpf_prog_type,
# enum bpf_attach_type); a unit test holds them to bcc's BPFProgType and BPFAttachType.
PROG_TYPES = {"SCHED_CLS": 3, "SOCK_OPS": 13, "CGROUP_SOCK_ADDR": 18, "CGROUP_SOCKOPT": 25}
ATTACH_TYPES = {
    "CGROUP_SOCK_OPS": 3,
    "CGROUP_INET4_CONNECT": 10,
    "CGROUP_INET6_CONNECT": 11,
    "CGROUP_GETSOCKOPT": 21,
    "CGROUP_INET4_GETPEERNAME": 29,
}


class BpfError(OSError):
    """A bpf(2) call failed; errno and what was asked are in the message."""


class _MapCreate(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * OBJ_NAME_LEN),
    ]


class _MapElem(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # next_key for BPF_MAP_GET_NEXT_KEY
        ("flags", ctypes.c_uint64),
    ]


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _Obj(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _Attach(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
    ]


class _Info(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError(errno.ENOSYS, f"bpf(2): no syscall number known for {platform.machine()}")
    ret = _libc.syscall(
        ctypes.c_long(number),
        ctypes.c_int(cmd),
        ctypes.byref(attr),
        ctypes.c_uint(ctypes.sizeof(attr)),
    )
    if ret < 0:
        return -ctypes.get_errno()
    return int(ret)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise BpfError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


@dataclass(frozen=True)
class MapInfo:
    """What the kernel says a map is (struct bpf_map_info, the part weft checks)."""

    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    map_id: int = 0
    name: str = ""

    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.map_type, self.key_size, self.value_size, self.max_entries, self.flags)


def map_create(name: str, info: MapInfo) -> int:
    attr = _MapCreate(
        info.map_type,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.flags,
        0,
        0,
        name.encode()[: OBJ_NAME_LEN - 1],
    )
    return _check(_bpf(BPF_MAP_CREATE, attr), f"creating map {name}")


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    attr = _Info(fd, ctypes.sizeof(info), ctypes.addressof(info))
    _check(_bpf(BPF_OBJ_GET_INFO_BY_FD, attr), f"reading the info of map fd {fd}")
    return MapInfo(
        info.type,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.map_flags,
        info.id,
        info.name.decode(errors="replace"),
    )


def obj_pin(fd: int, path: Path) -> None:
    raw = ctypes.create_string_buffer(str(path).encode())
    _check(_bpf(BPF_OBJ_PIN, _Obj(ctypes.addressof(raw), fd, 0)), f"pinning at {path}")


def obj_get(path: Path) -> int:
    """An fd of what is pinned at path; FileNotFoundError when nothing is."""
    raw = ctypes.create_string_buffer(str(path).encode())
    ret = _bpf(BPF_OBJ_GET, _Obj(ctypes.addressof(raw), 0, 0))
    if ret == -errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, "nothing pinned", str(path))
    return _check(ret, f"opening the pin {path}")


def prog_load(
    name: str,
    prog_type: int,
    insns: bytes,
    license: str,
    kern_version: int,
    expected_attach_type: int = 0,
) -> int:
    """Load bytecode whose map references are already fds; on refusal the error carries
    the end of the verifier's log (the load is retried with the log on)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _ProgLoad(
        prog_type=prog_type,
        insn_cnt=len(insns) // 8,
        insns=ctypes.addressof(code),
        license=ctypes.addressof(lic),
        kern_version=kern_version,
        prog_name=name.encode()[: OBJ_NAME_LEN - 1],
        expected_attach_type=expected_attach_type,
    )
    ret = _bpf(BPF_PROG_LOAD, attr)
    if ret >= 0:
        return ret
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr.log_level, attr.log_size, attr.log_buf = 1, LOG_SIZE, ctypes.addressof(log)
    again = _bpf(BPF_PROG_LOAD, attr)
    if again >= 0:  # loaded the second time: keep it
        return again
    tail = "\n".join(log.value.decode(errors="replace").strip().splitlines()[-6:])
    raise BpfError(
        -ret, f"loading {name}: {os.strerror(-ret)}" + (f"; verifier: {tail}" if tail else "")
    )


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int) -> None:
    _check(
        _bpf(BPF_PROG_ATTACH, _Attach(target_fd, prog_fd, attach_type, flags)),
        f"attaching program fd {prog_fd} (attach type {attach_type})",
    )


class PinnedMap(MutableMapping[Any, Any]):
    """One map as a dictionary of ctypes keys and values (the subset of bcc's tables that
    node_agent/maps.py uses), over an fd this object owns."""

    def __init__(self, name: str, fd: int, key_type: Any, value_type: Any) -> None:
        self.name = name
        self.fd = fd
        self.Key = key_type
        self.Leaf = value_type
        self.max_entries = map_info(fd).max_entries

    def _elem(self, key: Any, value: Any = None, flags: int = 0) -> _MapElem:
        return _MapElem(
            self.fd,
            0,
            ctypes.addressof(key),
            ctypes.addressof(value) if value is not None else 0,
            flags,
        )

    def __getitem__(self, key: Any) -> Any:
        value = self.Leaf()
        ret = _bpf(BPF_MAP_LOOKUP_ELEM, self._elem(key, value))
        if ret == -errno.ENOENT:
            raise KeyError(key)
        _check(ret, f"looking up in map {self.name}")
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        _check(_bpf(BPF_MAP_UPDATE_ELEM, self._elem(key, value)), f"updating map {self.name}")

    def __delitem__(self, key: Any) -> None:
        ret = _bpf(BPF_MAP_DELETE_ELEM, self._elem(key))
        if ret == -errno.ENOENT:
            raise KeyError(key)
        _check(ret, f"deleting from map {self.name}")

    def __iter__(self) -> Iterator[Any]:
        # Bounded by the map's size: a map changing under us cannot keep this going.
        key = None
        for _ in range(self.max_entries):
            following = self.Key()
            attr = _MapElem(
                self.fd,
                0,
                ctypes.addressof(key) if key is not None else 0,
                ctypes.addressof(following),
                0,
            )
            ret = _bpf(BPF_MAP_GET_NEXT_KEY, attr)
            if ret == -errno.ENOENT:
                return
            _check(ret, f"walking map {self.name}")
            yield following
            key = following

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def items(self) -> Any:
        """(key, value) pairs; a key removed while walking is skipped, not an error."""
        pairs = []
        for key in list(self):
            try:
                pairs.append((key, self[key]))
            except KeyError:
                continue
        return pairs

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
