"""Kubernetes name and label syntax (apimachinery's validation rules)."""

from __future__ import annotations

import re

from meshcore.resources.errors import ManifestError

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def check_dns_label(value: str, field: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ManifestError(
            f"{value!r} is not a valid DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)",
            field=field,
        )


def check_dns_subdomain(value: str, field: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ManifestError(
            f"{value!r} is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' "
            "and '.', at most 253 characters)",
            field=field,
        )


def check_label_key(key: str, field: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash:  # "/name" has an empty prefix, which is as invalid as a malformed one
        check_dns_subdomain(prefix, f"{field} (prefix of key {key!r})")
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        raise ManifestError(
            f"{key!r} is not a valid label key (name part: alphanumerics, '-', '_' or '.', "
            "at most 63 characters)",
            field=field,
        )


def check_label_value(value: str, field: str) -> None:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        raise ManifestError(
            f"{value!r} is not a valid label value (alphanumerics, '-', '_' or '.', "
            "at most 63 characters)",
            field=field,
        )


def check_labels(labels: dict[str, str], field: str) -> None:
    for key, value in labels.items():
        check_label_key(key, field)
        check_label_value(value, f"{field}.{key}")


def check_port_name(value: str, field: str) -> None:
    if (
        len(value) > 15
        or not _PORT_NAME.match(value)
        or "--" in value
        or not any("a" <= c <= "z" for c in value)  # else it reads as a port number
    ):
        raise ManifestError(
            f"{value!r} is not a valid port name (IANA service name: lowercase letters, "
            "digits and '-', at least one letter, at most 15 characters)",
            field=field,
        )


def check_env_name(value: str, field: str) -> None:
    if not _ENV_NAME.match(value):
        raise ManifestError(f"{value!r} is not a valid environment variable name", field=field)


def service_of_host(host: str, namespace: str) -> tuple[str, str] | None:
    """The Service (namespace, name) an Istio mesh host names, read in the namespace of the
    resource that wrote it (a VirtualService's, a DestinationRule's): `name`, `name.ns`,
    `name.ns.svc`, `name.ns.svc.cluster.local`. None for a wildcard, or a host that is no
    cluster Service's (a ServiceEntry host in Istio)."""
    if "*" in host:
        return None
    parts = host.split(".")
    if len(parts) == 1:
        return namespace, parts[0]
    if len(parts) == 2 or ".".join(parts[2:]) in ("svc", "svc.cluster.local"):
        return parts[1], parts[0]
    return None
