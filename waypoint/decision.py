"""Where a request goes: the seam between the proxy and route matching.

The proxy asks a `Router` about each request and gets a `Forward` (to a backend Service, with
the path, host and headers to send) or a `Respond` (answer here: a redirect, a 404 for a
routed port no rule matches, a 500 for a missing backend). `waypoint.routing` (HTTPRoute
matching, written apart) is meant to sit behind this seam; until it is wired in,
`ToService` forwards every request to the Service it was addressed to, unchanged, which is
what a Service without routes gets anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meshcore.meshstate import MeshService

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RouteRequest:
    """What routing may look at (the shape of waypoint.routing's Request)."""

    method: str
    path: str
    headers: Headers  # lowercased names, in order
    host: str
    client_namespace: str


@dataclass(frozen=True)
class Forward:
    backend_namespace: str
    backend_name: str
    backend_port: int
    path: str
    host: str
    request_headers: Headers  # to send, as they are (host excluded)
    response_headers_set: Headers = ()
    response_headers_remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Respond:
    status: int
    headers: Headers = ()
    reason: str = ""  # for the access log


class Router(Protocol):
    def decide(
        self, service: MeshService, port: int, request: RouteRequest
    ) -> Forward | Respond: ...


class ToService:
    """No routes: every request goes to the Service it was addressed to, as it came."""

    def decide(self, service: MeshService, port: int, request: RouteRequest) -> Forward | Respond:
        return Forward(
            service.namespace, service.name, port, request.path, request.host, request.headers
        )
