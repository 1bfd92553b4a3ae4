"""HTTPRoute filters: redirects, rewrites, header modifiers, mirrors, from the mesh conformance
tests (MeshHTTPRouteRedirect*, MeshHTTPRouteRewritePath, MeshHTTPRouteRequestHeaderModifier)
and the spec's own tables (ReplacePrefixMatch, the redirect port rules)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.unit.waypoint.routing_cases import MESH, never, request, seeded, table
from waypoint.routing import (
    Forward,
    HeaderOps,
    MirrorTarget,
    Respond,
    modify_headers,
    route,
)


def mesh_route(rules: str, *, name: str = "r", parent: str = "port: 80") -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - {{group: "", kind: Service, name: echo, {parent}}}
  rules:
{rules}
"""


def redirect(decision: Forward | Respond) -> tuple[int, str, str, str | None, str]:
    """(status, scheme, host, port, path?query) of a redirect."""
    assert isinstance(decision, Respond), decision
    url = urlsplit(decision.location)
    port = str(url.port) if url.port is not None else None
    full = url.path + (f"?{url.query}" if url.query else "")
    return decision.status, url.scheme, url.hostname or "", port, full


# --- redirects ---------------------------------------------------------------------------------

REDIRECT_HOST_AND_STATUS = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /host-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301, hostname: example.org}}]
"""
)

REDIRECT_PATH = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /original-prefix}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}
  - matches: [{path: {type: PathPrefix, value: /path-and-host}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.org
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}
  - matches: [{path: {type: PathPrefix, value: /path-and-status}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}
        statusCode: 301
  - matches: [{path: {type: PathPrefix, value: /full-path-and-host}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: example.org
        path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}
  - matches: [{path: {type: PathPrefix, value: /full-path-and-status}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}
        statusCode: 301
"""
)

REDIRECT_PORT = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /port-and-host-and-status}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {port: 8083, hostname: example.org, statusCode: 302}}
"""
)

REDIRECT_SCHEME = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /scheme}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-host}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, scheme: https}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-status}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-and-host-and-status}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 302, hostname: example.org}}
"""
)

REDIRECT_STATUS = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 303}}]
  - matches: [{path: {type: PathPrefix, value: /redirect-307}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]
  - matches: [{path: {type: PathPrefix, value: /redirect-308}}]
    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 308}}]
"""
)

Expected = tuple[int, str, str, str | None, str]


@pytest.mark.parametrize(
    ("manifest", "path", "expected"),
    [
        # MeshHTTPRouteRedirectHostAndStatus
        (
            REDIRECT_HOST_AND_STATUS,
            "/hostname-redirect",
            (302, "http", "example.org", None, "/hostname-redirect"),
        ),
        (
            REDIRECT_HOST_AND_STATUS,
            "/host-and-status",
            (301, "http", "example.org", None, "/host-and-status"),
        ),
        # MeshHTTPRouteRedirectPath
        (
            REDIRECT_PATH,
            "/original-prefix/lemon",
            (302, "http", "echo", None, "/replacement-prefix/lemon"),
        ),
        (
            REDIRECT_PATH,
            "/full/path/original",
            (302, "http", "echo", None, "/full-path-replacement"),
        ),
        (
            REDIRECT_PATH,
            "/path-and-host",
            (302, "http", "example.org", None, "/replacement-prefix"),
        ),
        (REDIRECT_PATH, "/path-and-status", (301, "http", "echo", None, "/replacement-prefix")),
        (
            REDIRECT_PATH,
            "/full-path-and-host",
            (302, "http", "example.org", None, "/replacement-full"),
        ),
        (REDIRECT_PATH, "/full-path-and-status", (301, "http", "echo", None, "/replacement-full")),
        (
            REDIRECT_PATH,
            "/original-prefix/lemon?x=1&y",
            (302, "http", "echo", None, "/replacement-prefix/lemon?x=1&y"),
        ),
        # MeshHTTPRouteRedirectPort
        (REDIRECT_PORT, "/port", (302, "http", "echo", "8083", "/port")),
        (REDIRECT_PORT, "/port-and-host", (302, "http", "example.org", "8083", "/port-and-host")),
        (REDIRECT_PORT, "/port-and-status", (301, "http", "echo", "8083", "/port-and-status")),
        (
            REDIRECT_PORT,
            "/port-and-host-and-status",
            (302, "http", "example.org", "8083", "/port-and-host-and-status"),
        ),
        # MeshHTTPRouteSchemeRedirect: https and no port: 443, left out of Location
        (REDIRECT_SCHEME, "/scheme", (302, "https", "echo", None, "/scheme")),
        (
            REDIRECT_SCHEME,
            "/scheme-and-host",
            (302, "https", "example.org", None, "/scheme-and-host"),
        ),
        (REDIRECT_SCHEME, "/scheme-and-status", (301, "https", "echo", None, "/scheme-and-status")),
        (
            REDIRECT_SCHEME,
            "/scheme-and-host-and-status",
            (302, "https", "example.org", None, "/scheme-and-host-and-status"),
        ),
        # MeshHTTPRoute303Redirect, 307, 308
        (REDIRECT_STATUS, "/redirect", (303, "http", "echo", None, "/redirect")),
        (REDIRECT_STATUS, "/redirect-307", (307, "http", "echo", None, "/redirect-307")),
        (REDIRECT_STATUS, "/redirect-308", (308, "http", "echo", None, "/redirect-308")),
    ],
)
def test_mesh_redirects(manifest: str, path: str, expected: Expected) -> None:
    t = table(manifest)
    assert redirect(route(t, request(path, host="echo"), never)) == expected


def test_a_redirect_takes_the_host_without_its_port_and_keeps_a_response_header_modifier() -> None:
    t = table(
        mesh_route(
            """
  - filters:
    - {type: RequestRedirect, requestRedirect: {statusCode: 301}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Why, value: moved}]}}
