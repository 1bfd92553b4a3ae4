"""L4 authorization: which AuthorizationPolicies apply to a connection, and what they decide.

Pure and sans-I/O, like istio/ztunnel's `src/rbac.rs`: a `Connection` (what a ztunnel knows
about an inbound connection) and the policies in, a `Decision` out. Istio's order:

1. CUSTOM policies: a ztunnel cannot call an extension provider, so a CUSTOM policy whose
   rules match at L4 denies (fails closed) instead of asking it;
2. any matching DENY policy denies;
3. no ALLOW policy applies: allow;
4. a matching ALLOW policy allows;
5. otherwise deny.

AUDIT policies never decide; the ones that match are listed in `Decision.audit`.

Which policies apply to a workload: with `targetRefs`, none (a waypoint or gateway enforces
them); with no selector, every workload of the policy's namespace, or of the mesh when that
is the root namespace; with a selector (`{}` included), the matching workloads of the
policy's namespace, or of every namespace when that is the root namespace.

HTTP-only fields (hosts, methods, paths, requestPrincipals, remoteIpBlocks, `request.*`
keys...) cannot be seen at L4. An ALLOW rule that uses any of them never matches (so an ALLOW
policy of only such rules allows nothing); DENY, AUDIT and CUSTOM rules are applied with those
fields left out, so they match more connections, never fewer. This is Istio's documented
reading and the sidecar TCP filter's behaviour. Note that istiod+ztunnel as built differ in one
case: a `from`/`to` entry or `when` condition holding *only* HTTP fields becomes an empty match
that ztunnel skips, so such a DENY never fires there (istio/istio#61126); weft keeps the
stricter, documented reading and says so in `Decision.notes`.

Policies are compiled once into `PolicyMatcher`s (memoised per policy object), so evaluating
a connection is a few set and prefix checks per applicable policy.
"""

from __future__ import annotations

import ipaddress
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshcore.identity.spiffe import SCHEME_PREFIX, SpiffeId
from meshcore.meshstate import Workload
from meshcore.resources.security import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Condition,
    IPNetwork,
    Operation,
    PolicyAction,
    Rule,
    Source,
    parse_ip_block,
)

DEFAULT_ROOT_NAMESPACE = ROOT_NAMESPACE  # (one definition: meshcore.resources.security)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(value: str | IPAddress) -> IPAddress:
    """An address as a ztunnel compares it: IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4."""
    address = ipaddress.ip_address(value) if isinstance(value, str) else value
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class Connection:
    """An inbound connection to a workload, as the destination's ztunnel sees it.

    `source_principal` is the peer's SPIFFE ID (`spiffe://cluster.local/ns/foo/sa/bar`) from
    its verified certificate, or None for plaintext. `source_namespace` is derived from it,
    and only for an identity of `trust_domain` when that is given: `namespaces: [foo]` means
    namespace foo of this mesh, not a namespace of the same name in another trust domain.
    """

    destination_namespace: str
    destination_name: str
    destination_labels: Mapping[str, str]
    destination_ip: IPAddress
    destination_port: int
    source_ip: IPAddress
    source_principal: str | None = None
    trust_domain: str | None = None
    source_namespace: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "destination_ip", _ip(self.destination_ip))
        object.__setattr__(self, "source_ip", _ip(self.source_ip))
        if self.source_principal is not None:
            # Raises IdentityError (a ValueError) for a string that is not a SPIFFE ID.
            spiffe_id = SpiffeId.parse(self.source_principal)
            if self.trust_domain is None or spiffe_id.trust_domain == self.trust_domain:
                object.__setattr__(self, "source_namespace", spiffe_id.namespace)

    @classmethod
    def build(
        cls,
        *,
        namespace: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        destination_ip: str | IPAddress,
        destination_port: int,
        source_ip: str | IPAddress,
        source_principal: str | None = None,
    ) -> Connection:
        """A connection from plain values; addresses may be strings."""
        return cls(
            namespace,
            name,
            labels or {},
            _ip(destination_ip),
            destination_port,
            _ip(source_ip),
            source_principal,
        )

    @classmethod
    def to_workload(
        cls,
        workload: Workload,
        *,
        destination_ip: str | IPAddress,
        destination_port: int,
        source_ip: str | IPAddress,
        source_principal: str | None = None,
    ) -> Connection:
        return cls.build(
            namespace=workload.namespace,
            name=workload.name,
            labels=workload.labels,
            destination_ip=destination_ip,
            destination_port=destination_port,
            source_ip=source_ip,
            source_principal=source_principal,
        )


