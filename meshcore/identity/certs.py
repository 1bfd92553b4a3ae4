"""X.509 helpers shared by the controller's CA, ztunnel and the node agent.

Pure functions over `cryptography` objects and PEM bytes; nothing here reads files or sockets.

Chain verification uses `cryptography.x509.verification` (the Rust WebPKI path builder:
signatures, validity windows, basicConstraints/keyUsage on issuers, path length, name
constraints, unknown critical extensions). Its client verifier accepts a leaf whose only SAN is
a SPIFFE URI, which mesh certificates are; its server verifier insists on matching a DNS name or
IP, which SPIFFE peers do not have, so both purposes use the client verifier with our own
extended-key-usage rule swapped into the end-entity policy. A few leaf checks run first, only
so that the common failures (expired, a CA as leaf, wrong key usage) read plainly.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from meshcore.identity.spiffe import IdentityError, SpiffeId

# Keys weft signs with: its own are ECDSA P-256; a plug-in CA may bring RSA or P-384.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateError(Exception):
    """A certificate, key or CSR that cannot be used; `reason` says why, `source` where."""

    def __init__(self, reason: str, *, source: str = "") -> None:
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)

    def located(self, source: str) -> CertificateError:
        """The same error, naming the file (or peer) it came from."""
        return CertificateError(self.reason, source=self.source or source)


class Purpose(enum.Enum):
    """What the leaf is being accepted for: its extended key usage must allow it."""

    CLIENT = "clientAuth"
    SERVER = "serverAuth"

    @property
    def oid(self) -> x509.ObjectIdentifier:
        if self is Purpose.CLIENT:
            return ExtendedKeyUsageOID.CLIENT_AUTH
        return ExtendedKeyUsageOID.SERVER_AUTH


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a person (or a log line) wants to know about a certificate."""

    spiffe_id: SpiffeId | None
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    issuer: str
    is_ca: bool

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"


# --- keys, CSRs, PEM ----------------------------------------------------------------------


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, the kind every weft identity uses."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: SigningKey) -> bytes:
    """Unencrypted PKCS#8 PEM; whoever writes it to disk owns its file mode."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as err:
        raise CertificateError(f"not a PEM private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"unsupported key type {type(key).__name__} (want ECDSA or RSA)")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_csr(key: SigningKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR whose only content is one URI SAN, the SPIFFE ID (empty subject)."""
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=True)
        .sign(key, hash_for(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem: bytes) -> x509.Certificate:
    """The first certificate in `pem`."""
    return load_chain(pem)[0]


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in `pem`, in order (leaf first, by convention)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except (ValueError, TypeError) as err:
        raise CertificateError(f"not a PEM certificate: {err}") from None
    if not certs:
        raise CertificateError("not a PEM certificate: no certificate found")
    return certs


def hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    """The digest to sign with: SHA-384 for P-384 and up, SHA-256 otherwise."""
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def public_keys_match(cert: x509.Certificate, key: SigningKey) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, fmt) == key.public_key().public_bytes(der, fmt)


# --- reading certificates -----------------------------------------------------------------


def spiffe_id_of(cert: x509.Certificate) -> SpiffeId:
    """The certificate's SPIFFE ID: its one and only URI SAN."""
    uris = _uri_sans(cert)
    if len(uris) != 1:
        raise CertificateError(f"certificate has {len(uris)} URI SANs, want exactly 1 SPIFFE ID")
    try:
        return SpiffeId.parse(uris[0])
    except IdentityError as err:
        raise CertificateError(f"URI SAN {uris[0]!r} is not a SPIFFE ID: {err.reason}") from None


def describe(cert: x509.Certificate) -> CertInfo:
    try:
        spiffe_id: SpiffeId | None = spiffe_id_of(cert)
    except CertificateError:
        spiffe_id = None
    return CertInfo(
        spiffe_id=spiffe_id,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=cert.issuer.rfc4514_string(),
        is_ca=is_ca(cert),
    )


def is_ca(cert: x509.Certificate) -> bool:
    bc = _extension(cert, x509.BasicConstraints)
    return bc is not None and bc.ca


def can_sign_certificates(cert: x509.Certificate) -> bool:
    """CA:TRUE and, when keyUsage is present, keyCertSign."""
    ku = _extension(cert, x509.KeyUsage)
    return is_ca(cert) and (ku is None or ku.key_cert_sign)


def _uri_sans(cert: x509.Certificate) -> list[str]:
    san = _extension(cert, x509.SubjectAlternativeName)
    if san is None:
        raise CertificateError("certificate has no subjectAltName, want exactly 1 SPIFFE ID")
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as err:
        raise CertificateError(f"malformed certificate extension: {err}") from None


# --- chain verification -------------------------------------------------------------------


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime | None = None,
    purpose: Purpose = Purpose.CLIENT,
) -> list[x509.Certificate]:
    """The verified chain, leaf first and a root last; CertificateError if there is none.

    `intermediates` may hold extra, unrelated certificates; the path builder picks.
    """
    if not roots:
        raise CertificateError("no trusted roots to verify against")
    at = _utc(now)
    _check_leaf(leaf, at, purpose)
    builder = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(at)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=_ee_policy(purpose),
        )
    )
    try:
        verified = builder.build_client_verifier().verify(leaf, list(intermediates))
    except VerificationError as err:
        raise CertificateError(
            f"chain does not verify to a trusted root (leaf issued by "
            f"{leaf.issuer.rfc4514_string()!r}): {err}"
        ) from None
    return list(verified.chain)


def _check_leaf(leaf: x509.Certificate, at: dt.datetime, purpose: Purpose) -> None:
    if at < leaf.not_valid_before_utc:
        raise CertificateError(f"certificate is not valid before {leaf.not_valid_before_utc}")
    if at > leaf.not_valid_after_utc:
        raise CertificateError(f"certificate expired at {leaf.not_valid_after_utc}")
    if is_ca(leaf):
        raise CertificateError("certificate is a CA (CA:TRUE), not a leaf")
    eku = _extension(leaf, x509.ExtendedKeyUsage)
    if eku is None or purpose.oid not in eku:
        raise CertificateError(f"certificate's extended key usage does not allow {purpose.value}")


def _ee_policy(purpose: Purpose) -> ExtensionPolicy:
    def check_eku(_policy: object, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
        if purpose.oid not in eku:
            raise ValueError(f"extended key usage does not allow {purpose.value}")

    return ExtensionPolicy.webpki_defaults_ee().require_present(
        x509.ExtendedKeyUsage, Criticality.AGNOSTIC, check_eku
    )


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=dt.UTC)
    return now.astimezone(dt.UTC)
