"""The connections a ztunnel is relaying now, for `/connections` on its admin listener
(`weftctl ztunnel-config connections`), as istioctl's `ztunnel-config connections`: who to
whom, with which identities, bytes so far and age. An entry is added when the relay starts
and removed when it ends; its byte counts are read from the relay's ends when listed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED = 1000  # one answer lists at most this many (the total is always given)


@dataclass(eq=False)
class OpenConnection:
    direction: str  # "inbound" | "outbound"
    source: str  # namespace/pod, or the address when no workload is known
    source_principal: str
    destination: str  # namespace/pod (or the address)
    destination_principal: str
    target: str  # ip:port as dialled
    security: str  # "mutual_tls" | "none"
    via: str = ""  # outbound: the node or waypoint address carrying it ("" passthrough)
    # (bytes to the destination, bytes back), read when listed
    counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
    started: float = field(default_factory=time.monotonic)

    def describe(self, now: float) -> dict[str, Any]:
        sent, received = self.counts()
        return {
            "direction": self.direction,
            "source": self.source,
            "source_principal": self.source_principal,
            "destination": self.destination,
            "destination_principal": self.destination_principal,
            "target": self.target,
            "via": self.via,
            "security": self.security,
            "bytes_sent": sent,
            "bytes_received": received,
            "age_s": round(now - self.started, 1),
        }


class ConnectionTable:
    def __init__(self) -> None:
        self._open: set[OpenConnection] = set()

    def __len__(self) -> int:
        return len(self._open)

    @contextlib.contextmanager
    def track(self, conn: OpenConnection) -> Iterator[OpenConnection]:
        self._open.add(conn)
        try:
            yield conn
        finally:
            self._open.discard(conn)

    def describe(self, limit: int = MAX_LISTED) -> dict[str, Any]:
        now = time.monotonic()
        oldest = sorted(self._open, key=lambda c: c.started)[:limit]
        return {
            "total": len(self._open),
            "listed": len(oldest),
            "connections": [c.describe(now) for c in oldest],
        }


def name_of(workload: Any, address: str) -> str:
    """`namespace/pod` of a Workload, else the address."""
    if workload is None:
        return address
    return f"{workload.namespace}/{workload.name}"
