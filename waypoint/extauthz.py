"""External authorization (AuthorizationPolicy CUSTOM) as Envoy's ext_authz filter does it:
what the provider is asked, and what its answer means. Pure and sans-I/O; the asking is
`waypoint.extauthz_client`.

Two protocols, as Istio's `extensionProviders` declare them (`meshcore.resources.meshconfig`):

- gRPC (`envoyExtAuthzGrpc`): `envoy.service.auth.v3.Authorization/Check` with a CheckRequest
  (`meshcore/api/ext_authz.proto`): the source peer (the client's verified SPIFFE ID and
  address), the destination (the waypoint's identity, the address the client called), and the
  HTTP request with every header, lower-case, duplicates joined with "," (pseudo-headers
  `:authority`, `:method`, `:path`, `:scheme` included, as Envoy's header map holds them).
  Status OK allows (with `ok_response`'s header changes); any other status denies with
  `denied_response`'s status (403 when unset), headers and body.
- HTTP (`envoyExtAuthzHttp`): the request's method and `pathPrefix` + path, with only `Host`,
  `Authorization` and the headers `includeRequestHeadersInCheck` matches (Envoy's HTTP service
  default), plus `includeAdditionalHeadersInCheck`, and `Content-Length` (0 without a body).
  No `x-forwarded-client-cert` unless that list asks for it: Envoy adds none. 200 allows
  (headers matching `headersToUpstreamOnAllow` go upstream, overriding; those matching
  `headersToDownstreamOnAllow` go on the response; `x-envoy-auth-headers-to-remove` names
  request headers to drop); a 5xx is an error (Envoy's reading); any other status denies with
  that status, its body, and the headers matching `headersToDownstreamOnDeny` (all of them when
  the list is empty, as Envoy's `allowed_client_headers`).

Errors (no answer in `timeout`, no connection, a malformed or oversize answer, a gRPC status
other than OK on the call itself) allow when the provider has `failOpen`, else deny with
`statusOnError` (403 unless set). Header names match as Istio's: exact, `prefix*`, `*suffix`,
case-insensitive.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from meshcore.api import ext_authz_pb2 as pb
from meshcore.resources.meshconfig import ExtAuthzKind, ExtAuthzProvider
from waypoint.authz import StringMatch
from waypoint.routing import HeaderOps, modify_headers

Headers = tuple[tuple[str, str], ...]

# An answer (gRPC message, or HTTP head + body) larger than this is an error
MAX_ANSWER = 64 * 1024
# A request body sent in a check is cut to this, whatever maxRequestBytes says
MAX_BODY = 64 * 1024
GRPC_OK = 0
DEFAULT_DENY_STATUS = 403
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"  # (HTTP service: its removals)

# Never taken from an answer: they would change how the message is framed, or are ours
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive", "te"))
_NOT_REMOVABLE = frozenset(("host",))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"  # no usable answer (the verdict then is failOpen's)


@dataclass(frozen=True, slots=True)
class CheckInput:
    """One request as the provider is told of it. `path` is as forwarded (normalised, with
    its query); `headers` have lower-case names, as the proxy parsed them."""

    method: str
    path: str
    authority: str
    headers: Headers
    source_principal: str = ""
    source_ip: str = ""
    source_port: int = 0
    destination_ip: str = ""
    destination_port: int = 0
    destination_principal: str = ""  # the waypoint's own SPIFFE ID
    protocol: str = "HTTP/1.1"  # or "HTTP/2"
    request_id: str = ""
    scheme: str = "http"
    body: bytes | None = None  # what was read of the body (None: not read)
    body_partial: bool = False  # the body is longer than `body`


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """The request Envoy's HTTP ext_authz sends to the provider."""

    method: str
    target: str
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What the provider decided. Allowed: `upstream` header operations for the request
    (in order), `downstream` headers added to the response. Denied: `status`, `downstream`
    headers and `body` are the answer to the client."""

    outcome: Outcome
    allowed: bool
    reason: str
    status: int = 0
    body: bytes = b""
    upstream: tuple[HeaderOps, ...] = ()
    downstream: Headers = ()

    def request_headers(self, headers: Headers) -> Headers:
        """The request's headers with the provider's changes."""
        return modify_headers(headers, self.upstream) if self.upstream else headers


def _match(patterns: Iterable[str]) -> StringMatch:
    return StringMatch.of(patterns, ignore_case=True)


def _usable(name: str, value: str) -> bool:
    """A header we may pass on: a token name (no pseudo-header), a value without CR/LF/NUL,
    and nothing that frames the message."""
    return bool(_TOKEN.fullmatch(name)) and not _BAD_VALUE.search(value) and name not in _FRAMING


def joined(headers: Headers) -> dict[str, str]:
    """Headers as Envoy's CheckRequest carries them: lower-case, duplicates joined with ","."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


