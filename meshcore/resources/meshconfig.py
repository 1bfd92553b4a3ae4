"""Mesh config: Istio's meshConfig, read from ConfigMap `weft-system/weft`, key `mesh`.

Istio keeps meshConfig in ConfigMap `istio-system/istio`, key `mesh` (a YAML string). weft reads
the same shape from `weft-system/weft`; today only `extensionProviders` (the ext_authz kinds,
`envoyExtAuthzHttp` and `envoyExtAuthzGrpc`) is carried to the data plane.

Two kinds of error, as the rest of the loader has them: what makes the whole text unusable (not
YAML, not a mapping, a key Istio's meshConfig does not have) is a ManifestError that refuses the
ConfigMap, so the controller keeps the last good one; a bad `extensionProviders` entry only
leaves that entry out, and the controller reports it as a problem of the ConfigMap, because one
typo must not take every other provider (and the CUSTOM policies using them) down with it.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.names import check_dns_subdomain
from meshcore.resources.security import ROOT_NAMESPACE
from meshcore.resources.virtualservice import parse_duration

MESH_CONFIGMAP = "weft"  # ConfigMap weft-system/weft (Istio: istio-system/istio)
MESH_CONFIG_KEY = "mesh"

__all__ = [
    "MESH_CONFIGMAP",
    "MESH_CONFIG_KEY",
    "ROOT_NAMESPACE",
    "ConfigMap",
    "ExtAuthzKind",
    "ExtAuthzProvider",
    "MeshConfig",
    "MeshSettings",
    "mesh_config_of",
    "parse_config_map",
    "parse_mesh_config",
    "parse_service",
]


class ExtAuthzKind(enum.Enum):
    HTTP = "http"  # envoyExtAuthzHttp
    GRPC = "grpc"  # envoyExtAuthzGrpc


@dataclass(frozen=True)
class ExtAuthzProvider:
    """One meshConfig.extensionProviders[] entry of kind envoyExtAuthzHttp or envoyExtAuthzGrpc."""

    name: str
    kind: ExtAuthzKind
    service: str  # as written: "ext-authz.foo.svc.cluster.local" or "foo/ext-authz.foo..."
    service_namespace: str  # parsed: "foo"
    service_name: str  # parsed: "ext-authz"
    port: int
    timeout: float = 600.0  # seconds; Istio's default is 600s
    fail_open: bool = False
    status_on_error: int = 403
    # HTTP only (empty for gRPC):
    path_prefix: str = ""
    # lower-cased names; exact, `prefix*` or `*suffix` as Istio
    include_request_headers_in_check: tuple[str, ...] = ()
    include_additional_headers_in_check: tuple[tuple[str, str], ...] = ()
    headers_to_upstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_allow: tuple[str, ...] = ()
    headers_to_downstream_on_deny: tuple[str, ...] = ()
    # both: includeRequestBodyInCheck
    body_max_bytes: int = 0  # 0: the body is not sent (maxRequestBytes; weft caps it at 64 KiB)
    body_allow_partial: bool = False
    body_pack_as_bytes: bool = False  # gRPC only


@dataclass(frozen=True)
class MeshSettings:
    """The parsed mesh config: one state value, key MeshSettings weft-system/weft."""

    ext_authz_providers: Mapping[str, ExtAuthzProvider] = field(default_factory=dict)

    kind = "MeshSettings"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, ROOT_NAMESPACE, MESH_CONFIGMAP)


@dataclass(frozen=True)
class ConfigMap:
    """Any Kubernetes ConfigMap: its string `data` (binaryData is not read). Only
    weft-system/weft means something to weft (the mesh config, key `mesh`)."""

    metadata: ObjectMeta
    data: Mapping[str, str] = field(default_factory=dict)
    kind = "ConfigMap"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def is_mesh_config(self) -> bool:
        return (self.metadata.namespace, self.metadata.name) == (ROOT_NAMESPACE, MESH_CONFIGMAP)


@dataclass(frozen=True)
class MeshConfig:
    """What `data.mesh` parses into: the settings, and the provider entries left out.

    `errors` name the field of each entry left out (`data.mesh.extensionProviders[1]...`);
    `refused_names` are the names those entries gave, so a CUSTOM policy naming one can be
    told why it has no provider; `ignored` are the Istio keys weft accepts and does not use.
    """

    settings: MeshSettings
    errors: tuple[tuple[str, str], ...] = ()  # (field, reason)
    refused_names: frozenset[str] = frozenset()
    ignored: tuple[str, ...] = ()


# --- parsing -------------------------------------------------------------------------------

_MESH_PATH = f"data.{MESH_CONFIG_KEY}"
# Kubernetes refuses a ConfigMap over 1 MiB; the same bound for the lab's folder.
MAX_MESH_CONFIG_BYTES = 1024 * 1024
# More would be a mistake (Istio has no limit; its docs show a handful).
MAX_EXTENSION_PROVIDERS = 256
# The most of a request body a waypoint buffers to send with a check (maxRequestBytes).
MAX_BODY_BYTES = 64 * 1024
_HEADER_LIST_MAX = 64  # entries in each header list or map of a provider

# Istio's other meshConfig keys (istio.mesh.v1alpha1.MeshConfig, camelCase as in the YAML):
# accepted so an Istio mesh config ports unchanged, and reported as ignored.
ISTIO_MESH_KEYS = frozenset(
    {
        "proxyListenPort",
        "proxyInboundListenPort",
        "proxyHttpPort",
        "connectTimeout",
        "protocolDetectionTimeout",
        "tcpKeepalive",
        "ingressClass",
        "ingressService",
        "ingressControllerMode",
        "ingressSelector",
        "enableTracing",
        "accessLogFile",
        "accessLogFormat",
        "accessLogEncoding",
        "enableEnvoyAccessLogService",
        "disableEnvoyListenerLog",
        "defaultConfig",
        "outboundTrafficPolicy",
        "inboundTrafficPolicy",
        "configSources",
        "enableAutoMtls",
        "trustDomain",
        "trustDomainAliases",
        "caCertificates",
        "defaultServiceExportTo",
        "defaultVirtualServiceExportTo",
        "defaultDestinationRuleExportTo",
        "rootNamespace",
        "localityLbSetting",
        "dnsRefreshRate",
        "h2UpgradePolicy",
        "inboundClusterStatName",
        "outboundClusterStatName",
        "certificates",
        "serviceSettings",
        "enablePrometheusMerge",
        "verifyCertificateAtClient",
        "ca",
        "defaultProviders",
        "discoverySelectors",
        "pathNormalization",
        "defaultHttpRetryPolicy",
        "meshMTLS",
        "tlsDefaults",
        "compliancePolicy",
    }
)

_HTTP = "envoyExtAuthzHttp"
_GRPC = "envoyExtAuthzGrpc"
# ExtensionProvider's other kinds: refused per entry, the rest of the list still used.
OTHER_PROVIDER_TYPES = frozenset(
    {
        "zipkin",
        "lightstep",
        "datadog",
        "stackdriver",
        "opencensus",
        "skywalking",
        "opentelemetry",
        "prometheus",
        "envoyFileAccessLog",
        "envoyHttpAls",
        "envoyTcpAls",
        "envoyOtelAls",
    }
)

# envoy.type.v3.StatusCode (api/envoy/type/v3/http_status.proto), which Istio checks
# statusOnError against; 0 (Empty) is refused by Envoy's HttpStatus validation.
ENVOY_STATUS_CODES = frozenset(
    {100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307}
    | {308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415}
    | {416, 417, 421, 422, 423, 424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506}
    | {507, 508, 510, 511}
)

# An HTTP header name (RFC 9110 token).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# libyaml's loader when PyYAML has it, as the manifest loader (yaml imported on first use,
# as there: the ztunnel imports these types and never reads YAML).
def _safe_loader() -> type:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", int: "integer", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _boolean(f: Fields, name: str) -> bool:
    value = f.raw(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise f.fail(name, f"expected true or false, got {value!r}")
    return value


def parse_service(value: str, field: str) -> tuple[str, str]:
    """(namespace, name) of an extension provider's `service`: `<name>.<ns>.svc[.cluster.local]`,
    optionally `<ns>/` in front as Istio allows. weft has no ServiceEntry, so the host must be
    a Kubernetes Service's."""
    namespace, slash, host = value.rpartition("/")
    if slash and not namespace:
        raise ManifestError(f"{value!r}: the namespace before '/' is empty", field=field)
    parts = host.split(".")
    if len(parts) < 3 or ".".join(parts[2:]) not in ("svc", "svc.cluster.local"):
        raise ManifestError(
            f"{value!r} is not a Service host: give <name>.<namespace>.svc.cluster.local (weft "
            "resolves extension providers to Kubernetes Services only; it has no ServiceEntry)",
            field=field,
        )
    name, host_ns = parts[0], parts[1]
    for part in (name, host_ns):
        if not _DNS_LABEL.match(part):
            raise ManifestError(f"{value!r}: {part!r} is not a valid DNS label", field=field)
    if namespace and namespace != host_ns:
        raise ManifestError(
            f"{value!r}: namespace {namespace!r} does not match the host's {host_ns!r}",
            field=field,
        )
    return host_ns, name


