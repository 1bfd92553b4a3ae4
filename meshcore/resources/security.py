"""Istio-shaped security policy: AuthorizationPolicy and PeerAuthentication.

weft serves both in group `security.weft.dev` with the fields and meaning of Istio's
`security.istio.io/v1`, so an existing policy ports by changing its apiVersion. What Istio's
API server and istiod's validating webhook reject is rejected here too, with the field path.

Two families of Istio source fields are rejected rather than dropped, because weft does not carry
them to the data plane yet and dropping a match field would silently widen an ALLOW:
`serviceAccounts`/`notServiceAccounts` and `trustDomains`/`notTrustDomains`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from meshcore import ports
from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.gateway import WAYPOINT_CLASS
from meshcore.resources.groups import SECURITY
from meshcore.resources.names import check_dns_subdomain, check_labels

GROUP = SECURITY.group
ISTIO_GROUP = SECURITY.istio_group
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
# Istio's root namespace (istio-system there): its policies without a selector are mesh-wide,
# and only there may a policy target the GatewayClass of every waypoint.
ROOT_NAMESPACE = "weft-system"


SECURITY_VERSIONS: frozenset[str] = SECURITY.versions

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyAction(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"  # delegated to a named extension provider


class MtlsMode(enum.Enum):
    UNSET = "UNSET"  # inherit from the namespace, then the mesh
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


class TargetKind(enum.Enum):
    """What a policy's targetRefs may name (Istio also allows ServiceEntry).

    GATEWAY_CLASS is only `weft-waypoint` from the root namespace: every waypoint of the mesh.
    """

    SERVICE = "Service"
    GATEWAY = "Gateway"
    GATEWAY_CLASS = "GatewayClass"

    @property
    def group(self) -> str:
        return "" if self is TargetKind.SERVICE else GATEWAY_API_GROUP


# `when` keys a ztunnel can evaluate on a connection; every other key needs HTTP (Istio's
# `l4WhenAttributes` in pilot/pkg/serviceregistry/ambient/authorization.go).
L4_CONDITION_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)


@dataclass(frozen=True)
class PolicyTargetRef:
    kind: TargetKind
    name: str  # in the policy's own namespace: Istio does not allow cross-namespace targets

    @property
    def group(self) -> str:
        return self.kind.group


@dataclass(frozen=True)
class Source:
    """One `from[].source`: its fields are ANDed; an empty tuple means "any"."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[IPNetwork, ...] = ()
    not_ip_blocks: tuple[IPNetwork, ...] = ()
    remote_ip_blocks: tuple[IPNetwork, ...] = ()
    not_remote_ip_blocks: tuple[IPNetwork, ...] = ()

    def l7_only_fields(self) -> tuple[str, ...]:
        """The fields set here that need HTTP (or a proxy protocol header), by Istio name."""
        return tuple(
            name
            for name, values in (
                ("requestPrincipals", self.request_principals),
                ("notRequestPrincipals", self.not_request_principals),
                ("remoteIpBlocks", self.remote_ip_blocks),
                ("notRemoteIpBlocks", self.not_remote_ip_blocks),
            )
            if values
        )


@dataclass(frozen=True)
class Operation:
    """One `to[].operation`: its fields are ANDed; an empty tuple means "any"."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    def l7_only_fields(self) -> tuple[str, ...]:
        """The fields set here that need HTTP, by Istio name."""
        return tuple(
            name
            for name, values in (
                ("hosts", self.hosts),
                ("notHosts", self.not_hosts),
                ("methods", self.methods),
                ("notMethods", self.not_methods),
                ("paths", self.paths),
                ("notPaths", self.not_paths),
            )
            if values
        )


@dataclass(frozen=True)
class Condition:
    """One `when` entry; values are kept as written (ports and IPs are checked, not converted)."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    @property
    def is_l4(self) -> bool:
        return self.key in L4_CONDITION_KEYS


