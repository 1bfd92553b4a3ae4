"""HTTPRoute and GRPCRoute <-> protobuf (the Gateway API's field names on both sides).

The controller sends routes as it parsed them (defaults filled in, references' namespaces
resolved); a node turns them back into the same typed values, checking every enum-like
string and port on the way in: a value it cannot read raises `ConversionError`.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from meshcore.api import mesh_pb2 as pb
from meshcore.api.errors import ConversionError
from meshcore.resources import ObjectMeta
from meshcore.resources.gateway import (
    BackendObjectRef,
    BackendRef,
    ExtensionRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteFilter,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderMatch,
    HTTPHeader,
    HTTPMethod,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteMatch,
    HTTPRouteRule,
    MatchType,
    ParentKind,
    ParentRef,
    PathMatch,
    PathMatchType,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifier,
    RequestMirror,
    RequestRedirect,
    ResponseHeaderModifier,
    Retry,
    Timeouts,
    URLRewrite,
)

_E = TypeVar("_E", bound=enum.Enum)


# --- to the wire -----------------------------------------------------------------------------


def route_to_proto(value: HTTPRoute | GRPCRoute, out: pb.Resource) -> None:
    meta = value.metadata
    parents = [_parent_to_proto(p) for p in value.parent_refs]
    if isinstance(value, HTTPRoute):
        out.http_route.CopyFrom(
            pb.HTTPRoute(
                name=meta.name,
                namespace=meta.namespace,
                parent_refs=parents,
                hostnames=list(value.hostnames),
                rules=[_http_rule_to_proto(r) for r in value.rules],
            )
        )
    else:
        out.grpc_route.CopyFrom(
            pb.GRPCRoute(
                name=meta.name,
                namespace=meta.namespace,
                parent_refs=parents,
                hostnames=list(value.hostnames),
                rules=[
                    pb.GRPCRouteRule(
                        matches=[_grpc_match_to_proto(m) for m in r.matches],
                        filters=[_filter_to_proto(f) for f in r.filters],
                        backend_refs=[_backend_to_proto(b) for b in r.backend_refs],
                        name=r.name,
                    )
                    for r in value.rules
                ],
            )
        )


def _parent_to_proto(p: ParentRef) -> pb.RouteParentRef:
    out = pb.RouteParentRef(
        kind=p.kind.value, name=p.name, namespace=p.namespace, section_name=p.section_name
    )
    if p.port is not None:
        out.port = p.port
    return out


def _http_rule_to_proto(r: HTTPRouteRule) -> pb.HTTPRouteRule:
    out = pb.HTTPRouteRule(
        matches=[
            pb.HTTPRouteMatch(
                path=pb.RoutePathMatch(type=m.path.type.value, value=m.path.value),
                headers=[_value_match_to_proto(h) for h in m.headers],
                query_params=[_value_match_to_proto(q) for q in m.query_params],
                method=m.method.value if m.method is not None else "",
            )
            for m in r.matches
        ],
        filters=[_filter_to_proto(f) for f in r.filters],
        backend_refs=[_backend_to_proto(b) for b in r.backend_refs],
        name=r.name,
    )
    if r.timeouts is not None:
        out.timeouts.SetInParent()
        if r.timeouts.request is not None:
            out.timeouts.request = r.timeouts.request
        if r.timeouts.backend_request is not None:
            out.timeouts.backend_request = r.timeouts.backend_request
    if r.retry is not None:
        out.retry.SetInParent()
        out.retry.codes.extend(r.retry.codes)
        if r.retry.attempts is not None:
            out.retry.attempts = r.retry.attempts
        if r.retry.backoff is not None:
            out.retry.backoff = r.retry.backoff
    return out


def _value_match_to_proto(m: HeaderMatch | QueryParamMatch) -> pb.RouteValueMatch:
    return pb.RouteValueMatch(name=m.name, value=m.value, type=m.type.value)


def _grpc_match_to_proto(m: GRPCRouteMatch) -> pb.GRPCRouteMatch:
    out = pb.GRPCRouteMatch(headers=[_value_match_to_proto(h) for h in m.headers])
    if m.method is not None:
        out.method.CopyFrom(
            pb.GRPCMethodMatch(
                type=m.method.type.value, service=m.method.service, method=m.method.method
            )
        )
    return out


def _backend_to_proto(b: BackendRef) -> pb.RouteBackendRef:
    return pb.RouteBackendRef(
        name=b.name,
        namespace=b.namespace,
        port=b.port,
        weight=b.weight,
        filters=[_filter_to_proto(f) for f in b.filters],
    )


def _path_modifier_to_proto(p: PathModifier) -> pb.RoutePathModifier:
    return pb.RoutePathModifier(type=p.type.value, value=p.value)


def _filter_to_proto(f: HTTPRouteFilter) -> pb.RouteFilter:
    out = pb.RouteFilter()
    if isinstance(f, RequestHeaderModifier | ResponseHeaderModifier):
        target = (
            out.request_header_modifier
            if isinstance(f, RequestHeaderModifier)
            else out.response_header_modifier
        )
        target.CopyFrom(
            pb.RouteHeaderModifier(
                set=[pb.RouteHeader(name=h.name, value=h.value) for h in f.set],
                add=[pb.RouteHeader(name=h.name, value=h.value) for h in f.add],
                remove=list(f.remove),
            )
        )
    elif isinstance(f, RequestRedirect):
        out.request_redirect.CopyFrom(
            pb.RouteRequestRedirect(scheme=f.scheme, hostname=f.hostname, status_code=f.status_code)
        )
        if f.path is not None:
            out.request_redirect.path.CopyFrom(_path_modifier_to_proto(f.path))
        if f.port is not None:
            out.request_redirect.port = f.port
    elif isinstance(f, URLRewrite):
        out.url_rewrite.CopyFrom(pb.RouteURLRewrite(hostname=f.hostname))
        if f.path is not None:
            out.url_rewrite.path.CopyFrom(_path_modifier_to_proto(f.path))
    elif isinstance(f, RequestMirror):
        out.request_mirror.CopyFrom(
            pb.RouteRequestMirror(
                name=f.backend.name,
                namespace=f.backend.namespace,
                port=f.backend.port,
                percent=f.percent,
            )
        )
    else:
        out.extension_ref.CopyFrom(pb.RouteExtensionRef(group=f.group, kind=f.kind, name=f.name))
    return out


# --- from the wire ---------------------------------------------------------------------------


def route_from_proto(msg: pb.Resource) -> HTTPRoute | GRPCRoute:
    body = msg.WhichOneof("body")
    try:
        if body == "http_route":
            h = msg.http_route
            return HTTPRoute(
                metadata=_metadata(h.name, h.namespace),
                parent_refs=tuple(_parent(p) for p in h.parent_refs),
                rules=tuple(_http_rule(r) for r in h.rules),
                hostnames=tuple(h.hostnames),
            )
        g = msg.grpc_route
        return GRPCRoute(
            metadata=_metadata(g.name, g.namespace),
            parent_refs=tuple(_parent(p) for p in g.parent_refs),
            rules=tuple(
                GRPCRouteRule(
                    matches=tuple(_grpc_match(m) for m in r.matches),
                    filters=tuple(_grpc_filter(f) for f in r.filters),
                    backend_refs=tuple(_backend(b) for b in r.backend_refs),
                    name=r.name,
                )
                for r in g.rules
            ),
            hostnames=tuple(g.hostnames),
        )
    except ValueError as err:
        raise ConversionError(f"{body} {msg.key.namespace}/{msg.key.name}: {err}") from None


def _metadata(name: str, namespace: str) -> ObjectMeta:
    if not name or not namespace:
        raise ValueError("a route without name or namespace")
    return ObjectMeta(name, namespace)


def _choice(enum_type: type[_E], text: str, what: str) -> _E:
    try:
        return enum_type(text)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum_type)
        raise ValueError(f"{what} must be one of {allowed}, got {text!r}") from None


def _port(value: int, what: str) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} must be between 1 and 65535, got {value}")
    return value


def _parent(p: pb.RouteParentRef) -> ParentRef:
    return ParentRef(
        kind=_choice(ParentKind, p.kind, "parentRef kind"),
        name=p.name,
        namespace=p.namespace,
        section_name=p.section_name,
        port=_port(p.port, "parentRef port") if p.HasField("port") else None,
    )


def _value_match(m: pb.RouteValueMatch) -> tuple[str, str, MatchType]:
    return m.name, m.value, _choice(MatchType, m.type, "match type")


def _http_rule(r: pb.HTTPRouteRule) -> HTTPRouteRule:
    timeouts = None
    if r.HasField("timeouts"):
        t = r.timeouts
        timeouts = Timeouts(
            request=t.request if t.HasField("request") else None,
            backend_request=t.backend_request if t.HasField("backend_request") else None,
        )
    retry = None
    if r.HasField("retry"):
        retry = Retry(
            codes=tuple(r.retry.codes),
            attempts=r.retry.attempts if r.retry.HasField("attempts") else None,
            backoff=r.retry.backoff if r.retry.HasField("backoff") else None,
        )
    return HTTPRouteRule(
        matches=tuple(
            HTTPRouteMatch(
                path=PathMatch(_choice(PathMatchType, m.path.type, "path type"), m.path.value),
                headers=tuple(HeaderMatch(*_value_match(h)) for h in m.headers),
                query_params=tuple(QueryParamMatch(*_value_match(q)) for q in m.query_params),
                method=_choice(HTTPMethod, m.method, "method") if m.method else None,
            )
            for m in r.matches
        ),
        filters=tuple(_filter(f) for f in r.filters),
        backend_refs=tuple(_backend(b) for b in r.backend_refs),
        timeouts=timeouts,
        retry=retry,
        name=r.name,
    )


def _grpc_match(m: pb.GRPCRouteMatch) -> GRPCRouteMatch:
    method = None
    if m.HasField("method"):
        method = GRPCMethodMatch(
            _choice(MatchType, m.method.type, "method match type"),
            m.method.service,
            m.method.method,
        )
    return GRPCRouteMatch(method, tuple(HeaderMatch(*_value_match(h)) for h in m.headers))


def _backend(b: pb.RouteBackendRef) -> BackendRef:
    return BackendRef(
        name=b.name,
        namespace=b.namespace,
        port=_port(b.port, "backendRef port"),
        weight=b.weight,
        filters=tuple(_filter(f) for f in b.filters),
    )


def _path_modifier(p: pb.RoutePathModifier) -> PathModifier:
    return PathModifier(_choice(PathModifierType, p.type, "path modifier type"), p.value)


def _filter(f: pb.RouteFilter) -> HTTPRouteFilter:
    kind = f.WhichOneof("filter")
    if kind in ("request_header_modifier", "response_header_modifier"):
        m = getattr(f, kind)
        cls = RequestHeaderModifier if kind == "request_header_modifier" else ResponseHeaderModifier
        return cls(
            set=tuple(HTTPHeader(h.name, h.value) for h in m.set),
            add=tuple(HTTPHeader(h.name, h.value) for h in m.add),
            remove=tuple(m.remove),
        )
    if kind == "request_redirect":
        r = f.request_redirect
        return RequestRedirect(
            scheme=r.scheme,
            hostname=r.hostname,
            path=_path_modifier(r.path) if r.HasField("path") else None,
            port=_port(r.port, "redirect port") if r.HasField("port") else None,
            status_code=r.status_code,
        )
    if kind == "url_rewrite":
        w = f.url_rewrite
        return URLRewrite(w.hostname, _path_modifier(w.path) if w.HasField("path") else None)
    if kind == "request_mirror":
        m = f.request_mirror
        backend = BackendObjectRef(m.name, m.namespace, _port(m.port, "mirror port"))
        return RequestMirror(backend, m.percent)
    if kind == "extension_ref":
        e = f.extension_ref
        return ExtensionRef(e.group, e.kind, e.name)
    raise ValueError("a filter with no type")


def _grpc_filter(f: pb.RouteFilter) -> GRPCRouteFilter:
    value = _filter(f)
    if isinstance(value, RequestRedirect | URLRewrite):
        raise ValueError(f"a GRPCRoute takes no {value.type.value} filter")
    return value
