"""One compile, many nodes: two nodes' programs loaded from one cache entry, each with its own
maps (checked in the kernel: the map ids each attached program holds), adopted across an
agent restart without any bytecode, a corrupt entry rebuilt instead of loaded, and the
named errors for a kernel that refuses a program and for a map of another layout."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import cgroups
from node_agent import bpfcache, bpfsys
from node_agent.maps import Maps
from node_agent.programs import (
    CGROUP_PROGRAMS,
    KernelFeatureError,
    MapLayoutError,
    Programs,
    attached,
)
from node_agent.reconcile import MapEntry, Plan
from tests.conftest import RUN_ID

pytestmark = pytest.mark.integration

POD_A = "198.18.128.11"


@dataclass(frozen=True)
class Node:
    name: str
    pin_dir: Path
    pods: Path
    system: Path

    def programs(self, cache: Path) -> Programs:
        return Programs(self.pin_dir, self.pods, self.system, cache_dir=cache)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, Node]]:
    root = f"weft-{RUN_ID}-bpfcache"
    made: dict[str, Node] = {}
    try:
        for name in ("node-1", "node-2"):
            made[name] = Node(
                name,
                Path(f"/sys/fs/bpf/{root}/{name}"),
                cgroups.create(f"{root}/{name}/pods"),
                cgroups.create(f"{root}/{name}/system"),
            )
        yield made
    finally:
        cgroups.remove(root)  # the subtree; attached programs go with their cgroups
        shutil.rmtree(f"/sys/fs/bpf/{root}", ignore_errors=True)


def map_ids(programs: Programs) -> set[int]:
    return {bpfsys.map_info(m.fd).map_id for m in programs.maps().values()}


def program_map_ids(prog_id: int) -> set[int]:
    out = subprocess.run(
        ["bpftool", "-j", "prog", "show", "id", str(prog_id)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(json.loads(out).get("map_ids", []))


def attached_ids(programs: Programs) -> dict[str, int]:
    ids = {}
    for spec in CGROUP_PROGRAMS:
        shown = [p for p in attached(programs.cgroups[spec.target]) if spec.is_this(p)]
        assert len(shown) == 1, f"{spec.function}: {shown}"
        ids[spec.function] = int(shown[0]["id"])
    return ids


def test_two_nodes_load_one_compile_each_with_its_own_maps(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    one = nodes["node-1"].programs(cache)
    one.ensure_attached()
    two = nodes["node-2"].programs(cache)
    two.ensure_attached()
    assert (one.code_source, two.code_source) == ("compiled", "hit")
    assert len(list(cache.glob("*.json"))) == 1

    # Pod A of node-1 is captured by node-1's maps, and is nowhere in node-2's.
    Maps(one.maps()).apply(Plan(enroll={4242: MapEntry(POD_A, 0)}, ips_put={POD_A: 0}))
    assert Maps(one.maps()).read_enrolled() == {4242: MapEntry(POD_A, 0)}
    assert Maps(two.maps()).read_enrolled() == {}
    assert Maps(two.maps()).read_enrolled_ips() == {}

    # In the kernel: every attached program of a node holds that node's maps, none of the other's.
    mine = {"node-1": map_ids(one), "node-2": map_ids(two)}
    assert not mine["node-1"] & mine["node-2"]
    for node, programs in (("node-1", one), ("node-2", two)):
        for function, prog_id in attached_ids(programs).items():
            held = program_map_ids(prog_id)
            assert held and held <= mine[node], f"{node} {function} holds maps {held}"
        tc_fd, _name = programs.tc_program("weft_inbound")
        assert tc_fd >= 0
    other_tc, _ = two.tc_program("weft_guard")
    assert other_tc >= 0


def test_a_restarted_agent_adopts_everything_without_bytecode(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = nodes["node-1"].programs(cache)
    first.ensure_attached()
    Maps(first.maps()).apply(Plan(enroll={7: MapEntry(POD_A, 0)}))
    before = attached_ids(first)
    shutil.rmtree(cache)  # nothing to load from: adoption must not need it

    again = nodes["node-1"].programs(cache)
    done = again.ensure_attached()
    assert all(what.startswith("adopted") for what in done.values()), done
    assert attached_ids(again) == before
    assert map_ids(again) == map_ids(first)
    assert Maps(again.maps()).read_enrolled() == {7: MapEntry(POD_A, 0)}
    assert again.code_source == ""
    assert not cache.exists()


def test_a_corrupt_entry_is_rebuilt_and_the_nodes_load_the_rebuilt_one(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    nodes["node-1"].programs(cache).code()
    (entry,) = cache.glob("*.json")
    doc = json.loads(entry.read_text())
    first = doc["payload"]["programs"][0]
    insns = bytearray(bpfcache.base64.b64decode(first["insns"]))
    insns[0] = 0x95  # exit as the first instruction: loadable, and wrong
    first["insns"] = bpfcache.base64.b64encode(insns).decode()
    entry.write_text(json.dumps(doc))

    two = nodes["node-2"].programs(cache)
    two.ensure_attached()
    assert two.code_source == "compiled"
    rebuilt = json.loads(entry.read_text())["payload"]["programs"][0]["insns"]
    assert bpfcache.base64.b64decode(rebuilt)[0] != 0x95


def test_a_program_the_kernel_refuses_is_a_named_kernel_feature_error(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    programs = nodes["node-1"].programs(tmp_path / "cache")
    # A socket-address program loaded as a tc classifier: the verifier refuses its context.
    with pytest.raises(
        KernelFeatureError, match=r"cannot load weft_connect4: this kernel lacks X"
    ) as refused:
        programs._load("weft_connect4", "SCHED_CLS", "", "X")
    assert "; verifier: " in str(refused.value)  # the verifier's own reason, from its log
    assert "invalid bpf_context access" in str(refused.value)


def test_a_pinned_map_of_another_layout_is_a_named_error(
    nodes: dict[str, Node], tmp_path: Path
) -> None:
    node = nodes["node-1"]
    node.pin_dir.mkdir(parents=True)
    fd = bpfsys.map_create("weft_enrolled", bpfsys.MapInfo(1, 4, 8, 16, 0))  # 4-byte keys
    try:
        bpfsys.obj_pin(fd, node.pin_dir / "enrolled")
    finally:
        bpfsys.os.close(fd)
    with pytest.raises(MapLayoutError, match=r"enrolled has 4-byte keys .* weft_enrolled has 8"):
        node.programs(tmp_path / "cache").maps()
