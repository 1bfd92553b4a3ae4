"""What in an HTTPRoute or GRPCRoute weft cannot apply as written: the problems behind a
route's status conditions (Gateway API `Accepted`, `ResolvedRefs`, `PartiallyInvalid`).

Pure, and shared: the controller turns them into route status (`controller/routestatus.py`),
the waypoint (`waypoint.routing`) leaves out what they name while it builds its tables, and
`tests/unit/waypoint/test_route_problems_match.py` holds the two to the same list.

    route_problems(route, known_service) -> tuple[Problem, ...]
    check_re2(pattern) -> str | None      # why RE2 would refuse a pattern, or None

What is a problem, and what weft does with the rest of the route:

- a regular expression RE2 (Envoy's and Go's dialect) refuses: `Accepted`/`UnsupportedValue`;
  its rule is dropped (the route is PartiallyInvalid; with no rule left it is not Accepted);
- a backendRef or a RequestMirror's backendRef naming a Service, or a Service port, that does
  not exist: `ResolvedRefs`/`BackendNotFound`; that backend's share of the traffic gets 500, a
  mirror is dropped;
- an ExtensionRef filter (weft defines none): `ResolvedRefs`/`InvalidKind`; requests through
  that rule (or backend) get 500, as the spec requires of a filter that cannot be resolved.

Problems come in the order the waypoint meets them: per rule, its filters, its backendRefs
(each one's filters, then the backend itself), then its matches.
"""

from __future__ import annotations

import re
import re._constants as _sre_c  # the parse tree of `re`, to see what RE2 would refuse
import re._parser as _sre_p
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meshcore.resources.core import ResourceKey
from meshcore.resources.gateway import (
    BackendRef,
    ExtensionRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteFilter,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderMatch,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteRule,
    MatchType,
    PathMatchType,
    QueryParamMatch,
    RequestMirror,
)

# Does a Service exist with this port? (namespace, name, port)
KnownService = Callable[[str, str, int], bool]

# Route status vocabulary (Gateway API condition types and reasons).
ACCEPTED = "Accepted"
RESOLVED_REFS = "ResolvedRefs"
PARTIALLY_INVALID = "PartiallyInvalid"
UNSUPPORTED_VALUE = "UnsupportedValue"
BACKEND_NOT_FOUND = "BackendNotFound"
INVALID_KIND = "InvalidKind"
INCOMPATIBLE_FILTERS = "IncompatibleFilters"
NO_MATCHING_PARENT = "NoMatchingParent"

_RULE = re.compile(r"spec\.rules\[(\d+)\]")


@dataclass(frozen=True)
class Problem:
    """Something in a route that weft does not apply as written, for its status conditions."""

    route: ResourceKey
    field: str  # e.g. "spec.rules[0].matches[1].path.value"
    condition: str  # ACCEPTED or RESOLVED_REFS, set to False
    reason: str  # UNSUPPORTED_VALUE, BACKEND_NOT_FOUND, INVALID_KIND
    message: str

    @property
    def rule(self) -> int:
        """The index of the rule it is in (-1 for none)."""
        found = _RULE.match(self.field)
        return int(found.group(1)) if found else -1

    @property
    def drops_rule(self) -> bool:
        """Whether weft leaves the whole rule out for it (a regex RE2 refuses)."""
        return self.reason == UNSUPPORTED_VALUE


# --- regular expressions: RE2's dialect ------------------------------------------------------

_RE2_MAX_REPEAT = 1000
_REFUSED_OPS = {
    _sre_c.GROUPREF: "backreferences",
    _sre_c.GROUPREF_EXISTS: "conditional groups",
    _sre_c.ASSERT: "lookahead/lookbehind",
    _sre_c.ASSERT_NOT: "lookahead/lookbehind",
    _sre_c.ATOMIC_GROUP: "atomic groups",
    _sre_c.POSSESSIVE_REPEAT: "possessive quantifiers",
}
_REFUSED_FLAGS = (
    (_sre_c.SRE_FLAG_VERBOSE, "the x (verbose) flag"),
    (_sre_c.SRE_FLAG_ASCII, "the a (ASCII) flag"),
    (_sre_c.SRE_FLAG_LOCALE, "the L (locale) flag"),
)


def check_re2(pattern: str) -> str | None:
    """Why RE2 (Envoy's and Go's dialect) would refuse `pattern`, or None if it would not.

    `pattern` is one Python `re` already accepts; the constructs refused are the ones Python
    has and RE2 lacks: backreferences, lookaround, atomic groups, possessive quantifiers,
    conditionals, `\\Z`, comments, the x/a/L flags, and counted repetition above 1000.
    """
    if "(?#" in pattern:
        return "RE2 does not support (?#...) comments"
    try:
        parsed = _sre_p.parse(pattern)
    except re.error as err:
        return f"not a valid regular expression: {err}"
    for flag, what in _REFUSED_FLAGS:
        if parsed.state.flags & flag:
            return f"RE2 does not support {what}"
    return _walk_re2(parsed)


