"""What the echo server answers: routes, identity, JSON body, upstream outcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sample_apps.echo_core import (
    MAX_DELAY_MS,
    Endpoint,
    Identity,
    Route,
    RouteKind,
    UpstreamResult,
    echo_response,
    health_response,
    parse_upstream_body,
    route_for,
)
from sample_apps.httpwire import Request

IDENTITY = Identity(
    pod="reviews-v2-abc",
    namespace="bookinfo",
    version="v2",
    node="node-1",
    service_account="reviews",
    pod_ip="10.1.0.7",
)
CLIENT = Endpoint("10.1.0.9", 40123)
SERVER = Endpoint("10.1.0.7", 8080)
REQUEST = Request(
    method="POST",
    path="/reviews/1?x=y",
    headers=(("host", "reviews:8080"), ("x-b3", "1"), ("x-b3", "2")),
    body_bytes=3,
    protocol="HTTP/2",
    stream_id=1,
)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/", Route(RouteKind.ECHO)),
        ("/anything/else", Route(RouteKind.ECHO)),
        ("/healthz", Route(RouteKind.HEALTH)),
        ("/healthz?probe=1", Route(RouteKind.HEALTH)),
        ("/status/503", Route(RouteKind.ECHO, status=503)),
        ("/status/204?x", Route(RouteKind.ECHO, status=204)),
        ("/delay/250", Route(RouteKind.ECHO, delay_ms=250)),
        ("/delay/999999", Route(RouteKind.ECHO, delay_ms=MAX_DELAY_MS)),
        ("/delay/10/more", Route(RouteKind.ECHO)),
        ("/statusx/500", Route(RouteKind.ECHO)),
    ],
)
def test_route_for_special_paths(path: str, route: Route) -> None:
    assert route_for(path) == route


@pytest.mark.parametrize(
    "path", ["/status/99", "/status/600", "/status/abc", "/delay/-5", "/delay/"]
)
def test_malformed_special_paths_answer_400_with_reason(path: str) -> None:
    route = route_for(path)
    assert route.status == 400 and route.error


def test_identity_from_env_reports_missing_values_as_empty() -> None:
    identity = Identity.from_env({"POD_NAME": "p", "VERSION": "v1"})
    assert identity == Identity(pod="p", version="v1")
    assert Identity.from_env({"VERSION": "v1"}, version="v9").version == "v9"
    assert dict(identity.response_headers()) == {"x-weft-pod": "p", "x-weft-version": "v1"}


@pytest.mark.parametrize(
    ("addr", "endpoint"),
    [
        (("10.0.0.1", 80), Endpoint("10.0.0.1", 80)),
        (("fd00::1", 8080, 0, 0), Endpoint("fd00::1", 8080)),
        (None, Endpoint("", 0)),
    ],
)
def test_endpoint_from_sockaddr(addr: Any, endpoint: Endpoint) -> None:
    assert Endpoint.from_sockaddr(addr) == endpoint


def body_of(route: Route, upstream: UpstreamResult | None = None) -> tuple[int, dict[str, Any]]:
    response = echo_response(IDENTITY, route, REQUEST, CLIENT, SERVER, upstream)
    headers = dict(response.headers)
    assert headers["content-type"] == "application/json"
    assert headers["x-weft-pod"] == "reviews-v2-abc" and headers["x-weft-version"] == "v2"
    return response.status, json.loads(response.body)


def test_echo_body_carries_identity_addresses_and_request() -> None:
    status, body = body_of(Route(RouteKind.ECHO))
    assert status == 200
    assert body == {
        "pod": "reviews-v2-abc",
        "namespace": "bookinfo",
        "version": "v2",
        "node": "node-1",
        "service_account": "reviews",
        "pod_ip": "10.1.0.7",
        "client": {"ip": "10.1.0.9", "port": 40123},
        "server": {"ip": "10.1.0.7", "port": 8080},
        "protocol": "HTTP/2",
        "request": {
            "method": "POST",
            "path": "/reviews/1?x=y",
            "headers": {"host": "reviews:8080", "x-b3": "1, 2"},
        },
        "body_bytes": 3,
    }


def test_status_route_keeps_the_json_body() -> None:
    status, body = body_of(Route(RouteKind.ECHO, status=418))
    assert status == 418 and body["pod"] == "reviews-v2-abc"


def test_bad_special_path_explains_itself() -> None:
    status, body = body_of(route_for("/status/42"))
    assert status == 400 and "200-599" in body["error"]


def test_successful_upstream_is_embedded_and_status_kept() -> None:
    upstream = UpstreamResult(status=200, body={"pod": "ratings-v1"})
    status, body = body_of(Route(RouteKind.ECHO), upstream)
    assert status == 200
    assert body["upstream"] == {"status": 200, "body": {"pod": "ratings-v1"}}


@pytest.mark.parametrize(
    ("upstream", "embedded"),
    [
        (
            UpstreamResult(error="ClientConnectorError: refused"),
            {"error": "ClientConnectorError: refused"},
        ),
        (
            UpstreamResult(status=503, body="no healthy upstream"),
            {"status": 503, "body": "no healthy upstream"},
        ),
        (
            UpstreamResult(status=403, body="RBAC: access denied"),
            {"status": 403, "body": "RBAC: access denied"},
        ),
    ],
)
def test_failed_or_non_2xx_upstream_turns_answer_into_502(
    upstream: UpstreamResult, embedded: dict[str, Any]
) -> None:
    status, body = body_of(Route(RouteKind.ECHO, status=201), upstream)
    assert status == 502
    assert body["upstream"] == embedded


def test_health_is_plain_text_ok() -> None:
    response = health_response(IDENTITY)
    assert response.status == 200 and response.body == b"ok\n"
    assert dict(response.headers)["content-type"].startswith("text/plain")


def test_upstream_body_is_json_when_it_parses_else_text() -> None:
    assert parse_upstream_body(b'{"a": [1]}') == {"a": [1]}
    assert parse_upstream_body(b"upstream connect error") == "upstream connect error"
    assert parse_upstream_body(b"\xff") == "\ufffd"


@pytest.mark.parametrize("size", [0, 100, 1024, 4096])
def test_echo_body_is_padded_to_the_size_asked_and_stays_the_same_json(size: int) -> None:
    plain = echo_response(IDENTITY, Route(RouteKind.ECHO), REQUEST, CLIENT, SERVER)
    padded = echo_response(IDENTITY, Route(RouteKind.ECHO), REQUEST, CLIENT, SERVER, None, size)
    assert len(padded.body) == max(size, len(plain.body))
    assert padded.body.endswith(b"\n")
    assert json.loads(padded.body) == json.loads(plain.body)
