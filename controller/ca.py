"""The mesh's certificate authority: SPIFFE X.509 SVIDs for workloads, node credentials, and
the controller's own serving certificate.

Two ways to get a signing key, both at the edge (`load_or_create`, `from_plugin`), after which
every operation is pure given the clock:

- self-signed: an ECDSA P-256 root made once and kept in `root-cert.pem`/`root-key.pem`; the
  root signs leaves directly (so its path length is 0);
- plug-in: Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
  `cert-chain.pem`), an intermediate that an organisation's own PKI issued.

Who may get which identity is the caller's decision (`allowed_ids`): the CA only enforces that a
request is well formed, asks for exactly one identity of this trust domain, and never a CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.identity.certs import (
    CertificateError,
    Purpose,
    SigningKey,
    can_sign_certificates,
    cert_to_pem,
    hash_for,
    is_ca,
    key_to_pem,
    load_certificate,
    load_chain,
    load_private_key,
    new_private_key,
    public_keys_match,
    spiffe_id_of,
    verify_chain,
)
from meshcore.identity.spiffe import (
    IdentityError,
    SpiffeId,
    check_trust_domain,
    node_id,
    workload_id,
)

_log = structlog.get_logger("controller.ca")

ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"
PLUGIN_CA_CERT_FILE = "ca-cert.pem"
PLUGIN_CA_KEY_FILE = "ca-key.pem"
PLUGIN_ROOT_CERT_FILE = "root-cert.pem"
PLUGIN_CHAIN_FILE = "cert-chain.pem"

ROOT_TTL = dt.timedelta(days=3650)
WORKLOAD_TTL = dt.timedelta(hours=24)
# Short-lived: a node renews its credential at half life over its authenticated channel
# (`renew_node_credential`); one that is no longer renewed stops working within a day.
NODE_CREDENTIAL_TTL = dt.timedelta(hours=24)
# What a pod proves its service account with before it has an SVID, as Kubernetes' projected
# ServiceAccount token does (issued by the lab as the kubelet would mount one). Short-lived;
# the pod's first SVID (clientAuth too) takes its place as the credential it renews with.
WORKLOAD_CREDENTIAL_TTL = dt.timedelta(hours=1)
SERVING_TTL = dt.timedelta(days=90)
CLOCK_SKEW = dt.timedelta(minutes=1)
_CANARY_TTL = dt.timedelta(minutes=5)

CONTROLLER_NAMESPACE = "weft-system"
CONTROLLER_SERVICE_ACCOUNT = "weft-controller"

_DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Clock = Callable[[], dt.datetime]
AllowedIds = AbstractSet[SpiffeId] | Callable[[SpiffeId], bool]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed SVID: the leaf, the chain that links it to a root (root excluded)."""

    cert_pem: bytes
    chain_pem: bytes
    spiffe_id: SpiffeId
    not_after: dt.datetime

    @property
    def full_chain_pem(self) -> bytes:
        """Leaf then chain: what a TLS stack wants as its certificate file."""
        return self.cert_pem + self.chain_pem


_WORKLOAD_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
_NODE_USAGES = (ExtendedKeyUsageOID.CLIENT_AUTH,)


@dataclass(frozen=True, slots=True)
class _Grant:
    """What a permitted request gets: its kind (for logs), key usages and lifetime."""

    kind: str
    usages: tuple[x509.ObjectIdentifier, ...]
    ttl: dt.timedelta