def _header_pattern(value: str, field: str) -> str:
    """An Istio header match: exact, `prefix*` or `*suffix`, lower-cased."""
    name = value[1:] if value.startswith("*") else value[:-1] if value.endswith("*") else value
    if value != "*" and (not name or not _TOKEN.match(name) or "*" in name):
        raise ManifestError(
            f"{value!r} is not a header name, or a name with one * at its start or end",
            field=field,
        )
    return value.lower()


def _header_patterns(f: Fields, name: str) -> tuple[str, ...]:
    values = f.string_list(name)
    if len(values) > _HEADER_LIST_MAX:
        raise f.fail(name, f"at most {_HEADER_LIST_MAX} entries, got {len(values)}")
    return tuple(_header_pattern(v, f"{f.sub(name)}[{i}]") for i, v in enumerate(values))


def _additional_headers(f: Fields, name: str) -> tuple[tuple[str, str], ...]:
    values = f.string_map(name)
    if len(values) > _HEADER_LIST_MAX:
        raise f.fail(name, f"at most {_HEADER_LIST_MAX} entries, got {len(values)}")
    out = []
    for header, text in values.items():
        where = f"{f.sub(name)}.{header}"
        if not _TOKEN.match(header):
            raise ManifestError(f"{header!r} is not a valid HTTP header name", field=where)
        if any(c in text for c in "\r\n\0"):
            raise ManifestError("a header value may not hold CR, LF or NUL", field=where)
        out.append((header.lower(), text))
    return tuple(sorted(out))


