"""RequestAuthentication keys through the issuer's OpenID Connect discovery, and the
jwtRules[].timeout, against a real aiohttp server on loopback: the discovery document and the
JWKS it names are fetched, a document without jwks_uri, an unreachable issuer, an oversized
document and a server slower than the timeout each give 401s and a log line naming the issuer
and the URL."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from meshcore.resources import ObjectMeta
from meshcore.resources.requestauthn import JwtRule, RequestAuthentication, discovery_url
from meshcore.resources.security import PolicyTargetRef, TargetKind
from waypoint import jwtauth
from waypoint.jwtauth import AuthnTables, jwks_uri_of

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "k1"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def issuer_server(routes: Mapping[str, Handler]) -> AsyncIterator[str]:
    """An issuer on 127.0.0.1 with the given routes; yields its base URL (the issuer)."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def token(issuer: str) -> str:
    body = {"iss": issuer, "sub": "alice", "exp": int(time.time()) + 600}
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1"})  # type: ignore[arg-type]


def tables(rule: JwtRule) -> AuthnTables:
    t = AuthnTables("shop/waypoint", min_refresh=30.0)
    policy = RequestAuthentication(
        ObjectMeta("jwt", "shop"),
        (rule,),
        target_refs=(PolicyTargetRef(TargetKind.SERVICE, "api"),),
    )
    t.update([policy])
    return t


async def authenticate(rule: JwtRule) -> jwtauth.Outcome:
    authn = tables(rule).for_destination("shop", "api")
    assert authn is not None
    return await authn.authenticate((("authorization", f"Bearer {token(rule.issuer)}"),), "/")


def test_discovery_url_keeps_the_issuer_path_and_drops_a_trailing_slash() -> None:
    assert (
        discovery_url("https://a.example") == "https://a.example/.well-known/openid-configuration"
    )
    assert (
        discovery_url("https://a.example/realms/x/")
        == "https://a.example/realms/x/.well-known/openid-configuration"
    )


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "no jwks_uri"),
        (b'{"issuer": "x"}', "no jwks_uri"),
        (b'{"jwks_uri": 7}', "no jwks_uri"),
        (b'{"jwks_uri": "file:///etc/passwd"}', "not http\\(s\\)"),
    ],
)
def test_bad_discovery_documents_are_refused_naming_the_url(doc: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words) as err:
        jwks_uri_of(doc, "https://i/.well-known/openid-configuration")
    assert "https://i/.well-known/openid-configuration" in str(err.value)


def test_keys_are_discovered_through_the_openid_configuration() -> None:
    hits: list[str] = []

    async def scenario() -> None:
        async def config(request: web.Request) -> web.Response:
            hits.append(request.path)
            base = f"http://{request.host}"
            return web.json_response({"issuer": f"{base}/tenant", "jwks_uri": f"{base}/keys"})

        async def keys(request: web.Request) -> web.Response:
            hits.append(request.path)
            return web.json_response({"keys": [JWK]})

        routes = {"/tenant/.well-known/openid-configuration": config, "/keys": keys}
        async with issuer_server(routes) as base:
            rule = JwtRule(issuer=f"{base}/tenant")
            t = tables(rule)
            authn = t.for_destination("shop", "api")
            assert authn is not None
            headers = (("authorization", f"Bearer {token(rule.issuer)}"),)
            with capture_logs() as logs:
                first = await authn.authenticate(headers, "/")
                second = await authn.authenticate(headers, "/")
            assert first.auth is not None and first.auth.principal == f"{base}/tenant/alice"
            assert second.auth is not None
            fetched = [e for e in logs if e["event"] == "jwt.jwks_fetched"]
            assert len(fetched) == 1 and fetched[0]["uri"] == f"{base}/keys"
            assert fetched[0]["issuer"] == rule.issuer

    asyncio.run(scenario())
    assert hits == ["/tenant/.well-known/openid-configuration", "/keys"]  # cached after once


async def _failure(rule: JwtRule) -> tuple[jwtauth.Outcome, MutableMapping[str, Any]]:
    with capture_logs() as logs:
        outcome = await authenticate(rule)
    errors = [e for e in logs if e["event"] == "jwt.jwks_unreachable"]
    assert len(errors) == 1
    assert outcome.auth is None and outcome.failure  # a 401
    return outcome, errors[0]


def test_discovery_document_without_jwks_uri_fails_tokens_and_says_why() -> None:
    async def scenario() -> None:
        async def config(_r: web.Request) -> web.Response:
            return web.json_response({"issuer": "x"})

        async with issuer_server({"/.well-known/openid-configuration": config}) as base:
            outcome, event = await _failure(JwtRule(issuer=base))
            assert event["issuer"] == base
            assert event["uri"] == f"{base}/.well-known/openid-configuration"
            assert "no jwks_uri" in str(event["error"])
            assert "no jwks_uri" in outcome.failure

    asyncio.run(scenario())


def test_unreachable_issuer_fails_tokens_and_names_the_issuer() -> None:
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        issuer = f"http://127.0.0.1:{s.getsockname()[1]}"
        _, event = asyncio.run(_failure(JwtRule(issuer=issuer, timeout=1.0)))
    assert event["issuer"] == issuer
    assert event["uri"] == f"{issuer}/.well-known/openid-configuration"
    assert event["jwks_uri"] is None


def test_oversized_discovery_document_is_refused() -> None:
    async def scenario() -> None:
        async def config(request: web.Request) -> web.StreamResponse:
            # chunked, so no Content-Length gives the size away: the reader must count
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            pad = b" " * 8192
            await resp.write(b'{"jwks_uri": "http://x/keys", "pad": "')
            for _ in range(jwtauth.MAX_DISCOVERY_BYTES // len(pad) + 2):
                await resp.write(pad)
            await resp.write(b'"}')
            return resp

        async with issuer_server({"/.well-known/openid-configuration": config}) as base:
            _, event = await _failure(JwtRule(issuer=base))
            assert f"over {jwtauth.MAX_DISCOVERY_BYTES} bytes" in str(event["error"])

    asyncio.run(scenario())


def test_timeout_of_the_rule_bounds_a_slow_issuer() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def config(_r: web.Request) -> web.Response:
            await asyncio.wait_for(release.wait(), 3)  # (released below, so cleanup is quick)
            return web.json_response({"jwks_uri": "http://127.0.0.1:1/keys"})

        async with issuer_server({"/.well-known/openid-configuration": config}) as base:
            started = time.monotonic()
            _, event = await _failure(JwtRule(issuer=base, timeout=0.3))
            took = time.monotonic() - started
            assert 0.25 <= took < 2.0  # the rule's 0.3 s, not the 5 s default
            assert "0.3s" in str(event["error"])
            release.set()

    asyncio.run(scenario())


def test_rules_with_another_timeout_get_their_own_fetcher() -> None:
    a = JwtRule(issuer="https://i.example")
    b = JwtRule(issuer="https://i.example", timeout=1.0)
    t = AuthnTables("shop/waypoint")
    t.update(
        [
            RequestAuthentication(
                ObjectMeta(name, "shop"),
                (rule,),
                target_refs=(PolicyTargetRef(TargetKind.SERVICE, "api"),),
            )
            for name, rule in (("a", a), ("b", b))
        ]
    )
    timeouts = sorted(r.timeout for r in t._remotes.values())
    assert timeouts == [1.0, 5.0]
    assert {r.uri for r in t._remotes.values()} == {discovery_url("https://i.example")}