@dataclass(frozen=True, slots=True)
class BodyWanted:
    """How much of a request's body its checks need read first."""

    limit: int  # bytes (the most any provider asks, at most MAX_BODY)
    partial: bool  # a longer body may be sent cut (else the request is answered 413)


def body_wanted(providers: Iterable[ExtAuthzProvider]) -> BodyWanted | None:
    """The body the providers asked about a request want (`includeRequestBodyInCheck`);
    None when none wants it. A longer body is sent cut only if every one of them allows a
    partial body (Envoy: `allowPartialMessage`, else 413 Payload Too Large)."""
    wanting = [p for p in providers if p.body_max_bytes > 0]
    if not wanting:
        return None
    return BodyWanted(
        min(max(p.body_max_bytes for p in wanting), MAX_BODY),
        all(p.body_allow_partial for p in wanting),
    )


def _body(provider: ExtAuthzProvider, check: CheckInput) -> tuple[bytes | None, bool]:
    """The body to send and whether it is partial; None when the provider wants none."""
    if not provider.body_max_bytes or check.body is None:
        return None, False
    limit = min(provider.body_max_bytes, MAX_BODY)
    body = check.body[:limit]
    return body, check.body_partial or len(check.body) > limit


# --- asking ------------------------------------------------------------------------------


def grpc_check_request(provider: ExtAuthzProvider, check: CheckInput) -> pb.CheckRequest:
    """The CheckRequest for a gRPC provider."""
    headers = joined(check.headers)
    authority = headers.pop("host", check.authority) or check.authority
    headers.update(
        {
            ":authority": authority,
            ":method": check.method,
            ":path": check.path,
            ":scheme": check.scheme,
        }
    )
    body, partial = _body(provider, check)
    if body is not None:
        headers[PARTIAL_BODY_HEADER] = "true" if partial else "false"
    http = pb.AttributeContext.HttpRequest(
        id=check.request_id,
        method=check.method,
        headers=headers,
        path=check.path,
        host=authority,
        scheme=check.scheme,
        protocol=check.protocol,
        size=len(body) if body is not None else _content_length(headers),
    )
    if body is not None:
        if provider.body_pack_as_bytes:
            http.raw_body = body
        else:
            http.body = body.decode("utf-8", "replace")  # (a proto string is UTF-8)
    return pb.CheckRequest(
        attributes=pb.AttributeContext(
            source=_peer(check.source_ip, check.source_port, check.source_principal),
            destination=_peer(
                check.destination_ip, check.destination_port, check.destination_principal
            ),
            request=pb.AttributeContext.Request(http=http),
        )
    )


def _content_length(headers: dict[str, str]) -> int:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else -1


def _peer(ip: str, port: int, principal: str) -> pb.AttributeContext.Peer:
    address = pb.Address(socket_address=pb.SocketAddress(address=ip, port_value=port))
    return pb.AttributeContext.Peer(address=address, principal=principal)


def http_check_request(provider: ExtAuthzProvider, check: CheckInput) -> HttpCheck:
    """The check request for an HTTP provider."""
    wanted = _match(provider.include_request_headers_in_check)
    headers: list[tuple[str, str]] = [("host", check.authority)]
    for name, value in check.headers:
        if name in ("host", "content-length") or name in _FRAMING:
            continue
        if name == "authorization" or wanted.matches(name):
            headers.append((name, value))
    added = tuple((n.lower(), v) for n, v in provider.include_additional_headers_in_check)
    body, partial = _body(provider, check)
    ops = [HeaderOps(set=added)] if added else []
    if body is not None:
        ops.append(HeaderOps(set=((PARTIAL_BODY_HEADER, "true" if partial else "false"),)))
    out = modify_headers(tuple(headers), ops)
    payload = body or b""
    out = (*out, ("content-length", str(len(payload))))
    return HttpCheck(check.method, provider.path_prefix + check.path, out, payload)


# --- the answer --------------------------------------------------------------------------


def failure(provider: ExtAuthzProvider, why: str) -> CheckResult:
    """No usable answer: allowed with failOpen, else denied with statusOnError."""
    if provider.fail_open:
        return CheckResult(
            Outcome.ERROR, True, f"ext_authz {provider.name}: {why}; allowed (failOpen)"
        )
    status = provider.status_on_error or DEFAULT_DENY_STATUS
    return CheckResult(
        Outcome.ERROR, False, f"ext_authz {provider.name}: {why}; denied (failOpen false)", status
    )


def _append_mode(option: pb.HeaderValueOption) -> str:
    """How an ok_response header is applied: 'set' (Envoy's default in this message),
    'add', 'absent' (only when missing) or 'exists' (only when present)."""
    if option.HasField("append"):
        return "add" if option.append.value else "set"
    action = option.append_action
    actions = pb.HeaderValueOption
    if action == actions.ADD_IF_ABSENT:
        return "absent"
    if action == actions.OVERWRITE_IF_EXISTS:
        return "exists"
    return "set"  # (APPEND_IF_EXISTS_OR_ADD is the proto's zero: the message says "set")