def _status_on_error(f: Fields) -> int:
    value = f.raw("statusOnError")
    if value is None or value == "":
        return 403
    # Istio's field is a string ("403"); a bare YAML number is taken too.
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not text.isdigit() or int(text) not in ENVOY_STATUS_CODES:
        raise f.fail(
            "statusOnError",
            f"{value!r} is not an HTTP status Envoy knows (envoy.type.v3.StatusCode), such as "
            '"403" or "503"',
        )
    return int(text)


def _body(f: Fields, grpc: bool) -> tuple[int, bool, bool]:
    if f.raw("includeRequestBodyInCheck") is None:
        return 0, False, False
    bf = Fields(f.raw("includeRequestBodyInCheck"), f.sub("includeRequestBodyInCheck"))
    if bf.raw("maxRequestBytes") is None:
        raise bf.fail(
            "maxRequestBytes", "required with includeRequestBodyInCheck (1 to 65536 bytes)"
        )
    size = bf.integer("maxRequestBytes", minimum=1, maximum=MAX_BODY_BYTES)
    partial = _boolean(bf, "allowPartialMessage")
    pack = _boolean(bf, "packAsBytes")  # Istio: no effect with the HTTP provider
    bf.done()
    return size, partial, pack and grpc


def _ext_authz(name: str, kind: ExtAuthzKind, raw: object, path: str) -> ExtAuthzProvider:
    f = Fields(raw, path)
    service = f.string("service", required=True)
    namespace, service_name = parse_service(service, f.sub("service"))
    port = f.integer("port", required=True, minimum=1, maximum=65535)
    timeout = 600.0
    if f.raw("timeout") is not None:
        timeout = parse_duration(f.raw("timeout"), f.sub("timeout"))
    fail_open = _boolean(f, "failOpen")
    status = _status_on_error(f)
    body_max, body_partial, body_pack = _body(f, kind is ExtAuthzKind.GRPC)
    http: dict[str, object] = {}
    if kind is ExtAuthzKind.HTTP:
        prefix = f.string("pathPrefix")
        if prefix and not prefix.startswith("/"):
            raise f.fail("pathPrefix", f"must begin with '/', got {prefix!r}")
        if any(c in prefix for c in " ?#\r\n\0"):
            raise f.fail("pathPrefix", f"{prefix!r} is not a URL path")
        headers = _header_patterns(f, "includeRequestHeadersInCheck")
        if not headers:  # Istio's deprecated spelling, used when the new one is not given
            headers = _header_patterns(f, "includeHeadersInCheck")
        else:
            f.raw("includeHeadersInCheck")
        http = {
            "path_prefix": prefix,
            "include_request_headers_in_check": headers,
            "include_additional_headers_in_check": _additional_headers(
                f, "includeAdditionalHeadersInCheck"
            ),
            "headers_to_upstream_on_allow": _header_patterns(f, "headersToUpstreamOnAllow"),
            "headers_to_downstream_on_allow": _header_patterns(f, "headersToDownstreamOnAllow"),
            "headers_to_downstream_on_deny": _header_patterns(f, "headersToDownstreamOnDeny"),
        }
    f.done()
    return ExtAuthzProvider(
        name=name,
        kind=kind,
        service=service,
        service_namespace=namespace,
        service_name=service_name,
        port=port,
        timeout=timeout,
        fail_open=fail_open,
        status_on_error=status,
        body_max_bytes=body_max,
        body_allow_partial=body_partial,
        body_pack_as_bytes=body_pack,
        **http,  # type: ignore[arg-type]
    )


