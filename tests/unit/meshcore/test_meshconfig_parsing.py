"""The mesh config: ConfigMap weft-system/weft, key `mesh`, read as Istio's meshConfig.

Good ext_authz providers parse into ExtAuthzProvider values; one bad entry is left out with
its field path and the others are still used; what makes the whole text unusable (not YAML,
not a mapping, a key Istio's meshConfig does not have) refuses the ConfigMap with its field.
"""

from __future__ import annotations

import textwrap

import pytest
import yaml

from meshcore.resources import ManifestError, ResourceKey, documents_from_text, parse_resource
from meshcore.resources.meshconfig import (
    ISTIO_MESH_KEYS,
    MAX_BODY_BYTES,
    MAX_EXTENSION_PROVIDERS,
    MAX_MESH_CONFIG_BYTES,
    OTHER_PROVIDER_TYPES,
    ConfigMap,
    ExtAuthzKind,
    ExtAuthzProvider,
    MeshSettings,
    mesh_config_of,
    parse_mesh_config,
)

HTTP_FULL = """
extensionProviders:
- name: http-authz
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    timeout: 1.5s
    failOpen: true
    statusOnError: "503"
    pathPrefix: /check
    includeRequestHeadersInCheck: [X-Ext-Authz, "x-user-*", "*-token"]
    includeAdditionalHeadersInCheck: {X-Added: "yes", x-b: "2"}
    headersToUpstreamOnAllow: [x-user]
    headersToDownstreamOnAllow: [x-down-allow]
    headersToDownstreamOnDeny: [x-down-deny, "*"]
    includeRequestBodyInCheck: {maxRequestBytes: 4096, allowPartialMessage: true}
"""


def test_an_http_provider_with_every_field_parses_as_istio_writes_it() -> None:
    config = parse_mesh_config(HTTP_FULL)
    assert config.errors == ()
    assert config.settings.ext_authz_providers == {
        "http-authz": ExtAuthzProvider(
            name="http-authz",
            kind=ExtAuthzKind.HTTP,
            service="ext-authz.foo.svc.cluster.local",
            service_namespace="foo",
            service_name="ext-authz",
            port=8000,
            timeout=1.5,
            fail_open=True,
            status_on_error=503,
            path_prefix="/check",
            include_request_headers_in_check=("x-ext-authz", "x-user-*", "*-token"),
            include_additional_headers_in_check=(("x-added", "yes"), ("x-b", "2")),
            headers_to_upstream_on_allow=("x-user",),
            headers_to_downstream_on_allow=("x-down-allow",),
            headers_to_downstream_on_deny=("x-down-deny", "*"),
            body_max_bytes=4096,
            body_allow_partial=True,
        )
    }


def test_a_grpc_provider_takes_the_namespace_form_and_defaults_to_istios_values() -> None:
    config = parse_mesh_config(
        """
        extensionProviders:
        - name: grpc-authz
          envoyExtAuthzGrpc:
            service: foo/ext-authz.foo.svc
            port: 9000
            includeRequestBodyInCheck: {maxRequestBytes: 100, packAsBytes: true}
        """
    )
    assert config.errors == ()
    p = config.settings.ext_authz_providers["grpc-authz"]
    assert (p.kind, p.service_namespace, p.service_name, p.port) == (
        ExtAuthzKind.GRPC,
        "foo",
        "ext-authz",
        9000,
    )
    # Istio's defaults: 600 s, fail closed with 403
    assert (p.timeout, p.fail_open, p.status_on_error) == (600.0, False, 403)
    assert (p.body_max_bytes, p.body_pack_as_bytes, p.body_allow_partial) == (100, True, False)
    assert p.path_prefix == "" and p.include_request_headers_in_check == ()


def test_pack_as_bytes_has_no_effect_on_an_http_provider_as_in_istio() -> None:
    config = parse_mesh_config(
        "extensionProviders: [{name: a, envoyExtAuthzHttp: {service: a.b.svc.cluster.local, "
        "port: 80, includeRequestBodyInCheck: {maxRequestBytes: 10, packAsBytes: true}}}]"
    )
    assert config.settings.ext_authz_providers["a"].body_pack_as_bytes is False


