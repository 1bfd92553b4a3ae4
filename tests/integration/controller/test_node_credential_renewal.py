"""Short-lived node credentials against a real controller: a node renews its own over its
authenticated channel and keeps being served; a stream does not outlive its credential."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time

import grpc
import pytest
from controller_harness import ControllerProcess, pod_yaml, stop_client, subscribed, until

from meshcore.api import mesh_pb2 as pb
from meshcore.configclient import CONTROLLER_NAME, SERVICE, ConfigClient, NodeCredential
from meshcore.identity.certs import make_csr, new_private_key
from meshcore.identity.spiffe import SpiffeId, node_id
from meshcore.meshstate import Workload
from meshcore.resources import ResourceKey

pytestmark = pytest.mark.integration

WEB1 = ResourceKey("Workload", "shop", "web-1")
WEB = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")


def short_lived(controller: ControllerProcess, node: str, seconds: float) -> NodeCredential:
    """A credential for `node` that expires `seconds` from now, saved in its folder."""
    ca = controller.ca()
    key_pem, cert_pem = ca.issue_node_credential(node, ttl=dt.timedelta(seconds=seconds))
    credential = NodeCredential(key_pem, cert_pem, "".join(ca.trust_bundle).encode())
    folder = controller.root / "nodes" / node
    credential.save(folder)
    return NodeCredential.load(folder)


async def change_web1(controller: ControllerProcess, client: ConfigClient, version: str) -> None:
    controller.write(
        "20-pod-web-1.yaml",
        pod_yaml("web-1", "node-1", "198.18.128.1", sa="web", labels={"app": "web", "v": version}),
    )

    def arrived() -> bool:
        web1 = client.state.get(WEB1)
        return isinstance(web1, Workload) and web1.labels.get("v") == version

    await until(arrived, what=f"web-1 v={version} at the node")


def test_a_node_renews_its_credential_over_its_channel_and_stays_served(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        credential = controller.credential("node-1")
        client, task = await subscribed("node-1", controller.target, credential)
        try:
            renewed = await client.renew_credential()
            assert client.credential is renewed
            assert renewed.identity == node_id("cluster.local", "node-1")
            assert renewed.leaf.serial_number != credential.leaf.serial_number
            assert renewed.key_pem != credential.key_pem  # a new key, made by the node
            assert credential.folder is not None
            assert NodeCredential.load(credential.folder) == renewed  # for the next start
            # The config stream reconnected with the renewed credential and goes on.
            await change_web1(controller, client, "2")
            # Workload certificates are still signed over the new channel.
            reply = await client.certificate(make_csr(new_private_key(), WEB))
            assert reply.cert_chain_pem
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_node_may_not_renew_another_nodes_credential(controller: ControllerProcess) -> None:
    async def scenario() -> None:
        client = ConfigClient("node-1", controller.target, controller.credential("node-1"))
        try:
            csr = make_csr(new_private_key(), node_id("cluster.local", "node-2"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.certificate(csr)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may renew only its own credential" in (refused.value.details() or "")
        finally:
            await client.close()

    asyncio.run(scenario())


def test_a_config_stream_ends_when_its_credential_expires(controller: ControllerProcess) -> None:
    async def scenario() -> None:
        credential = short_lived(controller, "node-1", 3)
        channel = grpc.aio.secure_channel(
            controller.target,
            grpc.ssl_channel_credentials(
                credential.roots_pem, credential.key_pem, credential.cert_pem
            ),
            options=[("grpc.ssl_target_name_override", CONTROLLER_NAME)],
        )
        requests: asyncio.Queue[pb.SubscribeRequest] = asyncio.Queue()
        requests.put_nowait(pb.SubscribeRequest(hello=pb.Hello(node="node-1")))

        async def outgoing():  # type: ignore[no-untyped-def]
            while True:
                yield await requests.get()

        try:
            call = channel.stream_stream(
                f"/{SERVICE}/Subscribe",
                request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=pb.StateUpdate.FromString,
            )(outgoing())
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async with asyncio.timeout(15):
                    async for update in call:
                        ack = pb.Ack(version=update.version)
                        requests.put_nowait(pb.SubscribeRequest(ack=ack))
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "expired" in (ended.value.details() or "")
            assert dt.datetime.now(dt.UTC) >= credential.not_after
        finally:
            await channel.close()

    asyncio.run(scenario())


def test_a_node_renews_a_short_lived_credential_before_it_expires_and_is_never_cut_off(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        credential = short_lived(controller, "node-1", 4)
        client, task = await subscribed("node-1", controller.target, credential)
        try:
            await until(lambda: client.credential is not credential, what="a renewal")
            renewed = client.credential
            assert renewed.not_after - dt.datetime.now(dt.UTC) > dt.timedelta(hours=23)
            deadline = time.monotonic() + 6  # past the first credential's expiry
            n = 0
            while time.monotonic() < deadline:
                n += 1
                await change_web1(controller, client, str(n))
                await asyncio.sleep(0.5)
            assert client.connected
            assert credential.folder is not None
            assert NodeCredential.load(credential.folder) == renewed
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_revoked_node_is_cut_off_and_cannot_renew_while_others_are_served(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        one, t1 = await subscribed("node-1", controller.target, controller.credential("node-1"))
        two, t2 = await subscribed("node-2", controller.target, controller.credential("node-2"))
        try:
            revoke = ["revoke-node", "--state-dir", str(controller.state), "--node", "node-1"]
            subprocess.run(
                [sys.executable, "-m", "controller", *revoke],
                check=True,
                capture_output=True,
            )
            await until(lambda: not one.connected, timeout=15, what="node-1 cut off")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await one.renew_credential()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "node 'node-1' is revoked" in (refused.value.details() or "")
            await change_web1(controller, two, "after-revocation")  # node-2 still served
            await asyncio.sleep(1)
            assert not one.connected  # and node-1 does not get back in
        finally:
            await stop_client(one, t1)
            await stop_client(two, t2)

    asyncio.run(scenario())
