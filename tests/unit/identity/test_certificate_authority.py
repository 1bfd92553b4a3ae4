"""The controller's CA: root persistence, plug-in CAs, SVID signing and its refusals, node
credentials and the serving certificate (controller.ca)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from controller.ca import (
    CertificateAuthority,
    IssuedCertificate,
    create_root,
)
from meshcore.identity.certs import (
    CertificateError,
    Purpose,
    cert_to_pem,
    key_to_pem,
    load_certificate,
    load_chain,
    load_private_key,
    make_csr,
    new_private_key,
    spiffe_id_of,
    verify_chain,
)
from meshcore.identity.spiffe import SpiffeId, node_id, workload_id

TD = "cluster.local"
SID = workload_id(TD, "shop", "checkout")
ALLOWED = {SID}
MINUTE = dt.timedelta(minutes=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state") / "ca"


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(ca_dir, TD)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return new_private_key()


@pytest.fixture(scope="module")
def issued(ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey) -> IssuedCertificate:
    return ca.sign_workload(make_csr(key, SID), ALLOWED)


def _csr(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    sans: list[x509.GeneralName] | None,
    *,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),  # type: ignore[assignment]
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "requester")])
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _uri(value: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(value)


def _ku(**kw: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        [
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    return x509.KeyUsage(**{**flags, **kw})


def _bad_signature(csr_pem: bytes) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's s value
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | 2]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + body


def _duplicate_san_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A correctly signed CSR with two SAN extensions (builders refuse to make one)."""
    san = x509.SubjectAlternativeName([_uri(str(SID))])
    placeholder = x509.ObjectIdentifier("1.2.3.4")  # DER 06 03 2a 03 04, as long as SAN's OID
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=False)
        .add_extension(x509.UnrecognizedExtension(placeholder, san.public_bytes()), False)
        .sign(key, hashes.SHA256())
    )
    tbs = csr.tbs_certrequest_bytes.replace(
        bytes.fromhex("06032a0304"), bytes.fromhex("0603551d11")
    )
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    ecdsa_with_sha256 = _der(0x30, bytes.fromhex("06082a8648ce3d040302"))
    der = _der(0x30, tbs + ecdsa_with_sha256 + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


# --- the self-signed root ---------------------------------------------------------------------


def test_root_is_created_with_private_permissions(ca: CertificateAuthority, ca_dir: Path):
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "root-key.pem").stat().st_mode) == 0o600
    assert sorted(p.name for p in ca_dir.iterdir()) == ["root-cert.pem", "root-key.pem"]
    on_disk = load_certificate((ca_dir / "root-cert.pem").read_bytes())
    assert on_disk == ca.signing_certificate


def test_root_has_the_expected_shape(ca: CertificateAuthority):
    root = ca.signing_certificate
    assert root.subject.rfc4514_string() == "CN=weft root CA cluster.local,O=weft"
    assert root.issuer == root.subject
    root.verify_directly_issued_by(root)
    public_key = root.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(root.public_key())
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert abs(lifetime - dt.timedelta(days=3650) - MINUTE) < dt.timedelta(seconds=5)
    assert ca.trust_bundle == [cert_to_pem(root).decode()]
    assert ca.chain == []


def test_reloading_reuses_the_root(ca: CertificateAuthority, ca_dir: Path, issued: Any):
    again = CertificateAuthority.load_or_create(ca_dir, TD)
    assert again.signing_certificate.serial_number == ca.signing_certificate.serial_number
    assert again.trust_bundle == ca.trust_bundle
    # what the first instance issued verifies against the second one's roots
    leaf = load_certificate(issued.cert_pem)
    assert verify_chain(leaf, [], again.root_certificates)


def test_a_missing_root_key_is_an_error_not_a_new_root(tmp_path: Path):
    CertificateAuthority.load_or_create(tmp_path, TD)
    (tmp_path / "root-key.pem").unlink()
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.load_or_create(tmp_path, TD)
    assert err.value.source.endswith("root-key.pem")
    assert "missing while root-cert.pem exists" in err.value.reason
    assert not (tmp_path / "root-key.pem").exists()


