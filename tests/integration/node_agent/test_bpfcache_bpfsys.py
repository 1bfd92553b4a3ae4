"""The calls the agent loads cached bytecode with (node_agent/bpfsys.py, through libbcc), in
the kernel: a map's entries up to and past its size, pins that exist or do not, the
expected attach type reaching the kernel, and refusals that say what was refused and why
(the verifier's own words for a program)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import cgroups
from node_agent import bpfsys
from tests.conftest import RUN_ID

pytestmark = pytest.mark.integration

HASH = 1  # BPF_MAP_TYPE_HASH


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


RETURN_1 = insn(0xB7, 0, 0, 0, 1) + insn(0x95)  # r0 = 1; exit
EXIT_ONLY = insn(0x95)  # exit with r0 never set: the verifier refuses it


@pytest.fixture
def pins() -> Iterator[Path]:
    path = Path(f"/sys/fs/bpf/weft-{RUN_ID}-bpfsys")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    root = f"weft-{RUN_ID}-bpfsys"
    try:
        yield cgroups.create(f"{root}/pods")
    finally:
        cgroups.remove(root)  # attached programs go with the cgroup


@pytest.fixture
def small_map() -> Iterator[bpfsys.PinnedMap]:
    fd = bpfsys.map_create("weft_t_small", bpfsys.MapInfo(HASH, 8, 4, 4, 0))
    table = bpfsys.PinnedMap("weft_t_small", fd, ctypes.c_uint64, ctypes.c_uint32)
    try:
        yield table
    finally:
        table.close()


def test_a_map_reads_back_what_was_written_and_missing_keys_are_key_errors(
    small_map: bpfsys.PinnedMap,
) -> None:
    small_map[ctypes.c_uint64(7)] = ctypes.c_uint32(70)
    small_map[ctypes.c_uint64(8)] = ctypes.c_uint32(80)
    small_map[ctypes.c_uint64(7)] = ctypes.c_uint32(71)  # overwritten in place
    assert small_map[ctypes.c_uint64(7)].value == 71
    assert sorted((k.value, v.value) for k, v in small_map.items()) == [(7, 71), (8, 80)]
    assert len(small_map) == 2
    del small_map[ctypes.c_uint64(8)]
    with pytest.raises(KeyError):
        small_map[ctypes.c_uint64(8)]
    with pytest.raises(KeyError):
        del small_map[ctypes.c_uint64(8)]
    assert [k.value for k in small_map] == [7]


def test_a_full_map_refuses_one_more_entry_naming_the_map_and_still_walks_to_its_end(
    small_map: bpfsys.PinnedMap,
) -> None:
    for key in range(small_map.max_entries):
        small_map[ctypes.c_uint64(key)] = ctypes.c_uint32(key)
    with pytest.raises(bpfsys.BpfError, match=r"updating map weft_t_small: ") as refused:
        small_map[ctypes.c_uint64(99)] = ctypes.c_uint32(99)
    assert refused.value.errno == errno.E2BIG
    assert sorted(k.value for k in small_map) == [0, 1, 2, 3]
    small_map[ctypes.c_uint64(2)] = ctypes.c_uint32(22)  # an existing key still updates


def test_map_info_is_what_was_created_with_the_name_cut_to_the_kernels_length() -> None:
    shape = bpfsys.MapInfo(HASH, 16, 12, 32, 1)  # BPF_F_NO_PREALLOC
    fd = bpfsys.map_create("weft_t_a_very_long_name", shape)
    try:
        info = bpfsys.map_info(fd)
    finally:
        os.close(fd)
    assert info.shape() == shape.shape()
    assert info.map_id > 0
    assert info.name == "weft_t_a_very_l"


def test_a_map_the_kernel_refuses_is_named() -> None:
    with pytest.raises(bpfsys.BpfError, match=r"creating map weft_t_bad: ") as refused:
        bpfsys.map_create("weft_t_bad", bpfsys.MapInfo(9999, 8, 8, 4, 0))
    assert refused.value.errno == errno.EINVAL


def test_pins_open_by_path_and_a_taken_path_is_eexist(pins: Path) -> None:
    fd = bpfsys.map_create("weft_t_pinned", bpfsys.MapInfo(HASH, 4, 4, 4, 0))
    try:
        bpfsys.obj_pin(fd, pins / "m")
        with pytest.raises(bpfsys.BpfError, match=rf"pinning at {pins / 'm'}: ") as taken:
            bpfsys.obj_pin(fd, pins / "m")
        assert taken.value.errno == errno.EEXIST  # programs.py adopts the other pin on this
        again = bpfsys.obj_get(pins / "m")
        try:
            assert bpfsys.map_info(again).map_id == bpfsys.map_info(fd).map_id
        finally:
            os.close(again)
    finally:
        os.close(fd)


def test_nothing_pinned_is_file_not_found_and_a_path_off_bpffs_is_a_named_error(
    pins: Path, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        bpfsys.obj_get(pins / "absent")
    plain = tmp_path / "not-a-pin"
    plain.write_text("")
    with pytest.raises(bpfsys.BpfError, match=rf"opening the pin {plain}: "):
        bpfsys.obj_get(plain)


def test_a_refused_program_carries_the_verifiers_reason() -> None:
    with pytest.raises(bpfsys.BpfError, match=r"loading weft_t_noret: .*; verifier: ") as refused:
        bpfsys.prog_load("weft_t_noret", bpfsys.PROG_TYPES["SOCK_OPS"], EXIT_ONLY, "GPL", 0)
    assert "R0 !read_ok" in str(refused.value)
    assert refused.value.errno == errno.EACCES


def test_the_expected_attach_type_reaches_the_kernel() -> None:
    # The kernel refuses a socket-address program without one of its attach types; with
    # CGROUP_INET4_CONNECT the same bytecode loads (so libbpf's opts layout is right).
    sock_addr = bpfsys.PROG_TYPES["CGROUP_SOCK_ADDR"]
    with pytest.raises(bpfsys.BpfError, match=r"loading weft_t_conn: ") as refused:
        bpfsys.prog_load("weft_t_conn", sock_addr, RETURN_1, "GPL", 0, 0)
    assert refused.value.errno == errno.EINVAL
    connect4 = bpfsys.ATTACH_TYPES["CGROUP_INET4_CONNECT"]
    fd = bpfsys.prog_load("weft_t_conn", sock_addr, RETURN_1, "GPL", 0, connect4)
    os.close(fd)


def test_a_loaded_program_attaches_to_a_cgroup_and_a_bad_target_is_named(
    cgroup: Path, tmp_path: Path
) -> None:
    connect4 = bpfsys.ATTACH_TYPES["CGROUP_INET4_CONNECT"]
    prog = bpfsys.prog_load(
        "weft_t_attach", bpfsys.PROG_TYPES["CGROUP_SOCK_ADDR"], RETURN_1, "GPL", 0, connect4
    )
    try:
        target = os.open(cgroup, os.O_RDONLY)
        try:
            bpfsys.prog_attach(prog, target, connect4, 2)  # BPF_F_ALLOW_MULTI
        finally:
            os.close(target)
        shown = subprocess.run(
            ["bpftool", "-j", "cgroup", "show", str(cgroup)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert [p["name"] for p in json.loads(shown)] == ["weft_t_attach"]

        not_a_cgroup = tmp_path / "file"
        not_a_cgroup.write_text("")
        target = os.open(not_a_cgroup, os.O_RDONLY)
        try:
            with pytest.raises(bpfsys.BpfError, match=rf"attaching program fd {prog} "):
                bpfsys.prog_attach(prog, target, connect4, 2)
        finally:
            os.close(target)
    finally:
        os.close(prog)
