"""The eBPF compile cache: its key, the node-independent bytecode (relocations), entries
that are corrupt or stale (rejected, rebuilt, never returned), and agents sharing one build."""

from __future__ import annotations

import ctypes
import json
import os
import re
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from node_agent import bpfcache, bpfsys, programs
from node_agent import bpfmaps as m
from node_agent.bpfcache import (
    Cache,
    CacheEntryError,
    Entry,
    KeyInputs,
    MapDef,
    ProgramCode,
    RelocationError,
)

INPUTS = KeyInputs(
    sources=(("sock_connect.c", b"int f(void) { return 1; }"), ("weft_maps.h", b"/* maps */")),
    cflags=("-I<bpf dir>",),
    kernel_release="6.1.0-weft",
    kernel_build="#1 SMP PREEMPT_DYNAMIC Debian 6.1.0",
    bcc_version="0.26.0",
)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def ld_map_fd(fd: int, dst: int = 1) -> bytes:
    """ld_imm64 of a map fd: two instruction slots."""
    return insn(0x18, dst, bpfcache.PSEUDO_MAP_FD, 0, fd) + insn(0, 0, 0, 0, 0)


MOV_R0_1 = insn(0xB7, 0, 0, 0, 1)
EXIT = insn(0x95)


def entry_for(key: str) -> Entry:
    code, relocs = bpfcache.relocations(
        "weft_connect4",
        MOV_R0_1 + ld_map_fd(7) + ld_map_fd(9) + EXIT,
        {7: "weft_enrolled", 9: "weft_config"},
    )
    return Entry(
        key,
        (
            MapDef("weft_config", "config", 2, 4, 16, 1, 0),
            MapDef("weft_enrolled", "enrolled", 1, 8, 8, 65536, 0),
        ),
        (ProgramCode("weft_connect4", "sock_connect.c", code, relocs, "GPL", 0),),
    )


KEY = bpfcache.cache_key(INPUTS)
FUNCTIONS = ("weft_connect4",)


# --- the key ------------------------------------------------------------------------------


def test_key_is_stable_for_the_same_inputs() -> None:
    assert bpfcache.cache_key(INPUTS) == bpfcache.cache_key(replace(INPUTS))
    assert re.fullmatch(r"[0-9a-f]{32}", KEY)


@pytest.mark.parametrize(
    "changed",
    [
        replace(
            INPUTS, sources=(("sock_connect.c", b"int f(void) { return 2; }"), INPUTS.sources[1])
        ),
        replace(INPUTS, sources=(INPUTS.sources[0], ("weft_maps.h", b"/* maps, changed */"))),
        replace(INPUTS, sources=(*INPUTS.sources, ("tc_inbound.c", b""))),
        replace(INPUTS, sources=(("sock_connect2.c", INPUTS.sources[0][1]), INPUTS.sources[1])),
        replace(INPUTS, cflags=("-I<bpf dir>", "-DDEBUG")),
        replace(INPUTS, kernel_release="6.12.0-weft"),
        replace(INPUTS, kernel_build="#2 SMP PREEMPT_DYNAMIC Debian 6.1.0"),
        replace(INPUTS, bcc_version="0.29.1"),
    ],
    ids=["source", "header", "added-source", "renamed-source", "cflags", "kernel", "build", "bcc"],
)
def test_key_changes_with_everything_the_bytecode_depends_on(changed: KeyInputs) -> None:
    assert bpfcache.cache_key(changed) != KEY


def test_key_inputs_leave_out_the_pin_folder_and_where_the_sources_live(tmp_path: Path) -> None:
    copy = tmp_path / "bpf"
    copy.mkdir()
    for src in programs.BPF_DIR.glob("*.[ch]"):
        (copy / src.name).write_bytes(src.read_bytes())
    (copy / "README.md").write_text("not a source\n")
    here = bpfcache.key_inputs(programs.BPF_DIR, ["-I<bpf dir>"])
    there = bpfcache.key_inputs(copy, ["-I<bpf dir>"])
    assert bpfcache.cache_key(here) == bpfcache.cache_key(there)
    assert not any("/sys/fs/bpf" in flag or str(programs.BPF_DIR) in flag for flag in here.cflags)


