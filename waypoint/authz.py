"""L7 authorization at the waypoint: which AuthorizationPolicies apply to a request, and what
they decide.

Pure and sans-I/O, as `ztunnel/rbac.py` is for L4: the policies and a `RequestView` in, a
`Verdict` out. The proxy builds the view from what it has verified (the peer certificate,
the address the peer vouched for) and never from a request header.

Which policies a waypoint enforces (Istio's ambient rules): those with `targetRefs` naming
this waypoint's Gateway (every request through it), the request's destination Service (in
the policy's namespace), or the GatewayClass `weft-waypoint` from the root namespace (every
waypoint). Policies with a selector, or with neither, are ztunnel's.

Istio's order:

1. CUSTOM: a request one of its rules matches must be allowed by the policy's extension
   provider (ext_authz, `waypoint.extauthz`) first: the verdict names it in `Verdict.custom`
   and the caller asks it; its allow does not skip the steps below. A provider the mesh
   config does not define, or a TCP connection (Envoy's network ext_authz is not supported),
   is denied (fail closed, never an allow for want of a provider);
2. a matching DENY policy denies;
3. when any ALLOW policy applies, a request that matches none is denied;
4. otherwise allowed.

AUDIT policies never change the verdict; those that match are in `Verdict.audit`.

A TCP connection through the waypoint (a port that is not HTTP) is judged as a ztunnel judges
one (`evaluate(..., l4=True)`): an ALLOW rule that uses HTTP fields never matches, other rules
are applied with those fields left out (Istio's documented reading, as in `ztunnel/rbac.py`).

`connection.sni` is the server name of the client's own TLS, which a waypoint sees only on a
TCP stream it passes through (the HBONE tunnel's TLS is not the client's): the proxy reads it
from the stream's ClientHello (`waypoint.clienthello`) when a policy for the destination asks,
and it is judged there as at L4 (an ALLOW rule with it can match a TCP connection). An HTTP
request's `sni` is "" (the inner hop is plaintext HTTP), so `connection.sni` values never
match one and `notValues` always do. `sni` None: a ClientHello that could not be read in time
(or is over the inspected size): the condition cannot be evaluated (never an allow).

Matching is Istio's: a rule matches when one of its `from` sources, one of its `to`
operations and every `when` condition match; within one, every field set must hold (a value
list matches when any value does, a `not` list when none does). Strings match exactly, by
prefix (`abc*`), by suffix (`*abc`) or by presence (`*`, a non-empty value); hosts ignore
case; paths may use the `{*}` / `{**}` templates. What cannot be evaluated (an
`experimental.envoy.filters.*` key, a path that could not be normalised) makes the rule
match when it is a DENY or AUDIT rule and not match when it is an ALLOW rule: never an allow
by accident.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field

from meshcore.resources.requestauthn import RequestAuthentication
from meshcore.resources.security import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Condition,
    IPNetwork,
    Operation,
    PolicyAction,
    Rule,
    Source,
    TargetKind,
    parse_ip_block,
)

DEFAULT_ROOT_NAMESPACE = ROOT_NAMESPACE  # (one definition: meshcore.resources.security)
WAYPOINT_GATEWAY_CLASS = "weft-waypoint"
DENIED_BODY = b"RBAC: access denied"
GRPC_PERMISSION_DENIED = 7  # what a denied gRPC call gets (trailers-only)
SPIFFE = "spiffe://"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(value: str | IPAddress | None) -> IPAddress | None:
    """An address as compared: IPv4-mapped IPv6 as IPv4; None when absent or unparsable."""
    if value is None or value == "":
        return None
    try:
        address = ipaddress.ip_address(value) if isinstance(value, str) else value
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def wire_text(value: str | bytes) -> str:
    """Header or path text as a policy compares it: the bytes read as UTF-8, invalid bytes
    kept as lone surrogates (so they never equal a policy's text and never raise). A str is
    taken as the latin-1 reading of the wire bytes, as the proxy's parsers give them."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            return value  # already text beyond latin-1: not wire bytes
    else:
        raw = value
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """What a validated JWT says (RequestAuthentication); None on the view means no token."""

    principal: str = ""  # "<iss>/<sub>"
    audiences: tuple[str, ...] = ()
    presenter: str = ""  # azp
    claims: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RequestView:
    """One request as authorization sees it. Build it with `RequestView.build`.

    `path` is the normalised path without query (`waypoint.pathnorm`), or None when it could
    not be normalised (path rules then cannot be evaluated). `headers` has lower-case names,
    duplicates joined with ",". `source_*` come from the verified certificate and the vouched
    address, never from a header.
    """

    method: str
    path: str | None
    host: str
    headers: Mapping[str, str]
    source_principal: str = ""  # SPIFFE ID ("spiffe://td/ns/x/sa/y"); "" for none
    source_namespace: str = ""
    source_ip: IPAddress | None = None
    destination_ip: IPAddress | None = None
    destination_port: int = 0
    sni: str | None = ""  # TCP: the client's TLS SNI; None: a hello we could not read
    request_auth: RequestAuth | None = None

    @classmethod
    def build(
        cls,
        *,
        method: str,
        path: str | None,
        host: str = "",
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        source_principal: str = "",
        source_namespace: str | None = None,
        source_ip: str | IPAddress | None = None,
        destination_ip: str | IPAddress | None = None,
        destination_port: int = 0,
        sni: str | None = "",
        request_auth: RequestAuth | None = None,
    ) -> RequestView:
        joined: dict[str, str] = {}
        for name, value in headers:
            key = wire_text(name).lower()
            text = wire_text(value)
            joined[key] = f"{joined[key]},{text}" if key in joined else text
        if source_namespace is None:
            source_namespace = namespace_of(source_principal)
        return cls(
            method=method,
            path=wire_text(path) if path is not None else None,
            host=wire_text(host),
            headers=joined,
            source_principal=source_principal,
            source_namespace=source_namespace,
            source_ip=_ip(source_ip),
            destination_ip=_ip(destination_ip),
            destination_port=destination_port,
            sni=sni,
            request_auth=request_auth,
        )


def namespace_of(principal: str) -> str:
    """The namespace of a SPIFFE ID `spiffe://td/ns/<ns>/sa/<sa>` ("" when not of that form)."""
    parts = principal.removeprefix(SPIFFE).split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return parts[2]
    return ""


@dataclass(frozen=True, slots=True)
class RuleMatch:
    policy: str  # namespace/name
    rule: int  # index in spec.rules

    @property
    def policy_id(self) -> str:
        """Envoy's RBAC policy id as Istio names it: `ns[NS]-policy[NAME]-rule[I]`."""
        namespace, _, name = self.policy.partition("/")
        return f"ns[{namespace}]-policy[{name}]-rule[{self.rule}]"


@dataclass(frozen=True, slots=True)
class CustomCheck:
    """A CUSTOM policy's rule matched: the request must be allowed by ext_authz `provider`."""

    match: RuleMatch
    provider: str


@dataclass(frozen=True)
class Verdict:
    """The decision on a request and why. `decided_by` is the DENY rule that denied or the
    ALLOW rule that allowed (None: no policy applies, or no ALLOW rule matched). `custom`:
    the providers to ask before this verdict holds (each must allow, in order)."""

    allowed: bool
    reason: str
    decided_by: RuleMatch | None = None
    action: PolicyAction | None = None
    audit: tuple[RuleMatch, ...] = ()
    custom: tuple[CustomCheck, ...] = ()
    notes: tuple[str, ...] = ()  # what could not be evaluated

    @property
    def policy(self) -> str:
        return self.decided_by.policy if self.decided_by else ""

    @property
    def rule(self) -> int | None:
        return self.decided_by.rule if self.decided_by else None


# --- matchers --------------------------------------------------------------------------


class _Unknown(Exception):
    """An attribute that cannot be evaluated for this request."""


Test = Callable[[RequestView], bool]  # may raise _Unknown


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Istio's string match: `*` (present: non-empty), `*suffix`, `prefix*`, or exact."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    presence: bool = False
    ignore_case: bool = False

    @classmethod
    def of(cls, values: Iterable[str], *, ignore_case: bool = False) -> StringMatch:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        presence = False
        for value in values:
            if ignore_case:
                value = value.lower()
            if value == "*":
                presence = True
            elif value.startswith("*"):
                suffixes.append(value[1:])
            elif value.endswith("*"):
                prefixes.append(value[:-1])
            else:
                exact.add(value)
        return cls(frozenset(exact), tuple(prefixes), tuple(suffixes), presence, ignore_case)

    def matches(self, value: str | None) -> bool:
        if not value:
            return False  # absent or empty: nothing to match
        if self.ignore_case:
            value = value.lower()
        return (
            self.presence
            or value in self.exact
            or value.startswith(self.prefixes)
            or value.endswith(self.suffixes)
        )


_TEMPLATE_ONE = "[^/]+"  # {*}: one whole segment
_TEMPLATE_ANY = ".*"  # {**}: the rest, any number of segments


def _template_regex(template: str) -> re.Pattern[str]:
    """Envoy's uri_template matcher for Istio's `{*}` / `{**}` paths."""
    parts = []
    for segment in template.split("/"):
        if segment == "{*}":
            parts.append(_TEMPLATE_ONE)
        elif segment == "{**}":
            parts.append(_TEMPLATE_ANY)
        else:
            parts.append(re.escape(segment))
    return re.compile("/".join(parts))


@dataclass(frozen=True, slots=True)
class PathMatch:
    strings: StringMatch
    templates: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def of(cls, values: Iterable[str]) -> PathMatch:
        plain, templates = [], []
        for value in values:
            if "{*}" in value or "{**}" in value:
                templates.append(_template_regex(value))
            else:
                plain.append(value)
        return cls(StringMatch.of(plain), tuple(templates))

    def matches(self, path: str) -> bool:
        return self.strings.matches(path) or any(t.fullmatch(path) for t in self.templates)


def _path(r: RequestView) -> str:
    if r.path is None:
        raise _Unknown("the request path could not be normalised")
    return r.path


def _principal(value: str) -> str:
    """Istio's principals are written without the scheme; an identity without it has none."""
    return value[len(SPIFFE) :] if value.startswith(SPIFFE) else ""


def _in(networks: tuple[IPNetwork, ...], address: IPAddress | None) -> bool:
    return address is not None and any(address in n for n in networks)


def _string_test(get: Callable[[RequestView], str | None], values: Iterable[str]) -> Test:
    m = StringMatch.of(values)
    return lambda r: m.matches(get(r))


def _both(
    make: Callable[[tuple[str, ...]], Test], values: tuple[str, ...], not_values: tuple[str, ...]
) -> list[Test]:
    """The tests of a `values` / `notValues` pair (either may be empty)."""
    tests: list[Test] = []
    if values:
        tests.append(make(values))
    if not_values:
        tests.append(_negate(make(not_values)))
    return tests


def _negate(test: Test) -> Test:
    return lambda r: not test(r)


def _ip_test(get: Callable[[RequestView], IPAddress | None], blocks: tuple[IPNetwork, ...]) -> Test:
    return lambda r: _in(blocks, get(r))


def _source_tests(s: Source) -> list[Test]:
    tests: list[Test] = []

    def principals(values: tuple[str, ...]) -> Test:
        return _string_test(lambda r: _principal(r.source_principal), values)

    def request_principals(values: tuple[str, ...]) -> Test:
        return _string_test(lambda r: r.request_auth.principal if r.request_auth else None, values)

    def namespaces(values: tuple[str, ...]) -> Test:
        return _string_test(lambda r: r.source_namespace, values)

    tests += _both(principals, s.principals, s.not_principals)
    tests += _both(request_principals, s.request_principals, s.not_request_principals)
    tests += _both(namespaces, s.namespaces, s.not_namespaces)
    # remoteIpBlocks: the original client's address; weft takes no X-Forwarded-For, so it is
    # the source address as the waypoint verified it.
    for blocks, not_blocks in (
        (s.ip_blocks, s.not_ip_blocks),
        (s.remote_ip_blocks, s.not_remote_ip_blocks),
    ):
        if blocks:
            tests.append(_ip_test(lambda r: r.source_ip, blocks))
        if not_blocks:
            tests.append(_negate(_ip_test(lambda r: r.source_ip, not_blocks)))
    return tests


def _operation_tests(o: Operation) -> list[Test]:
    tests: list[Test] = []

    def hosts(values: tuple[str, ...]) -> Test:
        m = StringMatch.of(values, ignore_case=True)
        return lambda r: m.matches(r.host)

    def methods(values: tuple[str, ...]) -> Test:
        return _string_test(lambda r: r.method, values)

    def paths(values: tuple[str, ...]) -> Test:
        m = PathMatch.of(values)
        return lambda r: m.matches(_path(r))

    tests += _both(hosts, o.hosts, o.not_hosts)
    if o.ports:
        ports = frozenset(o.ports)
        tests.append(lambda r: r.destination_port in ports)
    if o.not_ports:
        not_ports = frozenset(o.not_ports)
        tests.append(lambda r: r.destination_port not in not_ports)
    tests += _both(methods, o.methods, o.not_methods)
    tests += _both(paths, o.paths, o.not_paths)
    return tests


def _bracket(key: str, prefix: str) -> str:
    return key[len(prefix) + 1 : -1]


def claim_values(claims: Mapping[str, object], path: list[str]) -> list[str] | None:
    """The values of a (nested) claim as strings; None when absent. A list claim gives its
    string items; a bool gives "true"/"false", a number its decimal text."""
    value: object = claims
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            return None
        value = value[name]
    items = value if isinstance(value, list | tuple) else [value]
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, str):
            out.append(item)
        elif isinstance(item, int | float):
            out.append(str(item))
    return out


