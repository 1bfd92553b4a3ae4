"""The Gateway API mesh (GAMMA) conformance cases that apply to weft, end to end in one lab.

Each test is one case of kubernetes-sigs/gateway-api `conformance/tests/mesh/` (named after its
ShortName), written here for the lab: a namespace waypoint (`weftctl waypoint apply
--enroll-namespace --wait`), the lab's `weft/http-echo` as echo-v1 and echo-v2 behind Services
(`echo` selects both; each Service has ports 80 and 8080), and a client pod that makes the
requests and reports status, response headers and what the echo saw (path, headers, Host,
version). Redirects are not followed: their status and Location are checked. A test applies its
HTTPRoute(s) with `weftctl lab apply`, waits (bounded) until the route takes effect, checks, and
deletes them with `weftctl lab delete`. The routes are written for this lab after the upstream
manifests' intent, not copied."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab, weftctl

pytestmark = pytest.mark.e2e

NS = "gamma"
CONSUMER_NS = "gamma-consumer"
SETTLE_S = 20.0  # how long a new route may take to show in the waypoint's answers


PORTS = (("http", 80), ("http-alt", 8080))  # each Service's

MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.enrolled_namespace(CONSUMER_NS),
    wl.service(NS, "echo", {"app": "echo"}, PORTS),
    wl.client_pod(NS),
    wl.client_pod(CONSUMER_NS),
    wl.versioned_echo(NS, "echo", "v1", pod_env=("POD_NAME", "POD_IP"), ports=PORTS),
    wl.versioned_echo(NS, "echo", "v2", pod_env=("POD_NAME", "POD_IP"), ports=PORTS),
)

# Run in a client pod: argv[1] is a JSON list of [host, port, path, headers]; one connection
# per request, redirects not followed. Prints one JSON list of
# {status, headers (lower-cased), version, path, host, req_headers (lower-cased)}.
CLIENT = textwrap.dedent("""
    import http.client, json, sys
    out = []
    for host, port, path, headers in json.loads(sys.argv[1]):
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
        except OSError as err:
            out.append({"status": 0, "error": repr(err)})
            continue
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        req = data.get("request", {}) if isinstance(data, dict) else {}
        seen = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
        out.append({
            "status": resp.status,
            "headers": {k.lower(): v for k, v in resp.getheaders()},
            "version": data.get("version", "") if isinstance(data, dict) else "",
            "path": req.get("path", ""),
            "host": seen.get("host", ""),
            "req_headers": seen,
        })
    print(json.dumps(out))
""")

Req = tuple[str, int, str, dict[str, str]]


def get(
    path: str, host: str = "echo", port: int = 80, with_headers: dict[str, str] | None = None,
    **headers: str,
) -> Req:  # fmt: skip
    """A GET; `x_header_set="v"` sends `x-header-set: v`, `with_headers` names them as given."""
    sent = {k.replace("_", "-"): v for k, v in headers.items()}
    return (host, port, path, {**sent, **(with_headers or {})})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("gamma")
    with wl.running_lab(f"weft-e2e-gamma-{RUN_ID}", MANIFESTS, workdir) as lab:
        applied = wl.apply_waypoint(lab, NS)
        assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
        yield lab


def send(lab: Lab, reqs: list[Req], namespace: str = NS) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = wl.in_client(lab, namespace, CLIENT, json.dumps(reqs))
    return result


def until(
    lab: Lab,
    reqs: list[Req],
    ok: Callable[[list[dict[str, Any]]], bool],
    namespace: str = NS,
) -> list[dict[str, Any]]:
    """The answers to `reqs` once `ok` holds for them (the route took effect), or the last
    answers after SETTLE_S, for the test's assertions to show what was wrong."""
    return wl.poll_until(lambda: send(lab, reqs, namespace), ok, SETTLE_S, interval=0.3)


