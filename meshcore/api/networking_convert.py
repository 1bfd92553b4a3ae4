"""VirtualService <-> protobuf (Istio's field names on the typed side, snake_case on the wire).

The controller sends a VirtualService as it parsed it; a node turns it back into the same typed
value, checking every enum-like string, port and percentage on the way in: a value it cannot
read raises `ConversionError`.
"""

from __future__ import annotations

from meshcore.api import mesh_pb2 as pb
from meshcore.api.errors import ConversionError
from meshcore.resources import ObjectMeta
from meshcore.resources.virtualservice import (
    GRPC_CODES,
    Abort,
    Delay,
    Destination,
    Fault,
    HeaderOperations,
    Headers,
    HTTPMatchRequest,
    HTTPRoute,
    Redirect,
    Retries,
    Rewrite,
    RouteDestination,
    StringMatch,
    StringMatchType,
    VirtualService,
)

# --- to the wire -----------------------------------------------------------------------------


def virtual_service_to_proto(value: VirtualService, out: pb.Resource) -> None:
    out.virtual_service.CopyFrom(
        pb.VirtualService(
            name=value.metadata.name,
            namespace=value.metadata.namespace,
            hosts=list(value.hosts),
            http=[_http_to_proto(r) for r in value.http],
        )
    )


def _sm(m: StringMatch | None) -> pb.VSStringMatch | None:
    return None if m is None else pb.VSStringMatch(type=m.type.value, value=m.value)


def _named(items: tuple[tuple[str, StringMatch], ...]) -> list[pb.VSNamedMatch]:
    return [pb.VSNamedMatch(name=n, match=_sm(m)) for n, m in items]


def _match_to_proto(m: HTTPMatchRequest) -> pb.VSMatch:
    return pb.VSMatch(
        name=m.name,
        uri=_sm(m.uri),
        method=_sm(m.method),
        authority=_sm(m.authority),
        headers=_named(m.headers),
        without_headers=_named(m.without_headers),
        query_params=_named(m.query_params),
        port=m.port,
        source_labels=dict(m.source_labels),
        source_namespace=m.source_namespace,
        ignore_uri_case=m.ignore_uri_case,
    )


def _dest_to_proto(d: Destination) -> pb.VSDestination:
    return pb.VSDestination(host=d.host, subset=d.subset, port=d.port)


def _ops_to_proto(o: HeaderOperations) -> pb.RouteHeaderModifier:
    return pb.RouteHeaderModifier(
        set=[pb.RouteHeader(name=n, value=v) for n, v in o.set],
        add=[pb.RouteHeader(name=n, value=v) for n, v in o.add],
        remove=list(o.remove),
    )


def _headers_to_proto(h: Headers) -> pb.VSHeaders:
    return pb.VSHeaders(request=_ops_to_proto(h.request), response=_ops_to_proto(h.response))


def _http_to_proto(r: HTTPRoute) -> pb.VSHTTPRoute:
    out = pb.VSHTTPRoute(
        name=r.name,
        match=[_match_to_proto(m) for m in r.match],
        route=[
            pb.VSRouteDestination(
                destination=_dest_to_proto(d.destination),
                weight=d.weight,
                headers=_headers_to_proto(d.headers),
            )
            for d in r.route
        ],
        timeout=r.timeout,
        mirror_percentage=r.mirror_percentage,
        headers=_headers_to_proto(r.headers),
    )
    if r.redirect is not None:
        rd = r.redirect
        out.redirect.CopyFrom(
            pb.VSRedirect(
                uri=rd.uri,
                authority=rd.authority,
                redirect_code=rd.redirect_code,
                scheme=rd.scheme,
                port=rd.port,
            )
        )
    if r.rewrite is not None:
        out.rewrite.CopyFrom(pb.VSRewrite(uri=r.rewrite.uri, authority=r.rewrite.authority))
    if r.retries is not None:
        rt = r.retries
        out.retries.CopyFrom(
            pb.VSRetries(
                attempts=rt.attempts,
                per_try_timeout=rt.per_try_timeout,
                retry_on=list(rt.retry_on),
                backoff=rt.backoff,
            )
        )
    if r.fault is not None:
        fault = pb.VSFault()
        if r.fault.delay is not None:
            fault.delay.CopyFrom(
                pb.VSDelay(
                    fixed_delay=r.fault.delay.fixed_delay, percentage=r.fault.delay.percentage
                )
            )
        if r.fault.abort is not None:
            a = r.fault.abort
            fault.abort.CopyFrom(
                pb.VSAbort(
                    http_status=a.http_status, grpc_status=a.grpc_status, percentage=a.percentage
                )
            )
        out.fault.CopyFrom(fault)
    if r.mirror is not None:
        out.mirror.CopyFrom(_dest_to_proto(r.mirror))
    return out


# --- from the wire ---------------------------------------------------------------------------


