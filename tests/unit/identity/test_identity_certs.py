"""Keys, CSRs, reading certificates, and chain verification (meshcore.identity.certs)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshcore.identity.certs import (
    CertificateError,
    Purpose,
    cert_to_pem,
    describe,
    key_to_pem,
    load_certificate,
    load_chain,
    load_private_key,
    make_csr,
    new_private_key,
    spiffe_id_of,
    verify_chain,
)
from meshcore.identity.spiffe import SpiffeId, workload_id

SID = workload_id("cluster.local", "default", "default")
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def root(pki: Any) -> Any:
    return pki.root("verify root")


@pytest.fixture(scope="module")
def intermediate(pki: Any, root: Any) -> Any:
    return pki.intermediate(root)


def test_new_private_key_is_p256_and_round_trips_through_pem():
    key = new_private_key()
    assert isinstance(key.curve, ec.SECP256R1)
    pem = key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(pem)
    assert loaded.private_numbers() == key.private_numbers()


def test_load_private_key_refuses_garbage():
    with pytest.raises(CertificateError, match="not a PEM private key"):
        load_private_key(b"nope")


def test_csr_round_trip_carries_exactly_one_uri_san():
    key = new_private_key()
    csr = x509.load_pem_x509_csr(make_csr(key, SID))
    assert csr.is_signature_valid
    assert csr.subject == x509.Name([])
    assert csr.public_key() == key.public_key()
    assert len(csr.extensions) == 1
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert list(san.value) == [x509.UniformResourceIdentifier(str(SID))]


def test_load_chain_reads_every_certificate_in_order(pki: Any, root: Any, intermediate: Any):
    leaf = pki.leaf(intermediate)
    pem = cert_to_pem(leaf) + cert_to_pem(intermediate.cert) + cert_to_pem(root.cert)
    assert load_chain(pem) == [leaf, intermediate.cert, root.cert]
    assert load_certificate(pem) == leaf


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAA==\n"])
def test_loading_garbage_is_a_certificate_error(data: bytes):
    with pytest.raises(CertificateError) as err:
        load_chain(data)
    assert "not a PEM certificate" in err.value.reason


def test_spiffe_id_of_reads_the_one_uri_san(pki: Any, root: Any):
    assert spiffe_id_of(pki.leaf(root)) == SID


def test_spiffe_id_of_refuses_a_certificate_without_san(pki: Any, root: Any):
    with pytest.raises(CertificateError, match="no subjectAltName"):
        spiffe_id_of(pki.leaf(root, None))


def test_spiffe_id_of_refuses_a_uri_that_is_not_spiffe(pki: Any, root: Any):
    with pytest.raises(CertificateError, match="is not a SPIFFE ID: scheme"):
        spiffe_id_of(pki.leaf(root, "https://example.org/x"))


def test_spiffe_id_of_refuses_two_uri_sans(pki: Any, root: Any):
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.cert.subject)
        .public_key(new_private_key().public_key())
        .serial_number(1)
        .not_valid_before(pki.now)
        .not_valid_after(pki.now + HOUR)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier("spiffe://td/a"),
                    x509.UniformResourceIdentifier("spiffe://td/b"),
                ]
            ),
            critical=True,
        )
        .sign(root.key, hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="2 URI SANs"):
        spiffe_id_of(cert)


def test_describe(pki: Any, root: Any):
    leaf = pki.leaf(root)
    info = describe(leaf)
    assert info.spiffe_id == SID
    assert info.serial == leaf.serial_number
    assert info.serial_hex == f"{leaf.serial_number:x}"
    assert info.not_before == leaf.not_valid_before_utc
    assert info.not_after == leaf.not_valid_after_utc
    assert info.issuer == "CN=verify root,O=test"
    assert info.is_ca is False
    root_info = describe(root.cert)
    assert root_info.is_ca is True
    assert root_info.spiffe_id is None


# --- verify_chain -------------------------------------------------------------------------


def test_verify_chain_through_an_intermediate_returns_the_path(
    pki: Any, root: Any, intermediate: Any
):
    leaf = pki.leaf(intermediate)
    chain = verify_chain(leaf, [intermediate.cert], [root.cert])
    assert chain == [leaf, intermediate.cert, root.cert]


def test_verify_chain_ignores_unrelated_extra_intermediates(pki: Any, root: Any, intermediate: Any):
    other = pki.intermediate(pki.root("unrelated root"), "unrelated intermediate")
    leaf = pki.leaf(intermediate)
    assert verify_chain(leaf, [other.cert, intermediate.cert], [pki.root().cert, root.cert])


def test_verify_chain_refuses_a_leaf_signed_by_another_ca(pki: Any, root: Any):
    foreign = pki.root("foreign root")
    with pytest.raises(CertificateError) as err:
        verify_chain(pki.leaf(foreign), [], [root.cert])
    assert "chain does not verify to a trusted root" in err.value.reason


def test_verify_chain_refuses_a_forged_issuer_name(pki: Any, root: Any):
    """Same subject as the trusted root, different key: the signature gives it away."""
    impostor = pki.root("verify root")
    with pytest.raises(CertificateError, match="does not verify"):
        verify_chain(pki.leaf(impostor), [], [root.cert])


def test_verify_chain_refuses_an_expired_intermediate(pki: Any, root: Any):
    expired = pki.intermediate(
        root, not_before=pki.now - dt.timedelta(days=30), not_after=pki.now - HOUR
    )
    leaf = pki.leaf(expired)
    with pytest.raises(CertificateError) as err:
        verify_chain(leaf, [expired.cert], [root.cert])
    assert "not valid at validation time" in err.value.reason


def test_verify_chain_refuses_an_expired_leaf(pki: Any, root: Any):
    leaf = pki.leaf(root)
    later = leaf.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(CertificateError, match="certificate expired at"):
        verify_chain(leaf, [], [root.cert], now=later)


def test_verify_chain_refuses_a_leaf_not_yet_valid(pki: Any, root: Any):
    leaf = pki.leaf(root, not_before=pki.now + HOUR)
    with pytest.raises(CertificateError, match="not valid before"):
        verify_chain(leaf, [], [root.cert])


def test_verify_chain_accepts_naive_utc_times(pki: Any, root: Any):
    leaf = pki.leaf(root)
    assert verify_chain(leaf, [], [root.cert], now=dt.datetime.now(dt.UTC).replace(tzinfo=None))


def test_verify_chain_refuses_a_ca_as_leaf(pki: Any, root: Any):
    ca_leaf = pki.leaf(root, ca=True)
    with pytest.raises(CertificateError, match="is a CA"):
        verify_chain(ca_leaf, [], [root.cert])


def test_verify_chain_refuses_an_issuer_that_is_not_a_ca(pki: Any, root: Any):
    not_ca = pki.intermediate(root, ca=False, cert_sign=False)
    with pytest.raises(CertificateError, match="does not verify"):
        verify_chain(pki.leaf(not_ca), [not_ca.cert], [root.cert])


def test_verify_chain_refuses_an_issuer_without_key_cert_sign(pki: Any, root: Any):
    no_sign = pki.intermediate(root, cert_sign=False)
    with pytest.raises(CertificateError, match="does not verify"):
        verify_chain(pki.leaf(no_sign), [no_sign.cert], [root.cert])


def test_verify_chain_enforces_the_roots_path_length(pki: Any):
    root0 = pki.root("pathlen 0 root", path_length=0)
    inter = pki.intermediate(root0)
    with pytest.raises(CertificateError, match="does not verify"):
        verify_chain(pki.leaf(inter), [inter.cert], [root0.cert])


@pytest.mark.parametrize(
    ("usages", "purpose", "ok"),
    [
        ([ExtendedKeyUsageOID.CLIENT_AUTH], Purpose.CLIENT, True),
        ([ExtendedKeyUsageOID.CLIENT_AUTH], Purpose.SERVER, False),
        ([ExtendedKeyUsageOID.SERVER_AUTH], Purpose.SERVER, True),
        ([ExtendedKeyUsageOID.SERVER_AUTH], Purpose.CLIENT, False),
        (
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            Purpose.SERVER,
            True,
        ),
        (None, Purpose.CLIENT, False),
    ],
)
def test_verify_chain_checks_extended_key_usage(
    pki: Any, root: Any, usages: Any, purpose: Purpose, ok: bool
):
    leaf = pki.leaf(root, usages=usages)
    if ok:
        assert verify_chain(leaf, [], [root.cert], purpose=purpose)[0] == leaf
    else:
        with pytest.raises(CertificateError, match=f"does not allow {purpose.value}"):
            verify_chain(leaf, [], [root.cert], purpose=purpose)


def test_verify_chain_accepts_an_rsa_plugin_root(pki: Any, rsa_key: Any):
    rsa_root = pki.root("rsa root", key=rsa_key)
    inter = pki.intermediate(rsa_root)
    leaf = pki.leaf(inter)
    assert verify_chain(leaf, [inter.cert], [rsa_root.cert])[-1] == rsa_root.cert


def test_verify_chain_needs_roots(pki: Any, root: Any):
    with pytest.raises(CertificateError, match="no trusted roots"):
        verify_chain(pki.leaf(root), [], [])


def test_certificate_error_names_its_source():
    err = CertificateError("bad", source="ca-cert.pem")
    assert str(err) == "ca-cert.pem: bad"
    assert err.reason == "bad"
    assert str(CertificateError("bad").located("x.pem")) == "x.pem: bad"


def test_key_to_pem_is_unencrypted_pkcs8():
    pem = key_to_pem(new_private_key())
    assert serialization.load_pem_private_key(pem, password=None)


def test_spiffe_id_round_trip_through_a_certificate(pki: Any, root: Any):
    sid = SpiffeId.parse("spiffe://cluster.local/weft/node/n1")
    assert spiffe_id_of(pki.leaf(root, str(sid))).node_name == "n1"