def create_root(
    trust_domain: str, *, now: dt.datetime, ttl: dt.timedelta = ROOT_TTL
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed ECDSA P-256 root for `trust_domain` that signs leaves directly."""
    check_trust_domain(trust_domain)
    key = new_private_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "weft"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"weft root CA {trust_domain}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hash_for(key))
    )
    return key, cert


class CertificateAuthority:
    """Signs leaves with one signing key; trusts one or more roots (more while rotating)."""

    def __init__(
        self,
        trust_domain: str,
        signing_key: SigningKey,
        signing_cert: x509.Certificate,
        *,
        intermediates: Sequence[x509.Certificate] = (),
        roots: Sequence[x509.Certificate] = (),
        clock: Clock | None = None,
    ) -> None:
        """`roots` defaults to the signing cert itself (the self-signed case)."""
        self.trust_domain = check_trust_domain(trust_domain)
        if not can_sign_certificates(signing_cert):
            raise CertificateError("signing certificate is not a CA (needs CA:TRUE, keyCertSign)")
        if not public_keys_match(signing_cert, signing_key):
            raise CertificateError("signing key does not match the signing certificate")
        self._key = signing_key
        self._cert = signing_cert
        self._intermediates = list(intermediates)
        self._roots = list(roots) if roots else [signing_cert]
        self._clock = clock or _utc_now

    # --- construction at the edge ---------------------------------------------------------

    @classmethod
    def load_or_create(
        cls, directory: str | os.PathLike[str], trust_domain: str, *, clock: Clock | None = None
    ) -> CertificateAuthority:
        """The self-signed root kept in `directory`, made (once) if there is none yet."""
        check_trust_domain(trust_domain)
        directory = Path(directory)
        cert_path = directory / ROOT_CERT_FILE
        key_path = directory / ROOT_KEY_FILE
        clock = clock or _utc_now
        if cert_path.exists() or key_path.exists():
            for present, missing in ((cert_path, key_path), (key_path, cert_path)):
                if present.exists() and not missing.exists():
                    raise CertificateError(
                        f"missing while {present.name} exists; restore it, or remove both "
                        "files to create a new root (every issued certificate stops verifying)",
                        source=str(missing),
                    )
            cert = _read_certificate(cert_path)
            key = _read_key(key_path)
            if not can_sign_certificates(cert):
                raise CertificateError("not a CA certificate", source=str(cert_path))
            if not public_keys_match(cert, key):
                raise CertificateError(
                    f"does not match the public key in {ROOT_CERT_FILE}", source=str(key_path)
                )
            if clock() > cert.not_valid_after_utc:
                raise CertificateError(
                    f"the root expired at {cert.not_valid_after_utc}; nothing it signs verifies",
                    source=str(cert_path),
                )
            _warn_if_readable_by_others(key_path)
            _log.info(
                "ca.root_loaded",
                directory=str(directory),
                serial=f"{cert.serial_number:x}",
                subject=cert.subject.rfc4514_string(),
                not_after=cert.not_valid_after_utc.isoformat(),
            )
            return cls(trust_domain, key, cert, clock=clock)

        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        key, cert = create_root(trust_domain, now=clock())
        _write_atomically(key_path, key_to_pem(key), 0o600)
        _write_atomically(cert_path, cert_to_pem(cert), 0o644)
        _log.info(
            "ca.root_created",
            directory=str(directory),
            serial=f"{cert.serial_number:x}",
            not_after=cert.not_valid_after_utc.isoformat(),
        )
        return cls(trust_domain, key, cert, clock=clock)

    @classmethod
    def from_plugin(
        cls, directory: str | os.PathLike[str], trust_domain: str, *, clock: Clock | None = None
    ) -> CertificateAuthority:
        """An intermediate from Istio's `cacerts` layout, checked before it signs anything."""
        check_trust_domain(trust_domain)
        directory = Path(directory)
        clock = clock or _utc_now
        ca_cert_path = directory / PLUGIN_CA_CERT_FILE
        ca_key_path = directory / PLUGIN_CA_KEY_FILE
        root_path = directory / PLUGIN_ROOT_CERT_FILE
        chain_path = directory / PLUGIN_CHAIN_FILE

        ca_cert = _read_certificate(ca_cert_path)
        ca_key = _read_key(ca_key_path)
        roots = _read_chain(root_path)
        chain = _read_chain(chain_path)

        if not can_sign_certificates(ca_cert):
            raise CertificateError(
                "not a CA certificate (needs basicConstraints CA:TRUE and keyUsage keyCertSign)",
                source=str(ca_cert_path),
            )
        if not public_keys_match(ca_cert, ca_key):
            raise CertificateError(
                f"does not match the public key in {PLUGIN_CA_CERT_FILE}", source=str(ca_key_path)
            )
        now = clock()
        if not ca_cert.not_valid_before_utc <= now <= ca_cert.not_valid_after_utc:
            raise CertificateError(
                f"not valid now (valid from {ca_cert.not_valid_before_utc} "
                f"to {ca_cert.not_valid_after_utc})",
                source=str(ca_cert_path),
            )
        for root in roots:
            if not is_ca(root):
                raise CertificateError(
                    f"holds a certificate that is not a CA: {root.subject.rfc4514_string()}",
                    source=str(root_path),
                )
        intermediates = [c for c in chain if c != ca_cert and c not in roots]
        ca = cls(
            trust_domain, ca_key, ca_cert, intermediates=intermediates, roots=roots, clock=clock
        )
        try:
            ca._self_test(now)
        except CertificateError as err:
            raise CertificateError(
                f"{PLUGIN_CA_CERT_FILE} does not chain to this root through "
                f"{PLUGIN_CHAIN_FILE}: {err.reason}",
                source=str(root_path),
            ) from None
        _log.info(
            "ca.plugin_loaded",
            directory=str(directory),
            subject=ca_cert.subject.rfc4514_string(),
            serial=f"{ca_cert.serial_number:x}",
            intermediates=len(intermediates),
            roots=len(roots),
            not_after=ca_cert.not_valid_after_utc.isoformat(),
        )
        return ca

    # --- what the CA hands out ------------------------------------------------------------

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def root_certificates(self) -> list[x509.Certificate]:
        return list(self._roots)

    @property
    def trust_bundle(self) -> list[str]:
        """PEM of every root a peer should trust."""
        return [cert_to_pem(r).decode() for r in self._roots]

    @property
    def chain(self) -> list[str]:
        """PEM of the signing cert and intermediates, leaf-side first; roots left out.

        Empty for a self-signed CA, whose signing cert is the root.
        """
        return [cert_to_pem(c).decode() for c in self._chain_certs()]

    def add_root(self, pem: bytes | str) -> None:
        """Trust one more root (or several, in one PEM), e.g. the next one while rotating."""
        certs = load_chain(pem.encode() if isinstance(pem, str) else pem)
        for cert in certs:
            if not is_ca(cert):
                raise CertificateError(
                    f"{cert.subject.rfc4514_string()} is not a CA certificate; not a root"
                )
        for cert in certs:
            if cert not in self._roots:
                self._roots.append(cert)
                _log.info(
                    "ca.root_added",
                    subject=cert.subject.rfc4514_string(),
                    serial=f"{cert.serial_number:x}",
                    roots=len(self._roots),
                )

    # --- signing --------------------------------------------------------------------------

    def sign_workload(
        self,
        csr_pem: bytes,
        allowed_ids: AllowedIds,
        ttl: dt.timedelta = WORKLOAD_TTL,
    ) -> IssuedCertificate:
        """An SVID for the one identity `csr_pem` asks for, if `allowed_ids` permits it."""
        return self._sign(
            csr_pem, lambda identity: self._workload_grant(identity, allowed_ids, ttl)
        )

    def sign_for_node(
        self, csr_pem: bytes, node: str, allowed_ids: AllowedIds
    ) -> IssuedCertificate:
        """What a node may ask for with its credential: an SVID for a workload identity that
        `allowed_ids` permits, or, for a CSR naming the node's own identity, its renewed
        credential. The CSR is read once."""

        def grant(identity: SpiffeId) -> _Grant:
            if identity.node_name is not None:
                return self._node_grant(identity, node, NODE_CREDENTIAL_TTL)
            return self._workload_grant(identity, allowed_ids, WORKLOAD_TTL)

        return self._sign(csr_pem, grant)

    def issue_node_credential(
        self, node: str, ttl: dt.timedelta = NODE_CREDENTIAL_TTL
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) a node presents to the controller (clientAuth only).

        The certificate PEM is the leaf followed by the chain (roots left out).
        """
        return self._issue_client_credential(node_id(self.trust_domain, node), "node", ttl)

    def issue_workload_credential(
        self, namespace: str, service_account: str, ttl: dt.timedelta = WORKLOAD_CREDENTIAL_TTL
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) a pod running as `service_account` presents to the
        controller (clientAuth only, short-lived), as a projected ServiceAccount token is
        presented in Kubernetes. What it may do with it is the controller's decision
        (`controller.server`): today, only a waypoint's replicas are served.

        The certificate PEM is the leaf followed by the chain (roots left out).
        """
        identity = workload_id(self.trust_domain, namespace, service_account)
        return self._issue_client_credential(identity, "workload-credential", ttl)

    def _issue_client_credential(
        self, identity: SpiffeId, kind: str, ttl: dt.timedelta
    ) -> tuple[bytes, bytes]:
        """A new key and a clientAuth-only certificate for `identity`, leaf then chain."""
        now = self._clock()
        key = new_private_key()
        cert = self._issue(
            key.public_key(),
            [x509.UniformResourceIdentifier(str(identity))],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            now,
            self._not_after(now, ttl),
        )
        self._log_signed(kind, identity, cert, now)
        return key_to_pem(key), cert_to_pem(cert) + self._chain_pem()

    def renew_node_credential(
        self, csr_pem: bytes, node: str, ttl: dt.timedelta = NODE_CREDENTIAL_TTL
    ) -> IssuedCertificate:
        """A new credential for `node` (already authenticated by its current one) from a CSR
        for its own node identity, with a key the node made (it never leaves the node)."""
        return self._sign(csr_pem, lambda identity: self._node_grant(identity, node, ttl))

    def verify_node_credential(
        self,
        credential: bytes | x509.Certificate | Sequence[x509.Certificate],
        now: dt.datetime | None = None,
    ) -> str:
        """The node name a client certificate (leaf first, then any chain) proves."""
        identity = self.verify_client_credential(credential, now)
        if identity.node_name is None:
            raise CertificateError(f"identity {identity} is not a node identity")
        return identity.node_name

    def verify_client_credential(
        self,
        credential: bytes | x509.Certificate | Sequence[x509.Certificate],
        now: dt.datetime | None = None,
    ) -> SpiffeId:
        """The identity of our trust domain a client certificate (leaf first, then any
        chain) proves: a node's, or a workload's (see `issue_workload_credential`)."""
        if isinstance(credential, bytes):
            certs = load_chain(credential)
        elif isinstance(credential, x509.Certificate):
            certs = [credential]
        else:
            certs = list(credential)
        if not certs:
            raise CertificateError("no certificate presented")
        leaf = certs[0]
        verify_chain(
            leaf,
            [*certs[1:], *self._chain_certs()],
            self._roots,
            now=now or self._clock(),
            purpose=Purpose.CLIENT,
        )
        identity = spiffe_id_of(leaf)
        if identity.trust_domain != self.trust_domain:
            raise CertificateError(
                f"identity {identity} is in trust domain {identity.trust_domain!r}, "
                f"not {self.trust_domain!r}"
            )
        return identity

    def issue_serving_certificate(
        self,
        dns_names: Iterable[str],
        ips: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
        ttl: dt.timedelta = SERVING_TTL,
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for the controller's TLS endpoint (serverAuth only).

        SANs: the DNS names, the IPs and the controller's SPIFFE ID. The certificate PEM is the
        leaf followed by the chain (roots left out).
        """
        sans: list[x509.GeneralName] = []
        for name in dns_names:
            if len(name) > 253 or not _DNS_NAME.match(name):
                raise CertificateError(f"{name!r} is not a valid DNS name for a certificate")
            sans.append(x509.DNSName(name))
        for ip in ips:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                raise CertificateError(f"{ip!r} is not an IP address") from None
        identity = workload_id(self.trust_domain, CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
        sans.append(x509.UniformResourceIdentifier(str(identity)))
        now = self._clock()
        key = new_private_key()
        cert = self._issue(
            key.public_key(),
            sans,
            [ExtendedKeyUsageOID.SERVER_AUTH],
            now,
            self._not_after(now, ttl),
        )
        self._log_signed("serving", identity, cert, now)
        return key_to_pem(key), cert_to_pem(cert) + self._chain_pem()

    # --- internals ------------------------------------------------------------------------

    def _workload_grant(
        self, identity: SpiffeId, allowed_ids: AllowedIds, ttl: dt.timedelta
    ) -> _Grant:
        if not _permitted(identity, allowed_ids):
            raise CertificateError(f"identity {identity} is not permitted")
        return _Grant(
            "workload", (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH), ttl
        )

    def _node_grant(self, identity: SpiffeId, node: str, ttl: dt.timedelta) -> _Grant:
        wanted = node_id(self.trust_domain, node)
        if identity != wanted:
            raise CertificateError(
                f"node {node!r} may renew only its own credential ({wanted}), "
                f"not ask for {identity}"
            )
        return _Grant("node", _NODE_USAGES, ttl)

    def _sign(self, csr_pem: bytes, grant: Callable[[SpiffeId], _Grant]) -> IssuedCertificate:
        """A leaf for the one identity a CSR asks for, as `grant` allows (or refuses)."""
        identity: SpiffeId | None = None
        try:
            csr = _load_csr(csr_pem)
            identity = self._requested_identity(csr)
            _check_not_ca_request(csr)
            public_key = _leaf_key(csr.public_key())
            granted = grant(identity)
            now = self._clock()
            not_after = self._not_after(now, granted.ttl)
        except CertificateError as err:
            _log.warning(
                "cert.refused",
                kind="node" if identity is not None and identity.node_name else "workload",
                identity=str(identity) if identity else None,
                reason=err.reason,
            )
            raise
        cert = self._issue(
            public_key,
            [x509.UniformResourceIdentifier(str(identity))],
            list(granted.usages),
            now,
            not_after,
        )
        self._log_signed(granted.kind, identity, cert, now)
        return IssuedCertificate(
            cert_pem=cert_to_pem(cert),
            chain_pem=self._chain_pem(),
            spiffe_id=identity,
            not_after=cert.not_valid_after_utc,
        )

    def _chain_pem(self) -> bytes:
        return b"".join(cert_to_pem(c) for c in self._chain_certs())

    def _chain_certs(self) -> list[x509.Certificate]:
        return [c for c in [self._cert, *self._intermediates] if c not in self._roots]

    def _requested_identity(self, csr: x509.CertificateSigningRequest) -> SpiffeId:
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CertificateError(
                "CSR has no subjectAltName; it must carry exactly one SPIFFE ID URI"
            ) from None
        others = [n for n in san if not isinstance(n, x509.UniformResourceIdentifier)]
        if others:
            raise CertificateError(
                f"CSR asks for {_describe_name(others[0])}; only one SPIFFE ID URI is allowed"
            )
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            raise CertificateError(
                f"CSR asks for {len(uris)} URI SANs ({', '.join(uris)}); exactly one is allowed"
            )
        try:
            identity = SpiffeId.parse(uris[0])
        except IdentityError as err:
            raise CertificateError(
                f"URI SAN {uris[0]!r} is not a SPIFFE ID: {err.reason}"
            ) from None
        if identity.trust_domain != self.trust_domain:
            raise CertificateError(
                f"identity {identity} is in trust domain {identity.trust_domain!r}, "
                f"not {self.trust_domain!r}"
            )
        if not identity.path:
            raise CertificateError(f"identity {identity} names the trust domain, not a workload")
        return identity

    def _not_after(self, now: dt.datetime, ttl: dt.timedelta) -> dt.datetime:
        """now + ttl, capped at the end of the signing chain's own lifetime."""
        if ttl <= dt.timedelta(0):
            raise CertificateError(f"ttl must be positive, got {ttl}")
        limit = min(c.not_valid_after_utc for c in [self._cert, *self._intermediates])
        if now >= limit:
            raise CertificateError(f"the signing certificate expired at {limit}")
        return min(now + ttl, limit)

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        sans: list[x509.GeneralName],
        usages: list[x509.ObjectIdentifier],
        now: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(
                    digital_signature=True,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
            # The subject is empty, so RFC 5280 wants the SAN critical.
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        )
        return builder.sign(self._key, hash_for(self._key))

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        try:
            ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    def _self_test(self, now: dt.datetime) -> None:
        """Sign a throwaway leaf and verify it as a peer would: proves key, chain and roots."""
        identity = workload_id(self.trust_domain, CONTROLLER_NAMESPACE, CONTROLLER_SERVICE_ACCOUNT)
        canary = self._issue(
            new_private_key().public_key(),
            [x509.UniformResourceIdentifier(str(identity))],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            now,
            self._not_after(now, _CANARY_TTL),
        )
        verify_chain(canary, self._chain_certs(), self._roots, now=now)

    def _log_signed(
        self, kind: str, identity: SpiffeId, cert: x509.Certificate, now: dt.datetime
    ) -> None:
        _log.info(
            "cert.signed",
            kind=kind,
            identity=str(identity),
            serial=f"{cert.serial_number:x}",
            not_after=cert.not_valid_after_utc.isoformat(),
            ttl_s=int((cert.not_valid_after_utc - now).total_seconds()),
        )


# --- pure helpers ---------------------------------------------------------------------------


def _serial() -> int:
    """A random, positive 128-bit serial number."""
    return secrets.randbits(128) or 1


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError):
        raise CertificateError("not a PEM certificate request") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as err:
        raise CertificateError(f"CSR signature cannot be checked: {err}") from None
    if not valid:
        raise CertificateError("CSR signature does not verify (the requester lacks the key)")
    try:
        csr.extensions  # noqa: B018  parsed once here, so later reads cannot fail
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as err:
        raise CertificateError(f"CSR has a malformed extension: {err}") from None
    return csr


def _check_not_ca_request(csr: x509.CertificateSigningRequest) -> None:
    try:
        bc = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise CertificateError("CSR requests a CA certificate (basicConstraints CA:TRUE)")
    try:
        ku = csr.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if ku.key_cert_sign or ku.crl_sign:
        raise CertificateError("CSR requests keyCertSign/cRLSign key usage")


def _leaf_key(public_key: object) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The CSR's key if it is one weft issues for: ECDSA P-256/P-384 or RSA >= 2048."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise CertificateError(f"CSR key is on curve {public_key.curve.name}; want P-256/P-384")
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise CertificateError(f"CSR key is RSA-{public_key.key_size}; want at least 2048")
        return public_key
    raise CertificateError(f"CSR key type {type(public_key).__name__} is not ECDSA or RSA")


def _permitted(identity: SpiffeId, allowed_ids: AllowedIds) -> bool:
    if isinstance(allowed_ids, AbstractSet):
        return identity in allowed_ids
    return bool(allowed_ids(identity))


def _describe_name(name: x509.GeneralName) -> str:
    kinds = {
        x509.DNSName: "a DNS name SAN",
        x509.IPAddress: "an IP address SAN",
        x509.RFC822Name: "an email SAN",
    }
    kind = kinds.get(type(name), f"a {type(name).__name__} SAN")
    return f"{kind} ({name.value!r})"


# --- files ----------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertificateError("missing", source=str(path)) from None
    except OSError as err:
        raise CertificateError(f"cannot read: {err.strerror}", source=str(path)) from None


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return load_certificate(_read_bytes(path))
    except CertificateError as err:
        raise err.located(str(path)) from None


def _read_chain(path: Path) -> list[x509.Certificate]:
    try:
        return load_chain(_read_bytes(path))
    except CertificateError as err:
        raise err.located(str(path)) from None


def _read_key(path: Path) -> SigningKey:
    try:
        return load_private_key(_read_bytes(path))
    except CertificateError as err:
        raise err.located(str(path)) from None


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a crash leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # exactly `mode`, whatever the umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _warn_if_readable_by_others(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        _log.warning("ca.key_permissions", path=str(path), mode=oct(mode), want="0o600")
