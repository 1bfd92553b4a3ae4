"""The lab echo fails on demand, as the conformance echo does: ?codes=503:2,200:1, ?delay=200ms
(backends for the outlier detection and circuit breaking tests)."""

from __future__ import annotations

import pytest

from sample_apps.echo_core import Route, RouteKind, route_for
from sample_apps.http_echo import CodeCycles, FailureSpec, apply_failures, failure_spec


@pytest.mark.parametrize(
    ("path", "spec"),
    [
        ("/", FailureSpec()),
        ("/x?codes=503:2,200:1", FailureSpec((503, 503, 200))),
        ("/x?codes=500", FailureSpec((500,))),
        ("/x?delay=200ms", FailureSpec((), 200)),
        ("/x?delay=2s&codes=201", FailureSpec((201,), 2000)),
        ("/x?delay=150", FailureSpec((), 150)),
        ("/x?delay=99999s", FailureSpec((), 30_000)),
        ("/x?other=1", FailureSpec()),
        ("/x?codes=500&pod=a", FailureSpec((500,), 0, ("a",))),
    ],
)
def test_query_reads_into_a_spec(path: str, spec: FailureSpec) -> None:
    assert failure_spec(path) == spec


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/x?codes=abc", "not a status code"),
        ("/x?codes=700:1", "not a status code"),
        ("/x?codes=503:0", "count must be 1-1000"),
        ("/x?codes=503:x", "count must be 1-1000"),
        ("/x?delay=fast", "delay"),
    ],
)
def test_a_bad_query_is_a_400_saying_why(path: str, error: str) -> None:
    route = apply_failures(route_for(path), failure_spec(path), CodeCycles())
    assert route.status == 400 and route.error is not None and error in route.error


def test_codes_cycle_per_pod_and_per_spec() -> None:
    cycles = CodeCycles()
    a = failure_spec("/?codes=503:2,200:1")
    b = failure_spec("/?codes=500:1,200:1")
    seen = [apply_failures(Route(RouteKind.ECHO), a, cycles).status for _ in range(6)]
    assert seen == [503, 503, 200, 503, 503, 200]
    assert [apply_failures(Route(RouteKind.ECHO), b, cycles).status for _ in range(3)] == [
        500,
        200,
        500,
    ]


def test_the_cycle_table_is_bounded() -> None:
    cycles = CodeCycles(limit=2)
    for code in (500, 501, 502):
        cycles.next((code, 200))
    assert cycles.next((500, 200)) == 500  # forgotten: starts over


def test_health_and_the_existing_routes_are_kept() -> None:
    spec = failure_spec("/healthz?codes=500")
    assert apply_failures(route_for("/healthz?codes=500"), spec, CodeCycles()).status == 200
    delayed = apply_failures(
        route_for("/delay/100?delay=50ms"), failure_spec("?delay=50ms"), CodeCycles()
    )
    assert delayed.delay_ms == 150
    status = apply_failures(route_for("/status/418"), failure_spec(""), CodeCycles())
    assert status.status == 418


def test_pod_names_which_pods_fail() -> None:
    spec = failure_spec("/x?codes=503&pod=echo-b,echo-c")
    assert spec.pods == ("echo-b", "echo-c")
    cycles = CodeCycles()
    assert apply_failures(Route(RouteKind.ECHO), spec, cycles, "echo-a").status == 200
    assert apply_failures(Route(RouteKind.ECHO), spec, cycles, "echo-b").status == 503
