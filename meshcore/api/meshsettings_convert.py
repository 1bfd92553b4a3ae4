"""MeshSettings <-> protobuf (the mesh config's extension providers, for the waypoints).

The node re-checks what the controller's parser guarantees (a known kind, a port, a Service
host, a known status, a body bound), so a bad message is NACKed rather than used.
"""

from __future__ import annotations

from meshcore.api import mesh_pb2 as pb
from meshcore.api.errors import ConversionError
from meshcore.resources.errors import ManifestError
from meshcore.resources.meshconfig import (
    ENVOY_STATUS_CODES,
    MAX_BODY_BYTES,
    ExtAuthzKind,
    ExtAuthzProvider,
    MeshSettings,
    parse_service,
)


def _provider_to_proto(p: ExtAuthzProvider) -> pb.ExtAuthzProvider:
    return pb.ExtAuthzProvider(
        name=p.name,
        kind=p.kind.value,
        service=p.service,
        service_namespace=p.service_namespace,
        service_name=p.service_name,
        port=p.port,
        timeout=p.timeout,
        fail_open=p.fail_open,
        status_on_error=p.status_on_error,
        path_prefix=p.path_prefix,
        include_request_headers_in_check=list(p.include_request_headers_in_check),
        include_additional_headers_in_check=[
            pb.ExtAuthzHeader(name=n, value=v) for n, v in p.include_additional_headers_in_check
        ],
        headers_to_upstream_on_allow=list(p.headers_to_upstream_on_allow),
        headers_to_downstream_on_allow=list(p.headers_to_downstream_on_allow),
        headers_to_downstream_on_deny=list(p.headers_to_downstream_on_deny),
        body_max_bytes=p.body_max_bytes,
        body_allow_partial=p.body_allow_partial,
        body_pack_as_bytes=p.body_pack_as_bytes,
    )


def mesh_settings_to_proto(value: MeshSettings, out: pb.Resource) -> None:
    out.mesh_settings.CopyFrom(
        pb.MeshSettings(
            ext_authz_providers=[
                _provider_to_proto(p)
                for _, p in sorted(value.ext_authz_providers.items())  # stable bytes
            ]
        )
    )


def _provider_from_proto(m: pb.ExtAuthzProvider, where: str) -> ExtAuthzProvider:
    if not m.name:
        raise ValueError(f"{where}: no name")
    try:
        kind = ExtAuthzKind(m.kind)
    except ValueError:
        raise ValueError(f"{where}: kind must be http or grpc, got {m.kind!r}") from None
    if (m.service_namespace, m.service_name) != parse_service(m.service, f"{where}.service"):
        raise ValueError(f"{where}: service_namespace/service_name do not match {m.service!r}")
    if not 1 <= m.port <= 65535:
        raise ValueError(f"{where}: port {m.port} is not 1-65535")
    if not m.timeout > 0:
        raise ValueError(f"{where}: timeout must be positive, got {m.timeout}")
    if m.status_on_error not in ENVOY_STATUS_CODES:
        raise ValueError(f"{where}: status_on_error {m.status_on_error} is not an HTTP status")
    if m.body_max_bytes > MAX_BODY_BYTES:
        raise ValueError(f"{where}: body_max_bytes {m.body_max_bytes} > {MAX_BODY_BYTES}")
    http = kind is ExtAuthzKind.HTTP
    if not http and (
        m.path_prefix
        or m.include_request_headers_in_check
        or m.include_additional_headers_in_check
        or m.headers_to_upstream_on_allow
        or m.headers_to_downstream_on_allow
        or m.headers_to_downstream_on_deny
    ):
        raise ValueError(f"{where}: HTTP-only fields set on a grpc provider")
    if m.path_prefix and not m.path_prefix.startswith("/"):
        raise ValueError(f"{where}: path_prefix must begin with '/'")
    return ExtAuthzProvider(
        name=m.name,
        kind=kind,
        service=m.service,
        service_namespace=m.service_namespace,
        service_name=m.service_name,
        port=m.port,
        timeout=m.timeout,
        fail_open=m.fail_open,
        status_on_error=m.status_on_error,
        path_prefix=m.path_prefix,
        include_request_headers_in_check=tuple(
            h.lower() for h in m.include_request_headers_in_check
        ),
        include_additional_headers_in_check=tuple(
            (h.name.lower(), h.value) for h in m.include_additional_headers_in_check
        ),
        headers_to_upstream_on_allow=tuple(h.lower() for h in m.headers_to_upstream_on_allow),
        headers_to_downstream_on_allow=tuple(h.lower() for h in m.headers_to_downstream_on_allow),
        headers_to_downstream_on_deny=tuple(h.lower() for h in m.headers_to_downstream_on_deny),
        body_max_bytes=m.body_max_bytes,
        body_allow_partial=m.body_allow_partial,
        body_pack_as_bytes=m.body_pack_as_bytes and not http,
    )


def mesh_settings_from_proto(msg: pb.Resource) -> MeshSettings:
    what = f"mesh_settings {msg.key.namespace}/{msg.key.name}"
    providers: dict[str, ExtAuthzProvider] = {}
    try:
        for i, m in enumerate(msg.mesh_settings.ext_authz_providers):
            p = _provider_from_proto(m, f"ext_authz_providers[{i}]")
            if p.name in providers:
                raise ValueError(f"ext_authz_providers[{i}]: duplicate name {p.name!r}")
            providers[p.name] = p
    except (ValueError, ManifestError) as err:
        raise ConversionError(f"{what}: {err}") from None
    return MeshSettings(providers)
