"""ext_authz without a network: what a provider is asked (gRPC CheckRequest, HTTP check
request), what its answers mean, failOpen / statusOnError, the answer-size bound, and where
CUSTOM sits in the order of AuthorizationPolicy actions."""

from __future__ import annotations

from dataclasses import replace

import pytest
from google.protobuf.wrappers_pb2 import BoolValue

from meshcore.api import ext_authz_pb2 as pb
from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.meshconfig import ExtAuthzKind, ExtAuthzProvider
from meshcore.resources.security import AuthorizationPolicy, PolicyAction
from waypoint import authz, extauthz
from waypoint.extauthz import MAX_ANSWER, CheckInput, Outcome

HTTP = ExtAuthzProvider(
    name="http-authz",
    kind=ExtAuthzKind.HTTP,
    service="ext-authz.foo.svc.cluster.local",
    service_namespace="foo",
    service_name="ext-authz",
    port=8000,
    path_prefix="/check",
    include_request_headers_in_check=("x-ext-authz", "x-user-*", "*-tenant"),
    include_additional_headers_in_check=(("x-from", "waypoint"),),
    headers_to_upstream_on_allow=("x-ext-authz-check-result", "x-auth-*"),
    headers_to_downstream_on_allow=("x-down",),
    headers_to_downstream_on_deny=("x-ext-authz-check-result",),
)
GRPC = replace(HTTP, name="grpc-authz", kind=ExtAuthzKind.GRPC, port=9000, path_prefix="")

REQUEST = CheckInput(
    method="POST",
    path="/headers?a=1",
    authority="web.shop:80",
    headers=(
        ("host", "web.shop:80"),
        ("authorization", "Bearer t"),
        ("x-ext-authz", "allow"),
        ("x-user-id", "7"),
        ("acme-tenant", "t1"),
        ("cookie", "secret=1"),
        ("accept", "a"),
        ("accept", "b"),
        ("content-length", "5"),
        ("x-forwarded-client-cert", "By=spiffe://w;URI=spiffe://c"),
    ),
    source_principal="spiffe://cluster.local/ns/shop/sa/client",
    source_ip="10.0.0.7",
    source_port=40000,
    destination_ip="10.96.0.10",
    destination_port=80,
    destination_principal="spiffe://cluster.local/ns/shop/sa/waypoint",
    protocol="HTTP/1.1",
    request_id="rid-1",
    body=b"hello",
)


# --- asking ------------------------------------------------------------------------------


def test_grpc_check_request_carries_envoys_attribute_context() -> None:
    sent = extauthz.grpc_check_request(GRPC, REQUEST)
    again = pb.CheckRequest.FromString(sent.SerializeToString())  # (the wire, both ways)
    a = again.attributes
    assert a.source.principal == "spiffe://cluster.local/ns/shop/sa/client"
    assert a.source.address.socket_address.address == "10.0.0.7"
    assert a.source.address.socket_address.port_value == 40000
    assert a.destination.principal == "spiffe://cluster.local/ns/shop/sa/waypoint"
    assert a.destination.address.socket_address.port_value == 80
    http = a.request.http
    assert (http.id, http.method, http.path, http.host, http.scheme, http.protocol) == (
        "rid-1", "POST", "/headers?a=1", "web.shop:80", "http", "HTTP/1.1",
    )  # fmt: skip
    headers = dict(http.headers)
    assert headers[":authority"] == "web.shop:80" and "host" not in headers
    assert headers[":method"] == "POST" and headers[":path"] == "/headers?a=1"
    assert headers["accept"] == "a,b"  # duplicates joined, as Envoy
    assert headers["cookie"] == "secret=1"  # gRPC: every header
    assert headers["x-forwarded-client-cert"].startswith("By=")
    assert http.body == "" and http.raw_body == b"" and http.size == 5  # no body asked for


