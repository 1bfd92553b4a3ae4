"""VirtualService decisions (waypoint.vsrouting): matches, weights, retries, faults, by table,
with a fake rand."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest

from meshcore.resources.gateway import Retry, Timeouts
from meshcore.resources.virtualservice import VirtualService
from tests.manifest_parsing import ManifestParser
from waypoint import vsrouting
from waypoint.routing import Fault, Forward, MirrorTarget, Request, Respond

_parser = ManifestParser("vs.yaml")

SERVICES = {("foo", "reviews"): (8080,), ("foo", "v2"): (8080,), ("bar", "shadow"): (80,)}


def vs(spec: str, *, name: str = "r", ns: str = "foo") -> VirtualService:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    text = (
        f"apiVersion: networking.weft.dev/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n"
        f"  namespace: {ns}\nspec:\n{body}\n"
    )
    v = _parser.parse_one(text)
    assert isinstance(v, VirtualService)
    return v


def table(*services: VirtualService, port: int = 8080) -> vsrouting.VSTable:
    return vsrouting.build_vs_table(
        services,
        service_namespace="foo",
        service_name="reviews",
        port=port,
        service_ports=lambda ns, n: SERVICES.get((ns, n)),
    )


def seq(*values: float) -> Callable[[], float]:
    it = iter(values)
    return lambda: next(it)


def never() -> float:
    raise AssertionError("no random draw expected")


def req(
    path: str = "/", method: str = "GET", headers: tuple[tuple[str, str], ...] = (), **kw: object
) -> Request:
    return Request(method, path, (("host", "reviews:8080"), *headers), **kw)  # type: ignore[arg-type]


ROUTE = "route: [{destination: {host: reviews}}]"


def test_hosts_choose_the_services_a_table_holds() -> None:
    assert not table(vs("hosts: [reviews]\nhttp: [{" + ROUTE + "}]")).empty
    assert not table(vs("hosts: [reviews.foo.svc.cluster.local]\nhttp: [{" + ROUTE + "}]")).empty
    assert not table(vs("hosts: [reviews.foo]\nhttp: [{" + ROUTE + "}]", ns="bar")).empty
    assert table(vs("hosts: [reviews]\nhttp: [{" + ROUTE + "}]", ns="bar")).empty  # bar/reviews
    assert table(vs("hosts: [other]\nhttp: [{" + ROUTE + "}]")).empty


@pytest.mark.parametrize(
    ("match", "request_", "hit"),
    [
        ("{uri: {exact: /a}}", req("/a"), True),
        ("{uri: {exact: /a}}", req("/a?x=1"), True),
        ("{uri: {exact: /a}}", req("/A"), False),
        ("{uri: {exact: /a}, ignoreUriCase: true}", req("/A"), True),
        ("{uri: {prefix: /api}}", req("/apiv2"), True),  # a string prefix, as Envoy's
        ("{uri: {prefix: /api}}", req("/ap"), False),
        ("{uri: {regex: '/u/[0-9]+'}}", req("/u/12"), True),
        ("{uri: {regex: '/u/[0-9]+'}}", req("/u/12/x"), False),
        ("{method: {exact: POST}}", req(method="POST"), True),
        ("{method: {exact: POST}}", req(), False),
        ("{headers: {x-user: {exact: bob}}}", req(headers=(("X-User", "bob"),)), True),
        ("{headers: {x-user: {prefix: bo}}}", req(headers=(("x-user", "bob"),)), True),
        ("{headers: {x-user: {exact: bob}}}", req(), False),
        ("{headers: {x-user: {}}}", req(headers=(("x-user", ""),)), True),
        ("{withoutHeaders: {x-user: {exact: bob}}}", req(), True),
        ("{withoutHeaders: {x-user: {exact: bob}}}", req(headers=(("x-user", "bob"),)), False),
        ("{queryParams: {v: {exact: '2'}}}", req("/?v=2"), True),
        ("{queryParams: {v: {exact: '2'}}}", req("/?v=3"), False),
        ("{authority: {prefix: reviews}}", req(), True),
        ("{port: 8080}", req(), True),
        ("{sourceLabels: {app: web}}", req(source_labels={"app": "web", "v": "1"}), True),
        ("{sourceLabels: {app: web}}", req(source_labels={"app": "api"}), False),
        ("{sourceLabels: {app: web}}", req(), False),
        ("{sourceNamespace: shop}", req(client_namespace="shop"), True),
        ("{sourceNamespace: shop}", req(client_namespace="other"), False),
    ],
)
def test_matches_follow_istio(match: str, request_: Request, hit: bool) -> None:
    t = table(vs(f"hosts: [reviews]\nhttp: [{{match: [{match}], {ROUTE}}}]"))
    decision = vsrouting.route_vs(t, request_, never)
    assert isinstance(decision, Forward) if hit else isinstance(decision, Respond)
    if not hit:
        assert isinstance(decision, Respond) and decision.status == 404


def test_a_rule_for_another_port_is_left_out_of_this_ports_table() -> None:
    assert table(vs("hosts: [reviews]\nhttp: [{match: [{port: 9090}], " + ROUTE + "}]")).empty


def test_the_first_rule_that_matches_decides() -> None:
    t = table(
        vs(
            """
            hosts: [reviews]
            http:
            - match: [{uri: {prefix: /v2}}]
              route: [{destination: {host: v2}}]
            - route: [{destination: {host: reviews}}]
            """
        )
    )
    first = vsrouting.route_vs(t, req("/v2/x"), never)
    rest = vsrouting.route_vs(t, req("/x"), never)
    assert isinstance(first, Forward) and first.backend_name == "v2" and first.rule_index == 0
    assert isinstance(rest, Forward) and rest.backend_name == "reviews" and rest.rule_index == 1


def test_weights_split_by_rand_and_subsets_are_carried() -> None:
    t = table(
        vs(
            """
            hosts: [reviews]
            http:
            - route:
              - {destination: {host: reviews, subset: v1}, weight: 90}
              - {destination: {host: reviews, subset: v2}, weight: 10}
              - {destination: {host: reviews, subset: v3}, weight: 0}
            """
        )
    )
    picks = [vsrouting.route_vs(t, req(), seq(r)) for r in (0.0, 0.899, 0.9, 0.999)]
    assert [p.subset for p in picks if isinstance(p, Forward)] == ["v1", "v1", "v2", "v2"]


def test_a_destination_naming_no_service_gets_500() -> None:
    t = table(vs("hosts: [reviews]\nhttp: [{route: [{destination: {host: gone}}]}]"))
    decision = vsrouting.route_vs(t, req(), never)
    assert isinstance(decision, Respond) and decision.status == 500


@pytest.mark.parametrize(
    ("retries", "expected"),
    [
        ("", Retry((), 2)),  # Istio's default policy
        ("retries: {attempts: 0}", Retry((), 0)),
        ("retries: {attempts: 3, retryOn: gateway-error}", Retry((502, 503, 504), 3)),
        ("retries: {attempts: 1, retryOn: 'retriable-4xx,503'}", Retry((409, 503), 1)),
        ("retries: {attempts: 1, retryOn: 'connect-failure,reset'}", Retry((), 1)),
        ("retries: {attempts: 2, retryOn: 5xx}", Retry(tuple(range(500, 600)), 2)),
    ],
)
def test_retries_map_to_the_proxys_retry(retries: str, expected: Retry) -> None:
    t = table(vs(f"hosts: [reviews]\nhttp: [{{{retries + ', ' if retries else ''}{ROUTE}}}]"))
    decision = vsrouting.route_vs(t, req(), never)
    assert isinstance(decision, Forward) and decision.retry == expected


def test_timeouts_map_to_request_and_per_try() -> None:
    t = table(
        vs(
            "hosts: [reviews]\nhttp: [{timeout: 3s, retries: {attempts: 2, perTryTimeout: 500ms}, "
            + ROUTE
            + "}]"
        )
    )
    decision = vsrouting.route_vs(t, req(), never)
    assert isinstance(decision, Forward) and decision.timeouts == Timeouts(3.0, 0.5)


@pytest.mark.parametrize(
    ("fault", "draws", "expected"),
    [
        ("{abort: {httpStatus: 503, percentage: {value: 50}}}", (0.49,), Fault(0.0, 503)),
        ("{abort: {httpStatus: 503, percentage: {value: 50}}}", (0.5,), None),
        ("{abort: {httpStatus: 503, percentage: {value: 100}}}", (), Fault(0.0, 503)),
        ("{abort: {httpStatus: 503}}", (), None),  # Istio: no percentage, no fault
        ("{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}", (), Fault(0.0, 503, 14)),
        ("{delay: {fixedDelay: 2s, percentage: {value: 10}}}", (0.05,), Fault(2.0)),
        ("{delay: {fixedDelay: 2s, percentage: {value: 10}}}", (0.1,), None),
        (
            "{delay: {fixedDelay: 1s, percentage: {value: 50}}, "
            "abort: {httpStatus: 500, percentage: {value: 50}}}",
            (0.1, 0.2),
            Fault(1.0, 500),
        ),
        (
            "{delay: {fixedDelay: 1s, percentage: {value: 50}}, "
            "abort: {httpStatus: 500, percentage: {value: 50}}}",
            (0.9, 0.2),
            Fault(0.0, 500),
        ),
    ],
)
def test_faults_are_drawn_with_their_percentages(
    fault: str, draws: tuple[float, ...], expected: Fault | None
) -> None:
    t = table(vs(f"hosts: [reviews]\nhttp: [{{fault: {fault}, {ROUTE}}}]"))
    decision = vsrouting.route_vs(t, req(), seq(*draws))
    assert isinstance(decision, Forward) and decision.fault == expected


def test_fault_share_over_many_draws_is_the_percentage() -> None:
    import random

    rng = random.Random(7)
    t = table(
        vs(
            "hosts: [reviews]\nhttp: [{fault: {abort: {httpStatus: 503, percentage: {value: 30}}}, "
            + ROUTE
            + "}]"
        )
    )
    decisions = [vsrouting.route_vs(t, req(), rng.random) for _ in range(4000)]
    aborted = sum(1 for d in decisions if isinstance(d, Forward) and d.fault is not None)
    assert abs(aborted / 4000 - 0.30) < 0.03


def test_rewrite_redirect_headers_and_mirror() -> None:
    t = table(
        vs(
            """
            hosts: [reviews]
            http:
            - match: [{uri: {exact: /old}}]
              redirect: {uri: /new, redirectCode: 308}
            - match: [{uri: {prefix: /api/}}]
              rewrite: {uri: /v1/, authority: internal}
              headers: {request: {set: {x-a: "1"}}, response: {add: {x-r: "2"}}}
              mirror: {host: shadow.bar}
              mirrorPercentage: {value: 50}
              route:
              - destination: {host: reviews}
                headers: {request: {remove: [x-drop]}}
            """
        )
    )
    redirect = vsrouting.route_vs(t, req("/old?q=1"), never)
    assert isinstance(redirect, Respond) and redirect.status == 308
    assert redirect.location == "http://reviews:8080/new?q=1"
    fwd = vsrouting.route_vs(t, req("/api/x?q=1", headers=(("x-drop", "y"),)), seq(0.2))
    assert isinstance(fwd, Forward)
    assert fwd.path == "/v1/x?q=1" and fwd.host == "internal"
    assert ("x-a", "1") in fwd.request_headers
    assert all(n != "x-drop" for n, _ in fwd.request_headers)
    assert ("host", "internal") in fwd.request_headers
    assert fwd.mirrors == (MirrorTarget("bar", "shadow", 80),)
    assert fwd.response_header_ops[0].add == (("x-r", "2"),)
    no_mirror = vsrouting.route_vs(t, req("/api/x"), seq(0.6))
    assert isinstance(no_mirror, Forward) and no_mirror.mirrors == ()


def test_fault_flags_are_envoys() -> None:
    from waypoint.telemetry import fault_flags

    assert fault_flags(Fault(0.5)) == "DI"
    assert fault_flags(Fault(0.0, 503)) == "FI"
    assert fault_flags(Fault(0.5, None, 14)) == "DI,FI"