@pytest.fixture
def route(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Apply HTTPRoute YAML with `weftctl lab apply`; all of it is deleted after the test."""
    applied: list[Path] = []

    def apply(yaml: str) -> None:
        path = tmp_path / f"route{len(applied)}.yaml"
        wl.apply_yaml(lab, path, yaml)
        applied.append(path)

    yield apply
    for path in reversed(applied):
        lab.run("delete", "-f", str(path), check=False)


def httproute(name: str, rules: str, parent: str = "echo", port: int | None = 80,
              namespace: str = NS, parent_ns: str = NS) -> str:  # fmt: skip
    port_part = f", port: {port}" if port is not None else ""
    ns_part = f", namespace: {parent_ns}" if parent_ns != namespace else ""
    return (
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        "spec:\n"
        f'  parentRefs: [{{group: "", kind: Service, name: {parent}{ns_part}{port_part}}}]\n'
        "  rules:\n" + textwrap.indent(textwrap.dedent(rules).strip("\n"), "  ") + "\n"
    )


def versions(got: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(g["status"], g.get("version", "")) for g in got]


def location(answer: dict[str, Any]) -> tuple[int, str, str, str]:
    """A redirect's status and its Location's scheme, host[:port] and path."""
    loc = urlsplit(answer.get("headers", {}).get("location", ""))
    return answer["status"], loc.scheme, loc.netloc, loc.path


# --- MeshHTTPRouteSimpleSameNamespace -----------------------------------------------------


def test_mesh_httproute_simple_same_namespace(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("simple", "- backendRefs: [{name: echo-v1, port: 80}]", port=None))
    # routed by the Service the request is addressed to, never by its Host header
    # (MeshFrontendHostname): Host echo-v2 to echo's address still takes echo's route
    reqs = [get("/"), get("/any/path"), get("/", port=8080), get("/", Host="echo-v2")]
    got = until(lab, reqs, lambda g: all(x == (200, "v1") for x in versions(g)))
    assert versions(got) == [(200, "v1")] * 4, got
    assert [g["path"] for g in got] == ["/", "/any/path", "/", "/"]
    assert got[3]["host"] == "echo-v2", got[3]


# --- MeshHTTPRouteMatching ------------------------------------------------------------------

MATCHING = """
- matches: [{path: {type: PathPrefix, value: /}}]
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /v2}}]
  backendRefs: [{name: echo-v2, port: 80}]
- matches: [{headers: [{name: version, value: one}]}]
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{headers: [{name: version, value: two}]}]
  backendRefs: [{name: echo-v2, port: 80}]
"""


def test_mesh_httproute_matching(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("matching", MATCHING))
    cases = [
        (get("/"), "v1"),
        (get("/example"), "v1"),
        (get("/v2"), "v2"),
        (get("/v2/example"), "v2"),
        (get("/v2example"), "v1"),  # PathPrefix matches whole segments
        (get("/", version="one"), "v1"),
        (get("/", version="two"), "v2"),
        (get("/v2", version="one"), "v2"),  # the longer path match wins over a header match
        (get("/v2/"), "v2"),
        (get("/foo/v2/example"), "v1"),
    ]
    want = [(200, v) for _, v in cases]
    got = until(lab, [r for r, _ in cases], lambda g: versions(g) == want)
    assert versions(got) == want, got


# --- MeshHTTPRouteQueryParamMatching --------------------------------------------------------

QUERY = """
- matches: [{queryParams: [{name: animal, value: whale}]}]
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{queryParams: [{name: animal, value: dolphin}]}]
  backendRefs: [{name: echo-v2, port: 80}]
- matches:
  - queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]
  - queryParams: [{name: ANIMAL, value: Whale}]
  backendRefs: [{name: echo-v2, port: 80}]
"""


def test_mesh_httproute_query_param_matching(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("query", QUERY))
    cases = [
        (get("/?animal=whale"), (200, "v1")),
        (get("/?animal=dolphin"), (200, "v2")),
        (get("/?animal=dolphin&color=blue"), (200, "v2")),
        (get("/?ANIMAL=Whale"), (200, "v2")),  # names are case-sensitive
        (get("/?animal=shark"), (404, "")),
        (get("/"), (404, "")),
    ]
    want = [w for _, w in cases]
    got = until(lab, [r for r, _ in cases], lambda g: versions(g) == want)
    assert versions(got) == want, got
    assert got[0]["path"] == "/?animal=whale"


# --- MeshHTTPRouteRedirectHostAndStatus -----------------------------------------------------

REDIRECT_HOST = """
- matches: [{path: {type: PathPrefix, value: /hostname-redirect}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
- matches: [{path: {type: PathPrefix, value: /host-and-status}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301}}]
- matches: [{path: {type: PathPrefix, value: /host-and-303}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 303}}]
- matches: [{path: {type: PathPrefix, value: /host-and-307}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 307}}]
- matches: [{path: {type: PathPrefix, value: /host-and-308}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 308}}]
"""


def test_mesh_httproute_redirect_host_and_status(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("redirect-host", REDIRECT_HOST))
    cases = [
        (get("/hostname-redirect"), (302, "http", "example.org", "/hostname-redirect")),
        (get("/host-and-status"), (301, "http", "example.org", "/host-and-status")),
        (get("/host-and-303"), (303, "http", "example.org", "/host-and-303")),
        (get("/host-and-307"), (307, "http", "example.org", "/host-and-307")),
        (get("/host-and-308"), (308, "http", "example.org", "/host-and-308")),
    ]
    want = [w for _, w in cases]
    got = until(lab, [r for r, _ in cases], lambda g: [location(x) for x in g] == want)
    assert [location(x) for x in got] == want, got
    assert all(g["version"] == "" for g in got), "a redirect must not reach a backend"


# --- MeshHTTPRouteRedirectPath --------------------------------------------------------------

REDIRECT_PATH = """
- matches: [{path: {type: PathPrefix, value: /original-prefix}}]
  filters:
  - type: RequestRedirect
    requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}