def test_istios_deprecated_include_headers_in_check_is_read_when_the_new_field_is_absent() -> None:
    config = parse_mesh_config(
        "extensionProviders: [{name: a, envoyExtAuthzHttp: {service: a.b.svc.cluster.local, "
        "port: 80, includeHeadersInCheck: [Cookie]}}]"
    )
    assert config.settings.ext_authz_providers["a"].include_request_headers_in_check == ("cookie",)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0.5s", 0.5), ("2s", 2.0), ("1m", 60.0), ("250ms", 0.25), ("1m30s", 90.0), ("1h", 3600.0)],
)
def test_timeout_takes_go_and_istio_durations(text: str, seconds: float) -> None:
    config = parse_mesh_config(
        "extensionProviders: [{name: a, envoyExtAuthzGrpc: {service: a.b.svc.cluster.local, "
        f"port: 80, timeout: {text}}}}}]"
    )
    assert config.errors == ()
    assert config.settings.ext_authz_providers["a"].timeout == pytest.approx(seconds)


def test_an_empty_or_absent_mesh_is_istios_defaults_with_no_providers() -> None:
    assert parse_mesh_config("").settings == MeshSettings({})
    assert parse_mesh_config("extensionProviders: []").settings == MeshSettings({})
    cm = ConfigMap(parse_resource(_cm_doc(None)).resource.metadata, {})
    assert mesh_config_of(cm).settings == MeshSettings({})


def _entry(kind: str, body: str) -> str:
    return f"extensionProviders:\n- name: p\n  {kind}:\n" + textwrap.indent(
        textwrap.dedent(body).strip(), "    "
    )


GRPC_OK = "service: a.b.svc.cluster.local\nport: 80"