def virtual_service_from_proto(msg: pb.Resource) -> VirtualService:
    vs = msg.virtual_service
    what = f"VirtualService {vs.namespace}/{vs.name}"
    if not vs.name or not vs.namespace:
        raise ConversionError(f"{what}: without name or namespace")
    if not vs.hosts:
        raise ConversionError(f"{what}: no hosts")
    return VirtualService(
        ObjectMeta(vs.name, vs.namespace),
        tuple(vs.hosts),
        tuple(_http_from_proto(r, f"{what}: http[{i}]") for i, r in enumerate(vs.http)),
    )


def _sm_from(msg: pb.VSStringMatch, what: str) -> StringMatch:
    try:
        kind = StringMatchType(msg.type)
    except ValueError:
        raise ConversionError(
            f"{what}: match type {msg.type!r} is not exact, prefix or regex"
        ) from None
    return StringMatch(kind, msg.value)


def _opt_sm(parent: pb.VSMatch, name: str, what: str) -> StringMatch | None:
    if not parent.HasField(name):
        return None
    return _sm_from(getattr(parent, name), f"{what}.{name}")


def _named_from(items: object, what: str) -> tuple[tuple[str, StringMatch], ...]:
    return tuple(
        (n.name, _sm_from(n.match, f"{what}.{n.name}"))
        for n in items  # type: ignore[attr-defined]
    )


def _port(value: int, what: str) -> int:
    if not 1 <= value <= 65535:
        raise ConversionError(f"{what}: port {value} is out of range")
    return value


def _percent(value: float, what: str) -> float:
    if not 0.0 <= value <= 100.0:
        raise ConversionError(f"{what}: percentage {value:g} is not within 0-100")
    return value


def _match_from(m: pb.VSMatch, what: str) -> HTTPMatchRequest:
    return HTTPMatchRequest(
        m.name,
        _opt_sm(m, "uri", what),
        _opt_sm(m, "method", what),
        _opt_sm(m, "authority", what),
        _named_from(m.headers, f"{what}.headers"),
        _named_from(m.without_headers, f"{what}.withoutHeaders"),
        _named_from(m.query_params, f"{what}.queryParams"),
        _port(m.port, what) if m.HasField("port") else None,
        dict(m.source_labels),
        m.source_namespace,
        m.ignore_uri_case,
    )


def _dest_from(d: pb.VSDestination, what: str) -> Destination:
    if not d.host:
        raise ConversionError(f"{what}: a destination without host")
    return Destination(d.host, d.subset, _port(d.port, what) if d.HasField("port") else None)


def _ops_from(o: pb.RouteHeaderModifier) -> HeaderOperations:
    return HeaderOperations(
        tuple((h.name, h.value) for h in o.set),
        tuple((h.name, h.value) for h in o.add),
        tuple(o.remove),
    )


def _headers_from(h: pb.VSHeaders) -> Headers:
    return Headers(_ops_from(h.request), _ops_from(h.response))


def _http_from_proto(r: pb.VSHTTPRoute, what: str) -> HTTPRoute:
    redirect = rewrite = retries = fault = mirror = None
    if r.HasField("redirect"):
        rd = r.redirect
        if rd.redirect_code not in (301, 302, 303, 307, 308):
            raise ConversionError(f"{what}: redirect code {rd.redirect_code}")
        port = _port(rd.port, what) if rd.HasField("port") else None
        redirect = Redirect(rd.uri, rd.authority, rd.redirect_code, rd.scheme, port)
    if r.HasField("rewrite"):
        rewrite = Rewrite(r.rewrite.uri if r.rewrite.HasField("uri") else None, r.rewrite.authority)
    if r.HasField("retries"):
        rt = r.retries
        retries = Retries(
            rt.attempts,
            rt.per_try_timeout if rt.HasField("per_try_timeout") else None,
            tuple(rt.retry_on),
            rt.backoff if rt.HasField("backoff") else None,
        )
    if r.HasField("fault"):
        delay = abort = None
        if r.fault.HasField("delay"):
            d = r.fault.delay
            delay = Delay(d.fixed_delay, _percent(d.percentage, f"{what}.fault.delay"))
        if r.fault.HasField("abort"):
            a = r.fault.abort
            http_status = a.http_status if a.HasField("http_status") else None
            if (http_status is None) == (not a.grpc_status) or (
                a.grpc_status and a.grpc_status not in GRPC_CODES
            ):
                raise ConversionError(f"{what}.fault.abort: needs one httpStatus or grpcStatus")
            abort = Abort(http_status, a.grpc_status, _percent(a.percentage, f"{what}.fault"))
        fault = Fault(delay, abort)
    if r.HasField("mirror"):
        mirror = _dest_from(r.mirror, f"{what}.mirror")
    return HTTPRoute(
        r.name,
        tuple(_match_from(m, f"{what}.match[{i}]") for i, m in enumerate(r.match)),
        tuple(
            RouteDestination(
                _dest_from(d.destination, f"{what}.route[{i}]"), d.weight, _headers_from(d.headers)
            )
            for i, d in enumerate(r.route)
        ),
        redirect,
        rewrite,
        r.timeout if r.HasField("timeout") else None,
        retries,
        fault,
        mirror,
        _percent(r.mirror_percentage, f"{what}.mirrorPercentage"),
        _headers_from(r.headers),
    )
