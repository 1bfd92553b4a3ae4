"""Recognising weft's attached programs in bpftool's output, and the version hash of the sources."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import pytest

from node_agent import programs
from node_agent.programs import CGROUP_PROGRAMS, ProgramSpec

REPO_BPF_DIR = programs.BPF_DIR
SPECS = {spec.function: spec for spec in CGROUP_PROGRAMS}
# What bpftool prints for each attach type: newer (libbpf's names) and older spellings.
SHOWN_ATTACH = {
    "CGROUP_INET4_CONNECT": ("cgroup_inet4_connect", "connect4"),
    "CGROUP_INET6_CONNECT": ("cgroup_inet6_connect", "connect6"),
    "CGROUP_SOCK_OPS": ("cgroup_sock_ops", "sock_ops"),
    "CGROUP_INET4_GETPEERNAME": ("cgroup_inet4_getpeername", "getpeername4"),
    "CGROUP_GETSOCKOPT": ("cgroup_getsockopt", "getsockopt"),
}


def shown(name: str, attach_type: str, prog_id: int = 42) -> dict[str, Any]:
    """One entry of `bpftool -j cgroup show`."""
    return {"id": prog_id, "attach_type": attach_type, "attach_flags": "multi", "name": name}


def spelled(spec: ProgramSpec) -> list[str]:
    return list(SHOWN_ATTACH[spec.attach_type])


# --- ProgramSpec.is_this ------------------------------------------------------------------


def test_every_program_has_both_bpftool_attach_spellings() -> None:
    assert {spec.attach_type for spec in CGROUP_PROGRAMS} == set(SHOWN_ATTACH)


@pytest.mark.parametrize(
    ("function", "attach"),
    [(s.function, a) for s in CGROUP_PROGRAMS for a in SHOWN_ATTACH[s.attach_type]],
)
def test_program_is_recognised_by_full_name_and_either_attach_spelling(
    function: str, attach: str
) -> None:
    assert SPECS[function].is_this(shown(function, attach))


@pytest.mark.parametrize(
    ("function", "attach"),
    [(s.function, a) for s in CGROUP_PROGRAMS for a in SHOWN_ATTACH[s.attach_type]],
)
def test_program_is_recognised_by_the_kernels_15_character_name(function: str, attach: str) -> None:
    assert SPECS[function].is_this(shown(function[:15], attach))


def test_a_long_name_is_cut_to_15_characters_by_the_kernel() -> None:
    spec = SPECS["weft_getpeername4"]
    assert spec.is_this(shown("weft_getpeernam", "cgroup_inet4_getpeername"))
    assert not spec.is_this(shown("weft_getpeerna", "cgroup_inet4_getpeername"))
    assert not spec.is_this(shown("weft_getpeername", "cgroup_inet4_getpeername"))


@pytest.mark.parametrize(
    "name",
    ["", "weft_connect", "weft_connect4x", "Weft_connect4", "other_connect4", "cilium_sock4"],
)
def test_other_names_are_not_this_program(name: str) -> None:
    assert not SPECS["weft_connect4"].is_this(shown(name, "cgroup_inet4_connect"))


@pytest.mark.parametrize(
    "attach", ["", "cgroup_inet6_connect", "connect6", "CGROUP_INET4_CONNECT", "bind4", "egress"]
)
def test_other_attach_types_are_not_this_program(attach: str) -> None:
    assert not SPECS["weft_connect4"].is_this(shown("weft_connect4", attach))


def test_an_entry_without_name_or_attach_type_is_not_this_program() -> None:
    spec = SPECS["weft_sockops"]
    assert not spec.is_this({})
    assert not spec.is_this({"id": 1, "attach_type": "sock_ops"})
    assert not spec.is_this({"id": 1, "name": "weft_sockops"})


@pytest.mark.parametrize(
    ("mine", "theirs"),
    list(itertools.permutations(CGROUP_PROGRAMS, 2)),
    ids=lambda s: s.function,
)
def test_no_program_takes_another_programs_attachment_for_its_own(
    mine: ProgramSpec, theirs: ProgramSpec
) -> None:
    for attach in spelled(theirs):
        for name in (theirs.function, theirs.function[:15]):
            assert not mine.is_this(shown(name, attach))


# --- source_hash --------------------------------------------------------------------------


@pytest.fixture
def bpf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of bpf/ that the test may edit."""
    copy = tmp_path / "bpf"
    shutil.copytree(REPO_BPF_DIR, copy)
    monkeypatch.setattr(programs, "BPF_DIR", copy)
    return copy


def test_source_hash_is_stable_for_the_same_pin_dir() -> None:
    pin = Path("/sys/fs/bpf/weft/node-a")
    assert programs.source_hash(pin) == programs.source_hash(Path("/sys/fs/bpf/weft/node-a"))


def test_source_hash_changes_with_the_pin_dir() -> None:
    assert programs.source_hash(Path("/sys/fs/bpf/weft/node-a")) != programs.source_hash(
        Path("/sys/fs/bpf/weft/node-b")
    )


def test_source_hash_is_16_hex_characters() -> None:
    version = programs.source_hash(Path("/sys/fs/bpf/weft/node-a"))
    assert len(version) == 16
    int(version, 16)


@pytest.mark.parametrize("source", ["sock_connect.c", "weft_maps.h"])
def test_source_hash_changes_when_a_source_changes(bpf_dir: Path, source: str) -> None:
    pin = Path("/sys/fs/bpf/weft/node-a")
    before = programs.source_hash(pin)
    with (bpf_dir / source).open("a") as f:
        f.write("\n/* changed */\n")
    assert programs.source_hash(pin) != before


def test_source_hash_changes_when_a_source_is_added(bpf_dir: Path) -> None:
    pin = Path("/sys/fs/bpf/weft/node-a")
    before = programs.source_hash(pin)
    (bpf_dir / "new_hook.c").write_text("/* new */\n")
    assert programs.source_hash(pin) != before


def test_source_hash_ignores_files_that_are_not_c_sources(bpf_dir: Path) -> None:
    pin = Path("/sys/fs/bpf/weft/node-a")
    before = programs.source_hash(pin)
    (bpf_dir / "README.md").write_text("rewritten docs\n")
    assert programs.source_hash(pin) == before


def test_source_hash_depends_on_contents_not_on_where_sources_live(
    bpf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = Path("/sys/fs/bpf/weft/node-a")
    copied = programs.source_hash(pin)
    monkeypatch.setattr(programs, "BPF_DIR", REPO_BPF_DIR)
    assert programs.source_hash(pin) == copied
