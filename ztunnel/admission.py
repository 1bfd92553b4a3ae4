"""Inbound admission, sans I/O: may this connection reach this node's workload, and as whom?

One pure function, `admit()`, decides every inbound connection, on 15008 (HBONE from another
ztunnel) and on 15006 (plaintext the node agent steered here), from typed facts the listener
collected (`Attempt`) and what this ztunnel knows of the mesh (`MeshView`). The listeners only
carry the verdict out (`Admission`). The same function re-decides open connections when
policy changes (ztunnel/inbound.py), so "would this be admitted now?" has one answer.

The source address is a claim, not a fact, on HBONE: connections from other nodes are pooled
per node, so the TCP peer is the node, and the client's ztunnel names the pod in a
`forwarded: for=<ip>` header. That claim is taken only where the verified certificate vouches
for it: the address must be a workload running as the peer's identity, on the node the
connection came from. Anything else is ignored for authorization, the address the pod sees
and metrics (the source is then the peer node's address), and logged. A waypoint forwards on
behalf of other identities: from a waypoint's identity `forwarded` is taken as it is, as Istio
does.

A workload bound to a waypoint that serves workloads (`weft.dev/waypoint-for: workload|all`)
is reached only through that waypoint: a stream from any other identity is refused, so L7
policy cannot be dodged by calling the pod directly. A workload behind a Service bound to a
`for: service` waypoint may be called directly (routes are skipped, as in Istio), except when
an AuthorizationPolicy with HTTP attributes applies to it through that waypoint
(ztunnel/waypointguard.py): then only the waypoint's identity, on the certificate, is admitted.

Only workload identities of our trust domain (`spiffe://<td>/ns/<ns>/sa/<sa>`) may open HBONE
streams: not a node's credential, not another trust domain's workload, not any other path the
mesh CA might have signed (`peer_refusal`).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from meshcore.identity.spiffe import IdentityError, SpiffeId, workload_id
from meshcore.meshstate import Workload
from meshcore.resources.security import MtlsMode
from ztunnel import peerauthn, rbac
from ztunnel.destinations import workload_waypoint
from ztunnel.state import MeshView

ROOT_NAMESPACE = rbac.DEFAULT_ROOT_NAMESPACE

# What a peer is told; the details (which policy, which port was closed) stay in our logs.
PEER_REASONS = {
    400: "bad request",
    403: "denied",
    404: "no such destination on this node",
    503: "destination unavailable",
}


class Listener(enum.Enum):
    HBONE = "hbone"  # 15008: mTLS from another ztunnel
    PLAINTEXT = "plaintext"  # 15006: plaintext from outside the mesh, steered by the agent


class ForwardedError(ValueError):
    """A `forwarded` header that names no usable client address."""


@dataclass(frozen=True)
class Attempt:
    """What a listener knows of an inbound connection when it has to decide."""

    listener: Listener
    target_ip: str
    target_port: int
    peer_address: str  # the TCP peer: another node (HBONE) or the client itself (plaintext)
    peer_identity: str | None = None  # verified certificate's SPIFFE ID (HBONE only)
    server_identity: str = ""  # the identity the client asked us to be (SNI, HBONE only)
    forwarded: str | None = None  # the raw `forwarded` header (HBONE only)


class Verdict(enum.Enum):
    ALLOW = "allow"
    BAD_REQUEST = "bad_request"  # 400
    UNKNOWN_DESTINATION = "unknown_destination"  # 404
    WRONG_IDENTITY = "wrong_identity"  # 403: not the identity the destination runs as
    BAD_PEER = "bad_peer"  # 403: not a workload identity of our trust domain
    WAYPOINT_BYPASS = "waypoint_bypass"  # 403: a waypoint-bound workload, not from it
    # 403: an L7 AuthorizationPolicy applies through a waypoint, and this is not from it
    WAYPOINT_POLICY_BYPASS = "waypoint_policy_bypass"
    STRICT = "strict"  # plaintext to a STRICT workload
    DENIED = "denied"  # by AuthorizationPolicy


_STATUS = {
    Verdict.ALLOW: 200,
    Verdict.BAD_REQUEST: 400,
    Verdict.UNKNOWN_DESTINATION: 404,
    Verdict.WRONG_IDENTITY: 403,
    Verdict.BAD_PEER: 403,
    Verdict.WAYPOINT_BYPASS: 403,
    Verdict.WAYPOINT_POLICY_BYPASS: 403,
    Verdict.STRICT: 403,
    Verdict.DENIED: 403,
}


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    reason: str  # for our logs: says exactly why
    destination: Workload | None = None
    source: Workload | None = None  # the client workload, when known for sure
    source_ip: str = ""  # the client address policy saw and the pod will see
    bind_source: bool = False  # connect to the pod from `source_ip` (else from the node)
    decision: rbac.Decision | None = None
    mode: MtlsMode | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    @property
    def status(self) -> int:
        """The HTTP status an HBONE CONNECT gets."""
        return _STATUS[self.verdict]

    @property
    def peer_reason(self) -> str:
        return PEER_REASONS.get(self.status, "")

    @property
    def by_policy(self) -> bool:
        """Refused by policy (AuthorizationPolicy or STRICT), not by the request's shape."""
        return self.verdict in (
            Verdict.DENIED,
            Verdict.STRICT,
            Verdict.WAYPOINT_BYPASS,
            Verdict.WAYPOINT_POLICY_BYPASS,
        )


