"""Message size limits on the controller's gRPC endpoint and the node client: a peer cannot
make the other side take a huge message, and the one refused does not stop the server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from controller_harness import ControllerProcess, stop_client, subscribed

from meshcore.api import limits
from meshcore.api import mesh_pb2 as pb
from meshcore.configclient import CONTROLLER_NAME, SERVICE, ConfigClient
from meshcore.resources import ResourceKey

pytestmark = pytest.mark.integration


def test_an_oversized_request_is_refused_and_the_controller_keeps_serving(
    controller: ControllerProcess,
) -> None:
    async def scenario() -> None:
        credential = controller.credential("node-1")
        # A client that would send large messages, as a misbehaving node could.
        channel = grpc.aio.secure_channel(
            controller.target,
            grpc.ssl_channel_credentials(
                credential.roots_pem, credential.key_pem, credential.cert_pem
            ),
            options=[
                ("grpc.ssl_target_name_override", CONTROLLER_NAME),
                ("grpc.max_send_message_length", 8 * 1024 * 1024),
            ],
        )
        try:
            certificate = channel.unary_unary(
                f"/{SERVICE}/Certificate",
                request_serializer=pb.CertificateRequest.SerializeToString,
                response_deserializer=pb.CertificateResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await certificate(
                    pb.CertificateRequest(csr_pem="x" * (limits.NODE_MESSAGE_MAX + 1)), timeout=10
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Small requests on the same connection are still answered.
            with pytest.raises(grpc.aio.AioRpcError) as answered:
                await certificate(pb.CertificateRequest(csr_pem="not a csr"), timeout=10)
            assert answered.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await channel.close()
        client, task = await subscribed("node-1", controller.target, credential)
        try:
            assert ResourceKey("Workload", "shop", "web-1") in client.state
        finally:
            await stop_client(client, task)
        assert controller.proc is not None and controller.proc.poll() is None

    asyncio.run(scenario())


def test_the_node_client_does_not_send_oversized_requests(controller: ControllerProcess) -> None:
    async def scenario() -> None:
        client = ConfigClient("node-1", controller.target, controller.credential("node-1"))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.certificate(b"x" * (limits.NODE_MESSAGE_MAX + 1))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            await client.close()

    asyncio.run(scenario())