def _condition_tests(c: Condition, policy_namespace: str) -> list[Test]:
    key = c.key

    def text(get: Callable[[RequestView], str | None]) -> Callable[[tuple[str, ...]], Test]:
        return lambda values: _string_test(get, values)

    def ips(get: Callable[[RequestView], IPAddress | None]) -> Callable[[tuple[str, ...]], Test]:
        return lambda values: _ip_test(
            get, tuple(parse_ip_block(v, f"when[{key}]") for v in values)
        )

    make: Callable[[tuple[str, ...]], Test]
    if key.startswith("request.headers["):
        name = _bracket(key, "request.headers").lower()
        make = text(lambda r: r.headers.get(name))
    elif key.startswith("request.auth.claims["):
        path = _bracket(key, "request.auth.claims").split("][")

        def claims(values: tuple[str, ...]) -> Test:
            m = StringMatch.of(values)

            def test(r: RequestView) -> bool:
                if r.request_auth is None:
                    return False
                found = claim_values(r.request_auth.claims, path)
                return found is not None and any(m.matches(v) for v in found)

            return test

        make = claims
    elif key == "request.auth.principal":
        make = text(lambda r: r.request_auth.principal if r.request_auth else None)
    elif key == "request.auth.presenter":
        make = text(lambda r: r.request_auth.presenter if r.request_auth else None)
    elif key == "request.auth.audiences":

        def audiences(values: tuple[str, ...]) -> Test:
            m = StringMatch.of(values)
            return lambda r: (
                r.request_auth is not None and any(m.matches(a) for a in r.request_auth.audiences)
            )

        make = audiences
    elif key in ("source.ip", "remote.ip"):
        make = ips(lambda r: r.source_ip)
    elif key == "destination.ip":
        make = ips(lambda r: r.destination_ip)
    elif key == "destination.port":

        def port(values: tuple[str, ...]) -> Test:
            wanted = frozenset(int(v) for v in values)
            return lambda r: r.destination_port in wanted

        make = port
    elif key == "source.namespace":
        make = text(lambda r: r.source_namespace)
    elif key == "source.principal":
        make = text(lambda r: _principal(r.source_principal))
    elif key == SNI_KEY:

        def sni(values: tuple[str, ...]) -> Test:
            m = StringMatch.of(values, ignore_case=True)  # (DNS names ignore case)

            def test(r: RequestView) -> bool:
                if r.sni is None:
                    raise _Unknown("the TLS ClientHello could not be read in time")
                return m.matches(r.sni)

            return test

        make = sni
    elif key == "source.serviceAccount":

        def service_account(values: tuple[str, ...]) -> Test:
            wanted = frozenset(v if "/" in v else f"{policy_namespace}/{v}" for v in values)

            def test(r: RequestView) -> bool:
                parts = _principal(r.source_principal).split("/")
                return len(parts) == 5 and f"{parts[2]}/{parts[4]}" in wanted

            return test

        make = service_account
    elif key == "source.trustDomain":
        make = text(lambda r: _principal(r.source_principal).split("/", 1)[0])
    else:

        def unknown(_values: tuple[str, ...]) -> Test:
            def test(_r: RequestView) -> bool:
                raise _Unknown(f"condition key {key!r} is not evaluated by weft's waypoint")

            return test

        return [unknown(())]
    return _both(make, c.values, c.not_values)