# --- pieces ------------------------------------------------------------------------------


def peer_refusal(identity: str, trust_domain: str) -> str | None:
    """Why `identity` (a verified certificate's SPIFFE ID) may not open HBONE streams, or
    None when it may: only workload identities of our own trust domain."""
    try:
        spiffe_id = SpiffeId.parse(identity)
    except IdentityError as err:
        return str(err)
    if spiffe_id.trust_domain != trust_domain:
        return f"{identity} is of trust domain {spiffe_id.trust_domain!r}, not {trust_domain!r}"
    if spiffe_id.node_name is not None:
        return f"{identity} is a node identity; nodes only talk to the controller"
    if spiffe_id.namespace is None:
        return f"{identity} is not a workload identity (spiffe://<td>/ns/<ns>/sa/<sa>)"
    return None


def parse_forwarded(value: str) -> str:
    """The client address in an RFC 7239 `forwarded` header: the `for=` of its first element
    (`for=198.18.128.5`, `for="[fd00::1]:4711"`, `For=1.2.3.4;proto=http`). ForwardedError
    when it has none or it is not an IP address."""
    first = value.split(",", 1)[0]
    for pair in first.split(";"):
        name, sep, raw = pair.strip().partition("=")
        if not sep or name.strip().lower() != "for":
            continue
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
        if text.startswith("["):  # "[v6]" or "[v6]:port"
            text = text[1:].split("]", 1)[0]
        elif text.count(":") == 1:  # "v4:port"
            text = text.split(":", 1)[0]
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise ForwardedError(f"forwarded: for={raw.strip()!r} is not an IP address") from None
    raise ForwardedError(f"forwarded: {value[:100]!r} has no for= address")


def waypoint_identity(waypoint: str, trust_domain: str) -> str:
    """The identity of waypoint `<ns>/<name>`: its pods run as service account `<name>`."""
    namespace, _, name = waypoint.partition("/")
    return str(workload_id(trust_domain, namespace, name))


def is_waypoint(view: MeshView, identity: str, trust_domain: str) -> bool:
    return any(waypoint_identity(w, trust_domain) == identity for w in view.waypoints)


def policy_bypass(view: MeshView, dest: Workload, peer: str | None, trust_domain: str) -> str:
    """Why `peer` (None: plaintext) may not reach `dest` around its waypoint, or "": an L7
    AuthorizationPolicy applies to `dest` through a waypoint and `peer` is not that waypoint."""
    waypoints = view.waypoint_guard.get((dest.namespace, dest.name))
    if not waypoints:
        return ""
    if peer is not None and any(waypoint_identity(w, trust_domain) == peer for w in waypoints):
        return ""
    names = ", ".join(sorted(waypoints))
    return (
        f"{dest.namespace}/{dest.name} has an L7 AuthorizationPolicy enforced by waypoint "
        f"{names}: reached only through it, not from {peer or 'plaintext'}"
    )


def local_destination(view: MeshView, ip: str) -> Workload | None:
    w = view.by_ip.get(ip)
    if w is None or w.node != view.node or not w.enrolled:
        return None
    return w


def vouched_source(
    view: MeshView, claimed_ip: str, peer_identity: str, peer_address: str
) -> Workload | None:
    """The workload at `claimed_ip` if the peer's certificate vouches for it: it runs as
    `peer_identity` on the node at `peer_address`."""
    w = view.by_ip.get(claimed_ip)
    if w is None or w.identity != peer_identity or w.node_address != peer_address:
        return None
    return w


# --- the decision ------------------------------------------------------------------------


def admit(
    attempt: Attempt,
    view: MeshView,
    *,
    trust_domain: str,
    root_namespace: str = ROOT_NAMESPACE,
) -> Admission:
    """Decide an inbound connection; pure (reads `view`, changes nothing)."""
    dest = local_destination(view, attempt.target_ip)
    if attempt.listener is Listener.HBONE:
        return _admit_hbone(attempt, view, dest, trust_domain, root_namespace)
    return _admit_plaintext(attempt, view, dest, trust_domain, root_namespace)


