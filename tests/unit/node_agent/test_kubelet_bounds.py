"""The bounds of what reaches the agent from outside: the CNI socket's request size and calls
in flight (node_agent.cniserver, on a real unix socket), and the inotify watch count
(node_agent.cgroupwatch, on a real folder tree), each tested past its bound."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node_agent import cgroupwatch, cniserver
from node_agent.cgroupwatch import CgroupWatch
from node_agent.cniserver import MAX_IN_FLIGHT, CniAdd, CniServer

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
GOOD = {"netns": "/var/run/netns/cni-1", "pod_uid": UID, "pod_namespace": "shop", "pod_name": "a"}


async def call(path: Path, raw: bytes) -> dict[str, object]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(raw)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return dict(json.loads(line))


def metric(result: str) -> float:
    return cniserver.REQUESTS.labels(result)._value.get()


def test_a_done_pod_is_ok_and_a_refused_one_carries_the_agents_reason(tmp_path: Path) -> None:
    async def handle(request: CniAdd) -> str:
        return "" if request.pod_name == "a" else f"{request.label} is not in the maps yet"

    async def main() -> None:
        server = CniServer(tmp_path / "cni.sock", handle)
        await server.start()
        try:
            assert await call(server.path, json.dumps(GOOD).encode() + b"\n") == {"ok": True}
            other = json.dumps({**GOOD, "pod_name": "b"}).encode() + b"\n"
            assert await call(server.path, other) == {
                "ok": False,
                "error": "shop/b is not in the maps yet",
            }
        finally:
            await server.stop()
        assert not server.path.exists()

    asyncio.run(main())


def test_a_request_past_its_size_bound_is_refused_and_counted(tmp_path: Path) -> None:
    async def handle(request: CniAdd) -> str:
        raise AssertionError("never called")

    async def main() -> None:
        server = CniServer(tmp_path / "cni.sock", handle)
        await server.start()
        before = metric("bad_request")
        try:
            huge = json.dumps({**GOOD, "pad": "x" * (cniserver.MAX_REQUEST + 10)}).encode() + b"\n"
            reply = await call(server.path, huge)
            assert reply["ok"] is False and "16 KiB" in str(reply["error"])
            relative = json.dumps({**GOOD, "netns": "cni-1"}).encode() + b"\n"
            reply = await call(server.path, relative)
            assert reply["ok"] is False and "netns" in str(reply["error"])
        finally:
            await server.stop()
        assert metric("bad_request") == before + 2

    asyncio.run(main())


def test_calls_past_the_in_flight_bound_are_told_to_retry_and_counted(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def handle(request: CniAdd) -> str:
        await release.wait()
        return ""

    async def main() -> None:
        server = CniServer(tmp_path / "cni.sock", handle)
        await server.start()
        before = metric("busy")
        try:
            raw = json.dumps(GOOD).encode() + b"\n"
            waiting = [asyncio.create_task(call(server.path, raw)) for _ in range(MAX_IN_FLIGHT)]
            await asyncio.sleep(0.2)
            extra = await call(server.path, raw)
            assert extra["ok"] is False and "retry" in str(extra["error"])
            release.set()
            assert all(r == {"ok": True} for r in await asyncio.gather(*waiting))
        finally:
            await server.stop()
        assert metric("busy") == before + 1

    asyncio.run(main())


def test_a_handler_that_does_not_finish_in_time_is_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cniserver, "HANDLE_TIMEOUT", 0.1)

    async def handle(request: CniAdd) -> str:
        await asyncio.sleep(10)
        return ""

    async def main() -> None:
        server = CniServer(tmp_path / "cni.sock", handle)
        await server.start()
        try:
            reply = await call(server.path, json.dumps(GOOD).encode() + b"\n")
            assert reply["ok"] is False and "not done within" in str(reply["error"])
        finally:
            await server.stop()

    asyncio.run(main())


def test_pod_watches_past_the_bound_are_refused_counted_and_the_rest_kept(tmp_path: Path) -> None:
    root = tmp_path / "kubepods"
    root.mkdir()
    woke: list[int] = []

    async def main() -> None:
        watch = CgroupWatch(root, lambda: woke.append(1), max_watches=3)
        watch.start()  # root only: the QoS folders do not exist
        before = cgroupwatch.WATCHES_REFUSED._value.get()
        try:
            for n in range(4):
                (root / f"pod{n}0000000-0000-0000-0000-000000000000").mkdir()
                await asyncio.sleep(0.05)
            assert len(watch.paths) == 3  # root + 2 pods
            assert cgroupwatch.WATCHES_REFUSED._value.get() == before + 2
            assert woke  # every new pod still wakes the agent (the root is watched)
        finally:
            watch.close()

    asyncio.run(main())


def test_a_qos_folder_made_after_start_is_watched_with_its_pods(tmp_path: Path) -> None:
    root = tmp_path / "kubepods.slice"
    root.mkdir()
    woke: list[int] = []

    async def main() -> None:
        watch = CgroupWatch(root, lambda: woke.append(1))
        watch.start()
        try:
            qos = root / "kubepods-burstable.slice"
            qos.mkdir()
            await asyncio.sleep(0.05)
            assert qos in watch.paths.values()
            woke.clear()
            pod = qos / f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"
            pod.mkdir()
            await asyncio.sleep(0.05)
            assert woke and pod in watch.paths.values()
            woke.clear()
            (pod / "cri-containerd-1.scope").mkdir()
            await asyncio.sleep(0.05)
            assert woke
        finally:
            watch.close()

    asyncio.run(main())
