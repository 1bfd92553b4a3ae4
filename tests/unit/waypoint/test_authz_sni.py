"""`connection.sni` in AuthorizationPolicy at the waypoint: read from a TCP stream's TLS
ClientHello and judged at L4 (an ALLOW rule with it can match a TCP connection), "" for an
HTTP request (the waypoint's inner hop is plaintext), and None (a hello that could not be
read) never allows and always lets a DENY match."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from meshcore.resources import AuthorizationPolicy, documents_from_text, parse_documents
from waypoint.authz import AuthzTables, PolicySet, RequestView

SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"


def tables_for(spec: str) -> PolicySet:
    text = (
        "apiVersion: security.weft.dev/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: p, namespace: foo}\nspec:\n"
        "  targetRefs: [{kind: Service, group: '', name: db}]\n"
        + textwrap.indent(textwrap.dedent(spec).strip(), "  ")
        + "\n"
    )
    parsed = [d.resource for d in parse_documents(documents_from_text(text, "p.yaml"))]
    assert all(isinstance(p, AuthorizationPolicy) for p in parsed)
    tables = AuthzTables("foo/waypoint")
    tables.update(parsed)  # type: ignore[arg-type]
    found = tables.for_destination("foo", "db")
    assert found is not None
    return found


def tcp(sni: str | None, **kw: Any) -> RequestView:
    return RequestView.build(
        method="",
        path=None,
        source_principal=kw.pop("principal", SLEEP),
        source_ip="10.1.0.5",
        destination_ip="10.96.0.20",
        destination_port=5432,
        sni=sni,
        **kw,
    )


ALLOW_API = "action: ALLOW\nrules:\n- when: [{key: connection.sni, values: [api.shop.example, '*.internal']}]"
DENY_EVIL = "action: DENY\nrules:\n- when: [{key: connection.sni, values: ['*.evil.example']}]"
DENY_NOT_API = (
    "action: DENY\nrules:\n- when: [{key: connection.sni, notValues: [api.shop.example]}]"
)
ALLOW_ANY_SNI = "action: ALLOW\nrules:\n- when: [{key: connection.sni, values: ['*']}]"
ALLOW_SNI_AND_PATH = (
    "action: ALLOW\nrules:\n- to: [{operation: {paths: [/x]}}]\n"
    "  when: [{key: connection.sni, values: [api.shop.example]}]"
)
ALLOW_SNI_FROM_BAR = (
    "action: ALLOW\nrules:\n- from: [{source: {namespaces: [bar]}}]\n"
    "  when: [{key: connection.sni, values: [api.shop.example]}]"
)

CASES = [
    (ALLOW_API, "api.shop.example", True),
    (ALLOW_API, "API.Shop.Example", True),  # (DNS names ignore case)
    (ALLOW_API, "db.internal", True),
    (ALLOW_API, "other.example", False),
    (ALLOW_API, "", False),  # not TLS, or a hello without SNI
    (ALLOW_API, None, False),  # a hello that could not be read: never an allow
    (DENY_EVIL, "x.evil.example", False),
    (DENY_EVIL, "api.shop.example", True),
    (DENY_EVIL, "", True),
    (DENY_EVIL, None, False),  # ... and a DENY matches
    (DENY_NOT_API, "api.shop.example", True),
    (DENY_NOT_API, "", False),
    (DENY_NOT_API, None, False),
    (ALLOW_ANY_SNI, "a.example", True),
    (ALLOW_ANY_SNI, "", False),
    (ALLOW_SNI_AND_PATH, "api.shop.example", False),  # paths: HTTP-only, so never at L4
    (ALLOW_SNI_FROM_BAR, "api.shop.example", False),  # from foo
]


@pytest.mark.parametrize(("spec", "sni", "allowed"), CASES)
def test_tcp_connection_is_judged_on_its_sni(spec: str, sni: str | None, allowed: bool) -> None:
    found = tables_for(spec)
    assert found.uses_sni
    verdict = found.evaluate(tcp(sni), l4=True)
    assert verdict.allowed is allowed, verdict.reason
    if sni is None:
        assert any("ClientHello" in note for note in verdict.notes)


def test_sni_and_source_together_at_l4() -> None:
    found = tables_for(ALLOW_SNI_FROM_BAR)
    bar = "spiffe://cluster.local/ns/bar/sa/client"
    assert found.evaluate(tcp("api.shop.example", principal=bar), l4=True).allowed
    assert not found.evaluate(tcp("other.example", principal=bar), l4=True).allowed


def test_http_requests_have_no_sni_at_the_waypoint() -> None:
    http = RequestView.build(
        method="GET", path="/", host="api.shop.example", source_principal=SLEEP
    )
    assert not tables_for(ALLOW_API).evaluate(http).allowed
    assert tables_for(DENY_EVIL).evaluate(http).allowed
    assert not tables_for(DENY_NOT_API).evaluate(http).allowed


def test_only_policies_with_sni_conditions_ask_for_it() -> None:
    assert not tables_for("action: ALLOW\nrules:\n- from: [{source: {namespaces: [foo]}}]").uses_sni
    assert tables_for(DENY_EVIL).uses_sni