@dataclass(frozen=True)
class Rule:
    """A rule matches when one source, one operation and every condition match.

    Each of the three is unconstrained when empty, so `Rule()` matches every request.
    """

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()

    def l7_only_fields(self) -> tuple[str, ...]:
        """Sorted Istio names of the HTTP-only attributes this rule matches on.

        A ztunnel cannot see them. Istio's answer, which weft follows: an ALLOW rule using any
        of them never matches at L4; a DENY rule is applied with them left out (stricter).
        """
        found: set[str] = set()
        for source in self.sources:
            found.update(source.l7_only_fields())
        for operation in self.operations:
            found.update(operation.l7_only_fields())
        found.update(c.key for c in self.conditions if not c.is_l4)
        return tuple(sorted(found))

    @property
    def has_l7_fields(self) -> bool:
        return bool(self.l7_only_fields())

    @property
    def matches_everything(self) -> bool:
        return not (self.sources or self.operations or self.conditions)


@dataclass(frozen=True)
class AuthorizationPolicy:
    """Access control for the workloads it selects (see Istio's authorization-policy reference).

    Scope: `target_refs` (enforced by the named waypoint or gateway), else `selector` (the
    matching workloads of the namespace, or of the mesh in the root namespace), else the whole
    namespace (or mesh). An ALLOW policy with no rules allows nothing.
    """

    metadata: ObjectMeta
    action: PolicyAction = PolicyAction.ALLOW
    rules: tuple[Rule, ...] = ()
    selector: Mapping[str, str] | None = None  # None: no selector given
    target_refs: tuple[PolicyTargetRef, ...] = ()
    provider: str = ""  # the extension provider of a CUSTOM policy
    kind = "AuthorizationPolicy"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def has_selector(self) -> bool:
        return self.selector is not None

    @property
    def for_waypoint(self) -> bool:
        """Attached with targetRefs: a waypoint (or gateway) enforces it, a ztunnel does not."""
        return bool(self.target_refs)

    def l7_only_fields(self) -> tuple[str, ...]:
        found: set[str] = set()
        for rule in self.rules:
            found.update(rule.l7_only_fields())
        return tuple(sorted(found))


@dataclass(frozen=True)
class PeerAuthentication:
    """Whether workloads accept plaintext (see Istio's peer-authentication reference).

    In the root namespace with no selector it sets the mesh default, elsewhere without a
    selector the namespace default; with a selector it applies to the matching workloads.
    """

    metadata: ObjectMeta
    mode: MtlsMode = MtlsMode.UNSET
    port_level_mtls: Mapping[int, MtlsMode] = field(default_factory=dict)
    selector: Mapping[str, str] | None = None  # None: no selector given
    kind = "PeerAuthentication"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def has_selector(self) -> bool:
        return self.selector is not None

    def mode_for_port(self, port: int) -> MtlsMode:
        """This policy's mode for a workload port; UNSET means ask the next level up."""
        return self.port_level_mtls.get(port, self.mode)


# --- parsing -------------------------------------------------------------------------------

_E = TypeVar("_E", bound=enum.Enum)