"""
        )
    )
    d = route(t, request("/a", host="echo:80"), never)
    assert isinstance(d, Respond)
    assert d.headers == (("location", "http://echo/a"), ("X-Why", "moved"))
    d = route(t, request("/a", host="[fd00::1]:80"), never)
    assert isinstance(d, Respond) and d.location == "http://[fd00::1]/a"


PORT_AND_SCHEME = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-nil}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-80}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 80, hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-8080}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 8080, hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-nil-and-port-443}}]
    filters: [{type: RequestRedirect, requestRedirect: {port: 443, hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-https-and-port-nil}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-https-and-port-443}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 443, hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-https-and-port-8443}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443, hostname: example.org}}]
  - matches: [{path: {type: PathPrefix, value: /scheme-http-and-port-nil}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: http, hostname: example.org}}]
""",
    parent="port: null",
)


@pytest.mark.parametrize(
    ("service_port", "scheme", "path", "expected"),
    [
        # HTTPRouteRedirectPortAndScheme, with the Service port as the mesh's "listener"
        (80, "http", "/scheme-nil-and-port-nil", ("http", None)),
        (80, "http", "/scheme-nil-and-port-80", ("http", None)),
        (80, "http", "/scheme-nil-and-port-8080", ("http", "8080")),
        (80, "http", "/scheme-https-and-port-nil", ("https", None)),
        (80, "http", "/scheme-https-and-port-443", ("https", None)),
        (80, "http", "/scheme-https-and-port-8443", ("https", "8443")),
        (8080, "http", "/scheme-nil-and-port-nil", ("http", "8080")),
        (8080, "http", "/scheme-nil-and-port-80", ("http", None)),
        (8080, "http", "/scheme-https-and-port-nil", ("https", None)),
        (443, "https", "/scheme-nil-and-port-nil", ("https", None)),
        (443, "https", "/scheme-nil-and-port-443", ("https", None)),
        (443, "https", "/scheme-http-and-port-nil", ("http", None)),
        (8443, "https", "/scheme-nil-and-port-nil", ("https", "8443")),
        (80, "http", "/scheme-nil-and-port-443", ("http", "443")),
    ],
)
def test_redirect_port_follows_the_scheme_and_the_service_port(
    service_port: int, scheme: str, path: str, expected: tuple[str, str | None]
) -> None:
    t = table(PORT_AND_SCHEME, port=service_port)
    status, got_scheme, host, port, _ = redirect(
        route(t, request(path, host="echo", scheme=scheme), never)
    )
    assert (status, host) == (302, "example.org")
    assert (got_scheme, port) == expected


# --- ReplacePrefixMatch: the spec's table --------------------------------------------------------

