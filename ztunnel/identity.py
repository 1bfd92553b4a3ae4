"""Workload certificates for this node's enrolled workloads: fetched, cached, renewed.

For each identity a key and a CSR are made here (the key never leaves ztunnel) and signed by
the controller. A certificate is renewed at half its lifetime; connections already open keep
theirs, new ones use the new one. Fetches for one identity are shared; others never wait.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from meshcore.api import mesh_pb2 as pb
from meshcore.identity.certs import (
    describe,
    key_to_pem,
    load_certificate,
    make_csr,
    new_private_key,
)
from meshcore.identity.spiffe import SpiffeId
from ztunnel import tls

log = structlog.get_logger("ztunnel.identity")

Fetch = Callable[[bytes], Awaitable[pb.CertificateResponse]]


@dataclass(frozen=True)
class WorkloadCertificate:
    identity: str
    key_pem: bytes
    chain_pem: bytes  # leaf, then intermediates
    roots_pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime

    def refresh_at(self) -> dt.datetime:
        return self.not_before + (self.not_after - self.not_before) / 2

    def client_context(self, roots_pem: bytes | None = None) -> ssl.SSLContext:
        """`roots_pem`: the roots to trust (the mesh's trust bundle); by default the ones
        that came with the certificate."""
        return tls.context(
            server=False,
            key_pem=self.key_pem,
            chain_pem=self.chain_pem,
            roots_pem=roots_pem or self.roots_pem,
        )

    def server_context(self, roots_pem: bytes | None = None) -> ssl.SSLContext:
        return tls.context(
            server=True,
            key_pem=self.key_pem,
            chain_pem=self.chain_pem,
            roots_pem=roots_pem or self.roots_pem,
        )


class IdentityManager:
    def __init__(
        self, fetch: Fetch, clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._certs: dict[str, WorkloadCertificate] = {}
        self._inflight: dict[str, asyncio.Task[WorkloadCertificate]] = {}
        self._contexts: dict[tuple[str, bool], tuple[WorkloadCertificate, ssl.SSLContext]] = {}
        self._roots: bytes | None = None  # the trust bundle, once the controller sent one

    def set_roots(self, roots_pem: bytes) -> None:
        """Trust these roots from now on (the controller's trust bundle, e.g. with a new root
        added for a rotation). New connections use them; open ones carry on."""
        if roots_pem and roots_pem != self._roots:
            self._roots = roots_pem
            self._contexts.clear()
            log.info("trust_bundle.updated", roots=roots_pem.count(b"BEGIN CERTIFICATE"))

    def known(self) -> dict[str, WorkloadCertificate]:
        return dict(self._certs)

    async def get(self, identity: str) -> WorkloadCertificate:
        cert = self._certs.get(identity)
        if cert is not None and self._clock() < cert.refresh_at():
            return cert
        if cert is not None and self._clock() < cert.not_after:
            self._start_fetch(identity)  # renew in the background, keep serving this one
            return cert
        return await self._start_fetch(identity)

    def _start_fetch(self, identity: str) -> asyncio.Task[WorkloadCertificate]:
        task = self._inflight.get(identity)
        if task is None:
            task = asyncio.create_task(self._request(identity))
            self._inflight[identity] = task
            task.add_done_callback(lambda _t: self._inflight.pop(identity, None))
        return task

    async def _request(self, identity: str) -> WorkloadCertificate:
        key = new_private_key()
        reply = await self._fetch(make_csr(key, SpiffeId.parse(identity)))
        chain = "".join(reply.cert_chain_pem).encode()
        info = describe(load_certificate(reply.cert_chain_pem[0].encode()))
        cert = WorkloadCertificate(
            identity,
            key_to_pem(key),
            chain,
            "".join(reply.roots_pem).encode(),
            info.not_before,
            info.not_after,
        )
        renewed = identity in self._certs
        self._certs[identity] = cert
        log.info(
            "cert.rotated" if renewed else "cert.issued",
            identity=identity,
            not_after=info.not_after.isoformat(),
        )
        return cert

    async def context(self, identity: str, *, server: bool) -> ssl.SSLContext:
        cert = await self.get(identity)
        cached = self._contexts.get((identity, server))
        if cached is not None and cached[0] is cert:
            return cached[1]
        ctx = cert.server_context(self._roots) if server else cert.client_context(self._roots)
        self._contexts[(identity, server)] = (cert, ctx)
        return ctx

    def server_context_now(self, identity: str) -> ssl.SSLContext | None:
        """The cached server context of an identity already fetched (for the synchronous
        SNI callback); None when this node holds no certificate for it."""
        cert = self._certs.get(identity)
        if cert is None or self._clock() >= cert.not_after:
            return None
        cached = self._contexts.get((identity, True))
        if cached is not None and cached[0] is cert:
            return cached[1]
        ctx = cert.server_context(self._roots)
        self._contexts[(identity, True)] = (cert, ctx)
        return ctx

    def forget(self, keep: set[str]) -> None:
        """Drop certificates of identities no longer on this node."""
        for identity in list(self._certs):
            if identity not in keep:
                del self._certs[identity]
                self._contexts.pop((identity, True), None)
                self._contexts.pop((identity, False), None)