def _one_of(values: list[str]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def _choice(f: Fields, name: str, enum_type: type[_E], default: _E) -> _E:
    text = f.string(name, default=str(default.value))
    try:
        return enum_type(text)
    except ValueError:
        allowed = _one_of([str(m.value) for m in enum_type])
        raise f.fail(name, f"must be {allowed}, got {text!r}") from None


def _check_group(f: Fields, kind: str) -> None:
    SECURITY.check(f, kind)


def _metadata(f: Fields, ignored: list[str]) -> ObjectMeta:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    return meta


def _selector(spec: Fields, ignored: list[str]) -> Mapping[str, str] | None:
    raw = spec.raw("selector")
    if raw is None:
        return None
    sel = Fields(raw, spec.sub("selector"))
    labels = sel.string_map("matchLabels")
    ignored.extend(sel.done())
    check_labels(labels, sel.sub("matchLabels"))
    return labels


def _strings(f: Fields, name: str) -> tuple[str, ...]:
    values = f.string_list(name)
    for i, value in enumerate(values):
        if not value:
            raise ManifestError("must not be empty", field=f"{f.sub(name)}[{i}]")
    return values


def parse_ip_block(value: str, field: str) -> IPNetwork:
    """A single address (as a /32 or /128) or a CIDR block, IPv4 or IPv6, as Go's netip reads
    them: host bits may be set, a zone may not."""
    address, slash, bits = value.partition("/")
    try:
        if "%" in value or (slash and not _PREFIX_BITS.fullmatch(bits)):
            raise ValueError(value)
        if slash:
            return ipaddress.ip_network(value, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(address))
    except ValueError:
        raise ManifestError(
            f"{value!r} is not an IP address or CIDR block (such as 10.1.2.3, 10.1.0.0/16 "
            "or fd00::/64)",
            field=field,
        ) from None


_PREFIX_BITS = re.compile(r"0|[1-9][0-9]{0,2}")


def parse_port(value: str, field: str) -> int:
    try:
        return ports.parse_port(value)
    except ports.PortError:
        raise ManifestError(f"{value!r} is not a port number (1 to 65535)", field=field) from None


def _ip_blocks(f: Fields, name: str) -> tuple[IPNetwork, ...]:
    return tuple(parse_ip_block(v, f"{f.sub(name)}[{i}]") for i, v in enumerate(_strings(f, name)))


def _ports(f: Fields, name: str) -> tuple[int, ...]:
    return tuple(parse_port(v, f"{f.sub(name)}[{i}]") for i, v in enumerate(_strings(f, name)))


# Envoy's URI template segment literal (RFC 3986 pchar); Istio's CheckValidPathTemplate.
_PATH_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")


def _check_path_template(value: str, field: str) -> None:
    """Istio's rule for paths using the `{*}` / `{**}` template operators."""
    templated = "{*}" in value or "{**}" in value
    seen_any = False
    for segment in value.strip("/").split("/"):
        if segment in ("{*}", "{**}"):
            if seen_any:
                raise ManifestError(
                    f"invalid path template {value!r}: {{**}} must be the last operator",
                    field=field,
                )
            seen_any = segment == "{**}"
            continue
        if "{" in segment or "}" in segment:
            raise ManifestError(
                f"invalid path {value!r}: '{{' and '}}' may only appear as the whole-segment "
                "operators {*} and {**}",
                field=field,
            )
        if templated and not _PATH_LITERAL.fullmatch(segment):
            raise ManifestError(
                f"invalid path template {value!r}: segment {segment!r} may only hold the "
                "characters allowed in a URL path segment, and not '*'",
                field=field,
            )


_UNSUPPORTED_SOURCE_FIELDS = ("serviceAccounts", "notServiceAccounts")
_UNSUPPORTED_TRUST_DOMAIN_FIELDS = ("trustDomains", "notTrustDomains")
# Source fields Istio refuses with action CUSTOM (the extension cannot see peer identities).
_NOT_WITH_CUSTOM = (
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
)
_SOURCE_FIELD_NAMES = (
    "principals, notPrincipals, requestPrincipals, notRequestPrincipals, namespaces, "
    "notNamespaces, ipBlocks, notIpBlocks, remoteIpBlocks or notRemoteIpBlocks"
)
_OPERATION_FIELD_NAMES = "hosts, notHosts, ports, notPorts, methods, notMethods, paths or notPaths"


def _parse_source(raw: object, path: str, action: PolicyAction) -> Source:
    f = Fields(raw, path)
    for name in _UNSUPPORTED_SOURCE_FIELDS:
        if f.has(name):
            raise f.fail(
                name,
                "not supported by weft yet; match the identity with principals "
                "('<trust domain>/ns/<namespace>/sa/<service account>') instead",
            )
    for name in _UNSUPPORTED_TRUST_DOMAIN_FIELDS:
        if f.has(name):
            raise f.fail(
                name,
                "not supported by weft yet; match with principals "
                "('<trust domain>/ns/<namespace>/sa/<service account>') instead",
            )
    if action is PolicyAction.CUSTOM:
        for name in _NOT_WITH_CUSTOM:
            if f.string_list(name):
                raise f.fail(name, "not supported with action CUSTOM")
    source = Source(
        principals=_strings(f, "principals"),
        not_principals=_strings(f, "notPrincipals"),
        request_principals=_strings(f, "requestPrincipals"),
        not_request_principals=_strings(f, "notRequestPrincipals"),
        namespaces=_strings(f, "namespaces"),
        not_namespaces=_strings(f, "notNamespaces"),
        ip_blocks=_ip_blocks(f, "ipBlocks"),
        not_ip_blocks=_ip_blocks(f, "notIpBlocks"),
        remote_ip_blocks=_ip_blocks(f, "remoteIpBlocks"),
        not_remote_ip_blocks=_ip_blocks(f, "notRemoteIpBlocks"),
    )
    f.done()
    if source == Source():
        raise ManifestError(f"must not be empty: give {_SOURCE_FIELD_NAMES}", field=path)
    return source


def _parse_operation(raw: object, path: str) -> Operation:
    f = Fields(raw, path)
    operation = Operation(
        hosts=_strings(f, "hosts"),
        not_hosts=_strings(f, "notHosts"),
        ports=_ports(f, "ports"),
        not_ports=_ports(f, "notPorts"),
        methods=_strings(f, "methods"),
        not_methods=_strings(f, "notMethods"),
        paths=_strings(f, "paths"),
        not_paths=_strings(f, "notPaths"),
    )
    f.done()
    if operation == Operation():
        raise ManifestError(f"must not be empty: give {_OPERATION_FIELD_NAMES}", field=path)
    for name, paths in (("paths", operation.paths), ("notPaths", operation.not_paths)):
        for i, value in enumerate(paths):
            _check_path_template(value, f"{f.sub(name)}[{i}]")
    return operation


# Condition keys (Istio's "Authorization Policy Conditions" reference and
# pkg/config/security.ValidateAttribute).
_CONDITION_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "source.serviceAccount",
        "source.trustDomain",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)