- matches: [{path: {type: PathPrefix, value: /full}}]
  filters:
  - type: RequestRedirect
    requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /full-path-replaced}}
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
      statusCode: 301
      path: {type: ReplaceFullPath, replaceFullPath: /replaced}
"""


def test_mesh_httproute_redirect_path(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("redirect-path", REDIRECT_PATH))
    cases = [
        (get("/original-prefix/lemon"), (302, "http", "echo", "/replacement-prefix/lemon")),
        (get("/full/path/original"), (302, "http", "echo", "/full-path-replaced")),
        (get("/path-and-host"), (302, "http", "example.org", "/replacement-prefix")),
        (get("/path-and-status"), (301, "http", "echo", "/replaced")),
    ]
    want = [w for _, w in cases]
    got = until(lab, [r for r, _ in cases], lambda g: [location(x) for x in g] == want)
    assert [location(x) for x in got] == want, got


# --- MeshHTTPRouteRedirectPort --------------------------------------------------------------

REDIRECT_PORT = """
- matches: [{path: {type: PathPrefix, value: /port}}]
  filters: [{type: RequestRedirect, requestRedirect: {port: 8083}}]
- matches: [{path: {type: PathPrefix, value: /port-and-host}}]
  filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, port: 8083}}]
- matches: [{path: {type: PathPrefix, value: /port-and-status}}]
  filters: [{type: RequestRedirect, requestRedirect: {port: 8083, statusCode: 301}}]
- matches: [{path: {type: PathPrefix, value: /port-and-host-and-status}}]
  filters:
  - type: RequestRedirect
    requestRedirect: {port: 8083, hostname: example.org, statusCode: 308}
"""


def test_mesh_httproute_redirect_port(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("redirect-port", REDIRECT_PORT))
    cases = [
        (get("/port"), (302, "http", "echo:8083", "/port")),
        (get("/port-and-host"), (302, "http", "example.org:8083", "/port-and-host")),
        (get("/port-and-status"), (301, "http", "echo:8083", "/port-and-status")),
        (
            get("/port-and-host-and-status"),
            (308, "http", "example.org:8083", "/port-and-host-and-status"),
        ),
    ]
    want = [w for _, w in cases]
    got = until(lab, [r for r, _ in cases], lambda g: [location(x) for x in g] == want)
    assert [location(x) for x in got] == want, got


# --- MeshHTTPRouteSchemeRedirect ------------------------------------------------------------

REDIRECT_SCHEME = """
- matches: [{path: {type: PathPrefix, value: /scheme}}]
  filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
- matches: [{path: {type: PathPrefix, value: /scheme-and-host}}]
  filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: example.org}}]
- matches: [{path: {type: PathPrefix, value: /scheme-and-status}}]
  filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
- matches: [{path: {type: PathPrefix, value: /scheme-and-port}}]
  filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 8443}}]
