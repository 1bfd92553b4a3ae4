"""Who called: the `x-forwarded-client-cert` header the waypoint sets, sans I/O.

The destination workload sees the waypoint's identity on its HBONE connection, not the
original client's. The waypoint tells it who called, in Envoy's `x-forwarded-client-cert`
shape as Istio's waypoints do (`forward_client_cert_details: SANITIZE_SET`):

    x-forwarded-client-cert: By=spiffe://<td>/ns/<gw ns>/sa/<gw name>;URI=spiffe://<client>

`By` is the waypoint's own identity, `URI` the client's, from the certificate verified on the
inbound HBONE connection. Whatever `x-forwarded-client-cert` the client sent is dropped: it
is never taken from client input. The header is set when the request enters the waypoint
(as Envoy's connection manager does, before routing), so routes, policy and the backend all
see the waypoint-made value.
"""

from __future__ import annotations

HEADER = "x-forwarded-client-cert"

_NEEDS_QUOTES = frozenset(',;="')


def _value(text: str) -> str:
    """Envoy's quoting: a value holding `,`, `;`, `=` or `"` is double-quoted, with `"` and
    backslash escaped."""
    if not any(c in _NEEDS_QUOTES for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def header_value(by: str, uri: str) -> str:
    """`By=<waypoint identity>;URI=<client identity>`; without URI when there is none."""
    if not uri:
        return f"By={_value(by)}"
    return f"By={_value(by)};URI={_value(uri)}"


def sanitize_set(
    headers: tuple[tuple[str, str], ...], by: str, uri: str
) -> tuple[tuple[str, str], ...]:
    """`headers` (lower-case names) without any client-sent `x-forwarded-client-cert`, with
    the waypoint-made one appended."""
    kept = tuple((n, v) for n, v in headers if n.lower() != HEADER)
    return (*kept, (HEADER, header_value(by, uri)))