_BRACKETED_KEYS = ("request.headers", "request.auth.claims")
_EXPERIMENTAL_PREFIX = "experimental.envoy.filters."
_RETIRED_KEYS = {
    "destination.namespace": "replaced by the policy's metadata.namespace",
    "destination.name": "only supported by Istio's retired v1alpha1 RBAC",
    "destination.user": "only supported by Istio's retired v1alpha1 RBAC",
}
_KNOWN_KEYS_TEXT = (
    "request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, "
    "source.serviceAccount, source.trustDomain, request.auth.principal, request.auth.audiences, "
    "request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, "
    "connection.sni, experimental.envoy.filters.*[KEY]"
)
# `when` keys Istio refuses with action CUSTOM.
_CUSTOM_REFUSED_KEYS = frozenset(
    {"source.namespace", "source.serviceAccount", "source.trustDomain", "source.principal"}
)


def _bracketed(key: str, prefix: str) -> bool:
    return key.startswith(f"{prefix}[") and key.endswith("]") and len(key) > len(prefix) + 2


def _check_condition_key(key: str, field: str) -> None:
    if key in _CONDITION_KEYS:
        return
    for prefix in _BRACKETED_KEYS:
        if key.startswith(prefix):
            if not _bracketed(key, prefix):
                raise ManifestError(f"{key!r} must have the form {prefix}[NAME]", field=field)
            return
    if key.startswith(_EXPERIMENTAL_PREFIX):
        head, bracket, _ = key.partition("[")
        if not (bracket and len(head) > len(_EXPERIMENTAL_PREFIX) and _bracketed(key, head)):
            raise ManifestError(
                f"{key!r} must have the form {_EXPERIMENTAL_PREFIX}<filter>[KEY]", field=field
            )
        return
    if key in _RETIRED_KEYS:
        raise ManifestError(f"condition key {key!r} is {_RETIRED_KEYS[key]}", field=field)
    if key.startswith("destination.labels"):
        raise ManifestError(
            f"condition key {key!r} is replaced by the policy's selector", field=field
        )
    raise ManifestError(f"unknown condition key {key!r}; known: {_KNOWN_KEYS_TEXT}", field=field)


def _check_service_account(value: str, field: str) -> None:
    ns, slash, sa = value.partition("/")
    if "*" in value or "/" in sa or (slash and not ns) or not sa or len(value) > 320:
        raise ManifestError(
            f"{value!r} is not a service account: write 'NAME' (the policy's namespace) or "
            "'NAMESPACE/NAME', without wildcards",
            field=field,
        )


def _check_trust_domain(value: str, field: str) -> None:
    stars = value.count("*")
    if (
        "/" in value
        or stars > 1
        or (stars == 1 and not value.startswith("*") and not value.endswith("*"))
    ):
        raise ManifestError(
            f"{value!r} is not a trust domain match: no '/', and at most one '*' at the start "
            "or the end",
            field=field,
        )


