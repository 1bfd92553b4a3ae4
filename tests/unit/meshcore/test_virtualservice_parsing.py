"""VirtualService (networking.weft.dev/v1): Istio's fields and meaning, errors with field paths,
the round trip through the wire, and the controller's problems (`meshcore.vscheck`)."""

from __future__ import annotations

import textwrap

import pytest

from meshcore.api.convert import from_proto, to_proto
from meshcore.resources.names import service_of_host
from meshcore.resources.virtualservice import (
    Abort,
    Delay,
    Destination,
    Fault,
    HeaderOperations,
    Headers,
    Retries,
    StringMatch,
    StringMatchType,
    VirtualService,
    host_matches,
    parse_duration,
)
from meshcore.vscheck import virtual_service_problem
from tests.manifest_parsing import ManifestParser

_parser = ManifestParser("vs.yaml")
parse, parse_one, only_error = _parser.parse, _parser.parse_one, _parser.only_error


def vs(spec: str, *, api: str = "networking.weft.dev/v1", name: str = "r", ns: str = "foo") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        f"apiVersion: {api}\nkind: VirtualService\nmetadata:\n  name: {name}\n"
        f"  namespace: {ns}\nspec:\n{body}\n"
    )


FULL = """
hosts: [reviews, reviews.foo.svc.cluster.local]
gateways: [mesh]
tcp: [{route: [{destination: {host: reviews}}]}]
http:
- name: api
  match:
  - uri: {prefix: /api}
    headers: {x-user: {exact: bob}, x-any: {}}
    queryParams: {v: {regex: "[0-9]+"}}
    method: {exact: GET}
    sourceLabels: {app: web}
    ignoreUriCase: true
  fault:
    delay: {fixedDelay: 1.5s, percentage: {value: 10}}
    abort: {httpStatus: 503, percentage: {value: 50}}
  route:
  - destination: {host: reviews, subset: v1, port: {number: 8080}}
    weight: 90
    headers: {response: {set: {x-v: one}}}
  - destination: {host: reviews.foo, subset: v2}
    weight: 10
  timeout: 10s
  retries: {attempts: 3, perTryTimeout: 250ms, retryOn: "5xx,connect-failure,409"}
  mirror: {host: shadow}
  mirrorPercentage: {value: 25}
  rewrite: {uri: /v1, authority: new.example}
  headers: {request: {set: {x-a: "1"}, add: {x-b: "2"}, remove: [x-c]}}
- name: old
  match: [{uri: {exact: /old}}]
  redirect: {uri: /new, authority: web, redirectCode: 308, scheme: https, port: 8443}
- route: [{destination: {host: reviews}}]
  fault: {abort: {grpcStatus: UNAVAILABLE}}
"""


def test_full_virtual_service_parses_into_typed_values() -> None:
    (parsed,) = parse(vs(FULL))
    v = parsed.resource
    assert isinstance(v, VirtualService)
    assert v.hosts == ("reviews", "reviews.foo.svc.cluster.local")
    api, old, grpc = v.http
    (m,) = api.match
    assert m.uri == StringMatch(StringMatchType.PREFIX, "/api")
    assert dict(m.headers)["x-user"] == StringMatch(StringMatchType.EXACT, "bob")
    assert dict(m.headers)["x-any"] == StringMatch(StringMatchType.REGEX, ".*")  # presence
    assert dict(m.query_params)["v"].type is StringMatchType.REGEX
    assert m.method == StringMatch(StringMatchType.EXACT, "GET")
    assert m.source_labels == {"app": "web"} and m.ignore_uri_case
    assert api.fault == Fault(Delay(1.5, 10.0), Abort(503, "", 50.0))
    assert api.route[0].destination == Destination("reviews", "v1", 8080)
    assert api.route[0].weight == 90
    assert api.route[0].headers.response == HeaderOperations(set=(("x-v", "one"),))
    assert api.route[1].destination == Destination("reviews.foo", "v2", None)
    assert api.timeout == 10.0
    assert api.retries == Retries(3, 0.25, ("5xx", "connect-failure", "409"))
    assert api.mirror == Destination("shadow") and api.mirror_percentage == 25.0
    assert api.rewrite is not None and api.rewrite.uri == "/v1"
    assert api.headers == Headers(
        HeaderOperations((("x-a", "1"),), (("x-b", "2"),), ("x-c",)), HeaderOperations()
    )
    assert old.redirect is not None and old.redirect.redirect_code == 308
    assert grpc.fault == Fault(None, Abort(None, "UNAVAILABLE", 0.0))  # Istio: unset is 0 %
    assert grpc.retries is None  # Istio's default policy, applied by the waypoint
    assert parsed.ignored_fields == (
        "spec.gateways (a mesh waypoint applies a VirtualService to mesh traffic only)",
        "spec.tcp (a waypoint routes HTTP; TCP is passed through)",
    )


