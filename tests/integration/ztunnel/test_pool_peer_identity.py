"""The outbound pool's peer checks on real mTLS (loopback, real CA, no lab): a ztunnel
carries a stream only to a peer that proves the identity the controller says the
destination runs as. A certificate for another identity, from a foreign CA, or no
certificate for the asked-for name at all: the connection is refused with the reason."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from cryptography import x509

from controller.ca import CertificateAuthority
from meshcore import hbone
from meshcore.api import mesh_pb2 as pb
from meshcore.identity.spiffe import SpiffeId
from ztunnel.hbone_conn import KEEPALIVE_IDLE_S
from ztunnel.identity import IdentityManager
from ztunnel.inbound import Inbound
from ztunnel.pool import Pool, PoolKey
from ztunnel.state import MeshView

CLIENT = "spiffe://cluster.local/ns/shop/sa/client"
WEB = "spiffe://cluster.local/ns/shop/sa/web"
DB = "spiffe://cluster.local/ns/shop/sa/db"


def csr_identity(csr_pem: bytes) -> SpiffeId:
    csr = x509.load_pem_x509_csr(csr_pem)
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return SpiffeId.parse(sans.get_values_for_type(x509.UniformResourceIdentifier)[0])


def fetcher(ca: CertificateAuthority) -> Callable[[bytes], Awaitable[pb.CertificateResponse]]:
    async def fetch(csr_pem: bytes) -> pb.CertificateResponse:
        identity = csr_identity(csr_pem)
        issued = ca.sign_workload(csr_pem, {identity})
        return pb.CertificateResponse(
            cert_chain_pem=[issued.full_chain_pem.decode()], roots_pem=ca.trust_bundle
        )

    return fetch


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(body(), 60)

    uvloop.run(bounded())


async def inbound_server(
    ca: CertificateAuthority, holds: str, roots: bytes | None = None
) -> tuple[asyncio.Server, int, Inbound]:
    """A real 15008 listener that holds a certificate for `holds` only (and trusts `roots`,
    when given, as the controller's trust bundle)."""
    identities = IdentityManager(fetcher(ca))
    if roots:
        identities.set_roots(roots)
    await identities.get(holds)
    inbound = Inbound("node-2", "cluster.local", MeshView("node-2"), identities)
    server = await asyncio.get_running_loop().create_server(
        inbound.hbone_protocol, "127.0.0.1", 0, ssl=inbound.server_context()
    )
    return server, server.sockets[0].getsockname()[1], inbound


def test_a_peer_proving_the_expected_identity_is_connected(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")

    async def body() -> None:
        server, port, _ = await inbound_server(ca, WEB)
        pool = Pool(IdentityManager(fetcher(ca)), port=port)
        conn = await pool.get(PoolKey(CLIENT, "127.0.0.1", WEB))
        assert not conn.closed.is_set()
        await pool.close()
        server.close()

    run(body)


def test_a_peer_presenting_another_identity_is_refused(tmp_path: Path) -> None:
    """The peer has a valid certificate from the mesh CA, but for db, not web."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")

    async def body() -> None:
        identities = IdentityManager(fetcher(ca))
        impostor_ctx = (await identities.get(DB)).server_context()  # db, whatever is asked
        impostor_ctx.set_alpn_protocols([hbone.ALPN])
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0, ssl=impostor_ctx)
        pool = Pool(IdentityManager(fetcher(ca)), port=server.sockets[0].getsockname()[1])
        with pytest.raises(ConnectionRefusedError, match=f"is {DB}, not {WEB}"):
            await pool.get(PoolKey(CLIENT, "127.0.0.1", WEB))
        server.close()

    run(body)


def test_a_peer_with_a_certificate_from_a_foreign_ca_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    foreign = CertificateAuthority.load_or_create(tmp_path / "foreign", "cluster.local")

    async def body() -> None:
        server, port, _ = await inbound_server(foreign, WEB)
        pool = Pool(IdentityManager(fetcher(ca)), port=port)
        with pytest.raises(ssl.SSLCertVerificationError):
            await pool.get(PoolKey(CLIENT, "127.0.0.1", WEB))
        server.close()

    run(body)


def test_a_node_without_the_asked_for_identity_refuses_the_handshake(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")

    async def body() -> None:
        server, port, _ = await inbound_server(ca, WEB)  # holds web, is asked for db
        pool = Pool(IdentityManager(fetcher(ca)), port=port)
        # the server aborts the handshake with unrecognized_name (seen as a reset)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await pool.get(PoolKey(CLIENT, "127.0.0.1", DB))
        server.close()

    run(body)


def test_a_client_with_a_foreign_certificate_cannot_open_streams(tmp_path: Path) -> None:
    """The other direction: a server (ztunnel's 15008) refuses a client whose certificate
    does not chain to the mesh's trust bundle."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    foreign = CertificateAuthority.load_or_create(tmp_path / "foreign", "cluster.local")

    async def body() -> None:
        server, port, _ = await inbound_server(ca, WEB)
        # a client whose own certificate is foreign, but which trusts the mesh's root
        foreign_ids = IdentityManager(fetcher(foreign))
        cert = await foreign_ids.get(CLIENT)
        ctx = cert.client_context()
        ctx.load_verify_locations(cadata="".join(ca.trust_bundle))
        ctx.check_hostname = False
        refused = False
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="web.shop.sa.weft"
            )
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            refused = await asyncio.wait_for(reader.read(100), 5) == b""
        except (ssl.SSLError, ConnectionError):
            refused = True
        assert refused
        server.close()

    run(body)


def test_a_root_added_to_the_trust_bundle_is_trusted_for_new_connections(tmp_path: Path) -> None:
    """Root rotation: the server's certificate comes from a new root. Until the trust bundle
    carries that root the client refuses it; once it does, new connections work."""
    old = CertificateAuthority.load_or_create(tmp_path / "old", "cluster.local")
    new = CertificateAuthority.load_or_create(tmp_path / "new", "cluster.local")
    both = "".join(old.trust_bundle + new.trust_bundle).encode()

    async def body() -> None:
        server, port, _ = await inbound_server(new, WEB, roots=both)
        client_ids = IdentityManager(fetcher(old))
        pool = Pool(client_ids, port=port)
        with pytest.raises(ssl.SSLCertVerificationError):
            await pool.get(PoolKey(CLIENT, "127.0.0.1", WEB))
        client_ids.set_roots(both)  # the controller's bundle now has the new root
        conn = await pool.get(PoolKey(CLIENT, "127.0.0.1", WEB))
        assert not conn.closed.is_set()
        await pool.close()
        server.close()

    run(body)


def test_hbone_connections_keep_alive_and_idle_ones_are_closed_by_the_server(
    tmp_path: Path,
) -> None:
    """A peer that vanishes without a FIN is found by TCP keepalives; a peer that keeps an
    unused connection open forever has it closed by the accepting side."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")

    async def body() -> None:
        server, port, inbound = await inbound_server(ca, WEB)
        pool = Pool(IdentityManager(fetcher(ca)), port=port)
        conn = await pool.get(PoolKey(CLIENT, "127.0.0.1", WEB))
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_IDLE_S
        await asyncio.sleep(0.1)
        assert [c["streams"] for c in inbound.stats()] == [0]
        reaper = asyncio.ensure_future(inbound.reap(idle_timeout=0.2))
        await asyncio.wait_for(conn.closed.wait(), 5)  # closed by the server, seen here
        reaper.cancel()
        assert inbound.stats() == []
        server.close()

    run(body)
