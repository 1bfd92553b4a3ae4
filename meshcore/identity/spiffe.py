"""SPIFFE IDs: strict parsing (the SPIFFE-ID spec, as go-spiffe applies it) and weft's shapes.

Workloads are `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` (as in Istio);
nodes, which authenticate to the controller, are `spiffe://<trust domain>/weft/node/<node>`.
A `SpiffeId` is checked when it is built, so holding one means holding a valid ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


class IdentityError(ValueError):
    """A string that is not a valid SPIFFE ID (or ID part); says which and why."""

    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"{value!r} is not a valid SPIFFE ID: {reason}")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """`spiffe://<trust_domain><path>`; `path` is "" (the trust domain itself) or "/a/b"."""

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain, str(self))
        _check_path(self.path, str(self))
        if len(str(self).encode()) > MAX_ID_BYTES:
            raise IdentityError(str(self), f"longer than {MAX_ID_BYTES} bytes")

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        if not uri:
            raise IdentityError(uri, "empty")
        if len(uri.encode()) > MAX_ID_BYTES:
            raise IdentityError(uri, f"longer than {MAX_ID_BYTES} bytes")
        if not uri.startswith(SCHEME_PREFIX):
            raise IdentityError(uri, "scheme must be 'spiffe://' (lowercase)")
        rest = uri[len(SCHEME_PREFIX) :]
        if "#" in rest:
            raise IdentityError(uri, "a fragment is not allowed")
        if "?" in rest:
            raise IdentityError(uri, "a query is not allowed")
        authority, slash, path = rest.partition("/")
        path = slash + path
        if "@" in authority:
            raise IdentityError(uri, "userinfo is not allowed in the trust domain")
        if ":" in authority:
            raise IdentityError(uri, "a port is not allowed in the trust domain")
        return cls(authority, path)

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()

    @property
    def namespace(self) -> str | None:
        """The namespace of a workload ID (`/ns/<ns>/sa/<sa>`), else None."""
        return self._workload_parts()[0]

    @property
    def service_account(self) -> str | None:
        """The service account of a workload ID (`/ns/<ns>/sa/<sa>`), else None."""
        return self._workload_parts()[1]

    @property
    def node_name(self) -> str | None:
        """The node of a node ID (`/weft/node/<node>`), else None."""
        segs = self.segments
        if len(segs) == 3 and segs[0] == "weft" and segs[1] == "node":
            return segs[2]
        return None

    def _workload_parts(self) -> tuple[str | None, str | None]:
        segs = self.segments
        if len(segs) == 4 and segs[0] == "ns" and segs[2] == "sa":
            return segs[1], segs[3]
        return None, None


def workload_id(trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
    """`spiffe://<td>/ns/<namespace>/sa/<service_account>`."""
    _check_part(namespace, "namespace")
    _check_part(service_account, "service account")
    return SpiffeId(trust_domain, f"/ns/{namespace}/sa/{service_account}")


def node_id(trust_domain: str, node: str) -> SpiffeId:
    """`spiffe://<td>/weft/node/<node>`: a node's identity towards the controller."""
    _check_part(node, "node name")
    return SpiffeId(trust_domain, f"/weft/node/{node}")


def check_trust_domain(trust_domain: str) -> str:
    """The trust domain, unchanged, if it is valid; IdentityError otherwise."""
    _check_trust_domain(trust_domain, trust_domain)
    return trust_domain


def _check_trust_domain(trust_domain: str, whole: str) -> None:
    if not trust_domain:
        raise IdentityError(whole, "missing trust domain")
    if len(trust_domain.encode()) > MAX_TRUST_DOMAIN_BYTES:
        raise IdentityError(whole, f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    if not _TRUST_DOMAIN.match(trust_domain):
        raise IdentityError(
            whole,
            f"trust domain {trust_domain!r} may only hold lowercase letters, digits, "
            "'.', '-' and '_'",
        )


def _check_path(path: str, whole: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise IdentityError(whole, f"path {path!r} must start with '/'")
    for segment in path.split("/")[1:]:
        _check_segment(segment, whole)


def _check_segment(segment: str, whole: str) -> None:
    if not segment:
        raise IdentityError(whole, "path has an empty segment (or a trailing '/')")
    if segment in (".", ".."):
        raise IdentityError(whole, f"path segment {segment!r} is not allowed")
    if not _SEGMENT.match(segment):
        raise IdentityError(
            whole,
            f"path segment {segment!r} may only hold letters, digits, '.', '-' and '_'",
        )


def _check_part(value: str, what: str) -> None:
    try:
        _check_segment(value, value)
    except IdentityError as err:
        raise IdentityError(value, f"{what}: {err.reason}") from None
