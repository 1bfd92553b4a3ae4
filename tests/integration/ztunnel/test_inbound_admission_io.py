"""Inbound admission on real mTLS (loopback, a real CA, a real target socket, no lab): who may
open HBONE streams, which source address a `forwarded` header may claim, what a policy change
does to open connections, and that no path leaves a socket to the pod behind."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.ca import CertificateAuthority
from meshcore import hbone
from meshcore.identity.certs import cert_to_pem, key_to_pem, new_private_key
from meshcore.meshstate import Workload
from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.security import AuthorizationPolicy
from tests.integration.ztunnel.test_pool_peer_identity import fetcher
from ztunnel import tls
from ztunnel.hbone_conn import HboneConnection, Stream
from ztunnel.identity import IdentityManager
from ztunnel.inbound import Inbound
from ztunnel.pool import sni_for
from ztunnel.state import MeshView

pytestmark = pytest.mark.integration

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"  # the destination
CLIENT = f"spiffe://{TD}/ns/shop/sa/client"
DB = f"spiffe://{TD}/ns/shop/sa/db"
NODE1 = "127.0.0.1"  # the client node's address, as the server sees it
CLIENT_IP, DB_IP = "127.0.0.5", "127.0.0.7"  # pods on node-1


def workload(name: str, ip: str, identity: str, node: str) -> Workload:
    ns, sa = identity.split("/")[-3], identity.split("/")[-1]
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace=ns,
        service_account=sa,
        identity=identity,
        node=node,
        node_address=NODE1 if node == "node-1" else "127.0.0.2",
        addresses=(ip,),
        labels={"app": name},
        enrolled=True,
        ready=True,
    )


def policy(text: str) -> AuthorizationPolicy:
    (parsed,) = parse_documents(documents_from_text(text, "policy.yaml"))
    assert isinstance(parsed.resource, AuthorizationPolicy)
    return parsed.resource


ALLOW_DB_IP = policy(
    """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: only-db-address, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {ipBlocks: ["127.0.0.7/32"]}}]}]
"""
)
DENY_CLIENT = policy(
    """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]
"""
)


class Target:
    """The pod: an echo server that remembers who connected and how many are open."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.open = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.open += 1
            try:
                peer = writer.get_extra_info("peername")  # None: reset before we got here
                self.peers.append(peer[0] if peer else "")
                while data := await reader.read(65536):
                    writer.write(data)
            except ConnectionError:
                pass
            finally:
                self.open -= 1
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


