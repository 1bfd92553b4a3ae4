"""RequestAuthentication: which JWTs a workload accepts (Istio's `security.istio.io/v1` kind,
served in `security.weft.dev`, same fields and meaning).

Parsed here, at the edge, into frozen values; what Istio's validation refuses is refused with
the field path. A waypoint enforces the policies with `targetRefs` (its Gateway, or a Service
bound to it); `selector` policies are accepted and carried, and are a sidecar's or gateway's
business in Istio, which weft has not.

Keys come from `jwks` (inline), `jwksUri`, or, with neither, as in Istio, from the issuer's
OpenID Connect discovery document (`<issuer>/.well-known/openid-configuration`, its
`jwks_uri`); the issuer must then be an http(s) URL. `timeout` bounds each of those fetches.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from meshcore.resources.core import ObjectMeta, ResourceKey
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.security import (
    PolicyTargetRef,
    _check_group,
    _metadata,
    policy_scope,
)
from meshcore.resources.virtualservice import parse_duration

# An HTTP header name (RFC 9110 token); pseudo-headers (`:path`) and hop-by-hop ones are not
# headers a policy may set.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RESERVED_OUTPUT_HEADERS = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "upgrade", "te", "content-length"}
)


@dataclass(frozen=True)
class JwtHeader:
    """Where a token is read from a header: `name: prefix<token>` (`Authorization: Bearer `)."""

    name: str  # lower-case
    prefix: str = ""


@dataclass(frozen=True)
class ClaimToHeader:
    header: str  # lower-case
    claim: str  # a top-level claim, or a nested one as `a.b`


DEFAULT_FROM_HEADERS = (JwtHeader("authorization", "Bearer "),)
DEFAULT_FROM_PARAMS = ("access_token",)
DEFAULT_FETCH_TIMEOUT = 5.0  # Istio's default jwtRules[].timeout
MAX_FETCH_TIMEOUT = 60.0  # longer would hold the first requests for a minute


@dataclass(frozen=True)
class JwtRule:
    issuer: str
    audiences: tuple[str, ...] = ()  # empty: any audience
    jwks_uri: str = ""
    jwks: str = ""  # inline JWKS, as JSON text
    from_headers: tuple[JwtHeader, ...] = ()  # empty (and no params/cookies): the defaults
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    output_payload_to_header: str = ""
    timeout: float = 0.0  # JWKS / discovery fetch timeout in seconds; 0: DEFAULT_FETCH_TIMEOUT

    @property
    def discovers_keys(self) -> bool:
        """No `jwksUri` nor `jwks`: the keys come through the issuer's OIDC discovery."""
        return not (self.jwks_uri or self.jwks)

    @property
    def fetch_timeout(self) -> float:
        return self.timeout or DEFAULT_FETCH_TIMEOUT

    @property
    def token_sources(self) -> tuple[tuple[JwtHeader, ...], tuple[str, ...], tuple[str, ...]]:
        """(headers, params, cookies) to read a token from; Istio's defaults when none is given
        (`Authorization: Bearer <token>` and `?access_token=`)."""
        if self.from_headers or self.from_params or self.from_cookies:
            return self.from_headers, self.from_params, self.from_cookies
        return DEFAULT_FROM_HEADERS, DEFAULT_FROM_PARAMS, ()


@dataclass(frozen=True)
class RequestAuthentication:
    metadata: ObjectMeta
    jwt_rules: tuple[JwtRule, ...] = ()
    selector: Mapping[str, str] | None = None
    target_refs: tuple[PolicyTargetRef, ...] = ()
    kind = "RequestAuthentication"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def for_waypoint(self) -> bool:
        return bool(self.target_refs)


# --- parsing -------------------------------------------------------------------------------


