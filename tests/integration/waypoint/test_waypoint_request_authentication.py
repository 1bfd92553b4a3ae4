"""RequestAuthentication enforced by the waypoint on real traffic over mTLS, with the issuer's
JWKS served by a real aiohttp server on loopback: a valid token reaches the echo without the
token and with claim headers, a bad one gets Envoy's 401 (gRPC: UNAUTHENTICATED), a missing
one is left to an ALLOW policy that asks for `requestPrincipals`, and a rotated key is picked
up from the JWKS."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from tests.integration.waypoint.h2_mesh import GRPC_PORT, GRPC_VIP, add_h2_services, h2_client
from tests.integration.waypoint.waypoint_mesh import ROUTED_VIP, Mesh, run

pytestmark = pytest.mark.integration

ISS = "https://issuer.example"
KEY1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    data.update(kid=kid, alg="RS256", use="sig")
    return data


def token(key: rsa.RSAPrivateKey = KEY1, kid: str = "k1", **claims: object) -> str:
    body: dict[str, object] = {
        "iss": ISS,
        "sub": "alice",
        "aud": "shop",
        "exp": int(time.time()) + 600,
        "groups": ["admin", "dev"],
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


class JwksServer:
    """The issuer's JWKS endpoint; `keys` may be changed (a rotation) while it runs."""

    def __init__(self) -> None:
        self.keys = [jwk(KEY1, "k1")]
        self.fetches = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def handle(_request: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response({"keys": self.keys})

        app = web.Application()
        app.router.add_get("/jwks", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/jwks"

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def policies(jwks_url: str) -> str:
    return f"""
apiVersion: security.weft.dev/v1
kind: RequestAuthentication
metadata: {{name: web-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  jwtRules:
  - issuer: {ISS}
    audiences: [shop]
    jwksUri: {jwks_url}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
    - {{header: x-jwt-groups, claim: groups}}
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: web-require-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISS}/*"]}}}}]
    when: [{{key: "request.auth.claims[groups]", values: [admin]}}]
---
apiVersion: security.weft.dev/v1
kind: RequestAuthentication
metadata: {{name: routed-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: routed}}]
  jwtRules:
  - issuer: {ISS}
    jwksUri: http://127.0.0.1:1/jwks
---
apiVersion: security.weft.dev/v1
kind: RequestAuthentication
metadata: {{name: grpc-jwt, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: grpc}}]
  jwtRules:
  - issuer: {ISS}
    jwksUri: {jwks_url}
"""


def get(target: str, *headers: tuple[str, str], host: str = "web") -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def run_with_jwks(tmp_path: Path, body):  # type: ignore[no-untyped-def]
    async def with_server(mesh: Mesh) -> None:
        server = JwksServer()
        await server.start()
        try:
            await body(mesh, server)
        finally:
            await server.close()

    run(tmp_path, with_server)


def test_valid_invalid_and_missing_tokens_and_a_key_rotation(tmp_path: Path) -> None:
    async def body(mesh: Mesh, server: JwksServer) -> None:
        mesh.waypoint.authn.min_refresh = 0.0  # (an unknown kid refetches at once)
        mesh.set_routes(policies(server.url))
        client = await mesh.http()
        with capture_logs() as logs:
            # valid: reaches the echo, without the token, with the claims as headers
            client.send_raw(
                get("/ip", ("Authorization", f"Bearer {token()}"), ("X-Jwt-Sub", "root"))
            )
            ok, raw = await client.response()
            assert ok.status_code == 200, raw
            seen = json.loads(raw)["request"]["headers"]
            assert "authorization" not in seen
            assert seen["x-jwt-sub"] == "alice" and seen["x-jwt-groups"] == "admin,dev"
            assert server.fetches == 1
            # invalid: Envoy's 401, whatever the authorization policy says
            for bad in (
                token(exp=int(time.time()) - 3600),
                token(aud="elsewhere"),
                token(iss="https://evil.example"),
                token(KEY2, "k1"),  # signed by another key under a known kid
                "not-a-jwt",
            ):
                client.send_raw(get("/ip", ("Authorization", f"Bearer {bad}")))
                refused, raw = await client.response()
                assert (refused.status_code, raw) == (401, b"Jwt verification fails"), bad
            # missing: passes authentication, and the ALLOW policy wants a request principal
            client.send_raw(get("/ip"))
            denied, raw = await client.response()
            assert (denied.status_code, raw) == (403, b"RBAC: access denied")
            # a valid token whose claims the ALLOW rule does not take: 403, not 401
            client.send_raw(get("/ip", ("Authorization", f"Bearer {token(groups=['dev'])}")))
            assert (await client.response())[0].status_code == 403
            # rotation: the issuer publishes k2 and signs with it; the unknown kid refetches
            server.keys = [jwk(KEY1, "k1"), jwk(KEY2, "k2")]
            client.send_raw(get("/ip", ("Authorization", f"Bearer {token(KEY2, 'k2')}")))
            rotated, raw = await client.response()
            assert rotated.status_code == 200, raw
            assert server.fetches == 2
        invalid = [e for e in logs if e.get("event") == "jwt.invalid"]
        assert len(invalid) == 5 and "Expired" in str(invalid[0]["reason"])
        completed = [e for e in logs if e.get("event") == "request.completed"]
        assert completed[1]["response_code"] == 401
        assert "Jwt verification fails" in str(completed[1]["reason"])

    run_with_jwks(tmp_path, body)


def test_an_unreachable_jwks_is_logged_and_its_tokens_get_401(tmp_path: Path) -> None:
    async def body(mesh: Mesh, server: JwksServer) -> None:
        mesh.set_routes(policies(server.url))
        client = await mesh.http(vip=ROUTED_VIP)
        with capture_logs() as logs:
            client.send_raw(get("/ip", ("Authorization", f"Bearer {token()}"), host="routed"))
            refused, _ = await client.response()
            assert refused.status_code == 401
            client.send_raw(get("/ip", host="routed"))  # no token: no keys needed
            assert (await client.response())[0].status_code == 200
        errors = [e for e in logs if e.get("event") == "jwt.jwks_unreachable"]
        assert errors and errors[0]["uri"] == "http://127.0.0.1:1/jwks"
        assert errors[0]["log_level"] == "error"

    run_with_jwks(tmp_path, body)


def test_a_bad_token_on_a_grpc_call_is_unauthenticated_trailers_only(tmp_path: Path) -> None:
    async def body(mesh: Mesh, server: JwksServer) -> None:
        echoes = await add_h2_services(mesh)
        mesh.set_routes(policies(server.url))
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        calls = sum(e.calls for e in echoes.values())
        bad = (("authorization", f"Bearer {token(KEY2, 'k1')}"),)
        reply = await client.grpc("/echo.Echo/A", headers=bad)
        assert reply.status == 200 and reply.headers["grpc-status"] == "16"
        assert reply.headers["grpc-message"] == "Jwt verification fails"
        assert reply.body == b"" and reply.trailers == {}
        good = (("authorization", f"Bearer {token()}"),)
        ok = await client.grpc("/echo.Echo/A", headers=good)
        assert ok.trailers["grpc-status"] == "0"
        assert sum(e.calls for e in echoes.values()) == calls + 1

    run_with_jwks(tmp_path, body)
