"""The eBPF calls the node agent makes itself: create, pin and open maps, load and attach
programs from bytecode, and read and write map entries.

bcc is the compiler (node_agent/bpfcompile.py) and the loader: once the bytecode is in the
compile cache, loading it for a node needs no clang, only these calls, made through the
functions libbcc exports (bcc.libbcc.lib: bcc's own bcc_create_map and
bcc_prog_load_xattr, and the libbpf calls bcc itself uses, which libbcc links or bundles).
No syscall numbers or `union bpf_attr` layouts are kept here. Two layouts remain because
libbcc takes or returns them as raw memory and has no accessor: libbpf's
`struct bpf_prog_load_opts` (the only way to pass expected_attach_type, which the kernel
requires for cgroup socket-address and sockopt programs) and the kernel's
`struct bpf_map_info` (what bpf_obj_get_info_by_fd fills in).

Each function is typed on its own ctypes object (lib["name"]), so the typings bcc set on
the shared ones for its own callers are left as they are.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """An eBPF call failed; errno and what was asked are in the message."""


class ProgLoadOpts(ctypes.Structure):
    """libbpf's struct bpf_prog_load_opts (bpf/bpf.h, libbpf 1.x), as bcc_prog_load_xattr
    reads it. libbpf only appends to its opts structs, so this prefix stays valid; the
    zeroed tail stands for fields later versions append, should a newer bcc read them."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("attempts", ctypes.c_int),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_ifindex", ctypes.c_uint32),
        ("kern_version", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_prog_fd", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("fd_array", ctypes.c_void_p),
        ("func_info", ctypes.c_void_p),
        ("func_info_cnt", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_void_p),
        ("line_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_void_p),
        ("_appended", ctypes.c_uint8 * 64),
    ]


class _MapInfo(ctypes.Structure):
    """The head of the kernel's struct bpf_map_info (the kernel fills in as much as asked)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
    ]


_c_int, _ptr, _str = ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p

# name -> argument types (all return int: an fd or 0, negative on failure with errno set).
# Signatures of bcc 0.26's src/cc/libbpf.h and libbpf 1.x's bpf/bpf.h.
SIGNATURES: dict[str, list[Any]] = {
    # (map_type, name, key_size, value_size, max_entries, map_flags)
    "bcc_create_map": [_c_int, _str, _c_int, _c_int, _c_int, _c_int],
    # (prog_type, name, license, insns, opts, prog_len in bytes, log_buf, log_size,
    #  allow_rlimit)
    "bcc_prog_load_xattr": [
        _c_int,
        _str,
        _str,
        _ptr,
        ctypes.POINTER(ProgLoadOpts),
        _c_int,
        _ptr,
        ctypes.c_uint,
        ctypes.c_bool,
    ],
    "bpf_obj_pin": [_c_int, _str],
    "bpf_obj_get": [_str],
    "bpf_obj_get_info_by_fd": [_c_int, _ptr, ctypes.POINTER(ctypes.c_uint32)],
    # (prog_fd, attachable_fd, attach_type, flags): what bcc's BPF.attach_func calls
    "bpf_prog_attach": [_c_int, _c_int, _c_int, ctypes.c_uint],
    "bpf_lookup_elem": [_c_int, _ptr, _ptr],
    "bpf_update_elem": [_c_int, _ptr, _ptr, ctypes.c_ulonglong],
    "bpf_delete_elem": [_c_int, _ptr],
    "bpf_get_next_key": [_c_int, _ptr, _ptr],
}


@functools.cache
def _lib() -> dict[str, Any]:
    """libbcc's functions, typed; loaded on first use, so that importing this module (the
    unit tests, weftctl) needs no bcc, and a missing bcc is named when first needed."""
    try:
        from bcc.libbcc import lib
    except ImportError as err:
        raise BpfError(
            errno.ENOSYS,
            f"libbcc is not loadable ({err}); install python3-bpfcc and use a venv with "
            "system site packages",
        ) from None
    funcs = {}
    for name, argtypes in SIGNATURES.items():
        try:
            func = lib[name]  # a new object: bcc's own lib.<name> is left as bcc typed it
        except AttributeError:
            raise BpfError(
                errno.ENOSYS, f"this libbcc does not export {name} (bcc 0.26 or newer needed)"
            ) from None
        func.argtypes = argtypes
        func.restype = ctypes.c_int
        funcs[name] = func
    return funcs


def _call(name: str, *args: Any) -> tuple[int, int]:
    """(return value, errno): libbpf and bcc return a negative number and set errno (bcc
    returns -1 in some paths, so errno is what says why)."""
    ret = int(_lib()[name](*args))
    if ret >= 0:
        return ret, 0
    return ret, ctypes.get_errno() or -ret


def _check(name: str, what: str, *args: Any) -> int:
    ret, err = _call(name, *args)
    if ret < 0:
        raise BpfError(err, f"{what}: {os.strerror(err)}")
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
    """A new map's fd (bcc truncates the name to the kernel's 15 characters)."""
    return _check(
        "bcc_create_map",
        f"creating map {name}",
        info.map_type,
        name.encode(),
        info.key_size,
        info.value_size,
        info.max_entries,
        info.flags,
    )


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(
        "bpf_obj_get_info_by_fd",
        f"reading the info of map fd {fd}",
        fd,
        ctypes.byref(info),
        ctypes.byref(size),
    )
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
    _check("bpf_obj_pin", f"pinning at {path}", fd, str(path).encode())


def obj_get(path: Path) -> int:
    """An fd of what is pinned at path; FileNotFoundError when nothing is."""
    ret, err = _call("bpf_obj_get", str(path).encode())
    if ret >= 0:
        return ret
    if err == errno.ENOENT:
        raise FileNotFoundError(errno.ENOENT, "nothing pinned", str(path))
    raise BpfError(err, f"opening the pin {path}: {os.strerror(err)}")


def prog_load(
    name: str,
    prog_type: int,
    insns: bytes,
    license: str,
    kern_version: int,
    expected_attach_type: int = 0,
) -> int:
    """Load bytecode whose map references are already fds; on refusal the error carries
    the end of the verifier's log (bcc retries the load with the log on only when it fails,
    and then also prints the log on stderr, as for any bcc load)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    opts = ProgLoadOpts(
        sz=ctypes.sizeof(ProgLoadOpts),
        expected_attach_type=expected_attach_type,
        kern_version=kern_version,
    )
    log = ctypes.create_string_buffer(LOG_SIZE)
    ret, err = _call(
        "bcc_prog_load_xattr",
        prog_type,
        name.encode(),
        license.encode(),
        code,
        ctypes.byref(opts),
        len(insns),
        log,
        LOG_SIZE,
        False,  # allow_rlimit: an EPERM is a missing capability on the 5.14+ kernels weft
        # needs (memlock stopped counting in 5.11), not a reason to lift the process's limit
    )
    if ret >= 0:
        return ret
    tail = "\n".join(log.value.decode(errors="replace").strip().splitlines()[-6:])
    raise BpfError(
        err, f"loading {name}: {os.strerror(err)}" + (f"; verifier: {tail}" if tail else "")
    )


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int) -> None:
    _check(
        "bpf_prog_attach",
        f"attaching program fd {prog_fd} (attach type {attach_type})",
        prog_fd,
        target_fd,
        attach_type,
        flags,
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

    def __getitem__(self, key: Any) -> Any:
        value = self.Leaf()
        ret, err = _call("bpf_lookup_elem", self.fd, ctypes.byref(key), ctypes.byref(value))
        if err == errno.ENOENT:
            raise KeyError(key)
        if ret < 0:
            raise BpfError(err, f"looking up in map {self.name}: {os.strerror(err)}")
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        _check(
            "bpf_update_elem",
            f"updating map {self.name}",
            self.fd,
            ctypes.byref(key),
            ctypes.byref(value),
            0,  # BPF_ANY
        )

    def __delitem__(self, key: Any) -> None:
        ret, err = _call("bpf_delete_elem", self.fd, ctypes.byref(key))
        if err == errno.ENOENT:
            raise KeyError(key)
        if ret < 0:
            raise BpfError(err, f"deleting from map {self.name}: {os.strerror(err)}")

    def __iter__(self) -> Iterator[Any]:
        # Bounded by the map's size: a map changing under us cannot keep this going.
        key = None
        for _ in range(self.max_entries):
            following = self.Key()
            ret, err = _call(
                "bpf_get_next_key",
                self.fd,
                ctypes.byref(key) if key is not None else None,  # NULL: the first key
                ctypes.byref(following),
            )
            if err == errno.ENOENT:
                return
            if ret < 0:
                raise BpfError(err, f"walking map {self.name}: {os.strerror(err)}")
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
