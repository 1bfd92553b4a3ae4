"""RequestAuthentication at the waypoint: find a request's JWT, validate it, and say who it
names (`authz.RequestAuth`), with Istio's (Envoy's jwt_authn) semantics:

- no token in any configured place: the request passes unauthenticated (authorization then
  decides: `requestPrincipals: ["*"]` requires a token);
- a token that fails (bad signature, expired, not yet valid, wrong issuer or audience, an
  algorithm that is not a public-key one, keys unavailable): 401 `Jwt verification fails`;
- a valid one: `RequestAuth(principal="<iss>/<sub>", audiences, presenter=azp, claims)`; the
  token header is removed unless `forwardOriginalToken`, and `outputClaimToHeaders` /
  `outputPayloadToHeader` headers are set (copies the client sent are always removed).

Validation is PyJWT's (with `cryptography`), never hand-written JOSE. The pure part
(`extract`, `validate`, `Authenticator.headers_for`) is apart from the I/O part (`RemoteJwks`,
fetching a `jwksUri` with aiohttp, cached, refreshed periodically and on an unknown `kid` at
most once per `min_refresh` seconds).

A rule with neither `jwksUri` nor `jwks` has its keys discovered, as istiod does: each fetch
first reads the issuer's OpenID Connect discovery document
(`<issuer>/.well-known/openid-configuration`, at most MAX_DISCOVERY_BYTES) and then the
`jwks_uri` it names, with the same cache, refresh and backoff. Every fetch is bounded by the
rule's `timeout` (Istio's default 5 s), the two of a discovery by it each.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import jwt
import structlog
from jwt import PyJWK, PyJWKSet

from meshcore.resources.requestauthn import (
    JwtHeader,
    JwtRule,
    RequestAuthentication,
    discovery_url,
)
from waypoint.authz import DEFAULT_ROOT_NAMESPACE, RequestAuth, Scope, scopes

log = structlog.get_logger("waypoint.jwtauth")

UNAUTHORIZED_BODY = b"Jwt verification fails"  # Envoy's jwt_authn body for a bad token
UNAUTHORIZED_HEADERS = (
    ("content-type", "text/plain"),
    ("www-authenticate", 'Bearer realm="weft", error="invalid_token"'),
)
GRPC_UNAUTHENTICATED = 16
LEEWAY = 60.0  # seconds of clock skew allowed on exp / nbf (Envoy's default)
# Public-key algorithms only: `none` and HMAC (whose "key" would be the public JWKS) never.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
REFRESH_INTERVAL = 20 * 60.0  # Istio's JWKS refresh period
MIN_REFRESH = 30.0  # at most one fetch per this long for an unknown kid or after a failure
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20
MAX_DISCOVERY_BYTES = 64 * 1024  # an OIDC discovery document (real ones are a few KiB)

Headers = tuple[tuple[str, str], ...]


class JwtError(Exception):
    """A token that does not verify; `reason` is for the log, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKeyError(JwtError):
    """The token's `kid` is not in the key set (a refresh may bring it)."""


# --- finding the token (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class Found:
    token: str
    header: str = ""  # the header it came from ("" for a query parameter or cookie)


def _header_values(headers: Headers, name: str) -> list[str]:
    return [v for n, v in headers if n == name]


def _query_values(target: str, name: str) -> list[str]:
    _, _, query = target.partition("?")
    query = query.partition("#")[0]
    if not query:
        return []
    return [v for k, v in urllib.parse.parse_qsl(query, keep_blank_values=False) if k == name]


def _cookie_values(headers: Headers, name: str) -> list[str]:
    out = []
    for value in _header_values(headers, "cookie"):
        for part in value.split(";"):
            key, eq, val = part.strip().partition("=")
            if eq and key == name and val:
                out.append(val)
    return out


def extract(
    sources: tuple[tuple[JwtHeader, ...], tuple[str, ...], tuple[str, ...]],
    headers: Headers,
    target: str,
) -> Found | None:
    """The first token in the configured places (headers, then params, then cookies)."""
    from_headers, params, cookies = sources
    for h in from_headers:
        for value in _header_values(headers, h.name):
            if h.prefix:
                if value[: len(h.prefix)].lower() != h.prefix.lower():
                    continue
                value = value[len(h.prefix) :]
            value = value.strip()
            if value:
                return Found(value, h.name)
    for name in params:
        for value in _query_values(target, name):
            return Found(value)
    for name in cookies:
        for value in _cookie_values(headers, name):
            return Found(value)
    return None


