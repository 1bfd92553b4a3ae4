"""Compile weft's eBPF sources with bcc into a node-independent cache entry.

bcc creates (or opens) the pinned maps while it compiles and writes their fds into the
bytecode; the compile runs against a scratch pin folder, the fds are turned into
relocations by map name (node_agent/bpfcache.py), and the scratch maps are removed. What
each map is (type, sizes, flags, pin name) is read back from the kernel, so the C header
stays the only place where the maps are declared.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from node_agent import bpfsys
from node_agent.bpfcache import Entry, MapDef, ProgramCode, RelocationError, relocations

BPF_ROOT = Path("/sys/fs/bpf")


@contextlib.contextmanager
def _scratch_pins() -> Iterator[Path]:
    path = BPF_ROOT / f"weft-bpfbuild-{os.getpid()}-{secrets.token_hex(3)}"
    path.mkdir()
    try:
        yield path
    finally:
        for pin in path.iterdir():  # unlinking the pins frees the scratch maps
            with contextlib.suppress(OSError):
                pin.unlink()
        with contextlib.suppress(OSError):
            path.rmdir()


def _pin_names(scratch: Path) -> dict[int, str]:
    """map id -> the name of its pin in the scratch folder."""
    names = {}
    for pin in scratch.iterdir():
        fd = bpfsys.obj_get(pin)
        try:
            names[bpfsys.map_info(fd).map_id] = pin.name
        finally:
            os.close(fd)
    return names


def compile_all(bpf_dir: Path, key: str, cflags: list[str]) -> Entry:
    """Every function of every `bpf/*.c`, with the definitions of the maps they use.

    cflags: the flags besides the pin folder (which the compile chooses itself)."""
    from bcc import BPF, lib

    lib.bpf_num_tables.restype = ctypes.c_size_t
    lib.bpf_num_tables.argtypes = [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]

    maps: dict[str, MapDef] = {}
    programs: list[ProgramCode] = []
    with _scratch_pins() as scratch:
        for source in sorted(bpf_dir.glob("*.c")):
            module = BPF(
                src_file=str(source).encode(), cflags=[f'-DWEFT_PIN_DIR="{scratch}"', *cflags]
            )
            try:
                pins = _pin_names(scratch)
                by_fd: dict[int, str] = {}
                for i in range(lib.bpf_num_tables(module.module)):
                    name = lib.bpf_table_name(module.module, i).decode()
                    fd = lib.bpf_table_fd(module.module, name.encode())
                    by_fd[fd] = name
                    info = bpfsys.map_info(fd)
                    if info.map_id not in pins:
                        raise RelocationError(
                            f"{source.name}: table {name} is not pinned; every weft map is "
                            "pinned per node (BPF_TABLE_PINNED with PINNED(...) in weft_maps.h)"
                        )
                    found = MapDef(
                        name,
                        pins[info.map_id],
                        info.map_type,
                        info.key_size,
                        info.value_size,
                        info.max_entries,
                        info.flags,
                    )
                    if maps.setdefault(name, found) != found:
                        raise RelocationError(
                            f"{source.name}: table {name} differs from the same table in "
                            f"another source ({found} vs {maps[name]})"
                        )
                license = lib.bpf_module_license(module.module).decode()
                kern_version = int(lib.bpf_module_kern_version(module.module))
                for i in range(lib.bpf_num_functions(module.module)):
                    function = lib.bpf_function_name(module.module, i).decode()
                    insns, relocs = relocations(
                        function, module.dump_func(function.encode()), by_fd
                    )
                    programs.append(
                        ProgramCode(function, source.name, insns, relocs, license, kern_version)
                    )
            finally:
                module.cleanup()
    return Entry(key, tuple(sorted(maps.values(), key=lambda m: m.name)), tuple(programs))