# --- relocations --------------------------------------------------------------------------


def test_map_fds_become_relocations_by_name_and_are_patched_back_per_node() -> None:
    raw = MOV_R0_1 + ld_map_fd(7) + ld_map_fd(9) + EXIT
    code, relocs = bpfcache.relocations("p", raw, {7: "weft_enrolled", 9: "weft_config"})
    assert relocs == ((1, "weft_enrolled"), (3, "weft_config"))
    assert code == MOV_R0_1 + ld_map_fd(0) + ld_map_fd(0) + EXIT
    prog = ProgramCode("p", "s.c", code, relocs, "GPL", 0)
    assert bpfcache.patch(prog, {"weft_enrolled": 7, "weft_config": 9}) == raw
    other = bpfcache.patch(prog, {"weft_enrolled": 40, "weft_config": 41})
    assert other == MOV_R0_1 + ld_map_fd(40) + ld_map_fd(41) + EXIT


def test_a_plain_64_bit_constant_is_left_alone_and_its_second_slot_is_not_read() -> None:
    # The second slot's bytes look like a map-fd load; it is data, not an instruction.
    constant = insn(0x18, 1, 0, 0, -65536) + insn(0x18, 0, bpfcache.PSEUDO_MAP_FD, 0, 99)
    raw = constant + EXIT
    assert bpfcache.relocations("p", raw, {}) == (raw, ())


def test_a_map_fd_that_is_none_of_the_modules_tables_is_refused() -> None:
    with pytest.raises(RelocationError, match=r"weft_connect4: instruction 1 .* map fd 12"):
        bpfcache.relocations("weft_connect4", MOV_R0_1 + ld_map_fd(12) + EXIT, {7: "weft_enrolled"})


@pytest.mark.parametrize("src", [2, 3, 4, 5, 6])
def test_other_kinds_of_ld_imm64_reference_are_refused(src: int) -> None:
    raw = insn(0x18, 1, src, 0, 7) + insn(0) + EXIT
    with pytest.raises(RelocationError, match=f"src_reg {src}"):
        bpfcache.relocations("p", raw, {7: "weft_enrolled"})


def test_bytecode_that_is_not_whole_instructions_is_refused() -> None:
    with pytest.raises(RelocationError, match="not whole instructions"):
        bpfcache.relocations("p", EXIT + b"\0\0\0", {})


# --- entries: round trip, corruption, staleness -------------------------------------------


def test_an_entry_reads_back_as_written() -> None:
    entry = entry_for(KEY)
    assert bpfcache.decode(bpfcache.encode(entry), KEY, FUNCTIONS) == entry


def _doc(entry: Entry) -> dict:
    return json.loads(bpfcache.encode(entry))


def _resealed(doc: dict) -> bytes:
    """A document edited and given a matching digest: what a stale (not corrupt) entry is."""
    doc["digest"] = bpfcache.hashlib.sha256(bpfcache._canonical(doc["payload"])).hexdigest()
    return json.dumps(doc).encode()


def _flip_instruction_byte(data: bytes) -> bytes:
    doc = json.loads(data)
    insns = bytearray(bpfcache.base64.b64decode(doc["payload"]["programs"][0]["insns"]))
    insns[0] ^= 0x01
    doc["payload"]["programs"][0]["insns"] = bpfcache.base64.b64encode(insns).decode()
    return json.dumps(doc).encode()