@dataclass(frozen=True)
class Decision:
    """The verdict on a connection and why.

    `policy` is `namespace/name` of the policy that decided (None when no single policy did:
    no ALLOW policy applies, or none matched), `action` its action. `audit` lists the AUDIT
    policies that matched; `notes` says where L4 evaluation departed from the policy as
    written (HTTP fields left out, CUSTOM providers not called).
    """

    allowed: bool
    reason: str
    policy: str | None = None
    action: PolicyAction | None = None
    audit: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


# --- matching ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the matchers read, computed once per connection."""

    principal: str  # without "spiffe://"; "" for plaintext (matches no principal pattern)
    namespace: str  # "" for plaintext (matches no namespace pattern)
    source_ip: IPAddress
    destination_ip: IPAddress
    destination_port: int

    @classmethod
    def of(cls, conn: Connection) -> _Facts:
        principal = conn.source_principal or ""
        # Istio's principals are written without the scheme; ztunnel strips it and an identity
        # without it matches nothing.
        body = principal[len(SCHEME_PREFIX) :] if principal.startswith(SCHEME_PREFIX) else ""
        return cls(
            body,
            conn.source_namespace or "",
            conn.source_ip,
            conn.destination_ip,
            conn.destination_port,
        )


@dataclass(frozen=True, slots=True)
class _Patterns:
    """Istio's string match: `*` (present, non-empty), `*suffix`, `prefix*`, or exact."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    presence: bool = False

    @classmethod
    def of(cls, values: Iterable[str]) -> _Patterns | None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        presence = False
        given = False
        for value in values:
            given = True
            if value == "*":
                presence = True
            elif value.startswith("*"):
                suffixes.append(value[1:])
            elif value.endswith("*"):
                prefixes.append(value[:-1])
            else:
                exact.add(value)
        if not given:
            return None
        return cls(frozenset(exact), tuple(prefixes), tuple(suffixes), presence)

    def matches(self, value: str) -> bool:
        if not value:
            return False  # a plaintext peer has no principal or namespace to match
        return (
            self.presence
            or value in self.exact
            or value.startswith(self.prefixes)
            or value.endswith(self.suffixes)
        )


def _in_any(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks)


@dataclass(frozen=True, slots=True)
class _Match:
    """One L4 match (a source, an operation or a condition): every field set must hold.

    Positive fields match when any value matches, `not` fields when none does. With no field
    set it matches everything (what a source or operation of only HTTP fields is reduced to).
    """

    principals: _Patterns | None = None
    not_principals: _Patterns | None = None
    namespaces: _Patterns | None = None
    not_namespaces: _Patterns | None = None
    source_ips: tuple[IPNetwork, ...] = ()
    not_source_ips: tuple[IPNetwork, ...] = ()
    destination_ips: tuple[IPNetwork, ...] = ()
    not_destination_ips: tuple[IPNetwork, ...] = ()
    ports: frozenset[int] = frozenset()
    not_ports: frozenset[int] = frozenset()

    def matches(self, f: _Facts) -> bool:
        if self.ports and f.destination_port not in self.ports:
            return False
        if f.destination_port in self.not_ports:
            return False
        if self.source_ips and not _in_any(f.source_ip, self.source_ips):
            return False
        if self.not_source_ips and _in_any(f.source_ip, self.not_source_ips):
            return False
        if self.destination_ips and not _in_any(f.destination_ip, self.destination_ips):
            return False
        if self.not_destination_ips and _in_any(f.destination_ip, self.not_destination_ips):
            return False
        if self.principals is not None and not self.principals.matches(f.principal):
            return False
        if self.not_principals is not None and self.not_principals.matches(f.principal):
            return False
        if self.namespaces is not None and not self.namespaces.matches(f.namespace):
            return False
        return not (self.not_namespaces is not None and self.not_namespaces.matches(f.namespace))


# A clause (the rule's `from`, its `to`, or one `when` condition) matches when any of its
# matches does; a rule when all its clauses do (so `{}` matches everything); a policy when any
# rule does (so a policy with no rules matches nothing).
_Clause = tuple[_Match, ...]
_CompiledRule = tuple[_Clause, ...]


def _source_match(source: Source) -> _Match:
    return _Match(
        principals=_Patterns.of(source.principals),
        not_principals=_Patterns.of(source.not_principals),
        namespaces=_Patterns.of(source.namespaces),
        not_namespaces=_Patterns.of(source.not_namespaces),
        source_ips=source.ip_blocks,
        not_source_ips=source.not_ip_blocks,
    )


def _operation_match(operation: Operation) -> _Match:
    return _Match(ports=frozenset(operation.ports), not_ports=frozenset(operation.not_ports))


def _ip_values(values: tuple[str, ...], key: str) -> tuple[IPNetwork, ...]:
    return tuple(parse_ip_block(v, f"when[{key}]") for v in values)


def _condition_match(condition: Condition) -> _Match:
    key, values, not_values = condition.key, condition.values, condition.not_values
    if key == "source.ip":
        return _Match(
            source_ips=_ip_values(values, key), not_source_ips=_ip_values(not_values, key)
        )
    if key == "destination.ip":
        return _Match(
            destination_ips=_ip_values(values, key),
            not_destination_ips=_ip_values(not_values, key),
        )
    if key == "destination.port":
        return _Match(
            ports=frozenset(int(v) for v in values), not_ports=frozenset(int(v) for v in not_values)
        )
    if key == "source.namespace":
        return _Match(namespaces=_Patterns.of(values), not_namespaces=_Patterns.of(not_values))
    if key == "source.principal":
        return _Match(principals=_Patterns.of(values), not_principals=_Patterns.of(not_values))
    raise ValueError(f"condition key {key!r} is not evaluated at L4")  # callers check is_l4


def _compile_rule(rule: Rule, action: PolicyAction) -> _CompiledRule | None:
    """The rule's L4 clauses, or None when it can never match at L4 (an ALLOW rule that
    uses HTTP fields). For other actions the HTTP fields are left out."""
    if action is PolicyAction.ALLOW and rule.has_l7_fields:
        return None
    clauses: list[_Clause] = []
    if rule.sources:
        clauses.append(tuple(_source_match(s) for s in rule.sources))
    if rule.operations:
        clauses.append(tuple(_operation_match(o) for o in rule.operations))
    clauses.extend((_condition_match(c),) for c in rule.conditions if c.is_l4)
    return tuple(clauses)


def _rule_matches(rule: _CompiledRule, f: _Facts) -> bool:
    return all(any(m.matches(f) for m in clause) for clause in rule)


def policy_key(policy: AuthorizationPolicy) -> str:
    return f"{policy.metadata.namespace}/{policy.metadata.name}"


@dataclass(frozen=True)
class PolicyMatcher:
    """An AuthorizationPolicy compiled for L4 evaluation.

    It keeps what it needs of the policy rather than the policy itself, so the memo in
    `matcher_for` does not keep policies alive.
    """

    key: str  # namespace/name
    namespace: str
    action: PolicyAction
    selector: Mapping[str, str] | None
    for_waypoint: bool
    provider: str
    rules: tuple[_CompiledRule, ...]
    l7_fields: tuple[str, ...]  # the HTTP-only fields the policy uses, by Istio name
    note: str  # how L4 evaluation departs from the policy as written; "" when it does not

    @classmethod
    def compile(cls, policy: AuthorizationPolicy) -> PolicyMatcher:
        action = policy.action
        compiled = (_compile_rule(rule, action) for rule in policy.rules)
        rules = tuple(r for r in compiled if r is not None)
        l7 = policy.l7_only_fields()
        key = policy_key(policy)
        notes: list[str] = []
        if action is PolicyAction.CUSTOM:
            provider = f"provider {policy.provider!r}" if policy.provider else "its provider"
            notes.append(
                f"CUSTOM policy {key}: a ztunnel cannot call {provider}, so connections its "
                "rules match are denied (fail closed)"
            )
        if l7:
            fields = ", ".join(l7)
            if action is PolicyAction.ALLOW:
                dropped = len(policy.rules) - len(rules)
                notes.append(
                    f"ALLOW policy {key}: {dropped} of {len(policy.rules)} rules use HTTP "
                    f"fields ({fields}) and cannot match at L4"
                )
            else:
                notes.append(
                    f"{action.value} policy {key}: HTTP fields ({fields}) ignored at L4, "
                    "so it matches more connections than written"
                )
        return cls(
            key=key,
            namespace=policy.metadata.namespace,
            action=action,
            selector=dict(policy.selector) if policy.selector is not None else None,
            for_waypoint=policy.for_waypoint,
            provider=policy.provider,
            rules=rules,
            l7_fields=l7,
            note="; ".join(notes),
        )

    def applies_to(
        self,
        namespace: str,
        labels: Mapping[str, str],
        *,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    ) -> bool:
        """Whether a ztunnel enforces this policy for a workload in `namespace` with `labels`."""
        if self.for_waypoint:
            return False
        if self.namespace != namespace and self.namespace != root_namespace:
            return False
        return self.selector is None or selects(self.selector, labels)

    def matches(self, conn: Connection) -> bool:
        """Whether the policy's rules match the connection (applicability aside)."""
        return self._matches(_Facts.of(conn))

    def _matches(self, f: _Facts) -> bool:
        return any(_rule_matches(rule, f) for rule in self.rules)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """matchLabels semantics: every selector label present with the same value ({} selects all)."""
    return all(labels.get(k) == v for k, v in selector.items())


