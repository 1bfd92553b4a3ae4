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

from collections.abc import Callable, Mapping, Sequence
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


def authorize_token(
    status: Mapping[str, Any],
    policy: NodeTokenPolicy,
    pod: Callable[[str, str], PodFacts | None],
) -> NodeGrant | TokenRefusal:
    """`status`: the TokenReview's status (as the API returns it); `pod(namespace, name)`:
    the controller's knowledge of a pod, None if it has none."""
    if status.get("authenticated") is not True:
        error = status.get("error")
        return TokenRefusal(
            f"the API server did not authenticate the token: {error or 'no reason given'}"
        )
    audiences = status.get("audiences")
    if not isinstance(audiences, list) or policy.audience not in audiences:
        return TokenRefusal(
            f"the token is not for audience {policy.audience!r} (it is for {audiences})"
        )
    user = status.get("user")
    if not isinstance(user, Mapping):
        return TokenRefusal("the TokenReview names no user")
    username = user.get("username")
    if username != policy.username:
        return TokenRefusal(
            f"the token is {username!r}'s; only the node DaemonSet's ServiceAccount "
            f"({policy.username}) may act as a node"
        )
    extra = user.get("extra") if isinstance(user.get("extra"), Mapping) else {}
    assert isinstance(extra, Mapping)
    pod_name, pod_uid = _one(extra, POD_NAME), _one(extra, POD_UID)
    if not pod_name or not pod_uid:
        return TokenRefusal(
            "the token is not bound to a pod (a projected ServiceAccount token is needed, "
            "not a legacy Secret token)"
        )
    namespace = policy.service_account.partition("/")[0]
    facts = pod(namespace, pod_name)
    where = f"{namespace}/{pod_name}"
    if facts is None:
        return TokenRefusal(f"pod {where} the token is bound to is not known to the controller")
    if facts.uid != pod_uid:
        return TokenRefusal(f"pod {where} has uid {facts.uid!r}, the token names {pod_uid!r}")
    if f"{namespace}/{facts.service_account}" != policy.service_account:
        return TokenRefusal(f"pod {where} runs as {facts.service_account!r}, not the node's")
    if not facts.node:
        return TokenRefusal(f"pod {where} is not scheduled on a node")
    token_node = _one(extra, NODE_NAME)
    if token_node and token_node != facts.node:
        return TokenRefusal(
            f"the token names node {token_node!r} but pod {where} is on {facts.node!r}"
        )
    return NodeGrant(facts.node, where)