def test_grpc_check_request_body_as_configured() -> None:
    text = extauthz.grpc_check_request(replace(GRPC, body_max_bytes=3), REQUEST)
    http = text.attributes.request.http
    assert http.body == "hel" and http.headers[extauthz.PARTIAL_BODY_HEADER] == "true"
    raw = extauthz.grpc_check_request(
        replace(GRPC, body_max_bytes=100, body_pack_as_bytes=True), REQUEST
    )
    http = raw.attributes.request.http
    assert http.raw_body == b"hello" and http.body == ""
    assert http.headers[extauthz.PARTIAL_BODY_HEADER] == "false"
    huge = replace(REQUEST, body=b"x" * (extauthz.MAX_BODY + 10))
    capped = extauthz.grpc_check_request(replace(GRPC, body_max_bytes=10**9), huge)
    assert len(capped.attributes.request.http.body) == extauthz.MAX_BODY


def test_grpc_check_request_protocol_h2() -> None:
    sent = extauthz.grpc_check_request(GRPC, replace(REQUEST, protocol="HTTP/2"))
    assert sent.attributes.request.http.protocol == "HTTP/2"


def test_http_check_request_sends_only_envoys_default_headers_and_the_included_ones() -> None:
    check = extauthz.http_check_request(HTTP, REQUEST)
    assert check.method == "POST" and check.target == "/check/headers?a=1"
    names = [n for n, _ in check.headers]
    assert names == [
        "host", "authorization", "x-ext-authz", "x-user-id", "acme-tenant", "x-from",
        "content-length",
    ]  # fmt: skip
    assert dict(check.headers)["host"] == "web.shop:80"
    assert dict(check.headers)["content-length"] == "0" and check.body == b""
    assert "cookie" not in names and "x-forwarded-client-cert" not in names


def test_http_check_request_with_body() -> None:
    check = extauthz.http_check_request(replace(HTTP, body_max_bytes=4), REQUEST)
    headers = dict(check.headers)
    assert check.body == b"hell" and headers["content-length"] == "4"
    assert headers[extauthz.PARTIAL_BODY_HEADER] == "true"


def test_additional_headers_override_the_requests() -> None:
    provider = replace(HTTP, include_additional_headers_in_check=(("X-Ext-Authz", "forced"),))
    check = extauthz.http_check_request(provider, REQUEST)
    assert [v for n, v in check.headers if n == "x-ext-authz"] == ["forced"]


# --- gRPC answers ------------------------------------------------------------------------


def option(
    name: str, value: str, append: bool | None = None, action: int = 0
) -> pb.HeaderValueOption:
    o = pb.HeaderValueOption(header=pb.HeaderValue(key=name, value=value), append_action=action)  # type: ignore[arg-type]
    if append is not None:
        o.append.CopyFrom(BoolValue(value=append))
    return o


def test_grpc_ok_allows_with_header_changes() -> None:
    answer = pb.CheckResponse(
        status=pb.RpcStatus(code=0),
        ok_response=pb.OkHttpResponse(
            headers=[
                option("x-ext-authz-check-result", "allowed"),  # set (the default here)
                option("accept", "c", append=True),
                option("x-new", "1", action=pb.HeaderValueOption.ADD_IF_ABSENT),
                option("x-user-id", "8", action=pb.HeaderValueOption.ADD_IF_ABSENT),
                option("x-absent", "1", action=pb.HeaderValueOption.OVERWRITE_IF_EXISTS),
                option("bad\nname", "x"),
                option("x-crlf", "a\r\nb"),
                option("content-length", "99"),
            ],
            headers_to_remove=["authorization", "host", ":path"],
            response_headers_to_add=[option("x-down", "d")],
        ),
    )
    result = extauthz.from_grpc(GRPC, answer.SerializeToString(), REQUEST.headers)
    assert result.outcome is Outcome.ALLOW and result.allowed
    out = result.request_headers(REQUEST.headers)
    assert ("x-ext-authz-check-result", "allowed") in out
    assert ("accept", "b,c") in out
    assert ("x-new", "1") in out and ("x-user-id", "7") in out
    assert all(n not in ("x-absent", "x-crlf", "authorization") for n, _ in out)
    assert ("host", "web.shop:80") in out and ("content-length", "5") in out
    assert result.downstream == (("x-down", "d"),)