CORRUPT: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("a flipped instruction byte", _flip_instruction_byte, "digest does not match"),
    ("a truncated file", lambda d: d[: len(d) // 2], "unreadable"),
    ("an empty file", lambda d: b"", "unreadable"),
    ("not JSON", lambda d: b"\x7fELF\x02\x01\x01" + d, "unreadable"),
    ("JSON of another shape", lambda d: _resealed({"payload": [1, 2]}), "unreadable"),
    (
        "no digest",
        lambda d: json.dumps({"payload": json.loads(d)["payload"]}).encode(),
        "unreadable",
    ),
    ("more than the bound", lambda d: d + b" " * bpfcache.MAX_ENTRY_BYTES, "more than"),
]


@pytest.mark.parametrize(("what", "spoil", "reason"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_corrupt_entry_is_refused(
    what: str, spoil: Callable[[bytes], bytes], reason: str
) -> None:
    with pytest.raises(CacheEntryError, match=reason):
        bpfcache.decode(spoil(bpfcache.encode(entry_for(KEY))), KEY, FUNCTIONS)


def test_an_entry_built_for_another_key_is_refused_even_with_a_good_digest() -> None:
    data = bpfcache.encode(entry_for("0" * 32))
    with pytest.raises(CacheEntryError, match=f"built for key {'0' * 32}, not {KEY}"):
        bpfcache.decode(data, KEY, FUNCTIONS)


def test_an_entry_of_another_format_is_refused() -> None:
    doc = _doc(entry_for(KEY))
    doc["payload"]["format"] = bpfcache.FORMAT + 1
    with pytest.raises(CacheEntryError, match="format"):
        bpfcache.decode(_resealed(doc), KEY, FUNCTIONS)


def test_an_entry_that_lacks_a_program_the_agent_needs_is_refused() -> None:
    with pytest.raises(CacheEntryError, match="lacks weft_inbound"):
        bpfcache.decode(bpfcache.encode(entry_for(KEY)), KEY, (*FUNCTIONS, "weft_inbound"))


@pytest.mark.parametrize(
    ("index", "name"), [(1, "weft_nosuch"), (99, "weft_config"), (-1, "weft_config")]
)
def test_an_entry_whose_relocation_is_out_of_place_is_refused(index: int, name: str) -> None:
    doc = _doc(entry_for(KEY))
    doc["payload"]["programs"][0]["relocations"][0] = [index, name]
    with pytest.raises(CacheEntryError, match="relocation"):
        bpfcache.decode(_resealed(doc), KEY, FUNCTIONS)


# --- the cache on disk --------------------------------------------------------------------


class Builds:
    """Stands in for bcc (the real compile is in the integration tests): counts builds."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.count = 0
        self.seconds = seconds

    def __call__(self, key: str) -> Entry:
        self.count += 1
        time.sleep(self.seconds)
        return entry_for(key)


def _lookups(result: str) -> float:
    return bpfcache.LOOKUPS.labels(result)._value.get()


def test_a_miss_compiles_and_stores_and_the_next_agent_hits(tmp_path: Path) -> None:
    cache, builds = Cache(tmp_path / "bpf"), Builds()
    hits, misses = _lookups("hit"), _lookups("miss")
    first, how = cache.get(INPUTS, FUNCTIONS, builds)
    assert (how, builds.count) == ("compiled", 1)
    assert cache.path(KEY).is_file()
    again, how = Cache(tmp_path / "bpf").get(INPUTS, FUNCTIONS, builds)
    assert (how, builds.count, again) == ("hit", 1, first)
    assert (_lookups("hit") - hits, _lookups("miss") - misses) == (1, 1)


@pytest.mark.parametrize(("what", "spoil", "reason"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_corrupt_entry_on_disk_is_removed_and_rebuilt_never_returned(
    tmp_path: Path, what: str, spoil: Callable[[bytes], bytes], reason: str
) -> None:
    cache, builds = Cache(tmp_path), Builds()
    cache.get(INPUTS, FUNCTIONS, builds)
    good = cache.path(KEY).read_bytes()
    cache.path(KEY).write_bytes(spoil(good))
    rejected = _lookups("rejected")
    entry, how = cache.get(INPUTS, FUNCTIONS, builds)
    assert (how, builds.count) == ("compiled", 2)
    assert entry == entry_for(KEY)
    assert _lookups("rejected") - rejected == 1
    assert bpfcache.decode(cache.path(KEY).read_bytes(), KEY, FUNCTIONS) == entry  # rewritten


def test_a_stale_entry_under_the_right_name_is_rebuilt(tmp_path: Path) -> None:
    cache, builds = Cache(tmp_path), Builds()
    tmp_path.mkdir(exist_ok=True)
    cache.path(KEY).write_bytes(bpfcache.encode(entry_for("f" * 32)))  # e.g. copied over
    entry, how = cache.get(INPUTS, FUNCTIONS, builds)
    assert (how, entry.key) == ("compiled", KEY)


def test_changed_sources_are_a_new_entry_and_the_old_one_is_not_used(tmp_path: Path) -> None:
    cache, builds = Cache(tmp_path), Builds()
    cache.get(INPUTS, FUNCTIONS, builds)
    changed = replace(INPUTS, sources=(("sock_connect.c", b"changed"), INPUTS.sources[1]))
    entry, how = cache.get(changed, FUNCTIONS, builds)
    assert (how, entry.key, builds.count) == ("compiled", bpfcache.cache_key(changed), 2)


def test_the_cache_keeps_only_the_newest_entries(tmp_path: Path) -> None:
    cache, builds = Cache(tmp_path), Builds()
    keys = []
    for n in range(bpfcache.MAX_ENTRIES + 3):
        inputs = replace(INPUTS, kernel_release=f"6.1.{n}")
        keys.append(bpfcache.cache_key(inputs))
        cache.get(inputs, FUNCTIONS, builds)
        bpfcache.os.utime(cache.path(keys[-1]), (1000 + n, 1000 + n))
    kept = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert kept == sorted(keys[-bpfcache.MAX_ENTRIES :])


def test_agents_starting_together_compile_once(tmp_path: Path) -> None:
    builds = Builds(seconds=0.3)
    results: list[str] = []

    def agent() -> None:
        results.append(Cache(tmp_path).get(INPUTS, FUNCTIONS, builds)[1])

    threads = [threading.Thread(target=agent) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert builds.count == 1
    assert sorted(results) == ["compiled", "hit", "hit", "hit", "hit"]


def test_an_unusable_cache_folder_still_gives_the_programs(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be\n")
    builds = Builds()
    entry, how = Cache(blocker / "bpf").get(INPUTS, FUNCTIONS, builds)
    assert (how, entry.key, builds.count) == ("compiled", KEY, 1)


def planted(key: str) -> Entry:
    """A well-formed entry with other bytecode: what someone could plant in a shared folder."""
    code = MOV_R0_1 + MOV_R0_1 + EXIT
    return replace(
        entry_for(key),
        programs=(ProgramCode("weft_connect4", "sock_connect.c", code, (), "GPL", 0),),
    )


def test_a_folder_others_can_write_is_never_read_from(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    Cache(shared).path(KEY).write_bytes(bpfcache.encode(planted(KEY)))
    builds = Builds()
    for _ in range(2):
        entry, how = Cache(shared).get(INPUTS, FUNCTIONS, builds)
        assert (how, entry) == ("compiled", entry_for(KEY))
    assert builds.count == 2


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_an_entry_others_can_write_is_rejected_and_rebuilt(tmp_path: Path, mode: int) -> None:
    cache, builds = Cache(tmp_path), Builds()
    cache.get(INPUTS, FUNCTIONS, builds)
    cache.path(KEY).write_bytes(bpfcache.encode(planted(KEY)))
    cache.path(KEY).chmod(mode)
    entry, how = cache.get(INPUTS, FUNCTIONS, builds)
    assert (how, entry) == ("compiled", entry_for(KEY))
    assert cache.path(KEY).stat().st_mode & 0o777 == 0o600


def test_an_entry_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(bpfcache.encode(planted(KEY)))
    cache, builds = Cache(tmp_path / "cache"), Builds()
    (tmp_path / "cache").mkdir(mode=0o700)
    cache.path(KEY).symlink_to(elsewhere)
    entry, how = cache.get(INPUTS, FUNCTIONS, builds)
    assert (how, entry) == ("compiled", entry_for(KEY))
    assert not cache.path(KEY).is_symlink()
    assert bpfcache.decode(elsewhere.read_bytes(), KEY, FUNCTIONS) == planted(KEY)


def test_a_lock_held_too_long_compiles_here_instead_of_waiting_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bpfcache, "LOCK_WAIT_SECONDS", 0.2)
    cache = Cache(tmp_path)
    fd = bpfcache.os.open(tmp_path / f".{KEY}.lock", bpfcache.os.O_RDWR | bpfcache.os.O_CREAT)
    try:
        bpfcache.fcntl.flock(fd, bpfcache.fcntl.LOCK_EX)
        started = time.monotonic()
        _entry, how = cache.get(INPUTS, FUNCTIONS, Builds())
        assert how == "compiled"
        assert time.monotonic() - started < 5
    finally:
        bpfcache.os.close(fd)


def test_a_build_for_the_wrong_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CacheEntryError, match="expected"):
        Cache(tmp_path).get(INPUTS, FUNCTIONS, lambda _key: entry_for("0" * 32))


# --- the Python view of the maps and the kernel's numbers ---------------------------------

C_SIZES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8}
STRUCTS = {
    "weft_pod": m.Pod,
    "weft_pod_ip": m.PodIp,
    "weft_port_key": m.PortKey,
    "weft_dst": m.Dst,
    "weft_peer": m.Peer,
    "weft_config": m.Config,
}
PINNED = re.compile(
    r'BPF_TABLE_PINNED\(\s*"(\w+)"\s*,\s*([\w ]+?)\s*,\s*([\w ]+?)\s*,\s*(\w+)\s*,\s*(\d+)\s*,'
    r'\s*PINNED\("(\w+)"\)\s*\)'
)


def c_size(c_type: str) -> int:
    if c_type.startswith("struct "):
        return ctypes.sizeof(STRUCTS[c_type.split()[1]])
    return C_SIZES[c_type]


def header_tables() -> dict[str, tuple[str, int, int]]:
    text = (programs.BPF_DIR / "weft_maps.h").read_text()
    return {
        name: (pin, c_size(key), c_size(value))
        for _kind, key, value, name, _entries, pin in PINNED.findall(text)
    }


def test_the_python_tables_are_the_headers_maps_with_their_pins_and_sizes() -> None:
    declared = header_tables()
    assert len(declared) == len(m.MAP_NAMES)
    assert {
        name: (t.pin_name, ctypes.sizeof(t.key), ctypes.sizeof(t.value))
        for name, t in programs.TABLES.items()
    } == declared


def test_the_kernel_numbers_are_bccs() -> None:
    bcc = pytest.importorskip("bcc")
    for name, number in bpfsys.PROG_TYPES.items():
        assert getattr(bcc.BPFProgType, name) == number, name
    for name, number in bpfsys.ATTACH_TYPES.items():
        assert getattr(bcc.BPFAttachType, name) == number, name
    used = {s.prog_type for s in programs.CGROUP_PROGRAMS} | {"SCHED_CLS"}
    assert used <= set(bpfsys.PROG_TYPES)
    assert {s.attach_type for s in programs.CGROUP_PROGRAMS} <= set(bpfsys.ATTACH_TYPES)


def test_the_node_daemonset_mounts_the_hosts_compile_cache_where_the_agent_looks() -> None:
    # (the Helm chart renders the same objects: tests/unit/daemonset/test_helm_chart.py)
    from tests.unit.daemonset.manifests import container, find

    ds = find("DaemonSet", "weft-node")
    agent = container(ds, "agent")
    env = {e["name"]: e.get("value") for e in agent.get("env", [])}
    looks_in = env.get("WEFT_BPF_CACHE_DIR") or "/var/cache/weft/bpf"
    if "WEFT_BPF_CACHE_DIR" not in os.environ:
        assert str(bpfcache.DEFAULT_DIR) == looks_in
    (mount,) = [v for v in agent["volumeMounts"] if v["mountPath"] == looks_in]
    assert not mount.get("readOnly")
    (volume,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"] == {"path": looks_in, "type": "DirectoryOrCreate"}


def test_without_bcc_the_first_call_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcc.libbcc", None)  # import bcc.libbcc: ImportError
    with pytest.raises(bpfsys.BpfError, match=r"libbcc is not loadable .*install python3-bpfcc"):
        bpfsys._lib.__wrapped__()