def applies_to(
    policy: AuthorizationPolicy | PolicyMatcher,
    namespace: str,
    labels: Mapping[str, str],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> bool:
    """Whether a ztunnel enforces `policy` for a workload in `namespace` with `labels`."""
    return matcher_for(policy).applies_to(namespace, labels, root_namespace=root_namespace)


# Compiled matchers, keyed by the identity of the (immutable) policy object. Policies hold
# dicts, so they are not hashable; a weak reference confirms the entry is for this object and
# drops the entry with it.
_compiled: dict[int, tuple[weakref.ref[AuthorizationPolicy], PolicyMatcher]] = {}
_compiled_lock = threading.Lock()


def _forget(policy_id: int) -> None:
    with _compiled_lock:
        entry = _compiled.get(policy_id)
        if entry is not None and entry[0]() is None:
            del _compiled[policy_id]


def matcher_for(policy: AuthorizationPolicy | PolicyMatcher) -> PolicyMatcher:
    """The compiled matcher of a policy, compiled on first use."""
    if isinstance(policy, PolicyMatcher):
        return policy
    entry = _compiled.get(id(policy))
    if entry is not None and entry[0]() is policy:
        return entry[1]
    matcher = PolicyMatcher.compile(policy)
    policy_id = id(policy)
    ref = weakref.ref(policy, lambda _ref: _forget(policy_id))
    with _compiled_lock:
        _compiled[policy_id] = (ref, matcher)
    return matcher


# --- evaluation ----------------------------------------------------------------------------


def evaluate(
    policies: Iterable[AuthorizationPolicy | PolicyMatcher],
    conn: Connection,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> Decision:
    """Decide a connection against every policy given (those not applying are skipped)."""
    custom: list[PolicyMatcher] = []
    deny: list[PolicyMatcher] = []
    allow: list[PolicyMatcher] = []
    audit: list[PolicyMatcher] = []
    buckets = {
        PolicyAction.CUSTOM: custom,
        PolicyAction.DENY: deny,
        PolicyAction.ALLOW: allow,
        PolicyAction.AUDIT: audit,
    }
    namespace, labels = conn.destination_namespace, conn.destination_labels
    for item in policies:
        matcher = matcher_for(item)
        if matcher.applies_to(namespace, labels, root_namespace=root_namespace):
            buckets[matcher.action].append(matcher)
    for bucket in buckets.values():
        bucket.sort(key=lambda m: m.key)

    f = _Facts.of(conn)
    audited = tuple(m.key for m in audit if m._matches(f))
    notes = tuple(
        m.note for m in sorted((*custom, *deny, *allow, *audit), key=lambda m: m.key) if m.note
    )

    def decide(allowed: bool, reason: str, by: PolicyMatcher | None = None) -> Decision:
        return Decision(
            allowed,
            reason,
            policy=by.key if by else None,
            action=by.action if by else None,
            audit=audited,
            notes=notes,
        )

    for m in custom:
        if m._matches(f):
            provider = f" provider {m.provider!r}" if m.provider else ""
            return decide(
                False,
                f"denied by CUSTOM policy {m.key}: ztunnel cannot call extension{provider}, "
                "failing closed",
                m,
            )
    for m in deny:
        if m._matches(f):
            ignored = (
                f" (HTTP fields ignored at L4: {', '.join(m.l7_fields)})" if m.l7_fields else ""
            )
            return decide(False, f"denied by DENY policy {m.key}{ignored}", m)
    if not allow:
        return decide(True, "allowed: no ALLOW policy applies")
    for m in allow:
        if m._matches(f):
            return decide(True, f"allowed by ALLOW policy {m.key}", m)
    return decide(False, f"no ALLOW policy matched ({len(allow)} apply)")


def applicable(
    policies: Iterable[AuthorizationPolicy | PolicyMatcher],
    namespace: str,
    labels: Mapping[str, str],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> list[PolicyMatcher]:
    """The policies a ztunnel enforces for a workload, compiled, in key order (for
    `ztunnel-config`-style listings and for pre-filtering per workload)."""
    found = [
        m
        for m in map(matcher_for, policies)
        if m.applies_to(namespace, labels, root_namespace=root_namespace)
    ]
    return sorted(found, key=lambda m: m.key)


__all__ = [
    "DEFAULT_ROOT_NAMESPACE",
    "Connection",
    "Decision",
    "PolicyMatcher",
    "applicable",
    "applies_to",
    "evaluate",
    "matcher_for",
    "policy_key",
    "selects",
]