class Node:
    """A ztunnel's inbound side for node-2 (the destination `web` at 127.0.0.1)."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.view = MeshView("node-2")
        for w in (
            workload("web", "127.0.0.1", WEB, "node-2"),
            workload("client", CLIENT_IP, CLIENT, "node-1"),
            workload("db", DB_IP, DB, "node-1"),
        ):
            self.view.by_ip[w.addresses[0]] = w
        self.inbound = Inbound("node-2", TD, self.view, IdentityManager(fetcher(ca)))
        self.port = 0

    async def start(self) -> None:
        await self.inbound.identities.get(WEB)
        server = await asyncio.get_running_loop().create_server(
            self.inbound.hbone_protocol, "127.0.0.1", 0, ssl=self.inbound.server_context()
        )
        self.port = server.sockets[0].getsockname()[1]

    async def client(self, identity: str, *, eku_server: bool = True) -> HboneConnection:
        """An HBONE connection presenting a mesh-CA certificate for any URI at all."""
        key = new_private_key()
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if eku_server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        now = dt.datetime.now(dt.UTC)
        cert = self.ca._issue(
            key.public_key(),
            [x509.UniformResourceIdentifier(identity)],
            usages,
            now,
            now + dt.timedelta(hours=1),
        )
        return await self._connect(key_to_pem(key), cert_to_pem(cert) + self.ca._chain_pem())

    async def node_client(self, node: str) -> HboneConnection:
        key_pem, chain_pem = self.ca.issue_node_credential(node)
        return await self._connect(key_pem, chain_pem)

    async def _connect(self, key_pem: bytes, chain_pem: bytes) -> HboneConnection:
        ctx = tls.context(
            server=False,
            key_pem=key_pem,
            chain_pem=chain_pem,
            roots_pem="".join(self.ca.trust_bundle).encode(),
        )
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: HboneConnection(hbone.HboneClient()),
            "127.0.0.1",
            self.port,
            ssl=ctx,
            server_hostname=sni_for(WEB),
        )
        conn.start()
        return conn


async def connect(conn: HboneConnection, port: int, forwarded: str | None) -> tuple[Stream, int]:
    headers = {"forwarded": forwarded} if forwarded is not None else {}
    stream = conn.open(hbone.Target("127.0.0.1", port), headers)
    try:
        response = await asyncio.wait_for(stream.response, 5)
    except ConnectionError:
        return stream, 0
    return stream, response.status


def run(tmp_path: Path, body: Callable[[Node, Target, int], Awaitable[None]]) -> None:
    async def main() -> None:
        node = Node(CertificateAuthority.load_or_create(tmp_path / "ca", TD))
        await node.start()
        target = Target()
        port = await target.start()
        await asyncio.wait_for(body(node, target, port), 60)

    uvloop.run(main())


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


def test_a_forwarded_address_counts_only_where_the_certificate_vouches_for_it(
    tmp_path: Path,
) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        node.view.policies.append(ALLOW_DB_IP)
        # client claims db's address to get past an ipBlocks ALLOW: not believed
        conn = await node.client(CLIENT)
        _, status = await connect(conn, port, f"for={DB_IP}")
        assert status == 403
        # db's own ztunnel says the same, and its certificate vouches for it
        conn = await node.client(DB)
        _, status = await connect(conn, port, f"for={DB_IP}")
        assert status == 200
        await eventually(lambda: bool(target.peers), "the pod to see the connection")
        assert target.peers == [DB_IP]  # the pod sees its real client

    run(tmp_path, body)


def test_an_unvouched_claim_is_neither_the_address_the_pod_sees(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        conn = await node.client(CLIENT)
        _, status = await connect(conn, port, f"for={DB_IP}")
        assert status == 200  # no policy: allowed, but from the peer node, not "db"
        await eventually(lambda: bool(target.peers), "the pod to see the connection")
        assert target.peers == ["127.0.0.1"]

    run(tmp_path, body)


def test_a_malformed_forwarded_is_a_400_on_that_stream_only(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        conn = await node.client(CLIENT)
        for bad in ("by=10.0.0.1", "for=", "for=nobody;by=x"):
            _, status = await connect(conn, port, bad)
            assert status == 400
        _, status = await connect(conn, port, f"for={CLIENT_IP}")
        assert status == 200 and not conn.closed.is_set()

    run(tmp_path, body)


@pytest.mark.parametrize(
    "identity",
    [
        "spiffe://other-domain/ns/shop/sa/client",  # signed by our CA, for another domain
        f"spiffe://{TD}/weft/admin",  # not a workload path
        f"spiffe://{TD}/ns/shop/sa/client/extra",
    ],
)
def test_only_workload_identities_of_our_trust_domain_open_streams(
    tmp_path: Path, identity: str
) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        node.view.policies.append(DENY_CLIENT)
        conn = await node.client(identity)
        _, status = await connect(conn, port, None)
        assert status != 200
        await asyncio.wait_for(conn.closed.wait(), 5)  # the whole connection is refused
        assert target.peers == []

    run(tmp_path, body)


def test_a_node_credential_cannot_open_streams(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        conn = await node.node_client("node-1")
        _, status = await connect(conn, port, None)
        assert status != 200
        await asyncio.wait_for(conn.closed.wait(), 5)
        assert target.peers == []

    run(tmp_path, body)


def test_a_policy_change_closes_open_connections_it_now_denies(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        client = await node.client(CLIENT)
        db = await node.client(DB)
        denied, status = await connect(client, port, f"for={CLIENT_IP}")
        assert status == 200
        kept, status = await connect(db, port, f"for={DB_IP}")
        assert status == 200
        await eventually(lambda: target.open == 2, "both connections to reach the pod")
        node.view.policies.append(DENY_CLIENT)
        assert node.inbound.recheck() == 1
        await eventually(lambda: denied.was_reset, "the denied stream to be reset")
        await eventually(lambda: target.open == 1, "the pod's socket to be closed")
        assert not kept.was_reset
        assert node.inbound.recheck() == 0  # nothing more to close

    run(tmp_path, body)


def test_streams_reset_during_setup_leave_no_socket_to_the_pod(tmp_path: Path) -> None:
    async def body(node: Node, target: Target, port: int) -> None:
        conn = await node.client(CLIENT)
        for _ in range(50):  # below the rapid-reset limit: each one must be cleaned up
            stream = conn.open(hbone.Target("127.0.0.1", port), {"forwarded": f"for={CLIENT_IP}"})
            stream.abort()
            conn.forget(stream)
            await asyncio.sleep(0)
        await eventually(lambda: target.open == 0, "no socket to the pod left open", 10)
        fresh = await node.client(CLIENT)
        _, status = await connect(fresh, port, f"for={CLIENT_IP}")  # the node still serves
        assert status == 200

    run(tmp_path, body)
