"""TLS for HBONE: TLS 1.3, ALPN h2, mutual authentication with SPIFFE certificates.

OpenSSL checks the chain against the trust bundle; the identity check (the peer's one URI
SAN is the identity the controller says it runs as) is done here, after the handshake, since
SPIFFE identities are not host names.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from meshcore.hbone import ALPN
from meshcore.identity.certs import CertificateError, spiffe_id_of


@contextmanager
def _memory_files(*blobs: bytes) -> Iterator[list[str]]:
    """Paths to in-memory files (memfd): keys never touch a disk."""
    fds = []
    try:
        for blob in blobs:
            fd = os.memfd_create("weft-tls", os.MFD_CLOEXEC)
            os.write(fd, blob)
            fds.append(fd)
        yield [f"/proc/self/fd/{fd}" for fd in fds]
    finally:
        for fd in fds:
            os.close(fd)


def context(*, server: bool, key_pem: bytes, chain_pem: bytes, roots_pem: bytes) -> ssl.SSLContext:
    """A context presenting `chain_pem` (leaf first) and trusting only `roots_pem`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # identities are SPIFFE URIs, checked by `peer_identity`
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN])
    ctx.load_verify_locations(cadata=roots_pem.decode())
    with _memory_files(chain_pem, key_pem) as (chain_path, key_path):
        ctx.load_cert_chain(chain_path, key_path)
    return ctx


def switching_server_context(
    pick: Callable[[ssl.SSLObject, str | None], ssl.SSLContext | int],
) -> ssl.SSLContext:
    """An HBONE listener's context (TLS 1.3, ALPN h2, a client certificate required) that
    takes the certificate and trust store for each handshake from `pick(sslobj, sni)`: a
    context to switch to, or a TLS alert to refuse with. Whether to ask for a client
    certificate is decided from this context, not the one switched to."""
    base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    base.minimum_version = ssl.TLSVersion.TLSv1_3
    base.set_alpn_protocols([ALPN])
    base.verify_mode = ssl.CERT_REQUIRED

    def callback(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        picked = pick(sslobj, name)
        if isinstance(picked, int):
            return picked
        sslobj.context = picked
        return None

    base.sni_callback = callback
    return base


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str:
    """The SPIFFE ID of the verified peer certificate."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise CertificateError("the peer presented no certificate")
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    return str(spiffe_id_of(cert))