def _all(tests: list[Test]) -> Test:
    return lambda r: all(t(r) for t in tests)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    clauses: tuple[tuple[Test, ...], ...]  # all clauses; within one, any test

    def matches(self, r: RequestView) -> bool:
        """Raises _Unknown when it cannot tell."""
        return all(any(t(r) for t in clause) for clause in self.clauses)


def compile_rule(index: int, rule: Rule, policy_namespace: str) -> CompiledRule:
    clauses: list[tuple[Test, ...]] = []
    if rule.sources:
        clauses.append(tuple(_all(_source_tests(s)) for s in rule.sources))
    if rule.operations:
        clauses.append(tuple(_all(_operation_tests(o)) for o in rule.operations))
    for c in rule.conditions:
        clauses.append((_all(_condition_tests(c, policy_namespace)),))
    return CompiledRule(index, tuple(clauses))


def policy_key(policy: AuthorizationPolicy) -> str:
    return f"{policy.metadata.namespace}/{policy.metadata.name}"


SNI_KEY = "connection.sni"


def l4_part(rule: Rule) -> Rule:
    """The rule with its HTTP-only fields left out (what a TCP connection can be matched on)."""
    return Rule(
        tuple(
            dataclasses.replace(
                s,
                request_principals=(),
                not_request_principals=(),
                remote_ip_blocks=(),
                not_remote_ip_blocks=(),
            )
            for s in rule.sources
        ),
        tuple(Operation(ports=o.ports, not_ports=o.not_ports) for o in rule.operations),
        tuple(c for c in rule.conditions if c.is_l4 or c.key == SNI_KEY),
    )


