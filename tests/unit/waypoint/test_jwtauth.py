"""JWT validation at the waypoint (RequestAuthentication): tokens signed with real keys by
PyJWT, checked by `waypoint.jwtauth` with no network (the JWKS fetch is replaced)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshcore.resources import ObjectMeta
from meshcore.resources.requestauthn import (
    ClaimToHeader,
    JwtHeader,
    JwtRule,
    RequestAuthentication,
)
from meshcore.resources.security import PolicyTargetRef, TargetKind
from waypoint import jwtauth
from waypoint.jwtauth import AuthnTables, JwtError, RemoteJwks, UnknownKeyError, parse_jwks

ISS = "https://issuer.example"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


RSA1, RSA2, EC1 = rsa_key(), rsa_key(), ec.generate_private_key(ec.SECP256R1())


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, object]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    data["kid"] = kid
    return data


def jwks(*keys: dict[str, object]) -> str:
    return json.dumps({"keys": list(keys)})


def token(key: object = RSA1, kid: str | None = "k1", alg: str = "RS256", **claims: object) -> str:
    now = int(time.time())
    body: dict[str, object] = {"iss": ISS, "sub": "alice", "aud": "shop", "exp": now + 600}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    headers = {"kid": kid} if kid else None
    return jwt.encode(body, key, algorithm=alg, headers=headers)  # type: ignore[arg-type]


RULE = JwtRule(issuer=ISS, audiences=("shop", "other"), jwks=jwks(jwk(RSA1, "k1")))
KEYS = parse_jwks(RULE.jwks)


def test_valid_token_names_issuer_subject_audiences_and_presenter() -> None:
    auth = jwtauth.validate(token(azp="web", groups=["a", "b"]), RULE, KEYS)
    assert auth.principal == f"{ISS}/alice"
    assert auth.audiences == ("shop",)
    assert auth.presenter == "web"
    assert auth.claims["groups"] == ["a", "b"]


def test_ec_key_signs_es256() -> None:
    keys = parse_jwks(jwks(jwk(EC1, "e1")))
    auth = jwtauth.validate(token(EC1, "e1", "ES256"), RULE, keys)
    assert auth.principal == f"{ISS}/alice"


# Tokens are made when the test runs, not when it is collected: a full suite runs some
# tests more than `exp` (10 min) after collection, and each must fail for its own reason.
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: token(exp=int(time.time()) - 3600), "Expired"),
        (lambda: token(nbf=int(time.time()) + 3600), "Immature"),
        (lambda: token(iss="https://evil.example"), "Issuer"),
        (lambda: token(aud="someone-else"), "Audience"),
        (lambda: token(RSA2, "k1"), "Signature"),  # signed by another key under our kid
        (lambda: "not.a.jwt", "not a JWT"),
    ],
    ids=["expired", "not-yet-valid", "wrong-issuer", "wrong-audience", "bad-signature", "garbage"],
)
def test_bad_tokens_are_refused(make: Callable[[], str], words: str) -> None:
    with pytest.raises(JwtError) as caught:
        jwtauth.validate(make(), RULE, KEYS)
    assert words in caught.value.reason


def test_small_clock_skew_is_tolerated() -> None:
    jwtauth.validate(token(exp=int(time.time()) - 30), RULE, KEYS)
    jwtauth.validate(token(nbf=int(time.time()) + 30), RULE, KEYS)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, object], secret: bytes | None) -> str:
    claims = {"iss": ISS, "sub": "mallory", "aud": "shop", "exp": int(time.time()) + 600}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing + "."
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(sig)}"


def test_none_algorithm_is_refused() -> None:
    with pytest.raises(JwtError, match="not allowed"):
        jwtauth.validate(_forge({"alg": "none", "kid": "k1"}, None), RULE, KEYS)


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    pem = RSA1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(jwk(RSA1, "k1")).encode()):
        with pytest.raises(JwtError, match="not allowed"):
            jwtauth.validate(_forge({"alg": "HS256", "kid": "k1"}, secret), RULE, KEYS)


def test_symmetric_keys_in_a_jwks_are_never_used() -> None:
    with pytest.raises(JwtError, match="no usable key"):
        parse_jwks(jwks({"kty": "oct", "kid": "s", "k": _b64(b"secret")}))


def test_key_of_another_type_than_the_algorithm_is_refused() -> None:
    keys = parse_jwks(jwks(jwk(EC1, "k1")))
    with pytest.raises(JwtError, match="EC"):
        jwtauth.validate(token(RSA1, "k1"), RULE, keys)


def test_unknown_kid_is_its_own_error() -> None:
    with pytest.raises(UnknownKeyError):
        jwtauth.validate(token(RSA2, "k2"), RULE, KEYS)


def test_no_audiences_configured_accepts_any() -> None:
    rule = JwtRule(issuer=ISS, jwks=RULE.jwks)
    assert jwtauth.validate(token(aud="anything"), rule, KEYS).audiences == ("anything",)


# --- finding the token -----------------------------------------------------------------


def test_token_places_default_custom_param_and_cookie() -> None:
    default = JwtRule(issuer=ISS, jwks=RULE.jwks).token_sources
    found = jwtauth.extract(default, (("authorization", "Bearer abc"),), "/")
    assert found == jwtauth.Found("abc", "authorization")
    assert jwtauth.extract(default, (), "/p?access_token=xyz") == jwtauth.Found("xyz")
    assert jwtauth.extract(default, (("authorization", "Basic abc"),), "/") is None
    custom = JwtRule(
        issuer=ISS,
        jwks=RULE.jwks,
        from_headers=(JwtHeader("x-token"),),
        from_cookies=("session",),
    ).token_sources
    assert jwtauth.extract(custom, (("x-token", "t1"),), "/") == jwtauth.Found("t1", "x-token")
    assert jwtauth.extract(custom, (("cookie", "a=1; session=t2"),), "/") == jwtauth.Found("t2")
    assert jwtauth.extract(custom, (("authorization", "Bearer abc"),), "/") is None


# --- per destination, with a JWKS fetched (and refreshed) --------------------------------


class FakeRemote(RemoteJwks):
    def __init__(self, docs: list[str | Exception], **kwargs: float) -> None:
        super().__init__("https://issuer.example/jwks", **kwargs)
        self.docs = docs
        self.fetches = 0

    async def _fetch(self) -> bytes:
        self.fetches += 1
        doc = self.docs[min(self.fetches, len(self.docs)) - 1]
        if isinstance(doc, Exception):
            raise doc
        return doc.encode()


def policy(rule: JwtRule) -> RequestAuthentication:
    return RequestAuthentication(
        ObjectMeta("jwt", "shop"),
        (rule,),
        target_refs=(PolicyTargetRef(TargetKind.SERVICE, "api"),),
    )


def tables(rule: JwtRule, remote: RemoteJwks | None = None) -> AuthnTables:
    t = AuthnTables("shop/waypoint", min_refresh=30.0)
    if remote is not None:
        t._remotes[(remote.uri, remote.timeout)] = remote
    t.update([policy(rule)])
    return t


REMOTE_RULE = JwtRule(
    issuer=ISS,
    jwks_uri="https://issuer.example/jwks",
    output_claim_to_headers=(ClaimToHeader("x-jwt-sub", "sub"), ClaimToHeader("x-org", "org.id")),
)


def run(coro: object) -> jwtauth.Outcome:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_no_policy_for_a_service_costs_one_lookup_and_gives_none() -> None:
    t = tables(REMOTE_RULE, FakeRemote([jwks(jwk(RSA1, "k1"))]))
    assert t.for_destination("shop", "other") is None
    assert t.for_destination(None, None) is None
    assert t.for_destination("shop", "api") is not None


def test_gateway_and_gateway_class_policies_apply_to_every_destination() -> None:
    t = AuthnTables("shop/waypoint")
    for namespace, ref in (
        ("shop", PolicyTargetRef(TargetKind.GATEWAY, "waypoint")),
        ("weft-system", PolicyTargetRef(TargetKind.GATEWAY_CLASS, "weft-waypoint")),
    ):
        t.update([RequestAuthentication(ObjectMeta("jwt", namespace), (RULE,), target_refs=(ref,))])
        assert t.for_destination("shop", "any") is not None
        assert t.for_destination(None, None) is not None
    other = PolicyTargetRef(TargetKind.GATEWAY, "another")
    t.update([RequestAuthentication(ObjectMeta("jwt", "shop"), (RULE,), target_refs=(other,))])
    assert t.for_destination("shop", "any") is None


def test_valid_token_strips_it_and_sets_claim_headers_over_spoofed_ones() -> None:
    remote = FakeRemote([jwks(jwk(RSA1, "k1"))])
    authn = tables(REMOTE_RULE, remote).for_destination("shop", "api")
    assert authn is not None
    headers = (
        ("authorization", f"Bearer {token(org={'id': 7})}"),
        ("x-jwt-sub", "root"),
        ("accept", "*/*"),
    )
    out = run(authn.authenticate(headers, "/"))
    assert not out.failure and out.auth is not None
    assert out.auth.principal == f"{ISS}/alice"
    assert out.headers == (("accept", "*/*"), ("x-jwt-sub", "alice"), ("x-org", "7"))


def test_forward_original_token_keeps_it() -> None:
    rule = JwtRule(issuer=ISS, jwks=RULE.jwks, forward_original_token=True)
    authn = tables(rule).for_destination("shop", "api")
    assert authn is not None
    headers = (("authorization", f"Bearer {token()}"),)
    assert run(authn.authenticate(headers, "/")).headers == headers


def test_missing_token_passes_through_without_spoofed_claim_headers() -> None:
    authn = tables(REMOTE_RULE, FakeRemote([])).for_destination("shop", "api")
    assert authn is not None
    out = run(authn.authenticate((("x-jwt-sub", "root"), ("a", "1")), "/"))
    assert out.auth is None and not out.failure
    assert out.headers == (("a", "1"),)


def test_token_of_an_unconfigured_issuer_fails() -> None:
    authn = tables(REMOTE_RULE, FakeRemote([])).for_destination("shop", "api")
    assert authn is not None
    out = run(authn.authenticate((("authorization", f"Bearer {token(iss='x')}"),), "/"))
    assert "issuer is not configured" in out.failure


def test_unknown_kid_refreshes_the_jwks_once_and_picks_up_the_rotated_key() -> None:
    remote = FakeRemote([jwks(jwk(RSA1, "k1")), jwks(jwk(RSA1, "k1"), jwk(RSA2, "k2"))])
    authn = tables(REMOTE_RULE, remote).for_destination("shop", "api")
    assert authn is not None
    first = run(authn.authenticate((("authorization", f"Bearer {token()}"),), "/"))
    assert first.auth is not None and remote.fetches == 1
    rotated = (("authorization", f"Bearer {token(RSA2, 'k2')}"),)
    # within min_refresh of the last fetch: the unknown kid is refused, nothing fetched
    assert "k2" in run(authn.authenticate(rotated, "/")).failure and remote.fetches == 1
    remote.tried_at -= remote.min_refresh  # time passes
    second = run(authn.authenticate(rotated, "/"))
    assert second.auth is not None and remote.fetches == 2
    # an unknown kid again, within min_refresh: no new fetch, 401
    bogus = run(authn.authenticate((("authorization", f"Bearer {token(RSA2, 'k3')}"),), "/"))
    assert "k3" in bogus.failure and remote.fetches == 2


def test_unreachable_jwks_fails_tokens_and_is_retried_only_after_min_refresh() -> None:
    remote = FakeRemote([OSError("connection refused")])
    authn = tables(REMOTE_RULE, remote).for_destination("shop", "api")
    assert authn is not None
    headers = (("authorization", f"Bearer {token()}"),)
    out = run(authn.authenticate(headers, "/"))
    assert "JWKS is unavailable" in out.failure and "connection refused" in out.failure
    run(authn.authenticate(headers, "/"))
    assert remote.fetches == 1
    remote.tried_at -= remote.min_refresh
    run(authn.authenticate(headers, "/"))
    assert remote.fetches == 2
    # a missing token is not affected
    assert run(authn.authenticate((), "/")).failure == ""


def test_stale_keys_are_used_while_a_background_refresh_fetches_new_ones() -> None:
    remote = FakeRemote(
        [jwks(jwk(RSA1, "k1")), jwks(jwk(RSA2, "k2"))], refresh_interval=60.0, min_refresh=0.0
    )

    async def scenario() -> None:
        assert await remote.get() is not None and remote.fetches == 1
        remote.fetched_at -= 61  # the keys are now stale
        stale = await remote.get()  # returned at once, the refresh runs behind
        assert stale is not None and stale.keys[0].key_id == "k1"
        await asyncio.sleep(0.01)
        fresh = await remote.get()
        assert remote.fetches == 2 and fresh is not None and fresh.keys[0].key_id == "k2"

    asyncio.run(scenario())


def test_remote_key_sets_survive_table_rebuilds() -> None:
    remote = FakeRemote([jwks(jwk(RSA1, "k1"))])
    t = tables(REMOTE_RULE, remote)
    authn = t.for_destination("shop", "api")
    assert authn is not None
    run(authn.authenticate((("authorization", f"Bearer {token()}"),), "/"))
    t.update([policy(REMOTE_RULE)])
    again = t.for_destination("shop", "api")
    assert again is not None
    assert run(again.authenticate((("authorization", f"Bearer {token()}"),), "/")).auth
    assert remote.fetches == 1
