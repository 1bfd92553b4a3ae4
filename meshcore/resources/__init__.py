"""Kubernetes-shaped resources, parsed at the edge into typed, immutable values.

Everything past `load_documents`/`parse_resource` handles dataclasses, never raw dicts.
"""

from meshcore.resources.core import (
    Container,
    ContainerPort,
    Deployment,
    EnvVar,
    Namespace,
    ObjectMeta,
    Pod,
    PodSpec,
    Resource,
    ResourceKey,
    RestartPolicy,
    Service,
    ServiceAccount,
    ServicePort,
)
from meshcore.resources.errors import ManifestError, ManifestErrors
from meshcore.resources.gateway import (
    Gateway,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    Listener,
    ParentRef,
)
from meshcore.resources.loader import (
    Document,
    Parsed,
    documents_from_text,
    load_documents,
    parse_documents,
    parse_resource,
)
from meshcore.resources.security import (
    AuthorizationPolicy,
    Condition,
    MtlsMode,
    Operation,
    PeerAuthentication,
    PolicyAction,
    Rule,
    Source,
)

__all__ = [
    "AuthorizationPolicy",
    "Condition",
    "Container",
    "ContainerPort",
    "Deployment",
    "Document",
    "EnvVar",
    "GRPCRoute",
    "GRPCRouteRule",
    "Gateway",
    "HTTPRoute",
    "HTTPRouteRule",
    "Listener",
    "ManifestError",
    "ManifestErrors",
    "MtlsMode",
    "Namespace",
    "ObjectMeta",
    "Operation",
    "ParentRef",
    "Parsed",
    "PeerAuthentication",
    "Pod",
    "PodSpec",
    "PolicyAction",
    "Resource",
    "ResourceKey",
    "RestartPolicy",
    "Rule",
    "Service",
    "ServiceAccount",
    "ServicePort",
    "Source",
    "documents_from_text",
    "load_documents",
    "parse_documents",
    "parse_resource",
]