def test_a_root_key_that_does_not_match_is_refused(tmp_path: Path):
    CertificateAuthority.load_or_create(tmp_path, TD)
    (tmp_path / "root-key.pem").write_bytes(key_to_pem(new_private_key()))
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.load_or_create(tmp_path, TD)
    assert err.value.source.endswith("root-key.pem")
    assert "does not match" in err.value.reason


def test_a_garbage_root_cert_names_the_file(tmp_path: Path):
    CertificateAuthority.load_or_create(tmp_path, TD)
    (tmp_path / "root-cert.pem").write_bytes(b"garbage")
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.load_or_create(tmp_path, TD)
    assert err.value.source.endswith("root-cert.pem")
    assert "not a PEM certificate" in err.value.reason


def test_an_expired_root_is_refused_on_load(tmp_path: Path):
    CertificateAuthority.load_or_create(tmp_path, TD)
    in_eleven_years = _now() + dt.timedelta(days=11 * 365)
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.load_or_create(tmp_path, TD, clock=lambda: in_eleven_years)
    assert err.value.source.endswith("root-cert.pem")
    assert "the root expired at" in err.value.reason


def test_root_creation_and_loading_are_logged(tmp_path: Path):
    with structlog.testing.capture_logs() as logs:
        CertificateAuthority.load_or_create(tmp_path, TD)
        CertificateAuthority.load_or_create(tmp_path, TD)
    assert [e["event"] for e in logs] == ["ca.root_created", "ca.root_loaded"]


# --- signing workload certificates --------------------------------------------------------