"""


def test_mesh_httproute_scheme_redirect(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("redirect-scheme", REDIRECT_SCHEME))
    # no port given: the scheme's well-known port, left out of Location (443 for https)
    cases = [
        (get("/scheme"), (302, "https", "echo", "/scheme")),
        (get("/scheme-and-host"), (302, "https", "example.org", "/scheme-and-host")),
        (get("/scheme-and-status"), (301, "https", "echo", "/scheme-and-status")),
        (get("/scheme-and-port"), (302, "https", "echo:8443", "/scheme-and-port")),
    ]
    want = [w for _, w in cases]
    got = until(lab, [r for r, _ in cases], lambda g: [location(x) for x in g] == want)
    assert [location(x) for x in got] == want, got


# --- MeshHTTPRouteRewritePath ---------------------------------------------------------------

REWRITE = """
- matches: [{path: {type: PathPrefix, value: /prefix/one}}]
  filters:
  - type: URLRewrite
    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}}
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /full/one}}]
  filters:
  - type: URLRewrite
    urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /one}}
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /strip-prefix}}]
  filters:
  - type: URLRewrite
    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}]
  filters:
  - type: URLRewrite
    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
  - &modify
    type: RequestHeaderModifier
    requestHeaderModifier:
      set: [{name: X-Header-Set, value: set-overwrites-values}]
      add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]
      remove: [X-Header-Remove]
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}]
  filters:
  - type: URLRewrite
    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}
  - *modify
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /rewrite-host}}]
  filters:
  - type: URLRewrite
    urlRewrite: {hostname: mydomain.example.com}
  backendRefs: [{name: echo-v1, port: 80}]
"""


MODIFY_IN = {"X-Header-Remove": "remove-val", "X-Header-Add-Append": "append-val-1",
             "X-Header-Set": "set-val"}  # fmt: skip


def _values(header: str | list[str]) -> list[str]:
    """A repeated header's values, sorted, whether the echo joined them or listed them."""
    return sorted(header if isinstance(header, list) else (v.strip() for v in header.split(",")))


