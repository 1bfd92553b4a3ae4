"""Which node a Kubernetes ServiceAccount token proves, pure: a TokenReview's answer and the
pods the controller knows decide.

On Kubernetes a node's agent and ztunnel have no node credential at first; they present the
projected token of their DaemonSet pod (audience `weft`) and get one. The API server
(TokenReview) says whose token it is; this module says whether that makes a node, and which:

- the token is authenticated, for the audience `weft`, and bound to a pod (a projected
  token carries the pod's name and uid; a legacy Secret token does not, and is refused);
- its user is the DaemonSet's ServiceAccount, and no other;
- the pod is one the controller knows, with that uid, running as that ServiceAccount, and
  scheduled on a node; the node is the pod's `spec.nodeName`, never what the caller says
  (a compromised node's token gets it its own node credential, not another's). When the API
  server also names the node in the token (`authentication.kubernetes.io/node-name`), the
  two must agree.

Istio's CA does the same for ztunnel (its node authorizer). From there both paths, the lab's
node credentials and Kubernetes' tokens, meet: the node credential is what
`controller.authz` authorizes, whichever way it was obtained.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AUDIENCE = "weft"
POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
NODE_NAME = "authentication.kubernetes.io/node-name"
MAX_TOKEN_BYTES = 16 << 10  # a projected token is ~1 KB; anything far larger is not one


@dataclass(frozen=True)
class PodFacts:
    """What the controller knows of a pod, from its source."""

    uid: str
    service_account: str
    node: str


@dataclass(frozen=True)
class NodeGrant:
    node: str
    pod: str  # namespace/name, for logs


@dataclass(frozen=True)
class TokenRefusal:
    reason: str


@dataclass(frozen=True)
class NodeTokenPolicy:
    """Whose tokens make nodes: the node DaemonSet's ServiceAccount, `namespace/name`."""

    service_account: str = "weft-system/weft-node"
    audience: str = AUDIENCE

    @property
    def username(self) -> str:
        namespace, _, name = self.service_account.partition("/")
        return f"system:serviceaccount:{namespace}:{name}"


def _one(extra: Mapping[str, Any], key: str) -> str:
    values = extra.get(key)
    if isinstance(values, Sequence) and not isinstance(values, str) and len(values) == 1:
        value = values[0]
        return value if isinstance(value, str) else ""
    return ""


@dataclass(frozen=True)
class TokenPod:
    """What a reviewed token proves: the pod it is bound to, as the controller knows it."""

    namespace: str
    name: str
    service_account: str
    facts: PodFacts

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"


def token_pod(
    status: Mapping[str, Any],
    audience: str,
    pod: Callable[[str, str], PodFacts | None],
) -> TokenPod | TokenRefusal:
    """The pod a TokenReview'd token is bound to: authenticated, for `audience`, a
    ServiceAccount's, bound to a pod the controller knows with that uid and account."""
    if status.get("authenticated") is not True:
        error = status.get("error")
        return TokenRefusal(
            f"the API server did not authenticate the token: {error or 'no reason given'}"
        )
    audiences = status.get("audiences")
    if not isinstance(audiences, list) or audience not in audiences:
        return TokenRefusal(f"the token is not for audience {audience!r} (it is for {audiences})")
    user = status.get("user")
    if not isinstance(user, Mapping):
        return TokenRefusal("the TokenReview names no user")
    username = user.get("username")
    parts = username.split(":") if isinstance(username, str) else []
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        return TokenRefusal(f"the token is {username!r}'s, not a ServiceAccount's")
    namespace, account = parts[2], parts[3]
    extra = user.get("extra") if isinstance(user.get("extra"), Mapping) else {}
    assert isinstance(extra, Mapping)
    pod_name, pod_uid = _one(extra, POD_NAME), _one(extra, POD_UID)
    if not pod_name or not pod_uid:
        return TokenRefusal(
            "the token is not bound to a pod (a projected ServiceAccount token is needed, "
            "not a legacy Secret token)"
        )
    facts = pod(namespace, pod_name)
    where = f"{namespace}/{pod_name}"
    if facts is None:
        return TokenRefusal(f"pod {where} the token is bound to is not known to the controller")
    if facts.uid != pod_uid:
        return TokenRefusal(f"pod {where} has uid {facts.uid!r}, the token names {pod_uid!r}")
    if facts.service_account != account:
        return TokenRefusal(
            f"pod {where} runs as {facts.service_account!r}, the token is {account!r}'s"
        )
    token_node = _one(extra, NODE_NAME)
    if token_node and facts.node and token_node != facts.node:
        return TokenRefusal(
            f"the token names node {token_node!r} but pod {where} is on {facts.node!r}"
        )
    return TokenPod(namespace, pod_name, account, facts)


def authorize_token(
    status: Mapping[str, Any],
    policy: NodeTokenPolicy,
    pod: Callable[[str, str], PodFacts | None],
) -> NodeGrant | TokenRefusal:
    """The node a token proves. `status`: the TokenReview's status (as the API returns it);
    `pod(namespace, name)`: the controller's knowledge of a pod, None if it has none."""
    found = token_pod(status, policy.audience, pod)
    if isinstance(found, TokenRefusal):
        return found
    if f"{found.namespace}/{found.service_account}" != policy.service_account:
        return TokenRefusal(
            f"the token is system:serviceaccount:{found.namespace}:{found.service_account}'s; "
            f"only the node DaemonSet's ServiceAccount ({policy.username}) may act as a node"
        )
    if not found.facts.node:
        return TokenRefusal(f"pod {found.where} is not scheduled on a node")
    return NodeGrant(found.facts.node, found.where)


@dataclass(frozen=True)
class WaypointGrant:
    identity: str  # spiffe://<td>/ns/<ns>/sa/<gateway>
    pod: str


def authorize_waypoint_token(
    status: Mapping[str, Any],
    audience: str,
    trust_domain: str,
    waypoints: Container[str],
    pod: Callable[[str, str], PodFacts | None],
) -> WaypointGrant | TokenRefusal:
    """The waypoint identity a token proves: its pod's ServiceAccount's, only while that is
    the identity of a Waypoint in the mesh state (as `controller.authz` serves waypoints)."""
    found = token_pod(status, audience, pod)
    if isinstance(found, TokenRefusal):
        return found
    identity = f"spiffe://{trust_domain}/ns/{found.namespace}/sa/{found.service_account}"
    if identity not in waypoints:
        return TokenRefusal(
            f"{identity} is not the identity of a waypoint in the mesh state: only nodes and "
            "waypoint replicas may get credentials this way"
        )
    return WaypointGrant(identity, found.where)