# (id, provider type, body, field path under data.mesh.extensionProviders[0], reason part)
BAD_FIELDS = [
    ("no service", "envoyExtAuthzGrpc", "port: 80", "envoyExtAuthzGrpc.service", "missing"),
    ("empty service", "envoyExtAuthzGrpc", 'service: ""\nport: 80', ".service", "empty"),
    (
        "external host",
        "envoyExtAuthzGrpc",
        "service: authz.example.com\nport: 80",
        "envoyExtAuthzGrpc.service",
        "ServiceEntry",
    ),
    ("short host", "envoyExtAuthzHttp", "service: a.b\nport: 80", ".service", "Service host"),
    (
        "namespace mismatch",
        "envoyExtAuthzHttp",
        "service: bar/a.foo.svc.cluster.local\nport: 80",
        ".service",
        "does not match",
    ),
    ("empty ns", "envoyExtAuthzHttp", "service: /a.b.svc\nport: 80", ".service", "empty"),
    ("bad label", "envoyExtAuthzHttp", "service: A_b.c.svc\nport: 80", ".service", "DNS label"),
    ("no port", "envoyExtAuthzGrpc", "service: a.b.svc", "envoyExtAuthzGrpc.port", "missing"),
    ("port 0", "envoyExtAuthzGrpc", "service: a.b.svc\nport: 0", ".port", "at least 1"),
    ("port big", "envoyExtAuthzGrpc", "service: a.b.svc\nport: 65536", ".port", "at most"),
    ("port text", "envoyExtAuthzGrpc", 'service: a.b.svc\nport: "80"', ".port", "integer"),
    ("timeout", "envoyExtAuthzGrpc", f"{GRPC_OK}\ntimeout: 5", ".timeout", "not a duration"),
    ("timeout unit", "envoyExtAuthzGrpc", f"{GRPC_OK}\ntimeout: 5d", ".timeout", "duration"),
    ("timeout 0", "envoyExtAuthzGrpc", f"{GRPC_OK}\ntimeout: 0s", ".timeout", "at least"),
    ("failOpen", "envoyExtAuthzGrpc", f"{GRPC_OK}\nfailOpen: yes-ish", ".failOpen", "true"),
    ("status", "envoyExtAuthzGrpc", f'{GRPC_OK}\nstatusOnError: "299"', ".statusOnError", "299"),
    ("status 0", "envoyExtAuthzGrpc", f'{GRPC_OK}\nstatusOnError: "0"', ".statusOnError", ""),
    ("status txt", "envoyExtAuthzGrpc", f"{GRPC_OK}\nstatusOnError: nope", ".statusOnError", ""),
    ("prefix", "envoyExtAuthzHttp", f"{GRPC_OK}\npathPrefix: check", ".pathPrefix", "'/'"),
    ("prefix ?", "envoyExtAuthzHttp", f"{GRPC_OK}\npathPrefix: /c?x", ".pathPrefix", "URL"),
    (
        "header",
        "envoyExtAuthzHttp",
        f"{GRPC_OK}\nincludeRequestHeadersInCheck: ['bad header']",
        ".includeRequestHeadersInCheck[0]",
        "header name",
    ),
    (
        "two stars",
        "envoyExtAuthzHttp",
        f"{GRPC_OK}\nheadersToUpstreamOnAllow: [ok, '*x*']",
        ".headersToUpstreamOnAllow[1]",
        "one *",
    ),
    (
        "empty header",
        "envoyExtAuthzHttp",
        f"{GRPC_OK}\nheadersToDownstreamOnDeny: ['']",
        ".headersToDownstreamOnDeny[0]",
        "",
    ),
    (
        "header list",
        "envoyExtAuthzHttp",
        f"{GRPC_OK}\nheadersToDownstreamOnAllow: x-a",
        ".headersToDownstreamOnAllow",
        "array",
    ),
    (
        "too many headers",
        "envoyExtAuthzHttp",
        f"{GRPC_OK}\nincludeRequestHeadersInCheck: [{', '.join(f'h{i}' for i in range(65))}]",
        ".includeRequestHeadersInCheck",
        "at most 64",
    ),
    (
        "added header name",
        "envoyExtAuthzHttp",
        f"{GRPC_OK}\nincludeAdditionalHeadersInCheck: {{'a b': x}}",
        ".includeAdditionalHeadersInCheck.a b",
        "header name",
    ),
    (
        "added header value",
        "envoyExtAuthzHttp",
        f'{GRPC_OK}\nincludeAdditionalHeadersInCheck: {{x-a: "1\\r\\nx-b: 2"}}',
        ".includeAdditionalHeadersInCheck.x-a",
        "CR, LF",
    ),
    (
        "added header number",
        "envoyExtAuthzHttp",
        f"{GRPC_OK}\nincludeAdditionalHeadersInCheck: {{x-a: 1}}",
        ".includeAdditionalHeadersInCheck.x-a",
        "string",
    ),
    (
        "body without size",
        "envoyExtAuthzGrpc",
        f"{GRPC_OK}\nincludeRequestBodyInCheck: {{allowPartialMessage: true}}",
        ".includeRequestBodyInCheck.maxRequestBytes",
        "required",
    ),
    (
        "body zero",
        "envoyExtAuthzGrpc",
        f"{GRPC_OK}\nincludeRequestBodyInCheck: {{maxRequestBytes: 0}}",
        ".includeRequestBodyInCheck.maxRequestBytes",
        "at least 1",
    ),
    (
        "body over the bound",
        "envoyExtAuthzGrpc",
        f"{GRPC_OK}\nincludeRequestBodyInCheck: {{maxRequestBytes: {MAX_BODY_BYTES + 1}}}",
        ".includeRequestBodyInCheck.maxRequestBytes",
        f"at most {MAX_BODY_BYTES}",
    ),
    (
        "body unknown",
        "envoyExtAuthzGrpc",
        f"{GRPC_OK}\nincludeRequestBodyInCheck: {{maxRequestBytes: 1, max: 2}}",
        ".includeRequestBodyInCheck.max",
        "unknown field",
    ),
    (
        "http field on grpc",
        "envoyExtAuthzGrpc",
        f"{GRPC_OK}\npathPrefix: /x",
        "envoyExtAuthzGrpc.pathPrefix",
        "unknown field",
    ),
    ("typo", "envoyExtAuthzHttp", f"{GRPC_OK}\nfailopen: true", ".failopen", "unknown field"),
    ("not an object", "envoyExtAuthzHttp", "[1]", "envoyExtAuthzHttp", "expected an object"),
]


@pytest.mark.parametrize(
    ("kind", "body", "field", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_FIELDS],
)
def test_a_bad_provider_field_leaves_that_entry_out_naming_its_path(
    kind: str, body: str, field: str, reason: str
) -> None:
    config = parse_mesh_config(_entry(kind, body))
    assert config.settings.ext_authz_providers == {}
    assert config.refused_names == {"p"}
    [(path, why)] = config.errors
    prefix = "data.mesh.extensionProviders[0]"
    expected = f"{prefix}{field}" if field.startswith(".") else f"{prefix}.{field}"
    if field.startswith("."):  # either provider type: the path ends with it
        assert path.startswith(prefix) and path.endswith(field), path
    else:
        assert path == expected
    assert reason in why