# --- validating it (pure) --------------------------------------------------------------


def unverified_issuer(token: str) -> str:
    """The `iss` a token claims, before any check (to pick the rule that checks it)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as err:
        raise JwtError(f"not a JWT: {err}") from None
    iss = claims.get("iss")
    return iss if isinstance(iss, str) else ""


def parse_jwks(text: str | bytes) -> PyJWKSet:
    """A JWKS document as PyJWT's key set; keys PyJWT cannot use are left out (raises
    JwtError when none is left)."""
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError('not a JWKS ({"keys": [...]})')
        usable = []
        for key in doc["keys"]:
            if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC", "OKP"):
                continue  # symmetric ("oct") keys never: a JWKS is public
            try:
                PyJWK(key)
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue
            usable.append(key)
        if not usable:
            raise ValueError("no usable key")
        return PyJWKSet(usable)
    except (ValueError, jwt.PyJWTError) as err:
        raise JwtError(f"bad JWKS: {err}") from None


_KTY = {"R": "RSA", "P": "RSA", "E": "EC"}  # by the algorithm's first letter; EdDSA: OKP


def _kty_for(alg: str) -> str:
    return "OKP" if alg == "EdDSA" else _KTY[alg[0]]


def _key_for(keys: PyJWKSet, kid: str | None, alg: str) -> PyJWK:
    """The key a token names (`kid`), or without one the first key of the algorithm's type;
    a key of another type, or one whose JWK names another `alg`, is refused."""
    if kid:
        key = next((k for k in keys.keys if k.key_id == kid), None)
        if key is None:
            raise UnknownKeyError(f"no key with kid {kid!r} in the JWKS")
    else:
        key = next((k for k in keys.keys if k.key_type == _kty_for(alg)), None)
        if key is None:
            raise UnknownKeyError(f"no {_kty_for(alg)} key for algorithm {alg} in the JWKS")
    if key.key_type != _kty_for(alg):
        raise JwtError(f"the key {kid!r} is {key.key_type}, the token's algorithm is {alg}")
    jwk_alg = key._jwk_data.get("alg")  # (the JWK as given; PyJWT infers one)
    if jwk_alg and jwk_alg != alg:
        raise JwtError(f"the key {kid!r} is for {jwk_alg}, the token says {alg}")
    return key


def validate(token: str, rule: JwtRule, keys: PyJWKSet, *, now: float | None = None) -> RequestAuth:
    """Verify a token against one rule and its keys; raise JwtError (UnknownKeyError when
    its kid is not among the keys)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as err:
        raise JwtError(f"not a JWT: {err}") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise JwtError(f"algorithm {alg!r} is not allowed")
    kid = header.get("kid")
    key = _key_for(keys, kid if isinstance(kid, str) else None, alg)
    options = {"verify_aud": bool(rule.audiences)}
    try:
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[alg],
            audience=list(rule.audiences) or None,
            issuer=rule.issuer,
            leeway=LEEWAY,
            options=options,
        )
    except jwt.PyJWTError as err:
        raise JwtError(f"{type(err).__name__}: {err}") from None
    if now is not None:  # (tests pin the clock; PyJWT reads time.time() itself)
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if isinstance(exp, int | float) and now > exp + LEEWAY:
            raise JwtError("ExpiredSignatureError: Signature has expired")
        if isinstance(nbf, int | float) and now < nbf - LEEWAY:
            raise JwtError("ImmatureSignatureError: The token is not yet valid (nbf)")
    return request_auth(claims)


def request_auth(claims: Mapping[str, object]) -> RequestAuth:
    aud = claims.get("aud")
    audiences = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud or ())  # type: ignore[attr-defined]
    azp = claims.get("azp")
    return RequestAuth(
        principal=f"{claims.get('iss', '')}/{claims.get('sub', '')}",
        audiences=audiences,
        presenter=azp if isinstance(azp, str) else "",
        claims=dict(claims),
    )


