"""Kubernetes status conditions, as the Gateway API writes them: a condition's
`lastTransitionTime` changes only when its status does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def condition(
    kind: str, ok: bool, reason: str, message: str, previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """Condition `kind`, True when `ok`; `previous` is the status (or status entry) holding the
    conditions last written, whose `lastTransitionTime` is kept when the status is the same."""
    status = "True" if ok else "False"
    since = now
    for old in (previous or {}).get("conditions", []):
        if old.get("type") == kind and old.get("status") == status:
            since = old.get("lastTransitionTime", now)
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