def _option_pair(option: pb.HeaderValueOption) -> tuple[str, str] | None:
    name = option.header.key.lower()
    value = option.header.value or option.header.raw_value.decode("latin-1")
    if not _usable(name, value) or (not value and not option.keep_empty_value):
        return None
    return name, value


def _upstream_ops(
    options: Iterable[pb.HeaderValueOption], removed: Iterable[str], present: set[str]
) -> tuple[HeaderOps, ...]:
    ops: list[HeaderOps] = []
    for option in options:
        pair = _option_pair(option)
        if pair is None:
            continue
        mode = _append_mode(option)
        there = pair[0] in present
        if mode == "add":
            ops.append(HeaderOps(add=(pair,)))
        elif mode == "set" or (mode == "absent" and not there) or (mode == "exists" and there):
            ops.append(HeaderOps(set=(pair,)))
    names = (r.strip().lower() for r in removed)
    gone = tuple(n for n in names if _TOKEN.fullmatch(n) and n not in _NOT_REMOVABLE)
    if gone:
        ops.append(HeaderOps(remove=gone))
    return tuple(ops)


def from_grpc(provider: ExtAuthzProvider, payload: bytes, request_headers: Headers) -> CheckResult:
    """A gRPC provider's CheckResponse (the call itself returned OK)."""
    if len(payload) > MAX_ANSWER:
        return failure(provider, f"answer over {MAX_ANSWER} bytes")
    try:
        answer = pb.CheckResponse.FromString(payload)
    except DecodeError as err:
        return failure(provider, f"malformed CheckResponse: {err}")
    name = provider.name
    if answer.status.code == GRPC_OK:
        ok = answer.ok_response
        present = {n for n, _ in request_headers}
        downstream = tuple(
            p for p in (_option_pair(o) for o in ok.response_headers_to_add) if p is not None
        )
        return CheckResult(
            Outcome.ALLOW,
            True,
            f"allowed by ext_authz {name}",
            upstream=_upstream_ops(ok.headers, ok.headers_to_remove, present),
            downstream=downstream,
        )
    denied = answer.denied_response
    status = denied.status.code or DEFAULT_DENY_STATUS
    if not 200 <= status <= 599:
        status = DEFAULT_DENY_STATUS
    headers = tuple(p for p in (_option_pair(o) for o in denied.headers) if p is not None)
    message = answer.status.message[:200]
    return CheckResult(
        Outcome.DENY,
        False,
        f"denied by ext_authz {name} (status {answer.status.code}"
        + (f": {message})" if message else ")"),
        status,
        denied.body.encode(),
        downstream=headers,
    )


def from_http(
    provider: ExtAuthzProvider, status: int, headers: Headers, body: bytes
) -> CheckResult:
    """An HTTP provider's answer: status, headers (lower-case names), body."""
    name = provider.name
    if len(body) > MAX_ANSWER:
        return failure(provider, f"answer over {MAX_ANSWER} bytes")
    if status >= 500 or status < 200:
        return failure(provider, f"the provider answered {status}")
    usable = tuple((n, v) for n, v in headers if _usable(n, v))
    if status == 200:
        up = _match(provider.headers_to_upstream_on_allow)
        down = _match(provider.headers_to_downstream_on_allow)
        ops: list[HeaderOps] = []
        picked = tuple((n, v) for n, v in usable if n != "host" and up.matches(n))
        if picked:
            ops.append(HeaderOps(set=picked))
        removed = next((v for n, v in headers if n == HEADERS_TO_REMOVE), "")
        ops.extend(_upstream_ops((), removed.split(",") if removed else (), set()))
        return CheckResult(
            Outcome.ALLOW,
            True,
            f"allowed by ext_authz {name}",
            upstream=tuple(ops),
            downstream=tuple((n, v) for n, v in usable if down.matches(n)),
        )
    if provider.headers_to_downstream_on_deny:
        deny = _match((*provider.headers_to_downstream_on_deny, "www-authenticate", "location"))
        sent = tuple((n, v) for n, v in usable if deny.matches(n))
    else:
        sent = tuple((n, v) for n, v in usable if n not in ("host", "date", "server"))
    return CheckResult(
        Outcome.DENY, False, f"denied by ext_authz {name} (HTTP {status})", status, body, (), sent
    )


def is_grpc(provider: ExtAuthzProvider) -> bool:
    return provider.kind is ExtAuthzKind.GRPC


__all__ = [
    "MAX_ANSWER",
    "MAX_BODY",
    "BodyWanted",
    "CheckInput",
    "CheckResult",
    "HttpCheck",
    "Outcome",
    "body_wanted",
    "failure",
    "from_grpc",
    "from_http",
    "grpc_check_request",
    "http_check_request",
    "joined",
]