def claim_text(claims: Mapping[str, object], path: str) -> str | None:
    """A claim as a header value (`a.b` for a nested one): strings as they are, numbers and
    booleans as JSON writes them, string lists joined with ","; None for anything else."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return None


# --- keys (I/O) ------------------------------------------------------------------------


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, refused (ValueError naming `what`) past `limit` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise ValueError(f"the {what} is over {limit} bytes ({response.content_length})")
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            raise ValueError(f"the {what} is over {limit} bytes")
    return bytes(body)


def jwks_uri_of(document: bytes, url: str) -> str:
    """The `jwks_uri` of an OpenID Connect discovery document (pure); ValueError naming the
    URL when it is not JSON, has none, or it is not an http(s) URL."""
    try:
        doc = json.loads(document)
    except ValueError as err:
        raise ValueError(f"the discovery document at {url} is not JSON: {err}") from None
    uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"the discovery document at {url} has no jwks_uri")
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"the discovery document at {url} has jwks_uri {uri[:200]!r}, not http(s)")
    return uri


class RemoteJwks:
    """One `jwksUri`'s keys (or, with `issuer`, the keys its OIDC discovery names): fetched
    on first need, cached, refreshed every `refresh_interval` and on an unknown kid (at most
    once per `min_refresh`, which also spaces retries after a failure). Fetches for one URI
    are never concurrent."""

    def __init__(
        self,
        uri: str,
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        min_refresh: float = MIN_REFRESH,
        timeout: float = FETCH_TIMEOUT,
        issuer: str = "",
    ) -> None:
        self.uri = uri  # the JWKS, or with `issuer` the discovery document
        self.issuer = issuer  # set: discover the JWKS (`uri` is its discovery URL)
        self.jwks_uri = "" if issuer else uri  # (what discovery found last)
        self.refresh_interval = refresh_interval
        self.min_refresh = min_refresh
        self.timeout = timeout
        self.keys: PyJWKSet | None = None
        self.fetched_at = 0.0  # monotonic time of the last successful fetch
        self.tried_at = -1e18  # monotonic time of the last attempt
        self.last_error = ""
        self._inflight: asyncio.Future[None] | None = None
        self._background: asyncio.Future[None] | None = None

    async def get(self) -> PyJWKSet | None:
        """The keys, fetched (and awaited) when there are none yet; None when they cannot
        be had (logged). Stale keys are refreshed in the background and used meanwhile (and
        kept if the refresh fails)."""
        now = time.monotonic()
        if self.keys is None:
            if now - self.tried_at >= self.min_refresh:
                await self.refresh()
        elif (
            now - self.fetched_at >= self.refresh_interval
            and now - self.tried_at >= self.min_refresh
            and self._background is None
        ):
            self._background = asyncio.ensure_future(self._refresh_in_background())
        return self.keys

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        finally:
            self._background = None

    async def refresh_for_unknown_kid(self) -> bool:
        """Fetch again for a kid we do not know, unless we did so within `min_refresh`;
        True when a fetch was made and succeeded."""
        if time.monotonic() - self.tried_at < self.min_refresh:
            return False
        return await self.refresh()

    async def refresh(self) -> bool:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return not self.last_error
        loop = asyncio.get_running_loop()
        self._inflight = loop.create_future()
        self.tried_at = time.monotonic()
        try:
            self.keys = parse_jwks(await self._fetch())
            self.fetched_at = time.monotonic()
            self.last_error = ""
            log.info(
                "jwt.jwks_fetched",
                uri=self.jwks_uri,
                keys=len(self.keys.keys),
                **({"issuer": self.issuer, "discovery_uri": self.uri} if self.issuer else {}),
            )
            return True
        except (JwtError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
            self.last_error = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
            if isinstance(err, TimeoutError):
                self.last_error = f"no answer within {self.timeout:g}s"
            log.error(
                "jwt.jwks_unreachable",
                uri=self.uri,
                error=self.last_error,
                **(
                    {"issuer": self.issuer, "jwks_uri": self.jwks_uri or None}
                    if self.issuer
                    else {}
                ),
                keys_kept=self.keys is not None,
                consequence="tokens that need these keys get 401 until a fetch succeeds"
                if self.keys is None
                else "the previously fetched keys stay in use",
            )
            return False
        finally:
            self._inflight.set_result(None)
            self._inflight = None

    async def _fetch(self) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            if self.issuer:
                self.jwks_uri = ""
                document = await self._get(session, self.uri, MAX_DISCOVERY_BYTES, "discovery")
                self.jwks_uri = jwks_uri_of(document, self.uri)
            return await self._get(session, self.jwks_uri, MAX_JWKS_BYTES, "JWKS")

    @staticmethod
    async def _get(session: aiohttp.ClientSession, url: str, limit: int, what: str) -> bytes:
        async with session.get(url, headers={"accept": "application/json"}) as r:
            if r.status != 200:
                raise ValueError(f"HTTP {r.status} from {url}")
            return await _read_bounded(r, limit, f"{what} document at {url}")


class KeySource:
    """A rule's keys: inline (parsed once) or remote."""

    def __init__(self, rule: JwtRule, remote: RemoteJwks | None) -> None:
        self.remote = remote
        self.inline: PyJWKSet | None = None
        self.inline_error = ""
        if rule.jwks:
            try:
                self.inline = parse_jwks(rule.jwks)
            except JwtError as err:
                self.inline_error = err.reason

    async def get(self) -> PyJWKSet | None:
        if self.remote is not None:
            return await self.remote.get()
        return self.inline