def _boolean(f: Fields, name: str) -> bool:
    value = f.raw(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise f.fail(name, f"expected a boolean, got {value!r}")
    return value


def _header_name(value: str, field: str) -> str:
    if not value:
        raise ManifestError("must not be empty", field=field)
    if not _TOKEN.match(value):
        raise ManifestError(f"{value!r} is not a valid HTTP header name", field=field)
    return value.lower()


def _check_jwks_uri(value: str, field: str) -> None:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ManifestError(
            f"{value!r} is not an http(s) URL (give e.g. https://issuer.example/jwks.json)",
            field=field,
        )


def check_discoverable_issuer(issuer: str, field: str) -> None:
    """With neither jwksUri nor jwks the keys are discovered from the issuer, which must then
    be an http(s) URL (OIDC discovery appends `/.well-known/openid-configuration` to it)."""
    parsed = urllib.parse.urlsplit(issuer)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ManifestError(
            f"{issuer!r} is not an http(s) URL, so its keys cannot be discovered "
            "(<issuer>/.well-known/openid-configuration): give jwksUri or jwks",
            field=field,
        )
    if parsed.query or parsed.fragment:
        raise ManifestError(
            f"{issuer!r} has a query or fragment, which OIDC discovery does not allow in an "
            "issuer: give jwksUri or jwks",
            field=field,
        )


def discovery_url(issuer: str) -> str:
    """OIDC Discovery 1.0 section 4: `/.well-known/openid-configuration` appended to the
    issuer, a trailing "/" of the issuer dropped first (a path component is kept)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def check_jwks(text: str, field: str) -> None:
    """Inline JWKS: JSON with a `keys` array of objects, each with a `kty`."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ManifestError(f"not valid JSON: {err}", field=field) from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ManifestError('must be a JWKS: {"keys": [...]} with at least one key', field=field)
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise ManifestError(f"keys[{i}] is not a JWK (an object with kty)", field=field)


def _parse_jwt_rule(raw: object, path: str) -> JwtRule:
    f = Fields(raw, path)
    issuer = f.string("issuer", required=True)
    audiences = f.string_list("audiences")
    for i, audience in enumerate(audiences):
        if not audience:
            raise ManifestError("must not be empty", field=f"{f.sub('audiences')}[{i}]")
    jwks_uri = f.string("jwksUri")
    jwks = f.string("jwks")
    if jwks_uri and jwks:
        raise f.fail("jwks", "may not be given together with jwksUri: use one or the other")
    if jwks_uri:
        _check_jwks_uri(jwks_uri, f.sub("jwksUri"))
    elif jwks:
        check_jwks(jwks, f.sub("jwks"))
    else:
        check_discoverable_issuer(issuer, f.sub("issuer"))
    headers = []
    for p, item in f.objects("fromHeaders"):
        hf = Fields(item, p)
        name = _header_name(hf.string("name", required=True), hf.sub("name"))
        prefix = hf.string("prefix")
        hf.done()
        headers.append(JwtHeader(name, prefix))
    params = f.string_list("fromParams")
    for i, value in enumerate(params):
        if not value:
            raise ManifestError("must not be empty", field=f"{f.sub('fromParams')}[{i}]")
    cookies = f.string_list("fromCookies")
    for i, value in enumerate(cookies):
        if not value:
            raise ManifestError("must not be empty", field=f"{f.sub('fromCookies')}[{i}]")
    forward = _boolean(f, "forwardOriginalToken")
    outputs = []
    seen: dict[str, str] = {}
    for p, item in f.objects("outputClaimToHeaders"):
        of = Fields(item, p)
        header = _header_name(of.string("header", required=True), of.sub("header"))
        claim = of.string("claim", required=True)
        of.done()
        if header in _RESERVED_OUTPUT_HEADERS:
            raise of.fail("header", f"{header!r} is not a header a policy may set")
        if header in seen:
            raise of.fail("header", f"{header!r} is already set from claim {seen[header]!r}")
        seen[header] = claim
        outputs.append(ClaimToHeader(header, claim))
    payload_header = ""
    if f.raw("outputPayloadToHeader") is not None:
        payload_header = _header_name(
            f.string("outputPayloadToHeader"), f.sub("outputPayloadToHeader")
        )
    timeout = 0.0
    if f.raw("timeout") is not None:
        timeout = parse_duration(f.raw("timeout"), f.sub("timeout"))
        if timeout > MAX_FETCH_TIMEOUT:
            raise f.fail("timeout", f"must be at most {MAX_FETCH_TIMEOUT:g}s, got {timeout:g}s")
    f.done()
    return JwtRule(
        issuer=issuer,
        audiences=audiences,
        jwks_uri=jwks_uri,
        jwks=jwks,
        from_headers=tuple(headers),
        from_params=params,
        from_cookies=cookies,
        forward_original_token=forward,
        output_claim_to_headers=tuple(outputs),
        output_payload_to_header=payload_header,
        timeout=timeout,
    )


def parse_request_authentication(f: Fields, ignored: list[str]) -> RequestAuthentication:
    _check_group(f, "RequestAuthentication")
    meta = _metadata(f, ignored)
    spec = Fields(f.raw("spec"), "spec")
    selector, target_refs = policy_scope(spec, meta.namespace, ignored)
    rules = tuple(_parse_jwt_rule(item, p) for p, item in spec.objects("jwtRules"))
    ignored.extend(spec.done())
    return RequestAuthentication(meta, rules, selector, target_refs)