def test_issued_svid_has_exactly_the_mesh_extensions(
    ca: CertificateAuthority, issued: IssuedCertificate, key: ec.EllipticCurvePrivateKey
):
    cert = load_certificate(issued.cert_pem)
    assert cert.public_key() == key.public_key()
    assert cert.subject == x509.Name([])
    assert cert.issuer == ca.signing_certificate.subject
    exts = {e.oid: e for e in cert.extensions}
    assert set(exts) == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
    bc = exts[ExtensionOID.BASIC_CONSTRAINTS]
    assert bc.critical and bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = exts[ExtensionOID.KEY_USAGE]
    assert ku.critical and ku.value == _ku(digital_signature=True)
    eku = exts[ExtensionOID.EXTENDED_KEY_USAGE]
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = exts[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value
    ski = ca.signing_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest
    san = exts[ExtensionOID.SUBJECT_ALTERNATIVE_NAME]
    assert san.critical and list(san.value) == [_uri(str(SID))]


def test_issued_svid_describes_itself(issued: IssuedCertificate):
    cert = load_certificate(issued.cert_pem)
    assert issued.spiffe_id == SID
    assert spiffe_id_of(cert) == SID
    assert issued.not_after == cert.not_valid_after_utc
    assert issued.chain_pem == b""  # a self-signed root signs directly
    assert issued.full_chain_pem == issued.cert_pem


def test_issued_svid_lives_for_the_ttl_backdated_a_minute(issued: IssuedCertificate):
    cert = load_certificate(issued.cert_pem)
    now = _now()
    assert abs(cert.not_valid_before_utc - (now - MINUTE)) < dt.timedelta(seconds=5)
    assert abs(cert.not_valid_after_utc - (now + dt.timedelta(hours=24))) < dt.timedelta(seconds=5)


def test_issued_svid_has_a_random_128_bit_serial(ca: CertificateAuthority, key: Any):
    serials = {
        load_certificate(ca.sign_workload(make_csr(key, SID), ALLOWED).cert_pem).serial_number
        for _ in range(5)
    }
    assert len(serials) == 5
    assert all(0 < s < 2**128 for s in serials)


@pytest.mark.parametrize("purpose", [Purpose.CLIENT, Purpose.SERVER])
def test_issued_svid_verifies_to_the_root(
    ca: CertificateAuthority, issued: IssuedCertificate, purpose: Purpose
):
    cert = load_certificate(issued.cert_pem)
    chain = verify_chain(cert, [], ca.root_certificates, purpose=purpose)
    assert chain == [cert, ca.signing_certificate]


def test_ttl_is_honoured(ca: CertificateAuthority, key: Any):
    issued = ca.sign_workload(make_csr(key, SID), ALLOWED, ttl=dt.timedelta(hours=1))
    assert abs(issued.not_after - _now() - dt.timedelta(hours=1)) < dt.timedelta(seconds=5)


def test_ttl_is_capped_at_the_signing_certs_lifetime(key: Any):
    root_key, root = create_root(TD, now=_now(), ttl=dt.timedelta(hours=2))
    short = CertificateAuthority(TD, root_key, root)
    issued = short.sign_workload(make_csr(key, SID), ALLOWED, ttl=dt.timedelta(hours=24))
    assert issued.not_after == root.not_valid_after_utc


def test_an_expired_signing_cert_signs_nothing(key: Any):
    root_key, root = create_root(TD, now=_now(), ttl=dt.timedelta(hours=2))
    later = CertificateAuthority(TD, root_key, root, clock=lambda: _now() + dt.timedelta(hours=3))
    with pytest.raises(CertificateError, match="signing certificate expired"):
        later.sign_workload(make_csr(key, SID), ALLOWED)


def test_allowed_ids_may_be_a_predicate(ca: CertificateAuthority, key: Any):
    issued = ca.sign_workload(make_csr(key, SID), lambda sid: sid.namespace == "shop")
    assert issued.spiffe_id == SID
    with pytest.raises(CertificateError, match="not permitted"):
        ca.sign_workload(make_csr(key, SID), lambda sid: False)


def test_an_rsa_csr_is_signed_with_key_encipherment(ca: CertificateAuthority, rsa_key: Any):
    cert = load_certificate(ca.sign_workload(make_csr(rsa_key, SID), ALLOWED).cert_pem)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku == _ku(digital_signature=True, key_encipherment=True)


def _refusal_cases() -> list[tuple[str, Callable[[Any], bytes], str]]:
    other_td = workload_id("other.td", "shop", "checkout")
    return [
        ("no SAN", lambda k: _csr(k, None), "CSR has no subjectAltName"),
        (
            "two URI SANs",
            lambda k: _csr(k, [_uri(str(SID)), _uri(str(workload_id(TD, "shop", "x")))]),
            "CSR asks for 2 URI SANs",
        ),
        (
            "a DNS SAN",
            lambda k: _csr(k, [_uri(str(SID)), x509.DNSName("checkout.shop")]),
            "CSR asks for a DNS name SAN ('checkout.shop')",
        ),
        (
            "an IP SAN",
            lambda k: _csr(k, [x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
            "CSR asks for an IP address SAN",
        ),
        (
            "a URI that is not SPIFFE",
            lambda k: _csr(k, [_uri("https://shop.example/checkout")]),
            "URI SAN 'https://shop.example/checkout' is not a SPIFFE ID",
        ),
        (
            "the wrong trust domain",
            lambda k: make_csr(k, other_td),
            "identity spiffe://other.td/ns/shop/sa/checkout is in trust domain 'other.td', "
            "not 'cluster.local'",
        ),
        (
            "the trust domain itself",
            lambda k: _csr(k, [_uri("spiffe://cluster.local")]),
            "names the trust domain, not a workload",
        ),
        (
            "CA:TRUE",
            lambda k: _csr(
                k, [_uri(str(SID))], extensions=[(x509.BasicConstraints(True, None), True)]
            ),
            "CSR requests a CA certificate",
        ),
        (
            "keyCertSign",
            lambda k: _csr(
                k,
                [_uri(str(SID))],
                extensions=[(_ku(digital_signature=True, key_cert_sign=True), True)],
            ),
            "CSR requests keyCertSign",
        ),
        (
            "an identity not allowed",
            lambda k: make_csr(k, workload_id(TD, "shop", "payments")),
            "identity spiffe://cluster.local/ns/shop/sa/payments is not permitted",
        ),
        (
            "two SAN extensions",
            _duplicate_san_csr,
            "CSR has a malformed extension: Duplicate 2.5.29.17 extension found",
        ),
        (
            "a SAN extension that does not parse",
            lambda k: _csr(
                k,
                None,
                extensions=[
                    (
                        x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\0"),
                        False,
                    )
                ],
            ),
            "CSR has a malformed extension",
        ),
        ("garbage bytes", lambda k: b"\x00garbage", "not a PEM certificate request"),
        (
            "a certificate instead of a CSR",
            lambda k: b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
            "not a PEM certificate request",
        ),
        (
            "a bad signature",
            lambda k: _bad_signature(make_csr(k, SID)),
            "CSR signature does not verify",
        ),
        (
            "a weak RSA key",
            lambda k: make_csr(rsa.generate_private_key(65537, 1024), SID),
            "CSR key is RSA-1024",
        ),
        (
            "a non-NIST curve",
            lambda k: make_csr(ec.generate_private_key(ec.SECP256K1()), SID),
            "CSR key is on curve secp256k1",
        ),
    ]


@pytest.mark.parametrize(
    ("case", "csr", "reason"), _refusal_cases(), ids=[c[0] for c in _refusal_cases()]
)
def test_sign_workload_refuses(
    ca: CertificateAuthority, key: Any, case: str, csr: Callable[[Any], bytes], reason: str
):
    with pytest.raises(CertificateError) as err:
        ca.sign_workload(csr(key), ALLOWED)
    assert reason in err.value.reason


def test_a_ca_false_basic_constraints_request_is_fine(ca: CertificateAuthority, key: Any):
    csr = _csr(key, [_uri(str(SID))], extensions=[(x509.BasicConstraints(False, None), True)])
    assert ca.sign_workload(csr, ALLOWED).spiffe_id == SID


def test_signing_and_refusing_are_logged(ca: CertificateAuthority, key: Any):
    with structlog.testing.capture_logs() as logs:
        issued = ca.sign_workload(make_csr(key, SID), ALLOWED)
        with pytest.raises(CertificateError):
            ca.sign_workload(make_csr(key, SID), set())
        with pytest.raises(CertificateError):
            ca.sign_workload(b"garbage", ALLOWED)
    signed, refused, garbage = logs
    assert signed["event"] == "cert.signed"
    assert signed["identity"] == str(SID)
    assert signed["kind"] == "workload"
    assert signed["serial"] == f"{load_certificate(issued.cert_pem).serial_number:x}"
    assert refused["event"] == "cert.refused"
    assert refused["identity"] == str(SID)
    assert refused["reason"] == f"identity {SID} is not permitted"
    assert refused["log_level"] == "warning"
    assert garbage["event"] == "cert.refused"
    assert garbage["identity"] is None
    assert garbage["reason"] == "not a PEM certificate request"


# --- plug-in CA (Istio cacerts) -------------------------------------------------------------


def _write_cacerts(
    directory: Path,
    *,
    ca_cert: x509.Certificate,
    ca_key: Any,
    roots: list[x509.Certificate],
    chain: list[x509.Certificate],
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-cert.pem").write_bytes(cert_to_pem(ca_cert))
    (directory / "ca-key.pem").write_bytes(key_to_pem(ca_key))
    (directory / "root-cert.pem").write_bytes(b"".join(cert_to_pem(c) for c in roots))
    (directory / "cert-chain.pem").write_bytes(b"".join(cert_to_pem(c) for c in chain))
    return directory


@pytest.fixture(scope="module")
def org_root(pki: Any, rsa_key: Any) -> Any:
    return pki.root("org root", key=rsa_key)


@pytest.fixture(scope="module")
def org_intermediate(pki: Any, org_root: Any) -> Any:
    return pki.intermediate(org_root, "weft intermediate cluster-1")


@pytest.fixture
def plugin_dir(tmp_path: Path, org_root: Any, org_intermediate: Any) -> Path:
    return _write_cacerts(
        tmp_path / "cacerts",
        ca_cert=org_intermediate.cert,
        ca_key=org_intermediate.key,
        roots=[org_root.cert],
        chain=[org_intermediate.cert, org_root.cert],
    )


def test_plugin_ca_signs_with_the_intermediate(
    plugin_dir: Path, org_root: Any, org_intermediate: Any, key: Any
):
    ca = CertificateAuthority.from_plugin(plugin_dir, TD)
    assert ca.trust_bundle == [cert_to_pem(org_root.cert).decode()]
    assert ca.chain == [cert_to_pem(org_intermediate.cert).decode()]
    issued = ca.sign_workload(make_csr(key, SID), ALLOWED)
    assert load_chain(issued.chain_pem) == [org_intermediate.cert]
    leaf = load_certificate(issued.cert_pem)
    path = verify_chain(leaf, load_chain(issued.chain_pem), [org_root.cert])
    assert path == [leaf, org_intermediate.cert, org_root.cert]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = org_intermediate.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest


def test_plugin_ca_with_two_intermediate_levels(tmp_path: Path, pki: Any, key: Any):
    root = pki.root("deep root", path_length=2)
    middle = pki.intermediate(root, "middle", path_length=1)
    signing = pki.intermediate(middle, "signing")
    directory = _write_cacerts(
        tmp_path,
        ca_cert=signing.cert,
        ca_key=signing.key,
        roots=[root.cert],
        chain=[signing.cert, middle.cert, root.cert],
    )
    ca = CertificateAuthority.from_plugin(directory, TD)
    assert ca.chain == [cert_to_pem(signing.cert).decode(), cert_to_pem(middle.cert).decode()]
    issued = ca.sign_workload(make_csr(key, SID), ALLOWED)
    leaf = load_certificate(issued.cert_pem)
    assert verify_chain(leaf, load_chain(issued.chain_pem), [root.cert])[-1] == root.cert


def test_plugin_ttl_is_capped_at_the_intermediates_lifetime(
    tmp_path: Path, pki: Any, org_root: Any, key: Any
):
    short = pki.intermediate(org_root, "short", not_after=_now() + dt.timedelta(hours=3))
    directory = _write_cacerts(
        tmp_path, ca_cert=short.cert, ca_key=short.key, roots=[org_root.cert], chain=[short.cert]
    )
    ca = CertificateAuthority.from_plugin(directory, TD)
    issued = ca.sign_workload(make_csr(key, SID), ALLOWED, ttl=dt.timedelta(days=2))
    assert issued.not_after == short.cert.not_valid_after_utc


def test_plugin_key_that_does_not_match_is_refused(plugin_dir: Path):
    (plugin_dir / "ca-key.pem").write_bytes(key_to_pem(new_private_key()))
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.from_plugin(plugin_dir, TD)
    assert err.value.source.endswith("ca-key.pem")
    assert "does not match the public key in ca-cert.pem" in err.value.reason


def test_plugin_ca_cert_that_is_not_a_ca_is_refused(
    tmp_path: Path, pki: Any, org_root: Any
) -> None:
    not_ca = pki.intermediate(org_root, "not a ca", ca=False, cert_sign=False)
    directory = _write_cacerts(
        tmp_path, ca_cert=not_ca.cert, ca_key=not_ca.key, roots=[org_root.cert], chain=[]
    )
    (directory / "cert-chain.pem").write_bytes(cert_to_pem(not_ca.cert))
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.from_plugin(directory, TD)
    assert err.value.source.endswith("ca-cert.pem")
    assert "not a CA certificate" in err.value.reason


def test_plugin_chain_to_the_wrong_root_is_refused(
    plugin_dir: Path, pki: Any, org_intermediate: Any
):
    (plugin_dir / "root-cert.pem").write_bytes(cert_to_pem(pki.root("another org").cert))
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.from_plugin(plugin_dir, TD)
    assert err.value.source.endswith("root-cert.pem")
    assert "ca-cert.pem does not chain to this root through cert-chain.pem" in err.value.reason


def test_plugin_chain_missing_a_middle_intermediate_is_refused(tmp_path: Path, pki: Any):
    root = pki.root("gap root", path_length=2)
    middle = pki.intermediate(root, "middle", path_length=1)
    signing = pki.intermediate(middle, "signing")
    directory = _write_cacerts(
        tmp_path, ca_cert=signing.cert, ca_key=signing.key, roots=[root.cert], chain=[signing.cert]
    )
    with pytest.raises(CertificateError, match="does not chain"):
        CertificateAuthority.from_plugin(directory, TD)


def test_plugin_expired_intermediate_is_refused(tmp_path: Path, pki: Any, org_root: Any):
    old = pki.intermediate(
        org_root, "old", not_before=_now() - dt.timedelta(days=9), not_after=_now() - MINUTE
    )
    directory = _write_cacerts(
        tmp_path, ca_cert=old.cert, ca_key=old.key, roots=[org_root.cert], chain=[old.cert]
    )
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.from_plugin(directory, TD)
    assert err.value.source.endswith("ca-cert.pem")
    assert "not valid now" in err.value.reason


@pytest.mark.parametrize("name", ["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"])
def test_plugin_missing_or_garbage_files_are_named(plugin_dir: Path, name: str):
    (plugin_dir / name).unlink()
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.from_plugin(plugin_dir, TD)
    assert err.value.source.endswith(name)
    assert err.value.reason == "missing"
    (plugin_dir / name).write_bytes(b"garbage")
    with pytest.raises(CertificateError) as err:
        CertificateAuthority.from_plugin(plugin_dir, TD)
    assert err.value.source.endswith(name)
    assert "not a PEM" in err.value.reason


# --- node credentials ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_credential(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    return ca.issue_node_credential("node-1")


def test_node_credential_is_a_client_certificate_for_the_node(
    ca: CertificateAuthority, node_credential: tuple[bytes, bytes]
):
    key_pem, cert_pem = node_credential
    cert = load_certificate(cert_pem)
    assert cert.public_key() == load_private_key(key_pem).public_key()
    assert spiffe_id_of(cert) == node_id(TD, "node-1")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    lifetime = cert.not_valid_after_utc - _now()
    assert abs(lifetime - dt.timedelta(hours=24)) < dt.timedelta(seconds=5)  # short-lived
    with pytest.raises(CertificateError, match="does not allow serverAuth"):
        verify_chain(cert, [], ca.root_certificates, purpose=Purpose.SERVER)


def test_node_credential_verifies_to_the_node_name(
    ca: CertificateAuthority, node_credential: tuple[bytes, bytes]
):
    _, cert_pem = node_credential
    assert ca.verify_node_credential(cert_pem) == "node-1"
    assert ca.verify_node_credential(load_certificate(cert_pem)) == "node-1"
    assert ca.verify_node_credential(load_chain(cert_pem)) == "node-1"


def test_expired_node_credential_is_refused(
    ca: CertificateAuthority, node_credential: tuple[bytes, bytes]
):
    _, cert_pem = node_credential
    later = load_certificate(cert_pem).not_valid_after_utc + MINUTE
    with pytest.raises(CertificateError, match="certificate expired at"):
        ca.verify_node_credential(cert_pem, now=later)


def test_node_credential_from_a_foreign_ca_is_refused(ca: CertificateAuthority, tmp_path: Path):
    foreign = CertificateAuthority.load_or_create(tmp_path, TD)
    _, cert_pem = foreign.issue_node_credential("node-1")
    with pytest.raises(CertificateError, match="chain does not verify to a trusted root"):
        ca.verify_node_credential(cert_pem)


def test_workload_certificate_is_not_a_node_credential(
    ca: CertificateAuthority, issued: IssuedCertificate
):
    with pytest.raises(CertificateError) as err:
        ca.verify_node_credential(issued.cert_pem)
    assert err.value.reason == f"identity {SID} is not a node identity"


def test_node_credential_of_another_trust_domain_is_refused(ca: CertificateAuthority, ca_dir: Path):
    key = load_private_key((ca_dir / "root-key.pem").read_bytes())
    same_root_other_td = CertificateAuthority("other.td", key, ca.signing_certificate)
    _, cert_pem = same_root_other_td.issue_node_credential("node-1")
    with pytest.raises(CertificateError) as err:
        ca.verify_node_credential(cert_pem)
    assert "in trust domain 'other.td', not 'cluster.local'" in err.value.reason


@pytest.mark.parametrize("garbage", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\n"])
def test_garbage_node_credential_is_refused(ca: CertificateAuthority, garbage: bytes):
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        ca.verify_node_credential(garbage)


def test_no_node_credential_is_refused(ca: CertificateAuthority):
    with pytest.raises(CertificateError, match="no certificate presented"):
        ca.verify_node_credential([])


def test_plugin_node_credential_verifies_from_the_leaf_alone(plugin_dir: Path):
    """A TLS stack may hand over only the peer's leaf; the CA adds its own intermediates."""
    ca = CertificateAuthority.from_plugin(plugin_dir, TD)
    _, cert_pem = ca.issue_node_credential("node-2")
    leaf, *chain = load_chain(cert_pem)
    assert len(chain) == 1
    assert ca.verify_node_credential(leaf) == "node-2"


def test_node_names_must_be_one_path_segment(ca: CertificateAuthority):
    with pytest.raises(ValueError, match="node name"):
        ca.issue_node_credential("a/b")


# --- rotation -----------------------------------------------------------------------------


def test_added_root_is_trusted(tmp_path: Path):
    ca = CertificateAuthority.load_or_create(tmp_path / "old", TD)
    new = CertificateAuthority.load_or_create(tmp_path / "new", TD)
    _, cert_pem = new.issue_node_credential("node-3")
    with pytest.raises(CertificateError):
        ca.verify_node_credential(cert_pem)
    ca.add_root(new.trust_bundle[0])
    ca.add_root(new.trust_bundle[0].encode())  # twice is once
    assert len(ca.trust_bundle) == 2
    assert ca.verify_node_credential(cert_pem) == "node-3"


def test_add_root_refuses_a_leaf_and_adds_nothing(
    ca: CertificateAuthority, issued: IssuedCertificate, pki: Any
):
    before = ca.trust_bundle
    with pytest.raises(CertificateError, match="is not a CA certificate"):
        ca.add_root(cert_to_pem(pki.root("fine").cert) + issued.cert_pem)
    assert ca.trust_bundle == before


# --- the controller's serving certificate -------------------------------------------------


def test_serving_certificate(ca: CertificateAuthority):
    key_pem, cert_pem = ca.issue_serving_certificate(
        ["weft-controller.weft-system.svc", "localhost"],
        ["127.0.0.1", ipaddress.ip_address("::1")],
        ttl=dt.timedelta(days=30),
    )
    cert = load_certificate(cert_pem)
    assert cert.public_key() == load_private_key(key_pem).public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["weft-controller.weft-system.svc", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert spiffe_id_of(cert) == SpiffeId.parse(
        "spiffe://cluster.local/ns/weft-system/sa/weft-controller"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert abs(cert.not_valid_after_utc - _now() - dt.timedelta(days=30)) < dt.timedelta(seconds=5)
    assert verify_chain(cert, [], ca.root_certificates, purpose=Purpose.SERVER)
    with pytest.raises(CertificateError, match="does not allow clientAuth"):
        verify_chain(cert, [], ca.root_certificates, purpose=Purpose.CLIENT)


@pytest.mark.parametrize(
    ("dns", "ips", "reason"),
    [
        (["bad name"], [], "'bad name' is not a valid DNS name"),
        (["Upper.Case"], [], "is not a valid DNS name"),
        ([], ["10.0.0.300"], "'10.0.0.300' is not an IP address"),
    ],
)
def test_serving_certificate_refuses_bad_names(
    ca: CertificateAuthority, dns: list[str], ips: list[str], reason: str
):
    with pytest.raises(CertificateError, match=reason):
        ca.issue_serving_certificate(dns, ips)


# --- the constructor's own checks ---------------------------------------------------------


def test_constructor_refuses_a_key_that_does_not_match(ca: CertificateAuthority):
    with pytest.raises(CertificateError, match="signing key does not match"):
        CertificateAuthority(TD, new_private_key(), ca.signing_certificate)


def test_constructor_refuses_a_leaf_as_signing_cert(issued: IssuedCertificate, key: Any):
    with pytest.raises(CertificateError, match="not a CA"):
        CertificateAuthority(TD, key, load_certificate(issued.cert_pem))


def test_trust_domain_is_checked(tmp_path: Path):
    with pytest.raises(ValueError, match="trust domain"):
        CertificateAuthority.load_or_create(tmp_path, "Not A Domain")
    assert not any(tmp_path.iterdir())


# --- the certificates work in a real TLS stack ----------------------------------------------


def _tls_context(
    side: int, tmp: Path, name: str, key_pem: bytes, cert_pem: bytes, ca: CertificateAuthority
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    (tmp / f"{name}.key").write_bytes(key_pem)
    (tmp / f"{name}.crt").write_bytes(cert_pem)
    ctx.load_cert_chain(tmp / f"{name}.crt", tmp / f"{name}.key")
    ctx.load_verify_locations(cadata="".join(ca.trust_bundle))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False
    return ctx


def _handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, server_hostname: str | None = None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS 1.3 handshake through memory buffers: no sockets, only OpenSSL's checks."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    client.write(b"ping")  # the server only checks the client's certificate on first read
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    return client, server


def _peer(tls: ssl.SSLObject) -> x509.Certificate:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_workload_svids_complete_an_openssl_mtls_handshake(
    ca: CertificateAuthority, tmp_path: Path
):
    contexts = []
    for name, side in (("a", ssl.PROTOCOL_TLS_CLIENT), ("b", ssl.PROTOCOL_TLS_SERVER)):
        key = new_private_key()
        issued = ca.sign_workload(make_csr(key, workload_id(TD, "ns", name)), lambda _: True)
        contexts.append(
            _tls_context(side, tmp_path, name, key_to_pem(key), issued.full_chain_pem, ca)
        )
    client, server = _handshake(contexts[0], contexts[1])
    peer = _peer(server)
    assert spiffe_id_of(peer) == workload_id(TD, "ns", "a")
    peer = _peer(client)
    assert spiffe_id_of(peer) == workload_id(TD, "ns", "b")


def test_node_credential_and_serving_cert_complete_an_openssl_handshake(
    plugin_dir: Path, tmp_path: Path
):
    ca = CertificateAuthority.from_plugin(plugin_dir, TD)
    client_ctx = _tls_context(
        ssl.PROTOCOL_TLS_CLIENT, tmp_path, "node", *ca.issue_node_credential("node-1"), ca
    )
    client_ctx.check_hostname = True
    server_ctx = _tls_context(
        ssl.PROTOCOL_TLS_SERVER,
        tmp_path,
        "controller",
        *ca.issue_serving_certificate(["weft-controller.weft-system.svc"], []),
        ca,
    )
    _, server = _handshake(client_ctx, server_ctx, "weft-controller.weft-system.svc")
    # what grpc's auth context would hand the controller: the peer's leaf alone
    peer_leaf = _peer(server)
    assert ca.verify_node_credential(cert_to_pem(peer_leaf)) == "node-1"