SPEC_PREFIX_TABLE = [
    # request path, prefix match, replace prefix, modified path
    ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
    ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
    ("/foo", "/foo", "/xyz", "/xyz"),
    ("/foo/", "/foo", "/xyz", "/xyz/"),
    ("/foo/bar", "/foo", "", "/bar"),
    ("/foo/", "/foo", "", "/"),
    ("/foo", "/foo", "", "/"),
    ("/foo/", "/foo", "/", "/"),
    ("/foo", "/foo", "/", "/"),
    # and a few more: the root prefix, deeper paths, the query string kept
    ("/a/b", "/", "/x", "/x/a/b"),
    ("/foo/bar/baz", "/foo/bar", "/q", "/q/baz"),
    ("/foo/bar?x=1", "/foo", "/xyz", "/xyz/bar?x=1"),
    ("/foo?x=1", "/foo", "/", "/?x=1"),
]


@pytest.mark.parametrize(("path", "prefix", "replacement", "expected"), SPEC_PREFIX_TABLE)
@pytest.mark.parametrize("kind", ["URLRewrite", "RequestRedirect"])
def test_replace_prefix_match_follows_the_spec_table(
    kind: str, path: str, prefix: str, replacement: str, expected: str
) -> None:
    field = "urlRewrite" if kind == "URLRewrite" else "requestRedirect"
    backends = "\n    backendRefs: [{name: echo-v1, port: 80}]" if kind == "URLRewrite" else ""
    t = table(
        mesh_route(
            f"""
  - matches: [{{path: {{type: PathPrefix, value: "{prefix}"}}}}]
    filters:
    - type: {kind}
      {field}: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: "{replacement}"}}}}{backends}
"""
        )
    )
    d = route(t, request(path), never)
    if kind == "URLRewrite":
        assert isinstance(d, Forward) and d.path == expected
    else:
        assert redirect(d)[4] == expected


REWRITE_PATH = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/one}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /test}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Header-Set, value: set-overwrites-values}]
        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
        remove: [X-Header-Remove]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /host}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example.org}}]
    backendRefs: [{name: echo-v1, port: 80}]
"""
)

SENT_HEADERS = {
    "X-Header-Remove": "remove-val",
    "X-Header-Add-Append": "append-val-1",
    "X-Header-Set": "set-val",
}
EXPECTED_HEADERS = {
    "X-Header-Add": "header-val-1",
    "X-Header-Add-Append": "append-val-1,header-val-2",
    "X-Header-Set": "set-overwrites-values",
}


@pytest.mark.parametrize(
    ("path", "headers", "expected_path", "expected_headers"),
    [
        ("/prefix/one/two", {}, "/one/two", {}),
        ("/strip-prefix/three", {}, "/three", {}),
        ("/strip-prefix", {}, "/", {}),
        ("/full/one/two", {}, "/one", {}),
        ("/full/rewrite-path-and-modify-headers/test", SENT_HEADERS, "/test", EXPECTED_HEADERS),
        (
            "/prefix/rewrite-path-and-modify-headers/one",
            SENT_HEADERS,
            "/prefix/one",
            EXPECTED_HEADERS,
        ),
    ],
)
def test_mesh_httproute_rewrite_path(
    path: str, headers: dict[str, str], expected_path: str, expected_headers: dict[str, str]
) -> None:
    d = route(table(REWRITE_PATH), request(path, headers=headers), never)
    assert isinstance(d, Forward)
    assert (d.backend_name, d.path, d.host) == ("echo-v1", expected_path, "echo")
    assert {n.lower(): v for n, v in d.request_headers} == {
        n.lower(): v for n, v in expected_headers.items()
    }


def test_url_rewrite_hostname_replaces_the_host_and_the_host_header() -> None:
    req = request("/host/x", headers=(("Host", "echo"), ("a", "b")), host="")
    d = route(table(REWRITE_PATH), req, never)
    assert isinstance(d, Forward)
    assert d.host == "rewritten.example.org"
    assert d.request_headers == (("Host", "rewritten.example.org"), ("a", "b"))
    assert d.path == "/host/x"


# --- header modifiers ----------------------------------------------------------------------------

HEADER_RULES = """
  - matches: [{path: {type: PathPrefix, value: /set}}]
    FILTERS{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}}]
    BACKEND
  - matches: [{path: {type: PathPrefix, value: /add}}]
    FILTERS{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}}]
    BACKEND
  - matches: [{path: {type: PathPrefix, value: /remove}}]
    FILTERS{type: RequestHeaderModifier, requestHeaderModifier: {remove: [X-Header-Remove]}}]
    BACKEND
  - matches: [{path: {type: PathPrefix, value: /multiple}}]
    FILTERS{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}], add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}], remove: [X-Header-Remove-1, X-Header-Remove-2]}}]
    BACKEND
  - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]
    FILTERS{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Header-Set, value: header-set}], add: [{name: X-Header-Add, value: header-add}], remove: [X-Header-Remove]}}]
    BACKEND