def _walk_re2(items: Iterable[tuple[Any, Any]]) -> str | None:
    for op, av in items:
        if op in _REFUSED_OPS:
            return f"RE2 does not support {_REFUSED_OPS[op]}"
        if op is _sre_c.AT and av is _sre_c.AT_END_STRING:
            return "RE2 does not support \\Z (use $ without the m flag)"
        found = None
        if op in (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT):
            low, high, sub = av
            for bound in (low, high):
                if bound != _sre_c.MAXREPEAT and bound > _RE2_MAX_REPEAT:
                    return f"RE2 allows at most {_RE2_MAX_REPEAT} repetitions, not {bound}"
            found = _walk_re2(sub)
        elif op is _sre_c.SUBPATTERN:
            _, add_flags, _, sub = av
            for flag, what in _REFUSED_FLAGS:
                if add_flags & flag:
                    return f"RE2 does not support {what}"
            found = _walk_re2(sub)
        elif op is _sre_c.BRANCH:
            _, branches = av
            for branch in branches:
                found = found or _walk_re2(branch)
        if found:
            return found
    return None


# --- a route's problems ----------------------------------------------------------------------


class _Checker:
    def __init__(self, route: ResourceKey, known_service: KnownService) -> None:
        self.route = route
        self.known_service = known_service
        self.problems: list[Problem] = []

    def add(self, path: str, condition: str, reason: str, message: str) -> None:
        self.problems.append(Problem(self.route, path, condition, reason, message))

    def regex(self, pattern: str, path: str) -> None:
        why = check_re2(pattern)
        if why is not None:
            self.add(path, ACCEPTED, UNSUPPORTED_VALUE, f"{pattern!r}: {why}")

    def value_matches(
        self, matches: Sequence[HeaderMatch | QueryParamMatch], path: str, *, fold: bool
    ) -> None:
        seen: set[str] = set()
        for i, m in enumerate(matches):
            name = m.name.lower() if fold else m.name
            if name in seen:
                continue  # of entries naming the same header (or param), only the first counts
            seen.add(name)
            if m.type is MatchType.REGULAR_EXPRESSION:
                self.regex(m.value, f"{path}[{i}].value")

    def filters(self, filters: Sequence[HTTPRouteFilter | GRPCRouteFilter], path: str) -> None:
        for i, flt in enumerate(filters):
            if isinstance(flt, RequestMirror):
                b = flt.backend
                if not self.known_service(b.namespace, b.name, b.port):
                    self.add(
                        f"{path}[{i}].requestMirror.backendRef",
                        RESOLVED_REFS,
                        BACKEND_NOT_FOUND,
                        f"mirror Service {b.namespace}/{b.name} port {b.port} not found; "
                        "the mirror is dropped",
                    )
            elif isinstance(flt, ExtensionRef):
                what = f"ExtensionRef {flt.group or 'core'}/{flt.kind} {flt.name}"
                self.add(
                    f"{path}[{i}].extensionRef",
                    RESOLVED_REFS,
                    INVALID_KIND,
                    f"weft supports no {what}; requests through this rule get 500",
                )

    def backends(self, refs: Sequence[BackendRef], path: str) -> None:
        for i, ref in enumerate(refs):
            here = f"{path}[{i}]"
            self.filters(ref.filters, f"{here}.filters")
            if not self.known_service(ref.namespace, ref.name, ref.port):
                self.add(
                    here,
                    RESOLVED_REFS,
                    BACKEND_NOT_FOUND,
                    f"Service {ref.namespace}/{ref.name} port {ref.port} not found; "
                    "its share of the traffic gets 500",
                )

    def http_rule(self, rule: HTTPRouteRule, path: str) -> None:
        self.filters(rule.filters, f"{path}.filters")
        self.backends(rule.backend_refs, f"{path}.backendRefs")
        for mi, m in enumerate(rule.matches):
            mpath = f"{path}.matches[{mi}]"
            if m.path.type is PathMatchType.REGULAR_EXPRESSION:
                self.regex(m.path.value, f"{mpath}.path.value")
            self.value_matches(m.headers, f"{mpath}.headers", fold=True)
            self.value_matches(m.query_params, f"{mpath}.queryParams", fold=False)

    def grpc_rule(self, rule: GRPCRouteRule, path: str) -> None:
        self.filters(rule.filters, f"{path}.filters")
        self.backends(rule.backend_refs, f"{path}.backendRefs")
        for mi, m in enumerate(rule.matches or (GRPCRouteMatch(),)):
            mpath = f"{path}.matches[{mi}].method"
            mm = m.method if m.method is not None else GRPCMethodMatch()
            if mm.type is MatchType.REGULAR_EXPRESSION:
                for part, value in (("service", mm.service), ("method", mm.method)):
                    if value:
                        self.regex(value, f"{mpath}.{part}")
            self.value_matches(m.headers, f"{path}.matches[{mi}].headers", fold=True)


def route_problems(
    route: HTTPRoute | GRPCRoute, known_service: KnownService
) -> tuple[Problem, ...]:
    """Everything in `route` weft does not apply as written, in the order the waypoint meets
    it. `known_service(namespace, name, port)` says whether that Service port exists."""
    checker = _Checker(route.key, known_service)
    if isinstance(route, HTTPRoute):
        for ri, rule in enumerate(route.rules):
            checker.http_rule(rule, f"spec.rules[{ri}]")
    else:
        for ri, grpc_rule in enumerate(route.rules):
            checker.grpc_rule(grpc_rule, f"spec.rules[{ri}]")
    return tuple(checker.problems)


def dropped_rules(problems: Iterable[Problem]) -> list[int]:
    """The rules weft leaves out for these problems, in order."""
    return sorted({p.rule for p in problems if p.drops_rule})