def _provider(raw: object, path: str, name: str) -> ExtAuthzProvider:
    """One extensionProviders[] entry whose name was read already; raises for an entry weft
    cannot use."""
    f = Fields(raw, path)
    f.raw("name")
    given = [k for k in (_HTTP, _GRPC, *sorted(OTHER_PROVIDER_TYPES)) if f.has(k)]
    for key in given:
        f.raw(key)
    f.done()  # an unknown key: a typo, or a provider type Istio does not have either
    if len(given) != 1:
        found = f"; found {', '.join(given)}" if given else ""
        raise ManifestError(
            f"exactly one provider type is required (weft supports {_HTTP} and {_GRPC}){found}",
            field=path,
        )
    key = given[0]
    if key in OTHER_PROVIDER_TYPES:
        raise ManifestError(
            f"provider type {key} is not supported by weft (only {_HTTP} and {_GRPC}, "
            "for AuthorizationPolicy CUSTOM)",
            field=f.sub(key),
        )
    kind = ExtAuthzKind.HTTP if key == _HTTP else ExtAuthzKind.GRPC
    return _ext_authz(name, kind, f.raw(key), f.sub(key))


def _load_yaml(text: str) -> object:
    import yaml

    if len(text.encode()) > MAX_MESH_CONFIG_BYTES:
        raise ManifestError(
            f"larger than {MAX_MESH_CONFIG_BYTES} bytes (Kubernetes' limit for a ConfigMap)",
            field=_MESH_PATH,
        )
    try:
        return yaml.load(text, Loader=_safe_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = (
            f" at line {mark.line + 1}, column {mark.column + 1} of the mesh text" if mark else ""
        )
        problem = getattr(err, "problem", None) or str(err)
        raise ManifestError(f"not valid YAML{where}: {problem}", field=_MESH_PATH) from None


@functools.lru_cache(maxsize=8)
def parse_mesh_config(text: str) -> MeshConfig:
    """Parse the `mesh` key, Istio's meshConfig YAML. Raises ManifestError for what makes
    the whole text unusable (not YAML, not a mapping, an unknown key); a bad
    extensionProviders entry is left out and listed in `errors`, the others are used.

    Memoised on the text: the controller reads the same ConfigMap at every build."""
    raw = _load_yaml(text)
    f = Fields(raw, _MESH_PATH, ignored=ISTIO_MESH_KEYS)
    errors: list[tuple[str, str]] = []
    providers: dict[str, ExtAuthzProvider] = {}
    refused: set[str] = set()
    seen: dict[str, str] = {}
    for i, (path, item) in enumerate(f.objects("extensionProviders")):
        if i >= MAX_EXTENSION_PROVIDERS:
            errors.append(
                (path, f"more than {MAX_EXTENSION_PROVIDERS} extension providers; left out")
            )
            continue
        name = ""
        try:
            pf = Fields(item, path)
            name = pf.string("name", required=True)
            if name in seen:
                raise pf.fail("name", f"duplicate name {name!r}: {seen[name]} has it already")
            seen[name] = path
            providers[name] = _provider(item, path, name)
        except ManifestError as err:
            errors.append((err.field or path, err.reason))
            if name and name not in providers:
                refused.add(name)
    ignored = f.done()
    return MeshConfig(
        MeshSettings(providers),
        tuple(errors),
        frozenset(refused),
        tuple(ignored),
    )


def mesh_config_of(cm: ConfigMap) -> MeshConfig:
    """The mesh config a ConfigMap weft-system/weft holds; no `mesh` key is Istio's defaults."""
    return parse_mesh_config(cm.data.get(MESH_CONFIG_KEY, ""))


def parse_config_map(f: Fields, ignored: list[str]) -> ConfigMap:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    data = f.string_map("data")
    if f.raw("binaryData") is not None:
        ignored.append("binaryData")
    f.raw("immutable")
    cm = ConfigMap(meta, data)
    if cm.is_mesh_config:
        # Refused here, whole: a mesh text that is not YAML, or has a key Istio's has not.
        # Entries weft cannot use are the controller's problems, not the ConfigMap's.
        ignored.extend(mesh_config_of(cm).ignored)
    return cm
