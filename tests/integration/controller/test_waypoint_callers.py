"""A waypoint replica as a caller of the real controller: with the workload credential its pod
is given (as a projected ServiceAccount token would be), it subscribes and gets an SVID for
its own identity only; a workload identity that is no waypoint's gets nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import grpc
import pytest
from controller_harness import ControllerProcess, pod_yaml, stop_client, subscribed, until

from controller.main import write_workload_credential
from meshcore.configclient import ConfigClient, NodeCredential
from meshcore.identity.certs import describe, load_certificate, make_csr, new_private_key
from meshcore.identity.spiffe import SpiffeId
from meshcore.meshstate import MeshService, Waypoint, Workload
from meshcore.resources import ResourceKey

pytestmark = pytest.mark.integration

WAYPOINT_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"
GATEWAY = json.dumps(
    {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "shop"},
        "spec": {
            "gatewayClassName": "weft-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }
)


async def waypoint_in_state(ctl: ControllerProcess) -> None:
    """Wait until the controller has read the Gateway (a node sees its Waypoint)."""
    node, task = await subscribed("node-1", ctl.target, ctl.credential("node-1"))
    try:
        await until(
            lambda: ResourceKey("Waypoint", "shop", "waypoint") in node.state,
            what="the waypoint in the state",
        )
    finally:
        await stop_client(node, task)


def credential(ctl: ControllerProcess, namespace: str, sa: str) -> NodeCredential:
    out = ctl.root / "pods" / f"{namespace}-{sa}"
    write_workload_credential(ctl.ca(), namespace, sa, out)
    return NodeCredential.load(out)


def test_the_pod_credential_is_client_auth_only_and_short_lived(tmp_path: Path) -> None:
    from controller.ca import CertificateAuthority

    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    write_workload_credential(ca, "shop", "waypoint", tmp_path / "cred")
    cred = NodeCredential.load(tmp_path / "cred")
    info = describe(cred.leaf)
    assert str(info.spiffe_id) == WAYPOINT_ID
    assert info.not_after - info.not_before <= dt.timedelta(hours=1, minutes=2)
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    usages = cred.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_waypoint_subscribes_and_gets_an_svid_for_its_own_identity_only(
    controller: ControllerProcess,
) -> None:
    controller.write("30-gateway.yaml", GATEWAY)
    cred = credential(controller, "shop", "waypoint")

    async def scenario() -> None:
        await waypoint_in_state(controller)
        client, task = await subscribed(WAYPOINT_ID, controller.target, cred)
        try:
            await until(
                lambda: ResourceKey("Waypoint", "shop", "waypoint") in client.state,
                what="the waypoint in the state",
            )
            kinds = {type(v) for v in client.state.values()}
            assert {Workload, MeshService, Waypoint} <= kinds  # the state nodes get
            waypoint = client.state[ResourceKey("Waypoint", "shop", "waypoint")]
            assert isinstance(waypoint, Waypoint) and waypoint.identity == WAYPOINT_ID

            reply = await client.certificate(
                make_csr(new_private_key(), SpiffeId.parse(WAYPOINT_ID))
            )
            info = describe(load_certificate(reply.cert_chain_pem[0].encode()))
            assert str(info.spiffe_id) == WAYPOINT_ID and reply.roots_pem

            web = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await client.certificate(make_csr(new_private_key(), web))
            assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "only for its own identity" in (other.value.details() or "")

            node = SpiffeId.parse("spiffe://cluster.local/weft/node/node-1")
            with pytest.raises(grpc.aio.AioRpcError) as node_id:
                await client.certificate(make_csr(new_private_key(), node))
            assert node_id.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # renewing its credential gives it an SVID, which it goes on with
            renewed = await client.renew_credential()
            assert str(renewed.identity) == WAYPOINT_ID
            version = client.version
            controller.write("40-pod.yaml", pod_yaml("web-3", "node-1", "198.18.128.3", sa="web"))
            await until(lambda: client.version > version, what="a delta after renewal")
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_workload_that_is_no_waypoint_is_refused(controller: ControllerProcess) -> None:
    controller.write("30-gateway.yaml", GATEWAY)
    cred = credential(controller, "shop", "web")

    async def scenario() -> None:
        await waypoint_in_state(controller)
        client = ConfigClient("web", controller.target, cred)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.sleep(1.5)
            assert not client.synced.is_set() and client.state == {}
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.certificate(
                    make_csr(
                        new_private_key(), SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
                    )
                )
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "not the identity of a waypoint" in (refused.value.details() or "")
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())


def test_a_waypoint_whose_gateway_is_deleted_loses_its_stream(
    controller: ControllerProcess,
) -> None:
    controller.write("30-gateway.yaml", GATEWAY)
    cred = credential(controller, "shop", "waypoint")

    async def scenario() -> None:
        await waypoint_in_state(controller)
        client, task = await subscribed(WAYPOINT_ID, controller.target, cred)
        try:
            await until(lambda: client.connected, what="connected")
            (controller.source / "30-gateway.yaml").unlink()
            await until(lambda: not client.connected, what="the stream ended")
            await asyncio.sleep(1.0)
            assert not client.connected
        finally:
            await stop_client(client, task)

    asyncio.run(scenario())