# --- per destination --------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What authentication decided: `auth` (None: no token, pass on), or `failure` (401)."""

    auth: RequestAuth | None = None
    failure: str = ""
    headers: Headers = ()  # the request headers to forward (token and spoofed copies removed)
    issuer: str = ""


@dataclass
class Authenticator:
    """The JWT rules that apply to one destination, with their keys."""

    rules: tuple[tuple[str, JwtRule, KeySource], ...]  # (policy namespace/name, rule, keys)
    output_headers: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, entries: Sequence[tuple[str, JwtRule, KeySource]]) -> Authenticator:
        outputs = {c.header for _, r, _ in entries for c in r.output_claim_to_headers}
        outputs |= {r.output_payload_to_header for _, r, _ in entries if r.output_payload_to_header}
        return cls(tuple(entries), frozenset(outputs))

    def find(self, headers: Headers, target: str) -> tuple[Found, list[JwtRule]] | None:
        """The token and the rules whose places it was found in (pure)."""
        for _, rule, _ in self.rules:
            found = extract(rule.token_sources, headers, target)
            if found is not None:
                matching = [
                    r
                    for _, r, _ in self.rules
                    if extract(r.token_sources, headers, target) == found
                ]
                return found, matching
        return None

    def headers_for(
        self, headers: Headers, found: Found | None, rule: JwtRule | None, auth: RequestAuth | None
    ) -> Headers:
        """The headers to forward (pure): client copies of output headers removed, the
        token's header removed unless forwarded, claim and payload headers set."""
        drop = set(self.output_headers)
        if (
            found is not None
            and found.header
            and rule is not None
            and not rule.forward_original_token
        ):
            drop.add(found.header)  # (the header goes, whatever else it held)
        out = [(n, v) for n, v in headers if n not in drop] if drop else list(headers)
        if auth is not None and rule is not None and found is not None:
            for c in rule.output_claim_to_headers:
                text = claim_text(auth.claims, c.claim)
                if text is not None and text.isprintable():
                    out.append((c.header, text))
            if rule.output_payload_to_header:
                parts = found.token.split(".")
                if len(parts) == 3:
                    out.append((rule.output_payload_to_header, parts[1]))
        return tuple(out)

    async def authenticate(self, headers: Headers, target: str) -> Outcome:
        hit = self.find(headers, target)
        if hit is None:
            return Outcome(headers=self.headers_for(headers, None, None, None))
        found, candidates = hit
        try:
            issuer = unverified_issuer(found.token)
        except JwtError as err:
            return Outcome(failure=err.reason)
        chosen = next(
            ((r, k) for _, r, k in self.rules if r.issuer == issuer and r in candidates), None
        )
        if chosen is None:
            return Outcome(failure=f"Jwt issuer is not configured: {issuer!r}", issuer=issuer)
        rule, keys = chosen
        key_set = await keys.get()
        if key_set is None:
            reason = keys.inline_error or (
                keys.remote.last_error if keys.remote is not None else "no keys"
            )
            return Outcome(failure=f"the JWKS is unavailable: {reason}", issuer=issuer)
        try:
            auth = validate(found.token, rule, key_set)
        except UnknownKeyError as err:
            if keys.remote is None or not await keys.remote.refresh_for_unknown_kid():
                return Outcome(failure=err.reason, issuer=issuer)
            assert keys.remote.keys is not None
            try:
                auth = validate(found.token, rule, keys.remote.keys)
            except JwtError as again:
                return Outcome(failure=again.reason, issuer=issuer)
        except JwtError as err:
            return Outcome(failure=err.reason, issuer=issuer)
        return Outcome(
            auth=auth, headers=self.headers_for(headers, found, rule, auth), issuer=issuer
        )


