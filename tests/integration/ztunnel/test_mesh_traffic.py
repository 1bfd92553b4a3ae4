"""The mesh carries enrolled pods' traffic over mutual TLS, with identities, policy and
telemetry, in a real two-node lab with real eBPF capture and real ztunnels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.state import LabPaths
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
SHOP_CLIENT = "spiffe://cluster.local/ns/shop/sa/client"
SHOP_WEB = "spiffe://cluster.local/ns/shop/sa/web"

GET = """
import json, socket, sys
host, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=5)
s.sendall(f"GET /{marker} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n".encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
head, _, body = data.partition(b"\\r\\n\\r\\n")
print(json.dumps({"status": head.split()[1].decode(), "body": json.loads(body)}))
"""


@pytest.fixture(scope="module")
def mesh() -> Iterator[Lab]:
    lab = Lab(f"weft-zt-{RUN_ID}")
    lab_id = ""
    try:
        lab.run("up", "--nodes", "2", "--manifests", str(HERE / "manifests.yaml"))
        lab_id = lab.status()["id"]
        yield lab
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []


def get(
    lab: Lab,
    pod: str,
    namespace: str,
    host: str,
    port: int = 8080,
    marker: str = "hello",
    check: bool = True,
) -> dict | None:
    proc = lab.exec(pod, namespace, sys.executable, "-c", GET, host, str(port), marker, check=False)
    if proc.returncode != 0:
        if check:
            raise AssertionError(f"request from {pod} to {host}:{port} failed: {proc.stderr}")
        return None
    return json.loads(proc.stdout)


def pod_ip(lab: Lab, name: str) -> str:
    return next(p["ip"] for p in lab.status()["pods"] if p["name"] == name)


def metrics(lab: Lab, node: str) -> str:
    sock = LabPaths.for_lab(lab.name).ztunnel_socket(node)
    return subprocess.run(
        ["curl", "-s", "--unix-socket", str(sock), "http://z/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def apply(lab: Lab, text: str, name: str) -> Path:
    path = HERE / f".{name}-{RUN_ID}.yaml"
    path.write_text(text)
    lab.run("apply", "-f", str(path))
    return path


def remove(lab: Lab, path: Path) -> None:
    lab.run("delete", "-f", str(path), check=False)
    path.unlink(missing_ok=True)


def eventually(fn, timeout: float = 15, what: str = ""):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            assert result, f"timed out: {what}"
            return result
        time.sleep(0.3)


def _sniffed(lab: Lab, marker: str, request) -> dict:  # type: ignore[no-untyped-def]
    """Run `request` while watching node-1's port on the underlay bridge."""
    underlay = f"weft-{lab.status()['id']}-underlay"
    sniffer = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            underlay,
            sys.executable,
            str(HERE / "sniff.py"),
            "weft-node-1",
            marker,
            "3",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sniffer.stdout is not None
        assert sniffer.stdout.readline().strip() == "ready"
        request()
        report: dict = json.loads(sniffer.stdout.readline())
    finally:
        sniffer.wait(10)
    return report


def test_cross_node_traffic_is_mutual_tls_on_the_wire(mesh: Lab) -> None:
    web = pod_ip(mesh, "web")
    marker = f"mesh-marker-{RUN_ID}"
    answers = []
    report = _sniffed(
        mesh, marker, lambda: answers.append(get(mesh, "client", "shop", web, marker=marker))
    )
    assert answers[0]["status"] == "200" and answers[0]["body"]["pod"] == "web"
    assert answers[0]["body"]["request"]["path"] == f"/{marker}"
    # The app sees its real peer, the client pod, not a node (as Istio ambient does).
    assert answers[0]["body"]["client"]["ip"] == pod_ip(mesh, "client")
    assert report["tcp_bytes"] > 0  # the request did cross the underlay ...
    assert not report["marker_seen"]  # ... but never in clear
    # The same capture does see plaintext: an unenrolled client's request crosses in clear.
    clear = f"clear-marker-{RUN_ID}"
    report = _sniffed(mesh, clear, lambda: get(mesh, "plain", "outside", web, marker=clear))
    assert report["marker_seen"]


def test_same_node_traffic_goes_through_the_mesh_too(mesh: Lab) -> None:
    answer = get(mesh, "client", "shop", pod_ip(mesh, "web-local"))
    assert answer is not None and answer["body"]["pod"] == "web-local"
    assert answer["body"]["client"]["ip"] == pod_ip(mesh, "client")
    text = metrics(mesh, "node-1")
    assert 'destination_workload="web-local"' in text
    assert 'connection_security_policy="mutual_tls"' in text


def test_a_service_vip_is_resolved_by_ztunnel(mesh: Lab) -> None:
    answer = get(mesh, "client", "shop", "web", port=80)
    assert answer is not None and answer["body"]["pod"] == "web"


def test_metrics_carry_istio_names_and_the_right_identities(mesh: Lab) -> None:
    get(mesh, "client", "shop", pod_ip(mesh, "web"))
    dest = metrics(mesh, "node-2")
    line = next(
        line
        for line in dest.splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
        and 'reporter="destination"' in line
        and 'destination_workload="web"' in line
    )
    assert f'source_principal="{SHOP_CLIENT}"' in line
    assert f'destination_principal="{SHOP_WEB}"' in line
    assert 'source_workload="client"' in line
    assert 'connection_security_policy="mutual_tls"' in line
    src = metrics(mesh, "node-1")
    assert "istio_tcp_sent_bytes_total{" in src and 'reporter="source"' in src


POLICY_ALLOW = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/shop/sa/client"]}
"""

POLICY_DENY = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-other, namespace: shop}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: ["other"]}
"""


def test_an_allow_policy_admits_only_the_named_principal(mesh: Lab) -> None:
    web = pod_ip(mesh, "web")
    assert get(mesh, "intruder", "other", web) is not None  # no policy yet: allowed
    path = apply(mesh, POLICY_ALLOW, "allow")
    try:
        eventually(
            lambda: get(mesh, "intruder", "other", web, check=False) is None,
            what="the ALLOW policy to apply",
        )
        assert get(mesh, "client", "shop", web) is not None
        assert 'response_flags="UAEX"' in metrics(mesh, "node-2")
    finally:
        remove(mesh, path)
    eventually(
        lambda: get(mesh, "intruder", "other", web, check=False) is not None,
        what="the policy to go away",
    )


def test_a_deny_policy_by_namespace_refuses_that_namespace(mesh: Lab) -> None:
    web = pod_ip(mesh, "web")
    path = apply(mesh, POLICY_DENY, "deny")
    try:
        eventually(
            lambda: get(mesh, "intruder", "other", web, check=False) is None,
            what="the DENY policy to apply",
        )
        assert get(mesh, "client", "shop", web) is not None
    finally:
        remove(mesh, path)


def test_strict_refuses_plaintext_from_an_unenrolled_pod_while_permissive_admits_it(
    mesh: Lab,
) -> None:
    web = pod_ip(mesh, "web")
    answer = get(mesh, "plain", "outside", web)  # PERMISSIVE by default: via 15006
    assert answer is not None and answer["body"]["pod"] == "web"
    assert answer["body"]["client"]["ip"] == pod_ip(mesh, "plain")
    path = apply(
        mesh,
        """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
""",
        "strict",
    )
    try:
        eventually(
            lambda: get(mesh, "plain", "outside", web, check=False) is None,
            what="STRICT to refuse plaintext",
        )
        assert get(mesh, "client", "shop", web) is not None  # mTLS still fine
    finally:
        remove(mesh, path)


def _node_netns(lab: Lab, node: str) -> str:
    return next(n["netns"] for n in lab.status()["nodes"] if n["name"] == node)


def _python_in_node(
    lab: Lab, node: str, code: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run Python `code` in a node's network namespace (on the underlay, like a peer)."""
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{_node_netns(lab, node)}", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_certificate_from_a_foreign_ca_is_refused(mesh: Lab, tmp_path: Path) -> None:
    from controller.ca import CertificateAuthority
    from meshcore.identity.certs import key_to_pem, make_csr, new_private_key
    from meshcore.identity.spiffe import SpiffeId

    foreign = CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local")
    key = new_private_key()
    issued = foreign.sign_workload(
        make_csr(key, SpiffeId.parse(SHOP_CLIENT)), {SpiffeId.parse(SHOP_CLIENT)}
    )
    (tmp_path / "key.pem").write_bytes(key_to_pem(key))
    (tmp_path / "chain.pem").write_bytes(issued.full_chain_pem)
    node2 = next(n["underlay_ip"] for n in mesh.status()["nodes"] if n["name"] == "node-2")
    code = f"""
import socket, ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
ctx.load_cert_chain("{tmp_path / "chain.pem"}", "{tmp_path / "key.pem"}")
s = socket.create_connection(("{node2}", 15008), timeout=5)
try:
    t = ctx.wrap_socket(s, server_hostname="web.shop.sa.weft")
    t.sendall(b"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n")
    print("accepted" if t.recv(100) else "closed")
except (ssl.SSLError, ConnectionError, OSError) as e:
    print("refused", type(e).__name__)
"""
    proc = _python_in_node(mesh, "node-1", code, timeout=30)
    assert proc.stdout.startswith(("refused", "closed")), proc.stdout + proc.stderr
    assert get(mesh, "client", "shop", pod_ip(mesh, "web")) is not None  # others unharmed


def test_garbage_and_oversized_frames_on_15008_close_only_that_connection(mesh: Lab) -> None:
    node2 = next(n["underlay_ip"] for n in mesh.status()["nodes"] if n["name"] == "node-2")
    code = f"""
import socket
for payload in (b"\\x16\\x03\\x01garbage" * 100, b"\\x00" * 70000, b"GET / HTTP/1.1\\r\\n\\r\\n"):
    s = socket.create_connection(("{node2}", 15008), timeout=5)
    s.sendall(payload)
    try:
        print("closed" if not s.recv(100) else "answered")
    except ConnectionError:
        print("closed")
"""
    proc = _python_in_node(mesh, "node-1", code, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert all(line in ("closed", "answered") for line in proc.stdout.split())
    assert get(mesh, "client", "shop", pod_ip(mesh, "web")) is not None


def test_after_a_ztunnel_restart_new_connections_work_again_and_nothing_leaks(
    mesh: Lab,
) -> None:
    web = pod_ip(mesh, "web")
    pid = mesh.status()["ztunnels"]["node-1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    # While it is away, the client's connections fail closed, never plaintext around it.
    failed = get(mesh, "client", "shop", web, check=False)
    assert failed is None
    answer = eventually(
        lambda: get(mesh, "client", "shop", web, check=False),
        timeout=30,
        what="ztunnel to come back",
    )
    assert answer["body"]["pod"] == "web"
    assert mesh.status()["ztunnels"]["node-1"]["restarts"] >= 1


def test_ztunnel_config_shows_workloads_and_certificates(mesh: Lab) -> None:
    from tests.integration.lab.labtools import weftctl

    workloads = json.loads(
        weftctl(
            "ztunnel-config", "workloads", "--lab", mesh.name, "--node", "node-2", "-o", "json"
        ).stdout
    )
    web = next(w for w in workloads if w["name"] == "web")
    assert web["identity"] == SHOP_WEB and web["local"] and web["enrolled"]
    certs = json.loads(
        weftctl(
            "ztunnel-config", "certificates", "--lab", mesh.name, "--node", "node-2", "-o", "json"
        ).stdout
    )
    assert SHOP_WEB in [c["identity"] for c in certs]
    assert all(c["expires_in_s"] > 20 * 3600 for c in certs)  # 24 h SVIDs, fresh


def test_finished_connections_leave_no_open_streams_behind(mesh: Lab) -> None:
    """Many short connections across nodes, then both ends' HBONE connections carry no
    stream: every relay released its stream (no leak per connection)."""
    from tests.integration.lab.labtools import weftctl

    web = pod_ip(mesh, "web")
    for _ in range(20):
        assert get(mesh, "client", "shop", web) is not None

    def dump(node: str) -> dict:  # type: ignore[type-arg]
        return json.loads(
            weftctl("ztunnel-config", "all", "--lab", mesh.name, "--node", node).stdout
        )

    def quiet() -> bool:
        source, destination = dump("node-1"), dump("node-2")
        return (
            bool(source["pool"])
            and all(p["streams"] == 0 for p in source["pool"])
            and bool(destination["inbound"])
            and all(c["streams"] == 0 for c in destination["inbound"])
        )

    eventually(quiet, timeout=10, what="HBONE streams to be released")