def test_full_virtual_service_round_trips_through_the_wire() -> None:
    v = parse_one(vs(FULL))
    assert isinstance(v, VirtualService)
    assert from_proto(to_proto(v)) == v


def test_istio_group_is_refused_saying_what_to_change() -> None:
    error = only_error(vs("hosts: [a]", api="networking.istio.io/v1"))
    assert error.field == "apiVersion"
    assert "change apiVersion to networking.weft.dev/v1" in error.reason


def test_v1beta1_is_served() -> None:
    assert isinstance(
        parse_one(vs("hosts: [a]", api="networking.weft.dev/v1beta1")), VirtualService
    )


R = "route: [{destination: {host: a}}]"


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ("http: []", "spec.hosts", "at least one host"),
        ("hosts: ['Bad_Host']", "spec.hosts[0]", "not a mesh host"),
        ("hosts: [a]\nhttp: [{}]", "spec.http[0].route", "required unless redirect"),
        ("hosts: [a]\nhttp: [{bogus: 1}]", "spec.http[0].bogus", "unknown field"),
        ("hosts: [a]\nhttp: [{corsPolicy: {}}]", "spec.http[0].corsPolicy", "not supported"),
        (
            "hosts: [a]\nhttp: [{match: [{uri: {exact: /a, prefix: /b}}], " + R + "}]",
            "spec.http[0].match[0].uri",
            "exactly one of exact, prefix or regex",
        ),
        (
            "hosts: [a]\nhttp: [{match: [{uri: {regex: '(?=a)b'}}], " + R + "}]",
            "spec.http[0].match[0].uri.regex",
            "RE2",
        ),
        (
            "hosts: [a]\nhttp: [{match: [{headers: {'bad name': {exact: x}}}], " + R + "}]",
            "spec.http[0].match[0].headers.bad name",
            "not a valid header name",
        ),
        (
            "hosts: [a]\nhttp: [{match: [{scheme: {exact: https}}], " + R + "}]",
            "spec.http[0].match[0].scheme",
            "not supported",
        ),
        (
            "hosts: [a]\nhttp: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]",
            "spec.http[0].route",
            "must not all be 0",
        ),
        (
            "hosts: [a]\nhttp: [{route: [{destination: {host: a, port: {number: 0}}}]}]",
            "spec.http[0].route[0].destination.port.number",
            "at least 1",
        ),
        (
            "hosts: [a]\nhttp: [{route: [{destination: {subset: v1}}]}]",
            "spec.http[0].route[0].destination.host",
            "required",
        ),
        ("hosts: [a]\nhttp: [{timeout: 10, " + R + "}]", "spec.http[0].timeout", "duration"),
        (
            "hosts: [a]\nhttp: [{retries: {attempts: 2, retryOn: 'bogus'}, " + R + "}]",
            "spec.http[0].retries.retryOn",
            "'bogus' is not a retry policy",
        ),
        (
            "hosts: [a]\nhttp: [{retries: {attempts: -1}, " + R + "}]",
            "spec.http[0].retries.attempts",
            "at least 0",
        ),
        (
            "hosts: [a]\nhttp: [{retries: {perTryTimeout: 0s}, " + R + "}]",
            "spec.http[0].retries.perTryTimeout",
            "at least 1ms",
        ),
        ("hosts: [a]\nhttp: [{fault: {}, " + R + "}]", "spec.http[0].fault", "delay, abort"),
        (
            "hosts: [a]\nhttp: [{fault: {delay: {percentage: {value: 5}}}, " + R + "}]",
            "spec.http[0].fault.delay.fixedDelay",
            "required",
        ),
        (
            "hosts: [a]\nhttp: [{fault: {abort: {percentage: {value: 5}}}, " + R + "}]",
            "spec.http[0].fault.abort",
            "exactly one of httpStatus or grpcStatus",
        ),
        (
            "hosts: [a]\nhttp: [{fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}, "
            + R
            + "}]",
            "spec.http[0].fault.abort",
            "exactly one of httpStatus or grpcStatus",
        ),
        (
            "hosts: [a]\nhttp: [{fault: {abort: {httpStatus: 99}}, " + R + "}]",
            "spec.http[0].fault.abort.httpStatus",
            "at least 200",
        ),
        (
            "hosts: [a]\nhttp: [{fault: {abort: {grpcStatus: NOPE}}, " + R + "}]",
            "spec.http[0].fault.abort.grpcStatus",
            "not a gRPC status code name",
        ),
        (
            "hosts: [a]\nhttp: [{fault: {abort: {httpStatus: 500, percentage: {value: 101}}}, "
            + R
            + "}]",
            "spec.http[0].fault.abort.percentage.value",
            "between 0 and 100",
        ),
        (
            "hosts: [a]\nhttp: [{redirect: {uri: /x}, " + R + "}]",
            "spec.http[0].route",
            "together with redirect",
        ),
        (
            "hosts: [a]\nhttp: [{redirect: {redirectCode: 200}}]",
            "spec.http[0].redirect.redirectCode",
            "must be 301",
        ),
        ("hosts: [a]\nhttp: [{rewrite: {}, " + R + "}]", "spec.http[0].rewrite", "give uri"),
        (
            "hosts: [a]\nhttp: [{mirrorPercentage: {value: -1}, " + R + "}]",
            "spec.http[0].mirrorPercentage.value",
            "between 0 and 100",
        ),
        (
            "hosts: [a]\nhttp: [{name: x, " + R + "}, {name: x, " + R + "}]",
            "spec.http",
            "unique",
        ),
    ],
)
def test_bad_virtual_service_is_refused_with_its_field_path(
    spec: str, field: str, reason: str
) -> None:
    error = only_error(vs(spec))
    assert error.field == field
    assert reason in error.reason
    assert error.resource == "VirtualService foo/r"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("10s", 10.0), ("1.5s", 1.5), ("250ms", 0.25), ("1h30m", 5400.0), ("1m0.5s", 60.5)],
)
def test_durations_are_go_durations(value: str, seconds: float) -> None:
    assert parse_duration(value, "x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", ("foo", "reviews")),
        ("reviews.bar", ("bar", "reviews")),
        ("reviews.bar.svc", ("bar", "reviews")),
        ("reviews.bar.svc.cluster.local", ("bar", "reviews")),
        ("www.example.com", None),
        ("reviews.bar.svc.other.domain", None),
        ("*.bar.svc.cluster.local", None),
    ],
)
def test_hosts_name_services_as_istio_reads_them(
    host: str, expected: tuple[str, str] | None
) -> None:
    assert service_of_host(host, "foo") == expected