def _check_condition_value(key: str, value: str, field: str) -> None:
    if key in ("source.ip", "remote.ip", "destination.ip"):
        parse_ip_block(value, field)
    elif key == "destination.port":
        parse_port(value, field)
    elif key == "source.serviceAccount":
        _check_service_account(value, field)
    elif key == "source.trustDomain":
        _check_trust_domain(value, field)


def _parse_condition(raw: object, path: str, action: PolicyAction) -> Condition:
    f = Fields(raw, path)
    key = f.string("key", required=True)
    _check_condition_key(key, f.sub("key"))
    if action is PolicyAction.CUSTOM and (
        key in _CUSTOM_REFUSED_KEYS or key.startswith("request.auth.")
    ):
        raise f.fail("key", f"condition key {key!r} is not supported with action CUSTOM")
    condition = Condition(key, _strings(f, "values"), _strings(f, "notValues"))
    f.done()
    if not condition.values and not condition.not_values:
        raise ManifestError("give values or notValues (or both)", field=path)
    for name, values in (("values", condition.values), ("notValues", condition.not_values)):
        for i, value in enumerate(values):
            _check_condition_value(key, value, f"{f.sub(name)}[{i}]")
    return condition


def _present_but_empty(f: Fields, name: str) -> bool:
    return f.has(name) and f.raw(name) == []


def _parse_rule(raw: object, path: str, action: PolicyAction) -> Rule:
    if raw is None:
        raise ManifestError(
            "expected an object (write {} for a rule that matches every request)", field=path
        )
    f = Fields(raw, path)
    if _present_but_empty(f, "from"):
        raise f.fail("from", "must not be empty; leave it out to match any source")
    if _present_but_empty(f, "to"):
        raise f.fail("to", "must not be empty; leave it out to match any operation")
    sources = []
    for item_path, item in f.objects("from"):
        wrapper = Fields(item, item_path)
        if wrapper.raw("source") is None:
            raise wrapper.fail("source", "required field is missing")
        sources.append(_parse_source(wrapper.raw("source"), wrapper.sub("source"), action))
        wrapper.done()
    operations = []
    for item_path, item in f.objects("to"):
        wrapper = Fields(item, item_path)
        if wrapper.raw("operation") is None:
            raise wrapper.fail("operation", "required field is missing")
        operations.append(_parse_operation(wrapper.raw("operation"), wrapper.sub("operation")))
        wrapper.done()
    conditions = tuple(_parse_condition(item, p, action) for p, item in f.objects("when"))
    f.done()
    return Rule(tuple(sources), tuple(operations), conditions)


def _parse_target_ref(raw: object, path: str, namespace: str | None = None) -> PolicyTargetRef:
    """One targetRef of a policy in `namespace` (None: unknown, so no GatewayClass)."""
    f = Fields(raw, path)
    group = f.string("group")
    kind_text = f.string("kind", required=True)
    name = f.string("name", required=True)
    ref_namespace = f.string("namespace")
    f.done()
    if ref_namespace:
        raise f.fail(
            "namespace",
            "cross-namespace references are not supported; leave it out to name an object in "
            "the policy's namespace",
        )
    try:
        kind = TargetKind(kind_text)
    except ValueError:
        raise f.fail(
            "kind",
            f"weft attaches policies to a Service, a Gateway or the GatewayClass "
            f"{WAYPOINT_CLASS}, not {kind_text!r}",
        ) from None
    accepted = ("", "core") if kind is TargetKind.SERVICE else (GATEWAY_API_GROUP,)
    if group not in accepted:
        raise f.fail("group", f"a {kind.value} is in group {kind.group!r}, not {group!r}")
    if kind is TargetKind.GATEWAY_CLASS:
        if name != WAYPOINT_CLASS:
            raise f.fail(
                "name",
                f"the only GatewayClass a policy may target is {WAYPOINT_CLASS}, not {name!r}",
            )
        if namespace != ROOT_NAMESPACE:
            raise f.fail(
                "kind",
                f"a GatewayClass is targeted only by a policy in the root namespace "
                f"{ROOT_NAMESPACE} (it applies to every waypoint of the mesh), not in "
                f"{namespace or 'this one'!r}; target the waypoint's Gateway or a Service "
                "instead",
            )
    check_dns_subdomain(name, f.sub("name"))
    return PolicyTargetRef(kind, name)