"""
RULE_LEVEL = mesh_route(
    HEADER_RULES.replace("FILTERS", "filters: [").replace(
        "BACKEND", "backendRefs: [{name: echo-v1, port: 8080}]"
    )
)
BACKEND_LEVEL = mesh_route(
    HEADER_RULES.replace(
        "    FILTERS", "    backendRefs: [{name: echo-v1, port: 8080, filters: ["
    ).replace("]}}]\n    BACKEND", "]}}]}]")
)

HEADER_CASES = [
    (
        "/set",
        {"Some-Other-Header": "val"},
        {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"},
    ),
    (
        "/set",
        {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
        {"Some-Other-Header": "val", "X-Header-Set": "set-overwrites-values"},
    ),
    (
        "/add",
        {"Some-Other-Header": "val"},
        {"Some-Other-Header": "val", "X-Header-Add": "add-appends-values"},
    ),
    (
        "/add",
        {"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
        {"Some-Other-Header": "val", "X-Header-Add": "some-other-value,add-appends-values"},
    ),
    ("/remove", {"X-Header-Remove": "val"}, {}),
    (
        "/multiple",
        {
            "X-Header-Set-2": "set-val-2",
            "X-Header-Add-2": "add-val-2",
            "X-Header-Remove-2": "remove-val-2",
            "Another-Header": "another-header-val",
        },
        {
            "X-Header-Set-1": "header-set-1",
            "X-Header-Set-2": "header-set-2",
            "X-Header-Add-1": "header-add-1",
            "X-Header-Add-2": "add-val-2,header-add-2",
            "X-Header-Add-3": "header-add-3",
            "Another-Header": "another-header-val",
        },
    ),
    (
        "/case-insensitivity",
        {
            "x-header-set": "original-val-set",
            "x-header-add": "original-val-add",
            "x-header-remove": "original-val-remove",
            "Another-Header": "another-header-val",
        },
        {
            "X-Header-Set": "header-set",
            "X-Header-Add": "original-val-add,header-add",
            "Another-Header": "another-header-val",
        },
    ),
]


@pytest.mark.parametrize("manifest", [RULE_LEVEL, BACKEND_LEVEL], ids=["rule", "backendRef"])
@pytest.mark.parametrize(("path", "sent", "expected"), HEADER_CASES)
def test_mesh_httproute_request_header_modifier(
    manifest: str, path: str, sent: dict[str, str], expected: dict[str, str]
) -> None:
    d = route(table(manifest), request(path, headers=sent), never)
    assert isinstance(d, Forward) and d.backend_name == "echo-v1" and d.path == path
    got = {n.lower(): v for n, v in d.request_headers}
    assert got == {n.lower(): v for n, v in expected.items()}
    assert len(got) == len(d.request_headers)  # one line per header


@pytest.mark.parametrize(
    ("headers", "ops", "expected"),
    [
        # set: one line where the first was, every other line of that name gone
        (
            (("a", "1"), ("B", "2"), ("b", "3"), ("c", "4")),
            HeaderOps(set=(("b", "x"),)),
            (("a", "1"), ("b", "x"), ("c", "4")),
        ),
        ((("a", "1"),), HeaderOps(set=(("New", "x"),)), (("a", "1"), ("New", "x"))),
        # add: appended to the last line of that name, or a new line
        ((("a", "1"), ("A", "2")), HeaderOps(add=(("a", "3"),)), (("a", "1"), ("A", "2,3"))),
        ((("a", ""),), HeaderOps(add=(("a", "3"),)), (("a", "3"),)),
        ((), HeaderOps(add=(("a", "3"),)), (("a", "3"),)),
        # Set-Cookie values cannot be joined: always a line of its own
        (
            (("Set-Cookie", "a=1"),),
            HeaderOps(add=(("set-cookie", "b=2"),)),
            (("Set-Cookie", "a=1"), ("set-cookie", "b=2")),
        ),
        # remove: every line, any case; a header not there is fine
        ((("a", "1"), ("A", "2"), ("b", "3")), HeaderOps(remove=("a", "zz")), (("b", "3"),)),
        # set, then add, then remove within one modifier
        (
            (),
            HeaderOps(set=(("s", "1"),), add=(("d", "2"),), remove=("x",)),
            (("s", "1"), ("d", "2")),
        ),
    ],
)
def test_modify_headers(
    headers: tuple[tuple[str, str], ...], ops: HeaderOps, expected: tuple[tuple[str, str], ...]
) -> None:
    assert modify_headers(headers, (ops,)) == expected


def test_response_header_modifiers_from_rule_then_backend_are_handed_back_in_order() -> None:
    t = table(
        mesh_route(
            """
  - filters:
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Rule, value: r}], remove: [Server]}}
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Rule, value: b}]}}
"""
        )
    )
    d = route(t, request("/"), never)
    assert isinstance(d, Forward)
    assert d.response_header_ops == (
        HeaderOps(set=(("X-Rule", "r"),), remove=("Server",)),
        HeaderOps(add=(("X-Rule", "b"),)),
    )
    response = (("Server", "echo"), ("x-rule", "old"), ("Content-Length", "0"))
    assert modify_headers(response, d.response_header_ops) == (
        ("X-Rule", "r,b"),
        ("Content-Length", "0"),
    )


def test_filters_apply_in_order_rule_then_backend() -> None:
    t = table(
        mesh_route(
            """
  - filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-order, value: rule}]}}
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - {type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-order, value: backend}]}}
"""
        )
    )
    d = route(t, request("/", headers={"X-Order": "client"}), never)
    assert isinstance(d, Forward) and d.request_headers == (("x-order", "rule,backend"),)


# --- mirrors -------------------------------------------------------------------------------------

MIRRORS = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v3, namespace: other, port: 80}}}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /percent}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}, percent: 20}}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /fraction}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}, fraction: {numerator: 1, denominator: 4}}}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /none}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 8080}, percent: 0}}
    backendRefs: [{name: echo-v1, port: 8080}]
"""
)