def _remote_key(rule: JwtRule) -> tuple[str, float]:
    """Rules share a cache when they fetch the same URL with the same timeout."""
    return (rule.jwks_uri or discovery_url(rule.issuer), rule.fetch_timeout)


class AuthnTables:
    """Per-destination authenticators, rebuilt when the waypoint's view changes, so the data
    path does one dict lookup (and nothing more when no RequestAuthentication applies).
    Remote key sets are kept across rebuilds (by URI), so their caches survive updates."""

    def __init__(
        self,
        gateway: str,
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        min_refresh: float = MIN_REFRESH,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        self.gateway = gateway
        self.root_namespace = root_namespace
        self.min_refresh = min_refresh
        self.refresh_interval = refresh_interval
        self._remotes: dict[tuple[str, float], RemoteJwks] = {}  # by (URI, timeout)
        self._by_service: dict[str, Authenticator] = {}
        self._gateway_wide: Authenticator | None = None

    def _keys(self, rule: JwtRule) -> KeySource:
        remote = None
        if rule.jwks_uri or rule.discovers_keys:
            remote = self._remotes.get(_remote_key(rule))
            if remote is None:
                remote = RemoteJwks(
                    rule.jwks_uri or discovery_url(rule.issuer),
                    min_refresh=self.min_refresh,
                    refresh_interval=self.refresh_interval,
                    timeout=rule.fetch_timeout,
                    issuer="" if rule.jwks_uri else rule.issuer,
                )
        return KeySource(rule, remote)

    def update(self, policies: Iterable[RequestAuthentication]) -> None:
        wide: list[tuple[str, JwtRule, KeySource]] = []
        per_service: dict[str, list[tuple[str, JwtRule, KeySource]]] = {}
        remotes: dict[tuple[str, float], RemoteJwks] = {}
        for policy in sorted(policies, key=lambda p: (p.metadata.namespace, p.metadata.name)):
            found = scopes(policy, self.gateway, root_namespace=self.root_namespace)
            if not found:
                continue
            name = f"{policy.metadata.namespace}/{policy.metadata.name}"
            entries = []
            for rule in policy.jwt_rules:
                keys = self._keys(rule)
                if keys.remote is not None:
                    remotes[_remote_key(rule)] = keys.remote
                entries.append((name, rule, keys))
            if any(scope is Scope.GATEWAY for scope, _ in found):
                wide.extend(entries)
                continue
            for _, service in found:
                per_service.setdefault(service, []).extend(entries)
        self._remotes = remotes
        self._gateway_wide = Authenticator.of(wide) if wide else None
        self._by_service = {
            name: Authenticator.of([*wide, *entries]) for name, entries in per_service.items()
        }

    def for_destination(self, namespace: str | None, name: str | None) -> Authenticator | None:
        if namespace is not None and name is not None:
            found = self._by_service.get(f"{namespace}/{name}")
            if found is not None:
                return found
        return self._gateway_wide


__all__ = [
    "GRPC_UNAUTHENTICATED",
    "UNAUTHORIZED_BODY",
    "Authenticator",
    "AuthnTables",
    "JwtError",
    "Outcome",
    "RemoteJwks",
    "extract",
    "jwks_uri_of",
    "parse_jwks",
    "validate",
]
