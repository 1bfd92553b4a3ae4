"""Test PKI builders: roots, intermediates and leaves with exactly the flaws a test wants."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.identity.certs import SigningKey

BOTH_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class Issuer:
    key: SigningKey
    cert: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ku(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


class Pki:
    """Builds test certificates; every knob defaults to a well-formed value."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def window(
        self, not_before: dt.datetime | None, not_after: dt.datetime | None, days: int
    ) -> tuple[dt.datetime, dt.datetime]:
        return (
            not_before or self.now - dt.timedelta(hours=1),
            not_after or self.now + dt.timedelta(days=days),
        )

    def root(
        self,
        cn: str = "test root",
        *,
        key: SigningKey | None = None,
        path_length: int | None = 1,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issuer:
        key = key or ec.generate_private_key(ec.SECP256R1())
        start, end = self.window(not_before, not_after, 3650)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_ku(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return Issuer(key, cert)

    def intermediate(
        self,
        parent: Issuer,
        cn: str = "test intermediate",
        *,
        key: SigningKey | None = None,
        ca: bool = True,
        cert_sign: bool = True,
        path_length: int | None = 0,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issuer:
        key = key or ec.generate_private_key(ec.SECP256R1())
        start, end = self.window(not_before, not_after, 365)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(parent.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True
            )
            .add_extension(_ku(cert_sign=cert_sign), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), False
            )
            .sign(parent.key, hashes.SHA256())
        )
        return Issuer(key, cert)

    def leaf(
        self,
        issuer: Issuer,
        uri: str | None = "spiffe://cluster.local/ns/default/sa/default",
        *,
        key: SigningKey | None = None,
        usages: Sequence[x509.ObjectIdentifier] | None = BOTH_USAGES,
        ca: bool = False,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> x509.Certificate:
        key = key or ec.generate_private_key(ec.SECP256R1())
        start, end = self.window(not_before, not_after, 1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(_ku(cert_sign=ca), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
            )
        )
        if usages is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if uri is not None:
            san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])
            builder = builder.add_extension(san, critical=True)
        return builder.sign(issuer.key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
