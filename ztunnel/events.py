"""The access event of one L4 connection (meshcore.accessevents), as a ztunnel (or a
waypoint's TCP passthrough) reports it, from the same values as its access-log line.

Call only when `hub.active`: while nobody taps or exports, no event is built.
"""

from __future__ import annotations

import time

from meshcore.accessevents import AccessEvent, TapHub
from meshcore.meshstate import Workload


def publish_connection(
    hub: TapHub,
    reporter: str,
    started: float,
    *,
    source: Workload | None,
    source_principal: str,
    source_address: str,
    destination: Workload | None,
    destination_principal: str,
    destination_address: str,
    service: str = "",
    verdict: str = "allow",
    policy: str | None = "",
    reason: str = "",
    security: str = "mutual_tls",
    sent: int = 0,
    received: int = 0,
) -> None:
    """`started`: time.monotonic() when the connection came in; `sent`/`received`: bytes
    to and from the destination."""
    hub.publish(
        AccessEvent(
            time=time.time(),
            component=hub.component,
            reporter=reporter,
            kind="connection",
            node=hub.node,
            source_workload=source.name if source else "",
            source_namespace=source.namespace if source else "",
            source_principal=source_principal,
            source_address=source_address,
            destination_workload=destination.name if destination else "",
            destination_namespace=destination.namespace if destination else "",
            destination_principal=destination_principal,
            destination_service=service,
            destination_address=destination_address,
            verdict=verdict,
            policy=policy or "",
            reason=reason,
            security=security,
            bytes_sent=sent,
            bytes_received=received,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
    )
