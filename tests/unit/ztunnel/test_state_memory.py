"""After an update that replaced many workloads, the ztunnel hands the memory it freed back
to the kernel (glibc's malloc_trim); a small delta does not pay for it (docs/scale.md)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from meshcore.meshstate import ServiceMembership, Workload
from meshcore.resources import ResourceKey
from ztunnel.state import TRIM_AFTER_REPLACED, MeshView, release_freed_memory


def state(count: int, version: str = "a") -> dict[ResourceKey, Workload]:
    out = {}
    for i in range(count):
        w = Workload(
            uid=f"uid-{i}",
            name=f"pod-{i}",
            namespace="ns",
            service_account="sa",
            identity="spiffe://cluster.local/ns/ns/sa/sa",
            node=f"node-{i % 3}",
            node_address="198.18.0.1",
            addresses=(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}",),
            labels={"app": "svc", "version": version},
            enrolled=True,
            ready=True,
            services=(ServiceMembership("ns", "svc", {80: 8080}),),
        )
        out[w.key] = w
    return out


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_snapshot_releases_memory_and_a_small_delta_does_not() -> None:
    view = MeshView("node-1")
    first = state(TRIM_AFTER_REPLACED * 2)
    view.update(first)
    assert view.memory_releases == 1  # every workload was new
    view.update(dict(first))
    assert view.memory_releases == 1  # the same values: nothing replaced
    changed = dict(first)
    for key in list(changed)[:10]:
        changed[key] = dataclasses.replace(changed[key], ready=False)
    view.update(changed)
    assert view.memory_releases == 1  # 10 pods changed
    view.update(state(TRIM_AFTER_REPLACED * 2, version="b"))
    assert view.memory_releases == 2  # every workload replaced (a new snapshot)
    view.update({})
    assert view.memory_releases == 3  # every workload removed
    assert view.by_ip == {}


def test_inside_the_event_loop_the_release_waits_for_the_handler_to_return() -> None:
    async def main() -> int:
        view = MeshView("node-1")
        view.update(state(TRIM_AFTER_REPLACED))
        assert view.memory_releases == 1
        await asyncio.sleep(0)  # the release ran as a callback, after the update returned
        return view.memory_releases

    assert asyncio.run(main()) == 1


def test_freed_memory_goes_back_to_the_kernel() -> None:
    if not release_freed_memory():
        pytest.skip("not glibc: no malloc_trim")
    # 60 MB of 2 KB blocks (glibc's heap, not pymalloc's), one in 32 kept: the heap cannot
    # shrink from its top, only malloc_trim returns the free pages in between
    blocks = [bytes(2048) for _ in range(30_000)]
    kept = blocks[::32]
    del blocks
    before = rss_kib()
    assert release_freed_memory()
    after = rss_kib()
    assert before - after > 20 * 1024, (before, after)
    assert len(kept) == 938