def test_mesh_httproute_rewrite_path(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("rewrite", REWRITE))
    cases = [
        (get("/prefix/one/two"), "/one/two"),
        (get("/prefix/one"), "/one"),
        (get("/full/one/two"), "/one"),
        (get("/strip-prefix/three"), "/three"),
        (get("/strip-prefix"), "/"),
        (get("/strip-prefix/three?x=1"), "/three?x=1"),  # the query is kept
        (get("/full/rewrite-path-and-modify-headers/test", with_headers=MODIFY_IN), "/test"),
        (get("/prefix/rewrite-path-and-modify-headers/one", with_headers=MODIFY_IN), "/prefix/one"),
        (get("/rewrite-host/a"), "/rewrite-host/a"),
    ]
    want = [(200, "v1", p) for _, p in cases]

    def seen(g: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
        return [(x["status"], x.get("version", ""), x.get("path", "")) for x in g]

    got = until(lab, [r for r, _ in cases], lambda g: seen(g) == want)
    assert seen(got) == want, got
    assert got[-1]["host"] == "mydomain.example.com", got[-1]
    assert got[0]["host"] == "echo", got[0]
    # a rewrite and a header modifier in one rule: both apply
    for answer in got[-3:-1]:
        h = answer["req_headers"]
        assert h["x-header-set"] == "set-overwrites-values", h
        assert h["x-header-add"] == "header-val-1", h
        assert _values(h["x-header-add-append"]) == ["append-val-1", "header-val-2"], h
        assert "x-header-remove" not in h, h


# --- MeshHTTPRouteRequestHeaderModifier -----------------------------------------------------

HEADERS = """
- matches: [{path: {type: PathPrefix, value: /set}}]
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier: {set: [{name: X-Header-Set, value: set-overwrites-values}]}
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /add}}]
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier: {add: [{name: X-Header-Add, value: add-appends-values}]}
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /remove}}]
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier: {remove: [X-Header-Remove]}
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /multiple}}]
  filters:
  - type: RequestHeaderModifier
    requestHeaderModifier:
      set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}]
      add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}]
      remove: [X-Header-Remove-1, X-Header-Remove-2]
  backendRefs: [{name: echo-v1, port: 80}]
"""


def test_mesh_httproute_request_header_modifier(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("headers", HEADERS))
    reqs = [
        get("/set", some_other_header="val"),
        get("/set", x_header_set="some-other-value"),
        get("/add", some_other_header="val"),
        get("/add", x_header_add="some-other-value"),
        get("/remove", x_header_remove="val"),
        get(
            "/multiple",
            x_header_set_2="set-val",
            x_header_add_2="add-val",
            x_header_remove_1="rm-1",
            x_header_remove_2="rm-2",
            another="stays",
        ),
    ]
    got = until(lab, reqs, lambda g: g[0].get("req_headers", {}).get("x-header-set") is not None)
    h = [g.get("req_headers", {}) for g in got]
    assert [g["status"] for g in got] == [200] * 6, got
    assert h[0]["x-header-set"] == "set-overwrites-values" and h[0]["some-other-header"] == "val"
    assert h[1]["x-header-set"] == "set-overwrites-values", h[1]
    assert h[2]["x-header-add"] == "add-appends-values", h[2]
    # add appends: the echo joins repeated headers with ", " (or keeps a list)
    assert _values(h[3]["x-header-add"]) == ["add-appends-values", "some-other-value"], h[3]
    assert "x-header-remove" not in h[4], h[4]
    m = h[5]
    assert (m["x-header-set-1"], m["x-header-set-2"]) == ("header-set-1", "header-set-2"), m
    assert m["x-header-add-1"] == "header-add-1", m
    assert _values(m["x-header-add-2"]) == ["add-val", "header-add-2"], m
    assert "x-header-remove-1" not in m and "x-header-remove-2" not in m, m
    assert m["another"] == "stays", m


# --- MeshHTTPRouteNamedRule -----------------------------------------------------------------

NAMED = """
- name: named-rule
  matches: [{path: {type: PathPrefix, value: /named}}]
  backendRefs: [{name: echo-v1, port: 80}]
- matches: [{path: {type: PathPrefix, value: /unnamed}}]
  backendRefs: [{name: echo-v2, port: 80}]
"""


def test_mesh_httproute_named_rule(lab: Lab, route: Callable[[str], None]) -> None:
    route(httproute("named", NAMED))
    reqs = [get("/named"), get("/unnamed"), get("/neither")]
    want = [(200, "v1"), (200, "v2"), (404, "")]
    got = until(lab, reqs, lambda g: versions(g) == want)
    assert versions(got) == want, got
    # the named rule is accepted as written (no "Dropped Rule", no PartiallyInvalid)
    status = wl.poll_until(
        lambda: weftctl("route", "--lab", lab.name, "status", "-n", NS, "named").stdout,
        lambda s: "Accepted" in s,
        SETTLE_S,
    )
    assert "Accepted" in status and "PartiallyInvalid" not in status, status


# --- MeshPorts ------------------------------------------------------------------------------


def test_mesh_ports(lab: Lab, route: Callable[[str], None]) -> None:
    response_set = """
- filters:
  - type: ResponseHeaderModifier
    responseHeaderModifier: {{set: [{{name: X-Header-Set, value: {v}}}]}}
  backendRefs: [{{name: echo-{v}, port: 80}}]
"""
    route(httproute("ports-v1", response_set.format(v="v1"), parent="echo-v1", port=80))
    route(httproute("ports-v2", response_set.format(v="v2"), parent="echo-v2", port=None))
    reqs = [
        get("/", host="echo-v1", port=80),  # the port the route names
        get("/", host="echo-v1", port=8080),  # another port of the Service: not routed by it
        get("/", host="echo-v2", port=80),  # no port in the parentRef: every port
        get("/", host="echo-v2", port=8080),
    ]
    want = [(200, "v1", "v1"), (200, "v1", None), (200, "v2", "v2"), (200, "v2", "v2")]

    def seen(g: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
        return [
            (x["status"], x.get("version", ""), x.get("headers", {}).get("x-header-set")) for x in g
        ]

    got = until(lab, reqs, lambda g: seen(g) == want)
    assert seen(got) == want, got


# --- MeshConsumerRoute ----------------------------------------------------------------------


def test_mesh_consumer_route(lab: Lab, route: Callable[[str], None]) -> None:
    rules = f"""
- filters:
  - type: ResponseHeaderModifier
    responseHeaderModifier: {{set: [{{name: X-Header-Set, value: set}}]}}
  backendRefs: [{{name: echo-v1, namespace: {NS}, port: 80}}]
"""
    route(httproute("consumer", rules, parent="echo-v1", namespace=CONSUMER_NS))
    req = [get("/", host=f"echo-v1.{NS}", port=80)]

    def seen(g: list[dict[str, Any]]) -> list[tuple[int, str, str | None]]:
        return [
            (x["status"], x.get("version", ""), x.get("headers", {}).get("x-header-set")) for x in g
        ]

    consumer = until(lab, req, lambda g: seen(g) == [(200, "v1", "set")], CONSUMER_NS)
    assert seen(consumer) == [(200, "v1", "set")], consumer
    # the producer's own clients are not affected by the consumer's route
    producer = send(lab, req * 3, NS)
    assert seen(producer) == [(200, "v1", None)] * 3, producer
