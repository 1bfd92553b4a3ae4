"""Shared plumbing for the routing tests: manifests in, tables out, requests made short.

Routes are written as the Gateway API mesh conformance manifests are (namespace
`gateway-conformance-mesh`, Service `echo` port 80 unless a case says otherwise) and parsed by
meshcore, so a case reads like the conformance test it comes from.
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable, Iterable

from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.gateway import GRPCRoute, HTTPRoute
from waypoint.routing import (
    GRPCRouteTable,
    Request,
    RouteTable,
    build_grpc_table,
    build_table,
)

MESH = "gateway-conformance-mesh"
CONSUMER = "gateway-conformance-mesh-consumer"


def routes(text: str) -> list[HTTPRoute | GRPCRoute]:
    parsed = parse_documents(documents_from_text(textwrap.dedent(text), "routes.yaml"))
    out = []
    for p in parsed:
        assert isinstance(p.resource, HTTPRoute | GRPCRoute)
        out.append(p.resource)
    return out


def every_service(namespace: str, name: str, port: int) -> bool:
    return True


def services(*known: tuple[str, str, int]) -> Callable[[str, str, int], bool]:
    table = set(known)
    return lambda ns, name, port: (ns, name, port) in table


def table(
    text: str,
    *,
    service: str = "echo",
    namespace: str = MESH,
    port: int = 80,
    port_name: str = "",
    known: Callable[[str, str, int], bool] = every_service,
) -> RouteTable:
    http = [r for r in routes(text) if isinstance(r, HTTPRoute)]
    return build_table(
        http,
        service_namespace=namespace,
        service_name=service,
        port=port,
        known_service=known,
        port_name=port_name,
    )


def grpc_table(
    text: str,
    *,
    service: str = "echo",
    namespace: str = MESH,
    port: int = 7070,
    known: Callable[[str, str, int], bool] = every_service,
) -> GRPCRouteTable:
    grpc = [r for r in routes(text) if isinstance(r, GRPCRoute)]
    return build_grpc_table(
        grpc,
        service_namespace=namespace,
        service_name=service,
        port=port,
        known_service=known,
    )


def request(
    path: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[str, str]] | dict[str, str] = (),
    host: str = "echo",
    client: str | None = MESH,
    scheme: str = "http",
) -> Request:
    items = tuple(headers.items()) if isinstance(headers, dict) else tuple(headers)
    return Request(method, path, items, host, client, scheme)


def seeded(seed: int = 7) -> Callable[[], float]:
    return random.Random(seed).random


def never() -> float:
    raise AssertionError("rand() called where no random choice was due")
