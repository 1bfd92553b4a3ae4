"""A real controller and real node clients over mutual TLS: snapshots, deltas, NACKs,
resume, restarts, and credentials."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from controller_harness import (
    ControllerProcess,
    pod_yaml,
    stop_client,
    subscribed,
    until,
)

from controller.ca import CertificateAuthority
from meshcore.configclient import ConfigClient, NodeCredential
from meshcore.identity.certs import key_to_pem, make_csr, new_private_key
from meshcore.identity.spiffe import SpiffeId
from meshcore.meshstate import MeshService, TrustBundle, Workload
from meshcore.resources import ResourceKey

pytestmark = pytest.mark.integration

WEB1 = ResourceKey("Workload", "shop", "web-1")
WEB2 = ResourceKey("Workload", "shop", "web-2")
DB1 = ResourceKey("Workload", "shop", "db-1")


def test_every_node_gets_a_full_snapshot_over_mutual_tls(controller: ControllerProcess) -> None:
    async def scenario() -> None:
        clients = [
            await subscribed(n, controller.target, controller.credential(n))
            for n in ("node-1", "node-2", "node-3")
        ]
        try:
            for client, _ in clients:
                state = client.state
                web1 = state[WEB1]
                assert isinstance(web1, Workload)
                assert web1.enrolled and web1.ready
                assert web1.identity == "spiffe://cluster.local/ns/shop/sa/web"
                assert web1.node == "node-1" and web1.addresses == ("198.18.128.1",)
                assert web1.services[0].name == "web" and dict(web1.services[0].ports) == {80: 8080}
                db1 = state[DB1]
                assert isinstance(db1, Workload) and not db1.enrolled  # pod label opts out
                svc = state[ResourceKey("Service", "shop", "web")]
                assert isinstance(svc, MeshService) and svc.addresses == ("198.19.0.10",)
                bundle = state[ResourceKey("TrustBundle", "", "trust-bundle")]
                assert isinstance(bundle, TrustBundle) and bundle.roots_pem
            nodes = await controller.get("/debug/nodes")
            await until(lambda: True)
            assert sorted(n["node"] for n in nodes["nodes"]) == ["node-1", "node-2", "node-3"]
        finally:
            for client, task in clients:
                await stop_client(client, task)

    asyncio.run(scenario())


def test_a_manifest_change_reaches_every_node_as_a_small_delta(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        applied = []
        a, ta = await subscribed(
            "node-1", controller.target, controller.credential("node-1"), on_change=applied.append
        )
        b, tb = await subscribed("node-2", controller.target, controller.credential("node-2"))
        try:
            version = a.version
            controller.write(
                "20-pod-web-1.yaml",
                pod_yaml(
                    "web-1",
                    "node-1",
                    "198.18.128.1",
                    sa="web",
                    labels={"app": "web", "version": "v2"},
                ),
            )
            await a.wait_for_version(version + 1, 10)
            await b.wait_for_version(version + 1, 10)
            last = applied[-1]
            assert not last.snapshot
            assert last.changed == {WEB1}
            for client in (a, b):
                web1 = client.state[WEB1]
                assert isinstance(web1, Workload) and web1.labels["version"] == "v2"
            for _ in range(100):  # ACKs travel back asynchronously
                nodes = (await controller.get("/debug/nodes"))["nodes"]
                if all(n["acked_version"] == version + 1 for n in nodes):
                    break
                await asyncio.sleep(0.05)
            assert all(n["acked_version"] == version + 1 for n in nodes), nodes
            nodes = (await controller.get("/debug/nodes"))["nodes"]
            assert {n["node"]: n["sent_version"] for n in nodes} == {
                "node-1": version + 1,
                "node-2": version + 1,
            }
        finally:
            await stop_client(a, ta)
            await stop_client(b, tb)

    asyncio.run(scenario())


def test_a_resource_the_node_refuses_is_nacked_and_its_last_good_version_kept(
    controller: ControllerProcess,
) -> None:
    def refuse_version_v9(value: object) -> str | None:
        if isinstance(value, Workload) and value.labels.get("version") == "v9":
            return "version v9 is not allowed on this node"
        return None

    async def scenario() -> None:
        client, task = await subscribed(
            "node-1", controller.target, controller.credential("node-1"), validate=refuse_version_v9
        )
        try:
            version = client.version
            controller.write(
                "20-pod-web-1.yaml",
                pod_yaml(
                    "web-1",
                    "node-1",
                    "198.18.128.1",
                    sa="web",
                    labels={"app": "web", "version": "v9"},
                ),
            )
            controller.write(
                "21-pod-web-2.yaml",
                pod_yaml(
                    "web-2",
                    "node-2",
                    "198.18.129.1",
                    sa="web",
                    labels={"app": "web", "version": "v3"},
                ),
            )
            await client.wait_for_version(version + 1, 10)
            web1, web2 = client.state[WEB1], client.state[WEB2]
            assert isinstance(web1, Workload) and "version" not in web1.labels
            assert isinstance(web2, Workload) and web2.labels["version"] in ("v3", "app")

            async def nacked() -> list[dict]:
                nodes = (await controller.get("/debug/nodes"))["nodes"]
                return [n for node in nodes for n in node["nacks"]]

            for _ in range(100):
                nacks = await nacked()
                if nacks:
                    break
                await asyncio.sleep(0.05)
            assert "version v9 is not allowed on this node" in nacks[0]["reason"]
            assert "Workload shop/web-1" in nacks[0]["reason"]
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_reconnecting_node_resumes_from_its_version(controller: ControllerProcess) -> None:
    async def scenario() -> None:
        cred = controller.credential("node-1")
        client, task = await subscribed("node-1", controller.target, cred)
        state, epoch, version = dict(client.state), client.epoch, client.version
        await stop_client(client, task)
        controller.write("21-pod-web-2.yaml", pod_yaml("web-2", "node-2", "198.18.129.7", sa="web"))
        await asyncio.sleep(0.5)  # the controller picks the change up while the node is away
        applied = []
        resumed = ConfigClient("node-1", controller.target, cred, on_change=applied.append)
        resumed.state, resumed.epoch, resumed.version = state, epoch, version
        task = asyncio.create_task(resumed.run())
        try:
            await resumed.wait_for_version(version + 1, 10)
            assert not applied[0].snapshot
            assert applied[0].changed == {WEB2}
            web2 = resumed.state[WEB2]
            assert isinstance(web2, Workload) and web2.addresses == ("198.18.129.7",)
        finally:
            await stop_client(resumed, task)

    asyncio.run(scenario())


def test_nodes_keep_their_state_while_the_controller_restarts_then_resync(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        applied = []
        client, task = await subscribed(
            "node-2", controller.target, controller.credential("node-2"), on_change=applied.append
        )
        try:
            before, epoch = dict(client.state), client.epoch
            controller.stop()
            await until(lambda: not client.connected, what="disconnect")
            assert client.state == before  # last-known state keeps serving
            controller.write(
                "22-pod-db-1.yaml",
                pod_yaml("db-1", "node-2", "198.18.129.2", sa="db", labels={"app": "db"}),
            )
            controller.start()
            await until(lambda: client.epoch != epoch, timeout=15, what="new epoch")
            assert applied[-1].snapshot
            db1 = client.state[DB1]
            assert isinstance(db1, Workload) and db1.enrolled  # the change made while down
            assert client.state[WEB1] == before[WEB1]
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_client_with_a_foreign_credential_is_refused(
    controller: ControllerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    foreign_ca = CertificateAuthority.load_or_create(
        tmp_path_factory.mktemp("foreign") / "ca", "cluster.local"
    )
    key_pem, cert_pem = foreign_ca.issue_node_credential("node-1")
    real_roots = controller.credential("node-1").roots_pem
    foreign = NodeCredential(key_pem, cert_pem, real_roots)

    async def scenario() -> None:
        client = ConfigClient("node-1", controller.target, foreign)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.sleep(1.5)
            assert not client.synced.is_set()
            assert client.state == {}
            with pytest.raises(grpc.aio.AioRpcError):
                csr = make_csr(
                    new_private_key(), SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
                )
                await client.certificate(csr)
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_node_gets_certificates_only_for_workloads_scheduled_on_it(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        client, task = await subscribed(
            "node-1", controller.target, controller.credential("node-1")
        )
        try:
            key = new_private_key()
            web = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
            reply = await client.certificate(make_csr(key, web))
            assert len(reply.cert_chain_pem) >= 1 and reply.roots_pem
            from meshcore.identity.certs import describe, load_certificate

            info = describe(load_certificate(reply.cert_chain_pem[0].encode()))
            assert str(info.spiffe_id) == str(web)
            lifetime = info.not_after - info.not_before
            assert dt.timedelta(hours=23) < lifetime <= dt.timedelta(hours=24, minutes=2)
            assert key_to_pem(key)  # the key never left this process

            db = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/db")  # runs on node-2 only
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.certificate(make_csr(new_private_key(), db))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "node 'node-1'" in (refused.value.details() or "")

            with pytest.raises(grpc.aio.AioRpcError) as garbage:
                await client.certificate(b"not a csr at all")
            assert garbage.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_an_invalid_resource_is_reported_and_the_last_good_version_stays(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        client, task = await subscribed(
            "node-1", controller.target, controller.credential("node-1")
        )
        try:
            version = client.version
            controller.write(
                "10-web.yaml",
                "apiVersion: v1\nkind: Service\nmetadata:\n"
                "  name: web\n  namespace: shop\nspec:\n  selector: {app: web}\n",
            )
            controller.write("30-broken.yaml", "kind: [unclosed")
            problems: list = []
            for _ in range(100):
                problems = (await controller.get("/debug/problems"))["problems"]
                if len(problems) == 2:
                    break
                await asyncio.sleep(0.05)
            messages = sorted(p["message"] for p in problems)
            assert any(
                "Service shop/web: spec.ports: a Service needs at least one port" in m
                for m in messages
            ), messages
            assert any("30-broken.yaml: not valid YAML" in m for m in messages), messages
            kept = [p for p in problems if "web" in p["resource"]]
            assert kept and kept[0]["keeps_last_good"]
            await asyncio.sleep(0.5)
            assert client.version == version  # nothing changed for the data plane
            assert isinstance(client.state[ResourceKey("Service", "shop", "web")], MeshService)
            metrics = await controller.get("/metrics", raw=True)
            assert "weft_controller_config_errors 2.0" in metrics
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_root_added_for_rotation_reaches_every_node_in_the_trust_bundle(
    controller: ControllerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    next_ca = CertificateAuthority.load_or_create(
        tmp_path_factory.mktemp("next") / "ca", "cluster.local"
    )
    root_file = tmp_path_factory.mktemp("roots") / "next-root.pem"
    root_file.write_text(next_ca.trust_bundle[0])

    async def scenario() -> None:
        client, task = await subscribed(
            "node-1", controller.target, controller.credential("node-1")
        )
        try:
            bundle_key = ResourceKey("TrustBundle", "", "trust-bundle")
            before = client.state[bundle_key]
            assert isinstance(before, TrustBundle) and len(before.roots_pem) == 1
            controller.stop()
            controller.extra_args = ["--extra-root", str(root_file)]
            controller.start()
            await until(
                lambda: len(getattr(client.state.get(bundle_key), "roots_pem", ())) == 2,
                timeout=15,
                what="two roots",
            )
            after = client.state[bundle_key]
            assert isinstance(after, TrustBundle)
            assert next_ca.trust_bundle[0] in after.roots_pem
            assert before.roots_pem[0] in after.roots_pem
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())
