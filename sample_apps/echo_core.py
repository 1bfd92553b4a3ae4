"""What the HTTP echo server answers, decided without any I/O.

`http_echo` does the waiting (delays, upstream call) and the sockets; everything it sends
back is built here from typed values, so routes and bodies are unit-tested directly.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sample_apps.httpwire import Request, Response

MAX_DELAY_MS = 30_000


@dataclass(frozen=True)
class Identity:
    """Who this replica is, as the pod's downward-API environment tells it."""

    pod: str = ""
    namespace: str = ""
    version: str = ""
    node: str = ""
    service_account: str = ""
    pod_ip: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], version: str | None = None) -> Identity:
        return cls(
            pod=env.get("POD_NAME", ""),
            namespace=env.get("POD_NAMESPACE", ""),
            version=version if version is not None else env.get("VERSION", ""),
            node=env.get("NODE_NAME", ""),
            service_account=env.get("SERVICE_ACCOUNT", ""),
            pod_ip=env.get("POD_IP", ""),
        )

    def response_headers(self) -> tuple[tuple[str, str], ...]:
        # Lets a load client count a canary split without parsing bodies.
        return (("x-weft-pod", self.pod), ("x-weft-version", self.version))


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int

    @classmethod
    def from_sockaddr(cls, addr: Any) -> Endpoint:
        """From what `getpeername`/`getsockname` return (2-tuple for IPv4, 4-tuple for IPv6)."""
        if isinstance(addr, tuple) and len(addr) >= 2:
            return cls(ip=str(addr[0]), port=int(addr[1]))
        return cls(ip="", port=0)

    def to_json(self) -> dict[str, Any]:
        return {"ip": self.ip, "port": self.port}


class RouteKind(enum.Enum):
    HEALTH = "health"
    ECHO = "echo"


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    status: int = 200
    delay_ms: int = 0
    error: str | None = None  # a malformed special path: answered 400 with this message


def route_for(path: str) -> Route:
    """Map a request target to what to do: /healthz, /status/<code>, /delay/<ms> or plain echo."""
    path = path.split("?", 1)[0]
    if path == "/healthz":
        return Route(RouteKind.HEALTH)
    parts = path.split("/")
    if len(parts) != 3 or parts[1] not in ("status", "delay"):
        return Route(RouteKind.ECHO)
    name, arg = parts[1], parts[2]
    if not arg.isdigit():
        return Route(RouteKind.ECHO, status=400, error=f"/{name}/ needs a non-negative integer")
    value = int(arg)
    if name == "status":
        if not 200 <= value <= 599:
            return Route(RouteKind.ECHO, status=400, error="/status/ code must be 200-599")
        return Route(RouteKind.ECHO, status=value)
    return Route(RouteKind.ECHO, delay_ms=min(value, MAX_DELAY_MS))


@dataclass(frozen=True)
class UpstreamResult:
    """Outcome of the one GET to --upstream: a status and body, or an error."""

    status: int | None = None
    body: Any = None  # parsed JSON, or text when the body is not JSON
    error: str | None = None

    @property
    def failed(self) -> bool:
        # Anything but 2xx means the mesh (or backend) got in the way: make it visible as 502.
        return self.error is not None or self.status is None or not 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"status": self.status, "body": self.body}


def parse_upstream_body(raw: bytes) -> Any:
    """JSON when it parses (the echo backend's case), otherwise the text as received."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def health_response(identity: Identity) -> Response:
    headers = (("content-type", "text/plain; charset=utf-8"), *identity.response_headers())
    return Response(status=200, headers=headers, body=b"ok\n")


def echo_response(
    identity: Identity,
    route: Route,
    request: Request,
    client: Endpoint,
    server: Endpoint,
    upstream: UpstreamResult | None = None,
    min_body_bytes: int = 0,
) -> Response:
    """The JSON echo of `request`, with the status the route (or a failed upstream) calls for.

    `min_body_bytes` pads the JSON with spaces (still valid JSON) up to that size, so a
    benchmark can ask for responses of a known size (the echo itself is ~0.5 KB)."""
    body: dict[str, Any] = {
        "pod": identity.pod,
        "namespace": identity.namespace,
        "version": identity.version,
        "node": identity.node,
        "service_account": identity.service_account,
        "pod_ip": identity.pod_ip,
        "client": client.to_json(),
        "server": server.to_json(),
        "protocol": request.protocol,
        "request": {
            "method": request.method,
            "path": request.path,
            "headers": request.header_map(),
        },
        "body_bytes": request.body_bytes,
    }
    status = route.status
    if route.error is not None:
        body["error"] = route.error
    if upstream is not None:
        body["upstream"] = upstream.to_json()
        if upstream.failed:
            status = 502
    headers = (("content-type", "application/json"), *identity.response_headers())
    payload = (json.dumps(body) + "\n").encode()
    if len(payload) < min_body_bytes:
        payload = payload[:-1] + b" " * (min_body_bytes - len(payload)) + b"\n"
    return Response(status=status, headers=headers, body=payload)
