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
from meshcore.resources.loader import (
    Document,
    Parsed,
    documents_from_text,
    load_documents,
    parse_documents,
    parse_resource,
)

__all__ = [
    "Container",
    "ContainerPort",
    "Deployment",
    "Document",
    "EnvVar",
    "ManifestError",
    "ManifestErrors",
    "Namespace",
    "ObjectMeta",
    "Parsed",
    "Pod",
    "PodSpec",
    "Resource",
    "ResourceKey",
    "RestartPolicy",
    "Service",
    "ServiceAccount",
    "ServicePort",
    "documents_from_text",
    "load_documents",
    "parse_documents",
    "parse_resource",
]
