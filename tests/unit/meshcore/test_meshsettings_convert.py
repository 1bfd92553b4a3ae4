"""MeshSettings <-> protobuf: what the controller sends is what a waypoint reads back, and a
message a parsed mesh config could not have produced is refused (the node NACKs it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import from_proto, to_proto
from meshcore.api.errors import ConversionError
from meshcore.resources.meshconfig import (
    MAX_BODY_BYTES,
    ExtAuthzKind,
    ExtAuthzProvider,
    MeshSettings,
    parse_mesh_config,
)

HTTP = ExtAuthzProvider(
    name="http-authz",
    kind=ExtAuthzKind.HTTP,
    service="foo/ext-authz.foo.svc.cluster.local",
    service_namespace="foo",
    service_name="ext-authz",
    port=8000,
    timeout=0.25,
    fail_open=True,
    status_on_error=503,
    path_prefix="/check",
    include_request_headers_in_check=("x-ext-authz", "x-user-*", "*-token"),
    include_additional_headers_in_check=(("x-added", "yes"), ("x-b", "")),
    headers_to_upstream_on_allow=("x-user",),
    headers_to_downstream_on_allow=("x-allow",),
    headers_to_downstream_on_deny=("x-deny", "*"),
    body_max_bytes=MAX_BODY_BYTES,
    body_allow_partial=True,
)
GRPC = ExtAuthzProvider(
    name="grpc-authz",
    kind=ExtAuthzKind.GRPC,
    service="ext-authz.bar.svc",
    service_namespace="bar",
    service_name="ext-authz",
    port=9000,
    body_max_bytes=10,
    body_pack_as_bytes=True,
)


def _wire(value: MeshSettings) -> pb.Resource:
    msg = pb.Resource()
    msg.ParseFromString(to_proto(value).SerializeToString())
    return msg


@pytest.mark.parametrize(
    "settings",
    [
        MeshSettings({}),
        MeshSettings({"http-authz": HTTP}),
        MeshSettings({"http-authz": HTTP, "grpc-authz": GRPC}),
    ],
    ids=["empty", "http", "both"],
)
def test_mesh_settings_round_trip_unchanged(settings: MeshSettings) -> None:
    msg = _wire(settings)
    assert msg.WhichOneof("body") == "mesh_settings"
    assert (msg.key.kind, msg.key.namespace, msg.key.name) == (
        "MeshSettings",
        "weft-system",
        "weft",
    )
    back = from_proto(msg)
    assert back == settings and back.key == settings.key


def test_a_parsed_configmap_round_trips_with_every_field() -> None:
    config = parse_mesh_config(
        """
        extensionProviders:
        - name: a
          envoyExtAuthzHttp:
            service: a.ns.svc.cluster.local
            port: 80
            timeout: 1m
            pathPrefix: /x
            includeRequestHeadersInCheck: [Cookie]
            includeAdditionalHeadersInCheck: {X-A: "1"}
            headersToUpstreamOnAllow: [x-u*]
            headersToDownstreamOnAllow: [x-d]
            headersToDownstreamOnDeny: ["*"]
            includeRequestBodyInCheck: {maxRequestBytes: 512, allowPartialMessage: true}
        - name: b
          envoyExtAuthzGrpc: {service: ns/b.ns.svc, port: 81, failOpen: true, statusOnError: "500"}
        """
    )
    assert config.errors == ()
    assert from_proto(_wire(config.settings)) == config.settings


def test_the_bytes_do_not_depend_on_the_order_providers_were_written_in() -> None:
    one = to_proto(MeshSettings({"http-authz": HTTP, "grpc-authz": GRPC})).SerializeToString()
    two = to_proto(MeshSettings({"grpc-authz": GRPC, "http-authz": HTTP})).SerializeToString()
    assert one == two


def _field(name: str, value: object) -> Callable[[pb.ExtAuthzProvider], None]:
    def set_it(m: pb.ExtAuthzProvider) -> None:
        if isinstance(value, list):
            getattr(m, name).extend(value)
        else:
            setattr(m, name, value)

    return set_it


@pytest.mark.parametrize(
    ("provider", "change", "reason"),
    [
        (HTTP, _field("name", ""), "no name"),
        (HTTP, _field("kind", "thrift"), "kind must be http or grpc"),
        (HTTP, _field("service", "authz.example.com"), "not a Service host"),
        (HTTP, _field("service_name", "other"), "do not match"),
        (HTTP, _field("service_namespace", "other"), "do not match"),
        (HTTP, _field("port", 0), "port 0"),
        (HTTP, _field("port", 70000), "port 70000"),
        (HTTP, _field("timeout", 0.0), "timeout must be positive"),
        (HTTP, _field("timeout", float("nan")), "timeout must be positive"),
        (HTTP, _field("status_on_error", 299), "not an HTTP status"),
        (HTTP, _field("body_max_bytes", MAX_BODY_BYTES + 1), "body_max_bytes"),
        (HTTP, _field("path_prefix", "check"), "path_prefix"),
        (GRPC, _field("path_prefix", "/x"), "HTTP-only fields"),
        (GRPC, _field("headers_to_upstream_on_allow", ["x"]), "HTTP-only fields"),
    ],
)
def test_a_provider_no_parsed_config_could_produce_is_refused(
    provider: ExtAuthzProvider, change: Callable[[pb.ExtAuthzProvider], None], reason: str
) -> None:
    msg = _wire(MeshSettings({provider.name: provider}))
    change(msg.mesh_settings.ext_authz_providers[0])
    with pytest.raises(ConversionError, match="mesh_settings weft-system/weft") as caught:
        from_proto(msg)
    assert reason in str(caught.value)


def test_a_duplicate_provider_name_on_the_wire_is_refused() -> None:
    msg = _wire(MeshSettings({"grpc-authz": GRPC}))
    msg.mesh_settings.ext_authz_providers.append(msg.mesh_settings.ext_authz_providers[0])
    with pytest.raises(ConversionError, match="duplicate name 'grpc-authz'"):
        from_proto(msg)


def test_header_names_read_back_lower_case_and_pack_as_bytes_only_for_grpc() -> None:
    msg = _wire(MeshSettings({"http-authz": HTTP}))
    m = msg.mesh_settings.ext_authz_providers[0]
    m.include_request_headers_in_check[0] = "X-Ext-Authz"
    m.include_additional_headers_in_check[0].name = "X-Added"
    m.body_pack_as_bytes = True
    p = from_proto(msg)
    assert isinstance(p, MeshSettings)
    got = p.ext_authz_providers["http-authz"]
    assert got.include_request_headers_in_check[0] == "x-ext-authz"
    assert got.include_additional_headers_in_check[0] == ("x-added", "yes")
    assert got.body_pack_as_bytes is False
