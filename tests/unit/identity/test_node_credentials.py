"""Node credentials: short-lived, renewed by the node from a CSR for its own identity (signed
with the current credential's authority), kept in a folder two processes may write at once."""

from __future__ import annotations

import datetime as dt
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.ca import NODE_CREDENTIAL_TTL, CertificateAuthority
from controller.main import write_node_credential
from meshcore.configclient import NodeCredential
from meshcore.identity.certs import (
    CertificateError,
    key_to_pem,
    load_certificate,
    make_csr,
    new_private_key,
)
from meshcore.identity.spiffe import SpiffeId, node_id, workload_id

TD = "cluster.local"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("state") / "ca", TD)


def test_node_credentials_live_a_day() -> None:
    assert dt.timedelta(hours=1) <= NODE_CREDENTIAL_TTL <= dt.timedelta(hours=24)


def test_a_node_renews_its_own_credential_with_a_key_of_its_own(ca: CertificateAuthority) -> None:
    key = new_private_key()
    issued = ca.renew_node_credential(make_csr(key, node_id(TD, "node-1")), "node-1")
    cert = load_certificate(issued.cert_pem)
    assert cert.public_key() == key.public_key()
    assert issued.spiffe_id == node_id(TD, "node-1")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert abs(lifetime - NODE_CREDENTIAL_TTL) < dt.timedelta(seconds=5)
    assert ca.verify_node_credential(issued.cert_pem + issued.chain_pem) == "node-1"


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        (node_id(TD, "node-2"), "node 'node-1' may renew only its own credential"),
        (workload_id(TD, "shop", "web"), "may renew only its own credential"),
        (SpiffeId("other.domain", "/weft/node/node-1"), "not 'cluster.local'"),
    ],
)
def test_a_node_may_not_renew_into_another_identity(
    ca: CertificateAuthority, identity: SpiffeId, reason: str
) -> None:
    with pytest.raises(CertificateError, match=reason):
        ca.renew_node_credential(make_csr(new_private_key(), identity), "node-1")


def test_a_renewal_asking_for_a_ca_is_refused(ca: CertificateAuthority) -> None:
    key = new_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(node_id(TD, "node-1")))]
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="CA certificate"):
        ca.renew_node_credential(csr.public_bytes(serialization.Encoding.PEM), "node-1")


def test_a_nodes_request_is_a_workload_svid_or_its_own_renewed_credential(
    ca: CertificateAuthority,
) -> None:
    web = workload_id(TD, "shop", "web")
    svid = ca.sign_for_node(make_csr(new_private_key(), web), "node-1", {web})
    usages = load_certificate(svid.cert_pem).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert svid.spiffe_id == web and len(list(usages.value)) == 2
    renewed = ca.sign_for_node(make_csr(new_private_key(), node_id(TD, "node-1")), "node-1", {web})
    assert ca.verify_node_credential(renewed.cert_pem) == "node-1"
    with pytest.raises(CertificateError, match="may renew only its own credential"):
        ca.sign_for_node(make_csr(new_private_key(), node_id(TD, "node-2")), "node-1", {web})
    with pytest.raises(CertificateError, match="is not permitted"):
        ca.sign_for_node(make_csr(new_private_key(), workload_id(TD, "a", "b")), "node-1", {web})


# --- the node's side: NodeCredential ----------------------------------------------------------


def test_a_written_credential_loads_back_private_and_renews_at_half_life(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    folder = tmp_path / "credential"
    write_node_credential(ca, "node-1", folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("key.pem", "cert.pem", "roots.pem"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    credential = NodeCredential.load(folder)
    assert credential.folder == folder
    assert credential.identity == node_id(TD, "node-1")
    leaf = credential.leaf
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert credential.refresh_at() == leaf.not_valid_before_utc + lifetime / 2
    assert credential.not_after == leaf.not_valid_after_utc


def test_a_folder_whose_key_is_not_the_certificates_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    folder = tmp_path / "credential"
    write_node_credential(ca, "node-1", folder)
    (folder / "key.pem").write_bytes(key_to_pem(new_private_key()))
    with pytest.raises(CertificateError, match=r"key\.pem is not the key of cert\.pem"):
        NodeCredential.load(folder)


def test_two_writers_never_leave_a_key_of_one_with_the_certificate_of_the_other(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    folder = tmp_path / "credential"
    credentials = []
    for _ in range(2):
        key = new_private_key()
        issued = ca.renew_node_credential(make_csr(key, node_id(TD, "node-1")), "node-1")
        credentials.append(
            NodeCredential(key_to_pem(key), issued.cert_pem, "".join(ca.trust_bundle).encode())
        )
    credentials[0].save(folder)
    failures: list[Exception] = []

    def write(credential: NodeCredential) -> None:
        for _ in range(50):
            credential.save(folder)

    def read() -> None:
        for _ in range(100):
            try:
                NodeCredential.load(folder)
            except CertificateError as err:
                failures.append(err)

    threads = [threading.Thread(target=write, args=(c,)) for c in credentials]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert NodeCredential.load(folder) in credentials
