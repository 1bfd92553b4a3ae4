"""PeerAuthentication: the mTLS mode in force for a workload's port. Pure, sans-I/O.

Istio's precedence (its PeerAuthentication reference, and `ComposePeerAuthentication` /
ambient's `convertedSelectorPeerAuthentications` in istiod):

1. the workload policy: a policy with a non-empty selector in the workload's own namespace
   that selects it; its `portLevelMtls` entry for the port first, then its `mtls.mode`;
2. the namespace policy: a policy without a selector (or with `matchLabels: {}`) in the
   workload's namespace;
3. the mesh policy: a policy without a selector in the root namespace;
4. PERMISSIVE.

Only one policy is taken per level, the oldest; weft's typed policies carry no creation time,
so the tie break is by name (Istio's own order among policies created in the same second).
UNSET at any step defers to the next. A selector policy in the root namespace is ignored, as in
Istio ("PeerAuthentication policies with workload selectors are ignored when deployed in the
root namespace").

DISABLE is returned as written; in ambient mode Istio treats it like PERMISSIVE (traffic is
accepted either way), which is for the caller to decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshcore.resources.security import ROOT_NAMESPACE, MtlsMode, PeerAuthentication

DEFAULT_ROOT_NAMESPACE = ROOT_NAMESPACE  # (one definition: meshcore.resources.security)
DEFAULT_MODE = MtlsMode.PERMISSIVE


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _older(current: PeerAuthentication | None, other: PeerAuthentication) -> PeerAuthentication:
    if current is None or other.metadata.name < current.metadata.name:
        return other
    return current


def governing_policies(
    policies: Iterable[PeerAuthentication],
    workload_namespace: str,
    workload_labels: Mapping[str, str],
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> tuple[PeerAuthentication | None, PeerAuthentication | None, PeerAuthentication | None]:
    """The (workload, namespace, mesh) policies Istio would pick for a workload."""
    workload = namespace = mesh = None
    for policy in policies:
        policy_namespace = policy.metadata.namespace
        if not policy.selector:  # None or {}: namespace-wide, or mesh-wide in the root
            if policy_namespace == root_namespace:
                mesh = _older(mesh, policy)
            elif policy_namespace == workload_namespace:
                namespace = _older(namespace, policy)
        elif (
            policy_namespace == workload_namespace
            and policy_namespace != root_namespace
            and _selects(policy.selector, workload_labels)
        ):
            workload = _older(workload, policy)
    return workload, namespace, mesh


def effective_mode(
    policies: Iterable[PeerAuthentication],
    workload_namespace: str,
    workload_labels: Mapping[str, str],
    port: int,
    *,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> MtlsMode:
    """STRICT, PERMISSIVE or DISABLE (never UNSET) for connections to `port` of a workload."""
    workload, namespace, mesh = governing_policies(
        policies, workload_namespace, workload_labels, root_namespace=root_namespace
    )
    chain: list[MtlsMode] = []
    if workload is not None:
        chain.append(workload.port_level_mtls.get(port, MtlsMode.UNSET))
        chain.append(workload.mode)
    if namespace is not None:
        chain.append(namespace.mode)
    if mesh is not None:
        chain.append(mesh.mode)
    for mode in chain:
        if mode is not MtlsMode.UNSET:
            return mode
    return DEFAULT_MODE


__all__ = ["DEFAULT_MODE", "DEFAULT_ROOT_NAMESPACE", "effective_mode", "governing_policies"]