def _l7_at_waypoint(rule: Rule) -> bool:
    """HTTP-only fields, but for `connection.sni`, which the waypoint reads on TCP too."""
    return any(name != SNI_KEY for name in rule.l7_only_fields())


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy compiled twice: for HTTP requests (`rules`), and for TCP connections through
    the waypoint (`l4_rules`, Istio's reading as at a ztunnel: an ALLOW rule using HTTP fields
    never matches, other rules are applied with those fields left out)."""

    key: str  # namespace/name
    action: PolicyAction
    provider: str
    rules: tuple[CompiledRule, ...]
    l4_rules: tuple[CompiledRule, ...] = ()
    uses_sni: bool = False  # a `connection.sni` condition: TCP streams need their SNI read

    @classmethod
    def compile(cls, policy: AuthorizationPolicy) -> CompiledPolicy:
        namespace = policy.metadata.namespace
        allow = policy.action is PolicyAction.ALLOW
        return cls(
            policy_key(policy),
            policy.action,
            policy.provider,
            tuple(compile_rule(i, r, namespace) for i, r in enumerate(policy.rules)),
            tuple(
                compile_rule(i, l4_part(r), namespace)
                for i, r in enumerate(policy.rules)
                if not (allow and _l7_at_waypoint(r))
            ),
            any(c.key == SNI_KEY for r in policy.rules for c in r.conditions),
        )

    def first_match(
        self, r: RequestView, notes: list[str], *, l4: bool = False
    ) -> CompiledRule | None:
        """The first rule that matches; a rule that cannot be evaluated matches unless this
        is an ALLOW policy (never an allow by accident)."""
        for rule in self.l4_rules if l4 else self.rules:
            try:
                if rule.matches(r):
                    return rule
            except (_Unknown, ValueError, TypeError) as err:
                fails_closed = self.action is not PolicyAction.ALLOW
                notes.append(
                    f"{self.action.value} policy {self.key} rule {rule.index} cannot be "
                    f"evaluated ({err}): {'matches' if fails_closed else 'does not match'}"
                )
                if fails_closed:
                    return rule
        return None


# --- which policies apply ----------------------------------------------------------------


class Scope(enum.Enum):
    GATEWAY = "gateway"  # every request through this waypoint
    SERVICE = "service"  # requests to the named Service


def scopes(
    policy: AuthorizationPolicy | RequestAuthentication,
    gateway: str,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> list[tuple[Scope, str]]:
    """Where a policy (an AuthorizationPolicy, a RequestAuthentication: the same targetRefs
    rules) applies at the waypoint `gateway` (`namespace/name`): (GATEWAY, "") and/or
    (SERVICE, "namespace/name") entries; [] when it is not this waypoint's."""
    found: list[tuple[Scope, str]] = []
    namespace = policy.metadata.namespace
    for ref in policy.target_refs:
        if ref.kind is TargetKind.GATEWAY:
            if f"{namespace}/{ref.name}" == gateway:
                found.append((Scope.GATEWAY, ""))
        elif ref.kind is TargetKind.SERVICE:
            found.append((Scope.SERVICE, f"{namespace}/{ref.name}"))
        elif (
            ref.kind is TargetKind.GATEWAY_CLASS
            and ref.name == WAYPOINT_GATEWAY_CLASS
            and namespace == root_namespace
        ):
            found.append((Scope.GATEWAY, ""))
    return found


