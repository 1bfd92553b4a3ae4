"""Precedence against a slow reference: random routes and requests, every decision compared
with a plain reading of the spec's rules (evaluate every match, keep the best by the spec's
order), so the compiled, sorted table cannot drift from the text."""

from __future__ import annotations

import random

import pytest

from meshcore.resources import ObjectMeta
from meshcore.resources.gateway import (
    BackendRef,
    HeaderMatch,
    HTTPMethod,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    ParentKind,
    ParentRef,
    PathMatch,
    PathMatchType,
    QueryParamMatch,
)
from tests.unit.waypoint.routing_cases import MESH, every_service, never
from waypoint.routing import Forward, Request, build_table, route

SEGMENTS = ["a", "b", "ab", "c"]
METHODS = [HTTPMethod.GET, HTTPMethod.POST]


def random_path(rng: random.Random) -> str:
    return "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(0, 3)))


def random_match(rng: random.Random) -> HTTPRouteMatch:
    kind = rng.choice([PathMatchType.EXACT, PathMatchType.PATH_PREFIX])
    value = random_path(rng)
    if kind is PathMatchType.PATH_PREFIX and value != "/" and rng.random() < 0.3:
        value += "/"
    headers = tuple(
        HeaderMatch(name, rng.choice(["1", "2"]))
        for name in rng.sample(["x-a", "x-b"], rng.randint(0, 2))
    )
    query = tuple(
        QueryParamMatch(name, rng.choice(["1", "2"]))
        for name in rng.sample(["q", "r"], rng.randint(0, 1))
    )
    method = rng.choice(METHODS) if rng.random() < 0.3 else None
    return HTTPRouteMatch(PathMatch(kind, value), headers, query, method)


def random_routes(rng: random.Random) -> list[HTTPRoute]:
    out = []
    for r in range(rng.randint(1, 3)):
        rules = tuple(
            HTTPRouteRule(
                matches=tuple(random_match(rng) for _ in range(rng.randint(1, 2))),
                backend_refs=(BackendRef(f"r{r}-rule{i}", MESH, 80),),
            )
            for i in range(rng.randint(1, 4))
        )
        parent = ParentRef(ParentKind.SERVICE, "echo", MESH)
        out.append(HTTPRoute(ObjectMeta(f"route-{rng.randint(0, 9)}{r}", MESH), (parent,), rules))
    return out


def random_request(rng: random.Random) -> Request:
    path = random_path(rng) + rng.choice(["", "/"])
    if rng.random() < 0.5:
        path += "?" + rng.choice(["q=1", "q=2", "r=1", "q=1&r=2"])
    headers = tuple(
        (name, rng.choice(["1", "2"])) for name in rng.sample(["X-A", "x-b"], rng.randint(0, 2))
    )
    return Request(rng.choice(["GET", "POST"]), path, headers, "echo", MESH)


def reference(routes: list[HTTPRoute], req: Request) -> str | int:
    """The spec, read plainly: of all matching (route, rule, match), the best by its order."""
    path, _, query = req.path.partition("?")
    params = dict(p.split("=") for p in query.split("&") if p)
    headers = {n.lower(): v for n, v in req.headers}
    best = None
    for rt in routes:
        for ri, rule in enumerate(rt.rules):
            for m in rule.matches:
                value = m.path.value
                if m.path.type is PathMatchType.EXACT:
                    ok = path == value
                else:
                    p = value.rstrip("/")
                    elements, got = p.split("/")[1:], path.split("/")[1:]
                    ok = not p or got[: len(elements)] == elements
                ok = ok and (m.method is None or m.method.value == req.method)
                ok = ok and all(headers.get(h.name.lower()) == h.value for h in m.headers)
                ok = ok and all(params.get(q.name) == q.value for q in m.query_params)
                if not ok:
                    continue
                key = (
                    m.path.type is not PathMatchType.EXACT,
                    -len(value.rstrip("/"))
                    if m.path.type is PathMatchType.PATH_PREFIX
                    else -len(value),
                    m.method is None,
                    -len(m.headers),
                    -len(m.query_params),
                    f"{rt.metadata.namespace}/{rt.metadata.name}",
                    ri,
                )
                if best is None or key < best[0]:
                    best = (key, rule.backend_refs[0].name)
    return 404 if best is None else best[1]


@pytest.mark.parametrize("seed", range(40))
def test_precedence_agrees_with_a_plain_reading_of_the_spec(seed: int) -> None:
    rng = random.Random(seed)
    routes = random_routes(rng)
    t = build_table(
        routes, service_namespace=MESH, service_name="echo", port=80, known_service=every_service
    )
    for _ in range(100):
        req = random_request(rng)
        d = route(t, req, never)
        got = d.backend_name if isinstance(d, Forward) else d.status
        assert got == reference(routes, req), (req, routes)