@pytest.mark.parametrize(
    ("entry", "field", "reason"),
    [
        ("{envoyExtAuthzGrpc: {service: a.b.svc, port: 1}}", ".name", "missing"),
        ("{name: '', envoyExtAuthzGrpc: {service: a.b.svc, port: 1}}", ".name", "empty"),
        ("{name: 3, envoyExtAuthzGrpc: {service: a.b.svc, port: 1}}", ".name", "string"),
        ("{name: p}", "", "exactly one provider type"),
        (
            "{name: p, envoyExtAuthzGrpc: {service: a.b.svc, port: 1}, "
            "envoyExtAuthzHttp: {service: a.b.svc, port: 1}}",
            "",
            "found envoyExtAuthzHttp, envoyExtAuthzGrpc",
        ),
        ("{name: p, envoyExtAuthz: {}}", ".envoyExtAuthz", "unknown field"),
        ("nope", "", "expected an object"),
    ],
)
def test_a_bad_provider_entry_is_left_out_naming_its_path(
    entry: str, field: str, reason: str
) -> None:
    config = parse_mesh_config(f"extensionProviders: [{entry}]")
    assert config.settings.ext_authz_providers == {}
    [(path, why)] = config.errors
    assert path == f"data.mesh.extensionProviders[0]{field}"
    assert reason in why


@pytest.mark.parametrize("kind", sorted(OTHER_PROVIDER_TYPES))
def test_other_provider_types_are_refused_per_entry_and_the_good_ones_kept(kind: str) -> None:
    config = parse_mesh_config(
        f"""
        extensionProviders:
        - name: other
          {kind}: {{service: x.y.svc.cluster.local, port: 9411}}
        - name: good
          envoyExtAuthzGrpc: {{service: a.b.svc.cluster.local, port: 9000}}
        """
    )
    assert list(config.settings.ext_authz_providers) == ["good"]
    assert config.errors == (
        (
            f"data.mesh.extensionProviders[0].{kind}",
            f"provider type {kind} is not supported by weft (only envoyExtAuthzHttp and "
            "envoyExtAuthzGrpc, for AuthorizationPolicy CUSTOM)",
        ),
    )
    assert config.refused_names == {"other"}


def test_a_duplicate_name_leaves_the_later_entry_out_and_keeps_the_first() -> None:
    config = parse_mesh_config(
        """
        extensionProviders:
        - {name: authz, envoyExtAuthzGrpc: {service: a.b.svc, port: 1}}
        - {name: authz, envoyExtAuthzHttp: {service: c.d.svc, port: 2}}
        """
    )
    assert config.settings.ext_authz_providers["authz"].service == "a.b.svc"
    [(path, why)] = config.errors
    assert path == "data.mesh.extensionProviders[1].name"
    assert "duplicate name 'authz'" in why and "extensionProviders[0]" in why
    assert config.refused_names == frozenset()  # the name is defined, by the first entry


def test_a_duplicate_of_a_refused_entry_is_refused_too_so_the_name_stays_undefined() -> None:
    config = parse_mesh_config(
        """
        extensionProviders:
        - {name: authz, envoyExtAuthzGrpc: {service: a.b.svc, port: 0}}
        - {name: authz, envoyExtAuthzGrpc: {service: a.b.svc, port: 1}}
        """
    )
    assert config.settings.ext_authz_providers == {}
    assert [p for p, _ in config.errors] == [
        "data.mesh.extensionProviders[0].envoyExtAuthzGrpc.port",
        "data.mesh.extensionProviders[1].name",
    ]
    assert config.refused_names == {"authz"}


def test_mixed_good_and_bad_entries_keep_every_good_one() -> None:
    config = parse_mesh_config(
        """
        extensionProviders:
        - {name: one, envoyExtAuthzHttp: {service: one.ns.svc.cluster.local, port: 8000}}
        - {name: bad-port, envoyExtAuthzGrpc: {service: x.ns.svc, port: -1}}
        - {name: two, envoyExtAuthzGrpc: {service: two.ns.svc.cluster.local, port: 9000}}
        - {name: tracing, opentelemetry: {service: otel.ns.svc, port: 4317}}
        - 17
        - {name: three, envoyExtAuthzGrpc: {service: three.ns.svc, port: 9001}}
        """
    )
    assert list(config.settings.ext_authz_providers) == ["one", "two", "three"]
    assert [p for p, _ in config.errors] == [
        "data.mesh.extensionProviders[1].envoyExtAuthzGrpc.port",
        "data.mesh.extensionProviders[3].opentelemetry",
        "data.mesh.extensionProviders[4]",
    ]
    assert config.refused_names == {"bad-port", "tracing"}


def test_providers_past_the_bound_are_left_out_and_reported() -> None:
    entries = "\n".join(
        f"- {{name: p{i}, envoyExtAuthzGrpc: {{service: a.b.svc, port: 1}}}}"
        for i in range(MAX_EXTENSION_PROVIDERS + 2)
    )
    config = parse_mesh_config(f"extensionProviders:\n{entries}")
    assert len(config.settings.ext_authz_providers) == MAX_EXTENSION_PROVIDERS
    assert [p for p, _ in config.errors] == [
        f"data.mesh.extensionProviders[{MAX_EXTENSION_PROVIDERS}]",
        f"data.mesh.extensionProviders[{MAX_EXTENSION_PROVIDERS + 1}]",
    ]
    assert f"more than {MAX_EXTENSION_PROVIDERS}" in config.errors[0][1]