def applicable(
    policies: Iterable[AuthorizationPolicy],
    gateway: str,
    service: str | None,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> list[AuthorizationPolicy]:
    """The policies this waypoint enforces on a request to `service` (`namespace/name`, or
    None for a pod addressed directly), in key order."""
    found = []
    for p in policies:
        for scope, name in scopes(p, gateway, root_namespace=root_namespace):
            if scope is Scope.GATEWAY or (service is not None and name == service):
                found.append(p)
                break
    return sorted(found, key=policy_key)


@dataclass(frozen=True)
class PolicySet:
    """The compiled policies that apply to one destination, by action, in key order."""

    custom: tuple[CompiledPolicy, ...] = ()
    deny: tuple[CompiledPolicy, ...] = ()
    allow: tuple[CompiledPolicy, ...] = ()
    audit: tuple[CompiledPolicy, ...] = ()

    @classmethod
    def of(cls, policies: Iterable[CompiledPolicy]) -> PolicySet:
        by: dict[PolicyAction, list[CompiledPolicy]] = {a: [] for a in PolicyAction}
        for p in sorted(policies, key=lambda p: p.key):
            by[p.action].append(p)
        return cls(
            tuple(by[PolicyAction.CUSTOM]),
            tuple(by[PolicyAction.DENY]),
            tuple(by[PolicyAction.ALLOW]),
            tuple(by[PolicyAction.AUDIT]),
        )

    @property
    def empty(self) -> bool:
        return not (self.custom or self.deny or self.allow or self.audit)

    @property
    def uses_sni(self) -> bool:
        """Whether a TCP connection's verdict needs its TLS SNI (`connection.sni`)."""
        return any(p.uses_sni for p in (*self.custom, *self.deny, *self.allow, *self.audit))

    def evaluate(
        self, r: RequestView, *, l4: bool = False, providers: Container[str] = ()
    ) -> Verdict:
        """The verdict on an HTTP request, or with `l4` on a TCP connection (only its
        source, destination and ports are read). `providers`: the ext_authz providers the
        mesh config defines (CUSTOM policies name one)."""
        notes: list[str] = []
        audit = []
        for p in self.audit:
            rule = p.first_match(r, notes, l4=l4)
            if rule is not None:
                audit.append(RuleMatch(p.key, rule.index))
        checks: list[CustomCheck] = []

        def verdict(
            allowed: bool, reason: str, by: RuleMatch | None = None, a: PolicyAction | None = None
        ) -> Verdict:
            return Verdict(
                allowed, reason, by, a, tuple(audit), custom=tuple(checks), notes=tuple(notes)
            )

        for p in self.custom:
            rule = p.first_match(r, notes, l4=l4)
            if rule is None:
                continue
            by = RuleMatch(p.key, rule.index)
            if l4:
                return verdict(
                    False,
                    f"denied: CUSTOM policy {p.key} rule {rule.index} applies to a TCP "
                    "connection, and weft's waypoint asks ext_authz providers about HTTP "
                    "requests only (no network ext_authz): fail closed",
                    by,
                    PolicyAction.CUSTOM,
                )
            if p.provider not in providers:
                return verdict(
                    False,
                    f"denied: CUSTOM policy {p.key} rule {rule.index} names provider "
                    f"{p.provider!r}, which the mesh config (ConfigMap weft-system/weft, "
                    "extensionProviders) does not define: fail closed",
                    by,
                    PolicyAction.CUSTOM,
                )
            if all(c.provider != p.provider for c in checks):
                checks.append(CustomCheck(by, p.provider))
        for p in self.deny:
            rule = p.first_match(r, notes, l4=l4)
            if rule is not None:
                return verdict(
                    False,
                    f"denied by DENY policy {p.key} rule {rule.index}",
                    RuleMatch(p.key, rule.index),
                    PolicyAction.DENY,
                )
        if not self.allow:
            return verdict(True, "allowed: no ALLOW policy applies")
        for p in self.allow:
            rule = p.first_match(r, notes, l4=l4)
            if rule is not None:
                return verdict(
                    True,
                    f"allowed by ALLOW policy {p.key} rule {rule.index}",
                    RuleMatch(p.key, rule.index),
                    PolicyAction.ALLOW,
                )
        return verdict(False, f"no ALLOW policy matched ({len(self.allow)} apply)")


def evaluate(
    policies: Iterable[AuthorizationPolicy],
    request: RequestView,
    *,
    gateway: str,
    service: str | None,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    providers: Container[str] = (),
) -> Verdict:
    """Decide a request to `service` at the waypoint `gateway` against every policy given
    (those that are not this waypoint's, or not for this Service, are skipped)."""
    found = applicable(policies, gateway, service, root_namespace=root_namespace)
    compiled = PolicySet.of(CompiledPolicy.compile(p) for p in found)
    return compiled.evaluate(request, providers=providers)


class AuthzTables:
    """Per-destination policy sets, rebuilt when the waypoint's view changes, so the data
    path does one dict lookup (and nothing more when no policy applies)."""

    def __init__(self, gateway: str, *, root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> None:
        self.gateway = gateway
        self.root_namespace = root_namespace
        self._by_service: dict[str, PolicySet] = {}
        self._gateway_wide: PolicySet | None = None

    def update(self, policies: Iterable[AuthorizationPolicy]) -> None:
        wide: list[CompiledPolicy] = []
        per_service: dict[str, list[CompiledPolicy]] = {}
        for policy in policies:
            found = scopes(policy, self.gateway, root_namespace=self.root_namespace)
            if not found:
                continue
            compiled = CompiledPolicy.compile(policy)
            if any(scope is Scope.GATEWAY for scope, _ in found):
                wide.append(compiled)
                continue
            for _, name in found:
                per_service.setdefault(name, []).append(compiled)
        self._gateway_wide = PolicySet.of(wide) if wide else None
        self._by_service = {
            name: PolicySet.of([*wide, *compiled]) for name, compiled in per_service.items()
        }

    def for_destination(self, namespace: str | None, name: str | None) -> PolicySet | None:
        """The policies for a request to Service `namespace/name` (None for a pod addressed
        directly); None when no policy applies."""
        if namespace is not None and name is not None:
            found = self._by_service.get(f"{namespace}/{name}")
            if found is not None:
                return found
        return self._gateway_wide


__all__ = [
    "DENIED_BODY",
    "AuthzTables",
    "CompiledPolicy",
    "CustomCheck",
    "PolicySet",
    "RequestAuth",
    "RequestView",
    "RuleMatch",
    "Verdict",
    "applicable",
    "evaluate",
    "namespace_of",
    "scopes",
    "wire_text",
]
