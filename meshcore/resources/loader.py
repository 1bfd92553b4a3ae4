"""From YAML files to typed resources: the one edge where manifests enter."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from meshcore.resources.core import (
    Resource,
    ResourceKey,
    parse_deployment,
    parse_namespace,
    parse_pod,
    parse_service,
    parse_service_account,
)
from meshcore.resources.destinationrule import DESTINATION_RULE_VERSIONS, parse_destination_rule
from meshcore.resources.endpointslice import ENDPOINTSLICE_VERSIONS, parse_endpoint_slice
from meshcore.resources.errors import ManifestError, ManifestErrors
from meshcore.resources.fields import Fields
from meshcore.resources.gateway import (
    GATEWAY_VERSIONS,
    GRPCROUTE_VERSIONS,
    HTTPROUTE_VERSIONS,
    parse_gateway,
    parse_grpc_route,
    parse_http_route,
)
from meshcore.resources.meshconfig import parse_config_map
from meshcore.resources.node import parse_node
from meshcore.resources.ratelimit import RATELIMIT_VERSIONS, parse_rate_limit_policy
from meshcore.resources.requestauthn import parse_request_authentication
from meshcore.resources.security import (
    SECURITY_VERSIONS,
    parse_authorization_policy,
    parse_peer_authentication,
)
from meshcore.resources.virtualservice import VIRTUAL_SERVICE_VERSIONS, parse_virtual_service

_Parser = Callable[[Fields, list[str]], Resource]

# kind -> (accepted apiVersions, parser)
KINDS: dict[str, tuple[frozenset[str], _Parser]] = {
    "Namespace": (frozenset({"v1"}), parse_namespace),
    "ServiceAccount": (frozenset({"v1"}), parse_service_account),
    "Pod": (frozenset({"v1"}), parse_pod),
    "Service": (frozenset({"v1"}), parse_service),
    "EndpointSlice": (ENDPOINTSLICE_VERSIONS, parse_endpoint_slice),  # for selector-less Services
    "Node": (frozenset({"v1"}), parse_node),  # from a Kubernetes API only
    "Deployment": (frozenset({"apps/v1"}), parse_deployment),
    "ConfigMap": (frozenset({"v1"}), parse_config_map),  # weft-system/weft: the mesh config
    "AuthorizationPolicy": (SECURITY_VERSIONS, parse_authorization_policy),
    "PeerAuthentication": (SECURITY_VERSIONS, parse_peer_authentication),
    "RequestAuthentication": (SECURITY_VERSIONS, parse_request_authentication),
    "Gateway": (GATEWAY_VERSIONS, parse_gateway),
    "HTTPRoute": (HTTPROUTE_VERSIONS, parse_http_route),
    "GRPCRoute": (GRPCROUTE_VERSIONS, parse_grpc_route),
    "VirtualService": (VIRTUAL_SERVICE_VERSIONS, parse_virtual_service),
    "RateLimitPolicy": (RATELIMIT_VERSIONS, parse_rate_limit_policy),
    "DestinationRule": (DESTINATION_RULE_VERSIONS, parse_destination_rule),
}

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


# libyaml's loader when PyYAML was built with it (Debian's and PyPI's wheels are): ~10x faster.
# Imported when a document is read: the ztunnel imports these types and never reads YAML.
def _safe_loader() -> type:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Document:
    """One raw YAML document and where it came from (`file.yaml`, or `file.yaml#3`)."""

    source: str
    raw: object


@dataclass(frozen=True)
class Parsed:
    source: str
    resource: Resource
    ignored_fields: tuple[str, ...]


def _describe(raw: dict[object, object]) -> str:
    kind = raw.get("kind") or "?"
    meta = raw.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    if not namespace and kind in KINDS and kind not in ("Namespace", "Node"):
        namespace = "default"  # what the resource will be called once parsed
    if namespace and name:
        return f"{kind} {namespace}/{name}"
    return f"{kind} {name or '(unnamed)'}"


def parse_resource(doc: Document) -> Parsed:
    """Parse one document; raises ManifestError naming the source, resource and field."""
    raw = doc.raw
    if not isinstance(raw, dict):
        raise ManifestError("a manifest must be a YAML mapping", source=doc.source)
    what = _describe(raw)
    try:
        f = Fields(raw, "", ignored=frozenset({"status"}))
        kind = f.string("kind", required=True)
        api_version = f.string("apiVersion", required=True)
        if kind not in KINDS:
            raise ManifestError(
                f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})", field="kind"
            )
        versions, parser = KINDS[kind]
        if api_version not in versions:
            raise f.fail(
                "apiVersion",
                f"{kind} is served as {' or '.join(sorted(versions))}, not {api_version!r}",
            )
        ignored: list[str] = []
        resource = parser(f, ignored)
        ignored.extend(f.done())
    except ManifestError as err:
        raise err.located(source=doc.source, resource=what) from None
    return Parsed(doc.source, resource, tuple(ignored))


def _split_documents(text: str, source: str) -> list[Document]:
    import yaml

    try:
        loaded = [d for d in yaml.load_all(text, Loader=_safe_loader()) if d is not None]
    except yaml.YAMLError:
        loaded = []
    else:
        return _documents(loaded, source)
    try:  # the pure-Python loader words its errors better; only bad files take this path
        loaded = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ManifestError(f"not valid YAML{where}: {problem}", source=source) from None
    return _documents(loaded, source)


def _documents(loaded: list[object], source: str) -> list[Document]:
    docs: list[Document] = []
    for i, raw in enumerate(loaded):
        label = source if len(loaded) == 1 else f"{source}#{i + 1}"
        if isinstance(raw, dict) and raw.get("kind") == "List":
            for j, item in enumerate(raw.get("items") or []):
                docs.append(Document(f"{label} items[{j}]", item))
        else:
            docs.append(Document(label, raw))
    return docs


def manifest_files(path: Path) -> list[Path]:
    """The manifest files at `path`: the file itself, or a folder's files in name order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    if path.is_file():
        return [path]
    raise ManifestError("no such file or folder", source=str(path))


def load_documents(paths: Iterable[Path]) -> list[Document]:
    """Read every document of every manifest file; YAML errors name the file and line."""
    docs: list[Document] = []
    errors: list[ManifestError] = []
    for path in paths:
        for file in manifest_files(path):
            try:
                docs.extend(_split_documents(file.read_text(), str(file)))
            except ManifestError as err:
                errors.append(err)
            except (OSError, UnicodeDecodeError) as err:
                errors.append(ManifestError(f"cannot read: {err}", source=str(file)))
    if errors:
        raise ManifestErrors(errors)
    return docs


def documents_from_text(text: str, source: str) -> list[Document]:
    return _split_documents(text, source)


def parse_documents(docs: Iterable[Document]) -> list[Parsed]:
    """Parse all documents, collecting every error; duplicates of one key are an error."""
    parsed: list[Parsed] = []
    errors: list[ManifestError] = []
    first_seen: dict[ResourceKey, str] = {}
    for doc in docs:
        try:
            item = parse_resource(doc)
        except ManifestError as err:
            errors.append(err)
            continue
        key = item.resource.key
        if key in first_seen:
            errors.append(
                ManifestError(
                    f"duplicate: {key} is also defined in {first_seen[key]}",
                    source=doc.source,
                    resource=str(key),
                    field="metadata.name",
                )
            )
            continue
        first_seen[key] = doc.source
        parsed.append(item)
    if errors:
        raise ManifestErrors(errors)
    return parsed