@pytest.mark.parametrize("key", sorted(ISTIO_MESH_KEYS))
def test_istios_other_mesh_keys_are_accepted_and_reported_as_ignored(key: str) -> None:
    config = parse_mesh_config(f"{key}: {{}}\nextensionProviders: []")
    assert config.errors == () and config.ignored == (f"data.mesh.{key}",)


# (id, mesh text, field, reason part): the whole ConfigMap is refused
WHOLE_TEXT = [
    ("unknown key", "extensionProvider: []", "data.mesh.extensionProvider", "unknown field"),
    ("snake case", "access_log_file: x", "data.mesh.access_log_file", "unknown field"),
    ("not yaml", "a: [1,\n", "data.mesh", "not valid YAML at line"),
    ("a list", "- 1\n", "data.mesh", "expected an object"),
    ("a string", "hello", "data.mesh", "expected an object"),
    (
        "providers not a list",
        "extensionProviders: {name: a}",
        "data.mesh.extensionProviders",
        "expected an array",
    ),
    ("too large", "#" * (MAX_MESH_CONFIG_BYTES + 1), "data.mesh", "larger than"),
]


@pytest.mark.parametrize(
    ("text", "field", "reason"), [pytest.param(*c[1:], id=c[0]) for c in WHOLE_TEXT]
)
def test_a_mesh_text_weft_cannot_read_refuses_the_configmap_naming_the_field(
    text: str, field: str, reason: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_resource(_cm_doc(text))
    err = caught.value
    assert (err.resource, err.field) == ("ConfigMap weft-system/weft", field)
    assert reason in err.reason


def _cm_doc(mesh: str | None, namespace: str = "weft-system", name: str = "weft") -> object:
    doc: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
    }
    if mesh is not None:
        doc["data"] = {"mesh": mesh, "meshNetworks": "networks: {}"}
    return documents_from_text(yaml.safe_dump(doc), "cm.yaml")[0]


def test_any_configmap_parses_and_only_weft_system_weft_is_read_as_mesh_config() -> None:
    # Elsewhere the same bad text is just data: no one reads it.
    for namespace, name in (("default", "weft"), ("weft-system", "other")):
        parsed = parse_resource(_cm_doc("not: [valid", namespace, name))
        assert isinstance(parsed.resource, ConfigMap)
        assert not parsed.resource.is_mesh_config
        assert parsed.resource.key == ResourceKey("ConfigMap", namespace, name)
    parsed = parse_resource(_cm_doc(HTTP_FULL))
    assert isinstance(parsed.resource, ConfigMap) and parsed.resource.is_mesh_config
    assert list(mesh_config_of(parsed.resource).settings.ext_authz_providers) == ["http-authz"]


def test_a_configmap_reports_binary_data_and_ignored_mesh_keys_as_ignored_fields() -> None:
    text = """
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: weft, namespace: weft-system}
    immutable: false
    binaryData: {blob: AAAA}
    data:
      mesh: |
        accessLogFile: /dev/stdout
        defaultConfig: {discoveryAddress: istiod:15012}
    """
    parsed = parse_resource(documents_from_text(textwrap.dedent(text), "cm.yaml")[0])
    assert parsed.ignored_fields == (
        "binaryData",
        "data.mesh.accessLogFile",
        "data.mesh.defaultConfig",
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [("{mesh: 3}", "data.mesh"), ("[a]", "data"), ("{mesh: {a: b}}", "data.mesh")],
)
def test_configmap_data_must_be_a_map_of_strings(data: str, field: str) -> None:
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {data}\n"
    with pytest.raises(ManifestError) as caught:
        parse_resource(documents_from_text(text, "cm.yaml")[0])
    assert caught.value.field == field


def test_a_configmap_with_an_unknown_top_level_field_is_refused() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\nspec: {}\n"
    with pytest.raises(ManifestError) as caught:
        parse_resource(documents_from_text(text, "cm.yaml")[0])
    assert (caught.value.field, caught.value.reason) == ("spec", "unknown field")


def test_a_configmap_name_must_be_a_dns_subdomain() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_resource(_cm_doc(None, "weft-system", "Weft_Config"))
    assert caught.value.field == "metadata.name"
