"""The policies one hop applies, line by line, as `weftctl why` lists them. Pure.

The hop's verdict is never decided here: it is what `ztunnel.admission.admit()` or the
waypoint's `PolicySet.evaluate()` returned. These lines say, for people, which resource set the
mTLS mode (`ztunnel.peerauthn`), which guard refused a bypass, and for each AuthorizationPolicy
in evaluation order (CUSTOM, DENY, ALLOW, AUDIT; by name within each) whether it matched and
by which rule, using the data plane's own compilers: `rbac.PolicyMatcher` one rule at a time
at L4, `authz.CompiledPolicy.first_match` at the waypoint.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping

from meshcore.meshstate import Workload
from meshcore.resources.requestauthn import RequestAuthentication
from meshcore.resources.security import AuthorizationPolicy, MtlsMode, PeerAuthentication
from waypoint import authz
from weftctl.explain.model import ALLOW, DENY, PolicyResult
from ztunnel import peerauthn, rbac
from ztunnel.admission import Admission, Attempt, Listener, Verdict
from ztunnel.state import MeshView

DEFAULT_METHOD, DEFAULT_PATH = "GET", "/"
_ACTION_ORDER = {"CUSTOM": 0, "DENY": 1, "ALLOW": 2, "AUDIT": 3}


def peer_auth(view: MeshView, w: Workload, port: int) -> tuple[MtlsMode, PeerAuthentication | None]:
    """The effective mode (ztunnel.peerauthn) and the resource that set it, if any."""
    mode = peerauthn.effective_mode(
        view.peer_authentications,
        w.namespace,
        w.labels,
        port,
        root_namespace=view.root_namespace,
    )
    workload, namespace, mesh = peerauthn.governing_policies(
        view.peer_authentications, w.namespace, w.labels, root_namespace=view.root_namespace
    )
    setters: list[tuple[MtlsMode, PeerAuthentication]] = []
    if workload is not None:
        setters += [(workload.port_level_mtls.get(port, MtlsMode.UNSET), workload)]
        setters += [(workload.mode, workload)]
    setters += [(p.mode, p) for p in (namespace, mesh) if p is not None]
    by = next((p for m, p in setters if m is not MtlsMode.UNSET), None)
    return mode, by


def l4_deciding(view: MeshView, w: Workload, attempt: Attempt, result: Admission) -> str | None:
    if result.decision is not None and result.decision.policy:
        return result.decision.policy
    if result.decision is not None and not result.decision.allowed:
        # "no ALLOW policy matched": when exactly one applies, it is the one that said no
        allow = [
            p
            for p in rbac.applicable(
                view.policies, w.namespace, w.labels, root_namespace=view.root_namespace
            )
            if p.action.value == "ALLOW"
        ]
        return allow[0].key if len(allow) == 1 else None
    if result.verdict is Verdict.STRICT:
        _, by = peer_auth(view, w, attempt.target_port)
        return key(by) if by is not None else None
    return None


def l4_lines(
    view: MeshView, w: Workload, attempt: Attempt, result: Admission, trust_domain: str
) -> list[PolicyResult]:
    where = f"ztunnel {w.node}"
    out: list[PolicyResult] = []
    plaintext = attempt.listener is Listener.PLAINTEXT
    mode, by = peer_auth(view, w, attempt.target_port)
    if by is not None or mode is not peerauthn.DEFAULT_MODE or plaintext:
        strict = mode is MtlsMode.STRICT
        out.append(
            PolicyResult(
                "PeerAuthentication",
                key(by) if by is not None else "",
                where,
                "L4",
                mode.value,
                (DENY if strict else ALLOW) if plaintext else ALLOW,
                decides=plaintext and strict,
                detail=(
                    f"effective mode {mode.value} for port {attempt.target_port}, set by "
                    + (f"PeerAuthentication {key(by)}" if by else "the default")
                    + ("; plaintext " + ("refused" if strict else "accepted"))
                    if plaintext
                    else f"effective mode {mode.value}; the connection is mTLS (HBONE)"
                ),
            )
        )
    if result.verdict is Verdict.WAYPOINT_BYPASS:
        out.append(
            PolicyResult(
                "WaypointBinding",
                w.waypoint,
                where,
                "L4",
                "",
                DENY,
                decides=True,
                detail=result.reason,
            )
        )
    guard = view.waypoint_guard.get((w.namespace, w.name))
    if guard:
        bypass = result.verdict is Verdict.WAYPOINT_POLICY_BYPASS
        out.append(
            PolicyResult(
                "WaypointGuard",
                ", ".join(sorted(guard)),
                where,
                "L4",
                "",
                DENY if bypass else ALLOW,
                decides=bypass,
                detail=result.reason
                if bypass
                else "an L7 policy guards this workload: only its waypoint may reach it, "
                "and this is the waypoint",
            )
        )
    out += _rbac_lines(view, w, attempt, result, where, trust_domain)
    return out


def _rbac_lines(
    view: MeshView,
    w: Workload,
    attempt: Attempt,
    result: Admission,
    where: str,
    trust_domain: str,
) -> list[PolicyResult]:
    applying = [
        p
        for p in view.policies
        if rbac.applies_to(p, w.namespace, w.labels, root_namespace=view.root_namespace)
    ]
    applying.sort(key=lambda p: (_ACTION_ORDER[p.action.value], key(p)))
    reached = result.decision is not None  # else decided before authorization
    principal = attempt.peer_identity if attempt.listener is Listener.HBONE else None
    conn = None
    if reached and result.source_ip:
        conn = rbac.Connection(
            destination_namespace=w.namespace,
            destination_name=w.name,
            destination_labels=w.labels,
            destination_ip=ipaddress.ip_address(attempt.target_ip),
            destination_port=attempt.target_port,
            source_ip=ipaddress.ip_address(result.source_ip),
            source_principal=principal,
            trust_domain=trust_domain,
        )
    decided_by = l4_deciding(view, w, attempt, result) if result.decision else None
    done = False
    lines = []
    for p in applying:
        action = p.action.value
        matcher = rbac.matcher_for(p)
        if conn is None or (done and action != "AUDIT"):  # AUDIT is always evaluated
            verdict, rule = "not-reached", None
        else:
            rule = _l4_rule(p, conn)
            if rule is None:
                verdict = "no-match"
            elif action == "AUDIT":
                verdict = "audit"
            else:
                verdict = ALLOW if action == "ALLOW" else DENY
        decides = decided_by == key(p)
        if decides:
            done = True
        detail = matcher.note
        if action == "ALLOW" and verdict == "no-match" and not p.rules:
            detail = "an ALLOW policy with no rules allows nothing"
        elif decides and verdict == "no-match":
            detail = result.decision.reason if result.decision else detail
        lines.append(
            PolicyResult(
                "AuthorizationPolicy",
                key(p),
                where,
                "L4",
                action,
                verdict,
                rule,
                decides,
                detail,
            )
        )
    if result.decision is not None and decided_by is None:
        lines.append(  # no single policy decided: say what did
            PolicyResult(
                "AuthorizationPolicy",
                "",
                where,
                "L4",
                "",
                ALLOW if result.decision.allowed else DENY,
                decides=False,
                detail=result.decision.reason,
            )
        )
    return lines


def l7_lines(
    policies: authz.PolicySet,
    rview: authz.RequestView,
    deciding: str | None,
    where: str,
    *,
    l4: bool,
    written: Mapping[str, AuthorizationPolicy],
    request_given: bool,
) -> tuple[list[PolicyResult], bool]:
    """The waypoint's policies for one request, in its evaluation order, with the rule that
    matched (`CompiledPolicy.first_match`); and whether any looks at request attributes that
    were not given (`written`: the policies as written, by key)."""
    layer = "L4" if l4 else "L7"
    depends = False
    lines = []
    done = False
    for p in (*policies.custom, *policies.deny, *policies.allow, *policies.audit):
        action = p.action.value
        if done and action != "AUDIT":  # AUDIT is always evaluated
            lines.append(
                PolicyResult("AuthorizationPolicy", p.key, where, layer, action, "not-reached")
            )
            continue
        rule = p.first_match(rview, [], l4=l4)
        if rule is None:
            verdict, index = "no-match", None
        else:
            index = rule.index
            verdict = "audit" if action == "AUDIT" else ALLOW if action == "ALLOW" else DENY
        decides = deciding == p.key
        done = done or decides
        detail = ""
        if not request_given and not l4 and _uses_l7(written.get(p.key)):
            depends = True
            detail = f"depends on the request (judged as {DEFAULT_METHOD} {DEFAULT_PATH})"
        lines.append(
            PolicyResult(
                "AuthorizationPolicy",
                p.key,
                where,
                layer,
                action,
                verdict,
                index,
                decides,
                detail,
            )
        )
    return lines, depends


def key(p: AuthorizationPolicy | PeerAuthentication | RequestAuthentication) -> str:
    return f"{p.metadata.namespace}/{p.metadata.name}"


def _uses_l7(policy: AuthorizationPolicy | None) -> bool:
    return policy is not None and bool(policy.l7_only_fields())


def _l4_rule(policy: AuthorizationPolicy, conn: rbac.Connection) -> int | None:
    """The index of the first rule of `policy` that matches `conn` at L4, by compiling each
    rule alone with the ztunnel's own compiler (`PolicyMatcher.compile`)."""
    for index, rule in enumerate(policy.rules):
        alone = dataclasses.replace(policy, rules=(rule,))
        if rbac.PolicyMatcher.compile(alone).matches(conn):
            return index
    return None
