"""The compile cache: weft's eBPF programs compiled once per machine, loaded by every agent.

Compiling the C sources with bcc (clang) costs about 3 s of CPU per agent, every start. The
bytecode does not depend on the node: a program refers to its maps by fd, patched into its
instructions at load, and which maps those are (the node's own, pinned in its folder) is the
loader's choice. So an entry holds, per program, the instructions with the map references
blanked and a list of (instruction, map name) relocations, plus each map's definition; any
agent patches in the fds of its own node's maps and loads (node_agent/programs.py).

An entry is keyed by everything the bytecode depends on: the sources (all of bpf/), the
compiler flags other than the pin folder, the kernel release and build (bcc compiles against
its headers) and the bcc version. It is written atomically with a digest; one that fails to
parse, whose digest or key does not match, or that lacks a program is rejected, removed and
rebuilt, never loaded. Agents that start together wait on a lock while the first compiles.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter

log = structlog.get_logger("node_agent.bpfcache")

# On Kubernetes, mount it from the host so that a restarted agent finds it too.
DEFAULT_DIR = Path(os.environ.get("WEFT_BPF_CACHE_DIR", "/var/cache/weft/bpf"))
FORMAT = 1  # bump when the entry layout or what the loader does with it changes
MAX_ENTRY_BYTES = 4 << 20  # ours are about 20 KB; a bigger file is not one of ours
MAX_ENTRIES = 8  # one per weft version x kernel seen; older ones are removed
LOCK_WAIT_SECONDS = 300.0  # five agents compiling on two busy cores stay well inside this

LOOKUPS = Counter(
    "weft_agent_bpf_cache_lookups",
    "Compile cache lookups by result: hit, miss (compiled here), rejected (corrupt or stale "
    "entry, removed and compiled again).",
    ["result"],
)

_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
PSEUDO_MAP_FD = 1  # src_reg of an ld_imm64 whose imm is a map fd


class CacheEntryError(ValueError):
    """An entry that must not be loaded; the message says what is wrong with it."""


class RelocationError(ValueError):
    """Bytecode the cache cannot make node-independent (an unknown map, a new kind of
    reference); the message names the program and instruction."""


@dataclass(frozen=True)
class MapDef:
    name: str  # the table's name in C (weft_enrolled)
    pin_name: str  # the file under the node's pin folder (enrolled)
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ProgramCode:
    function: str
    source: str
    insns: bytes  # map references blanked (imm 0)
    relocations: tuple[tuple[int, str], ...]  # (instruction index, map name)
    license: str
    kern_version: int


@dataclass(frozen=True)
class Entry:
    key: str
    maps: tuple[MapDef, ...]
    programs: tuple[ProgramCode, ...]

    def program(self, function: str) -> ProgramCode:
        for p in self.programs:
            if p.function == function:
                return p
        raise KeyError(function)

    def map_def(self, name: str) -> MapDef:
        for m in self.maps:
            if m.name == name:
                return m
        raise KeyError(name)


@dataclass(frozen=True)
class KeyInputs:
    """Everything compiled bytecode depends on."""

    sources: tuple[tuple[str, bytes], ...]  # (file name, content), sorted
    cflags: tuple[str, ...]  # without the pin folder and with the include folder generic
    kernel_release: str
    kernel_build: str
    bcc_version: str


def cache_key(inputs: KeyInputs) -> str:
    h = hashlib.sha256(f"weft-bpf-cache/{FORMAT}".encode())
    for name, content in inputs.sources:
        h.update(b"\0src\0" + name.encode() + b"\0" + hashlib.sha256(content).digest())
    for part in (*inputs.cflags, "\0", inputs.kernel_release, inputs.kernel_build):
        h.update(b"\0" + part.encode())
    h.update(b"\0bcc\0" + inputs.bcc_version.encode())
    return h.hexdigest()[:32]


def key_inputs(bpf_dir: Path, cflags: Iterable[str]) -> KeyInputs:
    """The inputs on this machine (reads the sources; imports bcc for its version)."""
    import bcc

    sources = tuple((p.name, p.read_bytes()) for p in sorted(bpf_dir.glob("*.[ch]")))
    if not sources:
        raise FileNotFoundError(f"no eBPF sources (*.c, *.h) in {bpf_dir}")
    uname = os.uname()
    return KeyInputs(
        sources=sources,
        cflags=tuple(cflags),
        kernel_release=uname.release,
        kernel_build=uname.version,
        bcc_version=str(getattr(bcc, "__version__", "unknown")),
    )


def relocations(
    function: str, insns: bytes, map_names: Mapping[int, str]
) -> tuple[bytes, tuple[tuple[int, str], ...]]:
    """Blank each map fd in the bytecode and say where it was and which map it named."""
    if len(insns) % 8:
        raise RelocationError(f"{function}: {len(insns)} bytes is not whole instructions")
    out = bytearray(insns)
    relocs: list[tuple[int, str]] = []
    index = 0
    while index * 8 < len(insns):
        code, regs, _off, imm = struct.unpack_from("<BBhi", insns, index * 8)
        if code != _LD_IMM64:
            index += 1
            continue
        src = regs >> 4
        if src == PSEUDO_MAP_FD:
            if imm not in map_names:
                raise RelocationError(
                    f"{function}: instruction {index} refers to map fd {imm}, "
                    "which is none of the compiled module's tables"
                )
            relocs.append((index, map_names[imm]))
            struct.pack_into("<i", out, index * 8 + 4, 0)
        elif src != 0:
            raise RelocationError(
                f"{function}: instruction {index} is an ld_imm64 with src_reg {src}; the "
                "cache only relocates map fds (src_reg 1)"
            )
        index += 2
    return bytes(out), tuple(relocs)


def patch(program: ProgramCode, fds: Mapping[str, int]) -> bytes:
    """The program's instructions with this node's map fds in place."""
    out = bytearray(program.insns)
    for index, name in program.relocations:
        struct.pack_into("<i", out, index * 8 + 4, fds[name])
    return bytes(out)


def _payload(entry: Entry) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "key": entry.key,
        "maps": [vars(m) for m in entry.maps],
        "programs": [
            {
                "function": p.function,
                "source": p.source,
                "insns": base64.b64encode(p.insns).decode(),
                "relocations": [list(r) for r in p.relocations],
                "license": p.license,
                "kern_version": p.kern_version,
            }
            for p in entry.programs
        ],
    }


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def encode(entry: Entry) -> bytes:
    payload = _payload(entry)
    digest = hashlib.sha256(_canonical(payload)).hexdigest()
    return json.dumps({"digest": digest, "payload": payload}, indent=1).encode()


def decode(data: bytes, key: str, functions: Iterable[str]) -> Entry:
    """The entry in data, if it is whole, is the one for key, and holds every function."""
    if len(data) > MAX_ENTRY_BYTES:
        raise CacheEntryError(f"{len(data)} bytes, more than the {MAX_ENTRY_BYTES} allowed")
    try:
        doc = json.loads(data)
        payload = doc["payload"]
        if hashlib.sha256(_canonical(payload)).hexdigest() != doc["digest"]:
            raise CacheEntryError("its digest does not match its content")
        if payload["format"] != FORMAT:
            raise CacheEntryError(f"format {payload['format']}, this agent reads {FORMAT}")
        if payload["key"] != key:
            raise CacheEntryError(f"it was built for key {payload['key']}, not {key}")
        entry = Entry(
            key=key,
            maps=tuple(MapDef(**m) for m in payload["maps"]),
            programs=tuple(
                ProgramCode(
                    function=p["function"],
                    source=p["source"],
                    insns=base64.b64decode(p["insns"], validate=True),
                    relocations=tuple((int(i), str(n)) for i, n in p["relocations"]),
                    license=p["license"],
                    kern_version=int(p["kern_version"]),
                )
                for p in payload["programs"]
            ),
        )
    except CacheEntryError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CacheEntryError(f"unreadable ({type(err).__name__}: {err})") from None
    have = {p.function for p in entry.programs}
    missing = sorted(set(functions) - have)
    if missing:
        raise CacheEntryError(f"it lacks {', '.join(missing)}")
    names = {m.name for m in entry.maps}
    for p in entry.programs:
        for index, name in p.relocations:
            if name not in names or not 0 <= index < len(p.insns) // 8:
                raise CacheEntryError(f"{p.function}: a relocation ({index}, {name}) is invalid")
    return entry


class Cache:
    """Entries on disk, one file per key, shared by every agent on the machine."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.directory = directory

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(
        self, inputs: KeyInputs, functions: Iterable[str], build: Callable[[str], Entry]
    ) -> tuple[Entry, str]:
        """The entry for inputs and how it was had: "hit", or "compiled" (by build(key), then
        stored for the next agent). Builds without storing when the folder is not usable."""
        key = cache_key(inputs)
        wanted = tuple(functions)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _check_private(self.directory, stat.S_ISDIR)
            fd = os.open(self.directory / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            log.warning("bpf_cache.unusable", dir=str(self.directory), error=str(err))
            LOOKUPS.labels("miss").inc()
            return self._build(build, key, wanted), "compiled"
        try:
            found = self._read(key, wanted)
            if found is not None:
                LOOKUPS.labels("hit").inc()
                return found, "hit"
            if not _flock(fd, LOCK_WAIT_SECONDS):
                log.warning("bpf_cache.lock_timeout", dir=str(self.directory), key=key)
                LOOKUPS.labels("miss").inc()
                return self._build(build, key, wanted), "compiled"
            found = self._read(key, wanted)  # another agent may have built it meanwhile
            if found is not None:
                LOOKUPS.labels("hit").inc()
                return found, "hit"
            LOOKUPS.labels("miss").inc()
            entry = self._build(build, key, wanted)
            self._write(entry)
            return entry, "compiled"
        finally:
            os.close(fd)  # releases the lock

    def _build(self, build: Callable[[str], Entry], key: str, functions: tuple[str, ...]) -> Entry:
        started = time.monotonic()
        entry = build(key)
        if entry.key != key:
            raise CacheEntryError(f"the compile produced key {entry.key}, expected {key}")
        decode(encode(entry), key, functions)  # what is stored must be what a reader accepts
        log.info(
            "bpf_cache.compiled",
            key=key,
            programs=len(entry.programs),
            seconds=round(time.monotonic() - started, 3),
        )
        return entry

    def _read(self, key: str, functions: tuple[str, ...]) -> Entry | None:
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("bpf_cache.unreadable", path=str(path), error=str(err))
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                _check_private(f.fileno(), stat.S_ISREG)
                data = f.read(MAX_ENTRY_BYTES + 1)
            return decode(data, key, functions)
        except (OSError, CacheEntryError) as err:
            LOOKUPS.labels("rejected").inc()
            log.warning("bpf_cache.rejected", path=str(path), reason=str(err))
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def _write(self, entry: Entry) -> None:
        path = self.path(entry.key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(encode(entry))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            log.warning("bpf_cache.write_failed", path=str(path), error=str(err))
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        self._prune(keep=path)

    def _prune(self, keep: Path) -> None:
        """Keep the newest MAX_ENTRIES entries (each version and kernel adds one)."""
        try:
            entries = sorted(
                self.directory.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True
            )
        except OSError:
            return
        for old in [p for p in entries if p != keep][MAX_ENTRIES - 1 :]:
            with contextlib.suppress(OSError):
                old.unlink()
                (self.directory / f".{old.stem}.lock").unlink()
            log.info("bpf_cache.pruned", path=str(old))


def _check_private(target: Path | int, kind: Callable[[int], bool]) -> None:
    """Bytecode from the cache goes into the kernel as root: only a folder and entries
    that are this user's own and nobody else can write are used (a digest detects
    corruption, not a planted entry)."""
    st = os.fstat(target) if isinstance(target, int) else os.lstat(target)
    if not kind(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(
            errno.EPERM,
            f"not used: owned by uid {st.st_uid} with mode {stat.filemode(st.st_mode)}; the "
            f"compile cache must be a folder and files of uid {os.geteuid()} that only it "
            "can write",
            str(target),
        )


def _flock(fd: int, timeout: float) -> bool:
    """Take the exclusive lock on fd, waiting at most timeout seconds (a holder that dies
    releases it: the kernel drops flocks with the last fd)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
