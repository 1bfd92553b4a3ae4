"""Mesh config: Istio's meshConfig, read from ConfigMap `weft-system/weft`, key `mesh`.

Istio keeps meshConfig in ConfigMap `istio-system/istio`, key `mesh` (a YAML string). weft reads
the same shape from `weft-system/weft`; today only `extensionProviders` (the ext_authz kinds,
`envoyExtAuthzHttp` and `envoyExtAuthzGrpc`) is carried to the data plane.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.resources.core import ResourceKey
from meshcore.resources.security import ROOT_NAMESPACE

MESH_CONFIGMAP = "weft"  # ConfigMap weft-system/weft (Istio: istio-system/istio)
MESH_CONFIG_KEY = "mesh"

__all__ = [
    "MESH_CONFIGMAP",
    "MESH_CONFIG_KEY",
    "ROOT_NAMESPACE",
    "ExtAuthzKind",
    "ExtAuthzProvider",
    "MeshSettings",
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