def test_grpc_denial_uses_the_denied_response() -> None:
    answer = pb.CheckResponse(
        status=pb.RpcStatus(code=7, message="nope"),
        denied_response=pb.DeniedHttpResponse(
            status=pb.HttpStatus(code=pb.HttpStatus.Unauthorized),
            headers=[option("www-authenticate", "Bearer"), option("content-length", "1")],
            body="go away",
        ),
    )
    result = extauthz.from_grpc(GRPC, answer.SerializeToString(), ())
    assert result.outcome is Outcome.DENY and not result.allowed
    assert (result.status, result.body) == (401, b"go away")
    assert result.downstream == (("www-authenticate", "Bearer"),)
    assert "nope" in result.reason


def test_grpc_denial_without_a_status_is_403() -> None:
    bare = pb.CheckResponse(status=pb.RpcStatus(code=16)).SerializeToString()
    assert extauthz.from_grpc(GRPC, bare, ()).status == 403


@pytest.mark.parametrize(
    "payload", [b"\xff\xff\xff", b"\x0a\x05\x08"], ids=["garbage", "truncated"]
)
def test_a_malformed_grpc_answer_is_an_error(payload: bytes) -> None:
    result = extauthz.from_grpc(GRPC, payload, ())
    assert result.outcome is Outcome.ERROR and not result.allowed and result.status == 403


def test_an_oversize_grpc_answer_is_an_error() -> None:
    big = pb.CheckResponse(
        status=pb.RpcStatus(code=0),
        ok_response=pb.OkHttpResponse(headers=[option("x-pad", "p" * MAX_ANSWER)]),
    ).SerializeToString()
    result = extauthz.from_grpc(replace(GRPC, fail_open=True), big, ())
    assert result.outcome is Outcome.ERROR and result.allowed  # failOpen
    assert f"{MAX_ANSWER} bytes" in result.reason


# --- HTTP answers ------------------------------------------------------------------------


def test_http_200_allows_with_the_configured_headers() -> None:
    headers = (
        ("x-ext-authz-check-result", "allowed"),
        ("x-auth-user", "bob"),
        ("x-other", "not passed"),
        ("x-down", "to the client"),
        ("x-envoy-auth-headers-to-remove", "authorization, cookie"),
        ("content-length", "0"),
    )
    result = extauthz.from_http(HTTP, 200, headers, b"")
    assert result.outcome is Outcome.ALLOW
    out = result.request_headers(REQUEST.headers)
    assert ("x-ext-authz-check-result", "allowed") in out and ("x-auth-user", "bob") in out
    names = {n for n, _ in out}
    assert not names & {"x-other", "authorization", "cookie", "x-down"}
    assert result.downstream == (("x-down", "to the client"),)


def test_http_denial_passes_status_body_and_the_deny_headers() -> None:
    headers = (
        ("x-ext-authz-check-result", "denied"),
        ("x-secret", "kept back"),
        ("location", "/login"),
        ("content-length", "6"),
    )
    result = extauthz.from_http(HTTP, 302, headers, b"denied")
    assert result.outcome is Outcome.DENY and (result.status, result.body) == (302, b"denied")
    assert result.downstream == (("x-ext-authz-check-result", "denied"), ("location", "/login"))
    everything = extauthz.from_http(
        replace(HTTP, headers_to_downstream_on_deny=()), 403, headers, b""
    )
    assert ("x-secret", "kept back") in everything.downstream
    assert all(n != "content-length" for n, _ in everything.downstream)


@pytest.mark.parametrize("status", [500, 503, 100])
def test_http_5xx_is_an_error_as_envoy_reads_it(status: int) -> None:
    result = extauthz.from_http(replace(HTTP, status_on_error=503), status, (), b"")
    assert result.outcome is Outcome.ERROR and result.status == 503


def test_an_oversize_http_answer_is_an_error() -> None:
    result = extauthz.from_http(HTTP, 403, (), b"x" * (MAX_ANSWER + 1))
    assert result.outcome is Outcome.ERROR and not result.allowed