def test_wildcard_hosts_cover_services_by_fqdn() -> None:
    assert host_matches("*", "foo", "bar", "x")
    assert host_matches("*.bar.svc.cluster.local", "foo", "bar", "x")
    assert not host_matches("*.baz.svc.cluster.local", "foo", "bar", "x")
    assert not host_matches("reviews", "foo", "bar", "reviews")


def _check(spec: str, parents: list[tuple[str, str, str, int | None]] = ()) -> object:
    v = parse_one(vs(spec))
    assert isinstance(v, VirtualService)
    services = {("foo", "reviews"): (8080,), ("foo", "shadow"): (80,)}
    return virtual_service_problem(v, lambda ns, n: services.get((ns, n)), list(parents))


def test_a_host_naming_no_service_is_a_problem() -> None:
    assert _check("hosts: [nope]\nhttp: [{" + R.replace("a}", "reviews}") + "}]") == (
        "spec.hosts[0]",
        "no Service foo/nope: the host takes no effect",
    )


def test_a_destination_naming_no_service_is_a_problem() -> None:
    problem = _check("hosts: [reviews]\nhttp: [{route: [{destination: {host: gone}}]}]")
    assert problem == (
        "spec.http[0].route[0].destination.host",
        "'gone' names no Service: its share gets 500",
    )


def test_an_httproute_on_the_same_service_wins_and_the_vs_is_the_conflict() -> None:
    spec = "hosts: [reviews]\nhttp: [{route: [{destination: {host: reviews}}]}]"
    assert _check(spec) is None
    problem = _check(spec, [("HTTPRoute foo/r", "foo", "reviews", None)])
    assert problem is not None
    field, reason = problem  # type: ignore[misc]
    assert field == "spec.hosts[0]"
    assert reason.startswith("conflict: HTTPRoute foo/r also binds Service foo/reviews (port 8080)")
    assert "the HTTPRoute wins" in reason