def policy_scope(
    spec: Fields, namespace: str, ignored: list[str]
) -> tuple[Mapping[str, str] | None, tuple[PolicyTargetRef, ...]]:
    """A policy's `selector`, or its `targetRef`/`targetRefs` (one or the other), as Istio's
    security kinds share them."""
    selector = _selector(spec, ignored)
    target_refs: list[PolicyTargetRef] = []
    if spec.raw("targetRef") is not None:
        target_refs.append(
            _parse_target_ref(spec.raw("targetRef"), spec.sub("targetRef"), namespace)
        )
    singular = bool(target_refs)
    target_refs.extend(
        _parse_target_ref(item, p, namespace) for p, item in spec.objects("targetRefs")
    )
    if singular and len(target_refs) > 1:
        raise spec.fail("targetRefs", "may not be given together with targetRef")
    if selector is not None and target_refs:
        raise spec.fail(
            "targetRef" if singular else "targetRefs",
            "may not be given together with selector: use one or the other",
        )
    return selector, tuple(target_refs)


def parse_authorization_policy(f: Fields, ignored: list[str]) -> AuthorizationPolicy:
    _check_group(f, "AuthorizationPolicy")
    meta = _metadata(f, ignored)
    spec = Fields(f.raw("spec"), "spec")
    action = _choice(spec, "action", PolicyAction, PolicyAction.ALLOW)
    selector, target_refs = policy_scope(spec, meta.namespace, ignored)
    provider = ""
    if spec.raw("provider") is not None:
        pf = Fields(spec.raw("provider"), spec.sub("provider"))
        provider = pf.string("name")
        pf.done()
        if action is not PolicyAction.CUSTOM:
            raise spec.fail("provider", f"only allowed with action CUSTOM, not {action.value}")
    rules = tuple(_parse_rule(item, p, action) for p, item in spec.objects("rules"))
    ignored.extend(spec.done())
    if action in (PolicyAction.DENY, PolicyAction.CUSTOM) and not rules:
        raise spec.fail(
            "rules",
            f"a {action.value} policy without rules never matches; add an empty rule {{}} to "
            "match every request",
        )
    if action is PolicyAction.CUSTOM and not provider:
        raise ManifestError("required when action is CUSTOM", field="spec.provider.name")
    return AuthorizationPolicy(meta, action, rules, selector, target_refs, provider)


def _parse_mtls(raw: object, path: str) -> MtlsMode:
    f = Fields(raw, path)
    mode = _choice(f, "mode", MtlsMode, MtlsMode.UNSET)
    f.done()
    return mode


def _port_key(key: object, field: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str):
        raise ManifestError(f"{key!r} is not a port number (1 to 65535)", field=field)
    return parse_port(key, field)


def parse_peer_authentication(f: Fields, ignored: list[str]) -> PeerAuthentication:
    _check_group(f, "PeerAuthentication")
    meta = _metadata(f, ignored)
    spec = Fields(f.raw("spec"), "spec")
    selector = _selector(spec, ignored)
    mode = MtlsMode.UNSET
    if spec.raw("mtls") is not None:
        mode = _parse_mtls(spec.raw("mtls"), spec.sub("mtls"))
    port_level: dict[int, MtlsMode] = {}
    raw_ports = spec.raw("portLevelMtls")
    if raw_ports is not None:
        path = spec.sub("portLevelMtls")
        if not isinstance(raw_ports, dict):
            raise ManifestError("expected an object of port number -> {mode}", field=path)
        if not raw_ports:
            raise ManifestError("must name at least one port when given", field=path)
        if not selector:
            raise ManifestError(
                "only a policy with selector.matchLabels may set port-level mTLS: a namespace "
                "or mesh-wide policy cannot, because ports belong to workloads",
                field=path,
            )
        for key, value in raw_ports.items():
            port = _port_key(key, f"{path}.{key}")
            if port in port_level:
                raise ManifestError(f"port {port} is given twice", field=f"{path}.{key}")
            port_level[port] = _parse_mtls(value, f"{path}.{key}")
    ignored.extend(spec.done())
    return PeerAuthentication(meta, mode, port_level, selector)
