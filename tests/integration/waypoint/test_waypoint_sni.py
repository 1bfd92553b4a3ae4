"""`connection.sni` enforced by the waypoint on a TCP stream passed through it, over real
mTLS: the client's own TLS ClientHello (made by Python's ssl module) is read for the L4
verdict, on a declared TCP port (no sniffing: the bounded wait) and on a sniffed one, and the
bytes reach the echo unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.integration.waypoint.waypoint_mesh import SNIFFED_TCP_PORT, TCP_PORT, Mesh, run
from waypoint.streamio import BufferedEnd, EndClosed
from ztunnel.relay import Relay

pytestmark = pytest.mark.integration

POLICIES = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-allow-sni, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - when: [{key: connection.sni, values: [db.shop.example, "*.internal"]}]
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-deny-sni, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - when: [{key: connection.sni, values: [bad.internal]}]
"""


def client_hello(server_name: str | None) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


async def echo(mesh: Mesh, port: int, payload: bytes) -> bytes:
    """What comes back from web's TCP echo ("" when the waypoint refused the stream)."""
    stream, status = await mesh.stream(port=port)
    assert status == 200
    end = BufferedEnd("test-client")
    Relay(stream, end).start()
    got = b""
    with contextlib.suppress(EndClosed):
        end.write(payload)
        while len(got) < len(payload):
            piece = await asyncio.wait_for(end.read(), 5)
            if not piece:
                break
            got += piece
        end.write_eof()
        assert await asyncio.wait_for(end.read(), 5) == b""
    return got


@pytest.mark.parametrize("port", [TCP_PORT, SNIFFED_TCP_PORT], ids=["declared", "sniffed"])
def test_tls_stream_is_allowed_or_denied_by_its_sni(tmp_path: Path, port: int) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(POLICIES)
        for name in ("db.shop.example", "cache.internal"):
            hello = client_hello(name)
            assert await echo(mesh, port, hello) == hello, name
        refused: tuple[tuple[str | None, str | None], ...] = (
            ("other.example", None),  # no ALLOW matched
            (None, None),  # a hello without SNI
            ("bad.internal", "ns[shop]-policy[web-deny-sni]-rule[0]"),
        )
        for sni, policy in refused:
            with capture_logs() as logs:
                assert await echo(mesh, port, client_hello(sni)) == b"", sni
            denied = [e for e in logs if e.get("event") == "connection.denied"]
            assert denied and denied[0]["sni"] == (sni or ""), logs
            assert denied[0]["rbac_policy"] == policy
        with capture_logs() as logs:
            assert await echo(mesh, port, b"\x00\x01 not TLS at all") == b""
        assert [e["sni"] for e in logs if e.get("event") == "connection.denied"] == [""]

    run(tmp_path, body)
