"""Is an installed object ready? Pure readings of the status the API server returns, as
`kubectl rollout status` and `kubectl wait --for=condition=Established` read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Readiness:
    ready: bool
    why: str  # what is still missing, or what is done


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(c, dict) and c.get("type") == kind:
            return c
    return None


def _observed(obj: dict[str, Any]) -> bool:
    generation = (obj.get("metadata") or {}).get("generation", 0)
    return int((obj.get("status") or {}).get("observedGeneration", 0)) >= int(generation or 0)


def crd_established(obj: dict[str, Any]) -> Readiness:
    c = _condition(obj, "Established")
    if c is not None and c.get("status") == "True":
        return Readiness(True, "established")
    names = _condition(obj, "NamesAccepted")
    if names is not None and names.get("status") == "False":
        return Readiness(False, f"names not accepted: {names.get('message', '')}")
    return Readiness(False, "not established yet")


def deployment_available(obj: dict[str, Any]) -> Readiness:
    status = obj.get("status") or {}
    if not _observed(obj):
        return Readiness(False, "the Deployment controller has not seen the new spec yet")
    replicas = int((obj.get("spec") or {}).get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < replicas:
        return Readiness(False, f"{updated} of {replicas} replicas updated")
    if int(status.get("replicas", 0)) > updated:
        return Readiness(False, f"{int(status.get('replicas', 0)) - updated} old replicas left")
    if available < updated:
        return Readiness(False, f"{available} of {updated} updated replicas available")
    c = _condition(obj, "Available")
    if c is None or c.get("status") != "True":
        return Readiness(False, "not Available")
    return Readiness(True, f"{available} replicas available")


def daemonset_rolled_out(obj: dict[str, Any]) -> Readiness:
    status = obj.get("status") or {}
    if not _observed(obj):
        return Readiness(False, "the DaemonSet controller has not seen the new spec yet")
    desired = int(status.get("desiredNumberScheduled", 0))
    updated = int(status.get("updatedNumberScheduled", 0))
    available = int(status.get("numberAvailable", 0))
    if updated < desired:
        return Readiness(False, f"{updated} of {desired} nodes updated")
    if available < desired:
        return Readiness(False, f"{available} of {desired} nodes available")
    return Readiness(True, f"{available} of {desired} nodes available")


READINESS = {
    "Deployment": deployment_available,
    "DaemonSet": daemonset_rolled_out,
}