def _unknown_destination(
    a: Attempt, view: MeshView, source: Workload | None, source_ip: str
) -> Admission:
    return Admission(
        Verdict.UNKNOWN_DESTINATION,
        f"{a.target_ip}:{a.target_port} is not an enrolled workload on {view.node}",
        None,
        source,
        source_ip,
    )


def _admit_hbone(
    a: Attempt, view: MeshView, dest: Workload | None, trust_domain: str, root_namespace: str
) -> Admission:
    peer = a.peer_identity or ""
    refusal = peer_refusal(peer, trust_domain)
    if refusal is not None:
        return Admission(Verdict.BAD_PEER, refusal, dest)
    source: Workload | None = None
    source_ip, bind = a.peer_address, False
    if a.forwarded is not None:
        try:
            claimed = parse_forwarded(a.forwarded)
        except ForwardedError as err:
            return Admission(Verdict.BAD_REQUEST, str(err), dest)
        if is_waypoint(view, peer, trust_domain):
            source, source_ip, bind = view.by_ip.get(claimed), claimed, True
        elif (source := vouched_source(view, claimed, peer, a.peer_address)) is not None:
            source_ip, bind = claimed, True
    if dest is None:
        return _unknown_destination(a, view, source, source_ip)
    if dest.identity != a.server_identity:
        return Admission(
            Verdict.WRONG_IDENTITY,
            f"{a.target_ip}:{a.target_port} runs as {dest.identity}, "
            f"not {a.server_identity or 'the identity asked for'}",
            dest,
            source,
            source_ip,
        )
    if (waypoint := workload_waypoint(view, dest)) and peer != waypoint_identity(
        waypoint, trust_domain
    ):
        return Admission(
            Verdict.WAYPOINT_BYPASS,
            f"{dest.namespace}/{dest.name} is reached only through waypoint {waypoint}, "
            f"not from {peer}",
            dest,
            source,
            source_ip,
        )
    if bypass := policy_bypass(view, dest, peer, trust_domain):
        return Admission(Verdict.WAYPOINT_POLICY_BYPASS, bypass, dest, source, source_ip)
    decision = _authorize(view, dest, a, source_ip, peer, trust_domain, root_namespace)
    verdict = Verdict.ALLOW if decision.allowed else Verdict.DENIED
    return Admission(verdict, decision.reason, dest, source, source_ip, bind, decision)


def _admit_plaintext(
    a: Attempt, view: MeshView, dest: Workload | None, trust_domain: str, root_namespace: str
) -> Admission:
    # The TCP peer is the client itself here: the agent steered its packets unchanged.
    source = view.by_ip.get(a.peer_address)
    if dest is None:
        return _unknown_destination(a, view, source, a.peer_address)
    mode = peerauthn.effective_mode(
        view.peer_authentications,
        dest.namespace,
        dest.labels,
        a.target_port,
        root_namespace=root_namespace,
    )
    if mode is MtlsMode.STRICT:
        return Admission(
            Verdict.STRICT,
            "plaintext refused: STRICT mTLS",
            dest,
            source,
            a.peer_address,
            mode=mode,
        )
    if waypoint := workload_waypoint(view, dest):
        return Admission(
            Verdict.WAYPOINT_BYPASS,
            f"{dest.namespace}/{dest.name} is reached only through waypoint {waypoint}",
            dest,
            source,
            a.peer_address,
            mode=mode,
        )
    if bypass := policy_bypass(view, dest, None, trust_domain):
        return Admission(
            Verdict.WAYPOINT_POLICY_BYPASS, bypass, dest, source, a.peer_address, mode=mode
        )
    decision = _authorize(view, dest, a, a.peer_address, None, trust_domain, root_namespace)
    verdict = Verdict.ALLOW if decision.allowed else Verdict.DENIED
    return Admission(verdict, decision.reason, dest, source, a.peer_address, True, decision, mode)


def _authorize(
    view: MeshView,
    dest: Workload,
    a: Attempt,
    source_ip: str,
    principal: str | None,
    trust_domain: str,
    root_namespace: str,
) -> rbac.Decision:
    conn = rbac.Connection(
        destination_namespace=dest.namespace,
        destination_name=dest.name,
        destination_labels=dest.labels,
        destination_ip=ipaddress.ip_address(a.target_ip),
        destination_port=a.target_port,
        source_ip=ipaddress.ip_address(source_ip),
        source_principal=principal,
        trust_domain=trust_domain,
    )
    return rbac.evaluate(view.policies, conn, root_namespace=root_namespace)
