"""The ztunnel's certificate manager: one fetch per identity, renewal at half life without
making anyone wait, and forgetting identities that left the node."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from controller.ca import CertificateAuthority
from meshcore.api import mesh_pb2 as pb
from meshcore.identity.certs import load_certificate, spiffe_id_of
from meshcore.identity.spiffe import SpiffeId
from ztunnel.identity import IdentityManager

WEB = "spiffe://cluster.local/ns/shop/sa/web"
DB = "spiffe://cluster.local/ns/shop/sa/db"


class FakeController:
    """Signs with a real CA, counts requests, and can be made slow."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca
        self.requests: list[str] = []
        self.delay = 0.0

    async def certificate(self, csr_pem: bytes) -> pb.CertificateResponse:
        await asyncio.sleep(self.delay)
        allowed = {SpiffeId.parse(WEB), SpiffeId.parse(DB)}
        issued = self.ca.sign_workload(csr_pem, allowed)
        self.requests.append(str(issued.spiffe_id))
        return pb.CertificateResponse(
            cert_chain_pem=[issued.cert_pem.decode()], roots_pem=list(self.ca.trust_bundle)
        )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(Path(tmp_path_factory.mktemp("ca")), "cluster.local")


def test_concurrent_requests_for_one_identity_share_one_fetch(
    ca: CertificateAuthority,
) -> None:
    controller = FakeController(ca)
    controller.delay = 0.05
    manager = IdentityManager(controller.certificate)

    async def scenario() -> None:
        certs = await asyncio.gather(*(manager.get(WEB) for _ in range(10)))
        assert len({id(c) for c in certs}) == 1
        leaf = load_certificate(certs[0].chain_pem)
        assert str(spiffe_id_of(leaf)) == WEB
        assert certs[0].key_pem.startswith(b"-----BEGIN")

    asyncio.run(scenario())
    assert controller.requests == [WEB]


def test_a_certificate_is_renewed_at_half_life_while_the_old_one_keeps_serving(
    ca: CertificateAuthority,
) -> None:
    controller = FakeController(ca)
    now = [dt.datetime.now(dt.UTC)]
    manager = IdentityManager(controller.certificate, clock=lambda: now[0])

    async def scenario() -> None:
        first = await manager.get(WEB)
        assert await manager.get(WEB) is first  # fresh: no new request
        now[0] = first.refresh_at() + dt.timedelta(seconds=1)
        controller.delay = 0.05
        served = await manager.get(WEB)
        assert served is first  # past half life: still served at once, renewal in background
        await asyncio.sleep(0.2)
        renewed = await manager.get(WEB)
        assert renewed is not first
        assert renewed.key_pem != first.key_pem  # a new key for each certificate

    asyncio.run(scenario())
    assert controller.requests == [WEB, WEB]


def test_an_expired_certificate_is_never_served(ca: CertificateAuthority) -> None:
    controller = FakeController(ca)
    now = [dt.datetime.now(dt.UTC)]
    manager = IdentityManager(controller.certificate, clock=lambda: now[0])

    async def scenario() -> None:
        first = await manager.get(WEB)
        now[0] = first.not_after + dt.timedelta(seconds=1)
        assert manager.server_context_now(WEB) is None  # the TLS server will not present it
        second = await manager.get(WEB)  # a caller waits for a new one instead
        assert second is not first

    asyncio.run(scenario())
    assert controller.requests == [WEB, WEB]


def test_identities_that_left_the_node_are_forgotten(ca: CertificateAuthority) -> None:
    controller = FakeController(ca)
    manager = IdentityManager(controller.certificate)

    async def scenario() -> None:
        await manager.get(WEB)
        await manager.get(DB)
        assert manager.server_context_now(DB) is not None
        manager.forget({WEB})
        assert set(manager.known()) == {WEB}
        assert manager.server_context_now(DB) is None

    asyncio.run(scenario())