def test_failure_follows_fail_open_and_status_on_error() -> None:
    closed = extauthz.failure(HTTP, "no answer")
    assert (closed.allowed, closed.status, closed.outcome) == (False, 403, Outcome.ERROR)
    assert extauthz.failure(replace(HTTP, status_on_error=503), "x").status == 503
    opened = extauthz.failure(replace(HTTP, fail_open=True), "x")
    assert opened.allowed and opened.upstream == () and "failOpen" in opened.reason


# --- CUSTOM in the order of actions (waypoint.authz) -------------------------------------

GATEWAY = "foo/waypoint"
SERVICE = "foo/web"


def policies(text: str) -> list[AuthorizationPolicy]:
    parsed = parse_documents(documents_from_text(text, "policies.yaml"))
    found = [p.resource for p in parsed if isinstance(p.resource, AuthorizationPolicy)]
    assert found
    return found


def policy(name: str, spec: str) -> str:
    body = "\n".join(f"  {line}" for line in spec.splitlines())
    return (
        "---\napiVersion: security.weft.dev/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: foo}}\nspec:\n"
        '  targetRefs: [{kind: Service, group: "", name: web}]\n'
        f"{body}\n"
    )


CUSTOM = policy(
    "ext",
    "action: CUSTOM\nprovider: {name: http-authz}\nrules:\n- to: [{operation: {paths: ['/headers*']}}]",
)


def view(path: str, method: str = "GET") -> authz.RequestView:
    return authz.RequestView.build(method=method, path=path, host="web.foo")


def decide(text: str, path: str, method: str = "GET", *, l4: bool = False) -> authz.Verdict:
    found = authz.applicable(policies(text), GATEWAY, SERVICE)
    compiled = authz.PolicySet.of(authz.CompiledPolicy.compile(p) for p in found)
    return compiled.evaluate(view(path, method), l4=l4, providers={"http-authz": HTTP})


def test_a_matching_custom_rule_names_its_provider_and_the_rest_still_decides() -> None:
    found = decide(CUSTOM, "/headers")
    assert found.allowed and len(found.custom) == 1
    assert found.custom[0].provider == "http-authz"
    assert found.custom[0].match.policy_id == "ns[foo]-policy[ext]-rule[0]"
    assert decide(CUSTOM, "/other").custom == ()


def test_a_custom_allow_does_not_skip_deny_or_allow() -> None:
    deny = policy("no-post", "action: DENY\nrules:\n- to: [{operation: {methods: [POST]}}]")
    found = decide(CUSTOM + deny, "/headers", "POST")
    assert not found.allowed and found.action is PolicyAction.DENY and found.custom
    allow = policy("only-get", "action: ALLOW\nrules:\n- to: [{operation: {methods: [GET]}}]")
    assert not decide(CUSTOM + allow, "/headers", "PUT").allowed
    assert decide(CUSTOM + allow, "/headers", "GET").allowed


def test_an_undefined_provider_denies_naming_it() -> None:
    text = CUSTOM.replace("http-authz", "missing")
    found = decide(text, "/headers")
    assert not found.allowed and found.custom == () and "'missing'" in found.reason
    assert decide(text, "/other").allowed


def test_custom_on_a_tcp_connection_fails_closed() -> None:
    text = policy("ext", "action: CUSTOM\nprovider: {name: http-authz}\nrules:\n- {}")
    found = decide(text, "", l4=True)
    assert not found.allowed and found.action is PolicyAction.CUSTOM
    assert "TCP" in found.reason and "fail closed" in found.reason


def test_two_policies_with_one_provider_ask_it_once() -> None:
    other = CUSTOM.replace("name: ext,", "name: ext2,")
    found = decide(CUSTOM + other, "/headers")
    assert [c.provider for c in found.custom] == ["http-authz"]


def test_the_body_wanted_is_the_most_any_provider_asks_capped_partial_only_if_all_allow() -> None:
    assert extauthz.body_wanted([HTTP, GRPC]) is None
    small = replace(HTTP, body_max_bytes=10, body_allow_partial=True)
    big = replace(GRPC, body_max_bytes=10**6, body_allow_partial=False)
    assert extauthz.body_wanted([small]) == extauthz.BodyWanted(10, True)
    assert extauthz.body_wanted([small, big, HTTP]) == extauthz.BodyWanted(extauthz.MAX_BODY, False)