def test_request_mirrors_are_returned_with_the_forward() -> None:
    d = route(table(MIRRORS), request("/mirror"), never)
    assert isinstance(d, Forward) and d.backend_name == "echo-v1"
    assert d.mirrors == (MirrorTarget(MESH, "echo-v2", 8080), MirrorTarget("other", "echo-v3", 80))
    d = route(table(MIRRORS), request("/none"), never)
    assert isinstance(d, Forward) and d.mirrors == ()


@pytest.mark.parametrize(("path", "share"), [("/percent", 0.20), ("/fraction", 0.25)])
def test_a_mirror_percentage_is_honoured_within_five_points(path: str, share: float) -> None:
    t = table(MIRRORS)
    rand = seeded(11)
    mirrored = 0
    for _ in range(2000):
        d = route(t, request(path), rand)
        assert isinstance(d, Forward)
        mirrored += bool(d.mirrors)
    assert abs(mirrored / 2000 - share) < 0.05


BACKEND_REDIRECT = mesh_route(
    """
  - matches: [{path: {type: PathPrefix, value: /full}}]
    filters:
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Order, value: rule}]}}
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - {type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /redirected-full}}}
      - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Order, value: backend}]}}
  - matches: [{path: {type: PathPrefix, value: /prefix}}]
    backendRefs:
    - name: echo-v1
      port: 8080
      filters:
      - {type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /redirected-prefix}}}
"""
)


@pytest.mark.parametrize(
    ("path", "location"),
    [
        # HTTPRouteBackendRequestRedirect
        ("/full", "http://echo/redirected-full"),
        ("/full/path", "http://echo/redirected-full"),
        ("/prefix", "http://echo/redirected-prefix"),
        ("/prefix/path", "http://echo/redirected-prefix/path"),
    ],
)
def test_a_redirect_on_the_picked_backend(path: str, location: str) -> None:
    d = route(table(BACKEND_REDIRECT), request(path), never)
    assert isinstance(d, Respond) and (d.status, d.location) == (302, location)
    if path.startswith("/full"):
        assert d.headers == (("location", location), ("X-Order", "rule,backend"))


def test_a_header_modifier_setting_host_changes_the_forwarded_host() -> None:
    t = table(
        mesh_route(
            """
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: Host, value: other.example}]}}]
    backendRefs: [{name: echo-v1, port: 8080}]
"""
        )
    )
    d = route(t, request(headers={"host": "echo"}, host=""), never)
    assert isinstance(d, Forward)
    assert (d.host, d.request_headers) == ("other.example", (("Host", "other.example"),))
