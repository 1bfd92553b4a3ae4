"""Istio's TCP metrics, with Istio's names and labels, so existing dashboards work."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from meshcore.meshstate import Workload

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_service",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "connection_security_policy",
    "response_flags",
)

OPENED = Counter("istio_tcp_connections_opened", "TCP connections opened.", LABELS)
CLOSED = Counter("istio_tcp_connections_closed", "TCP connections closed.", LABELS)
SENT = Counter("istio_tcp_sent_bytes", "Bytes sent to the destination.", LABELS)
RECEIVED = Counter("istio_tcp_received_bytes", "Bytes received from the destination.", LABELS)


@dataclass(frozen=True)
class ConnectionLabels:
    reporter: str  # "source" (outbound) or "destination" (inbound)
    source: Workload | None
    source_principal: str
    destination: Workload | None
    destination_service: str
    destination_principal: str
    security: str  # "mutual_tls" or "none"

    def values(self, response_flags: str = "-") -> dict[str, str]:
        src, dst = self.source, self.destination
        return {
            "reporter": self.reporter,
            "source_workload": (src.workload_name or src.name) if src else "unknown",
            "source_workload_namespace": src.namespace if src else "unknown",
            "source_principal": self.source_principal or "unknown",
            "destination_service": self.destination_service or "unknown",
            "destination_workload": (dst.workload_name or dst.name) if dst else "unknown",
            "destination_workload_namespace": dst.namespace if dst else "unknown",
            "destination_principal": self.destination_principal or "unknown",
            "connection_security_policy": self.security,
            "response_flags": response_flags,
        }


def opened(labels: ConnectionLabels) -> None:
    OPENED.labels(**labels.values()).inc()


def closed(labels: ConnectionLabels, sent: int, received: int, flags: str = "-") -> None:
    values = labels.values(flags)
    CLOSED.labels(**values).inc()
    SENT.labels(**values).inc(sent)
    RECEIVED.labels(**values).inc(received)


# --- inbound admission (weft's own) --------------------------------------------------------

REFUSED = Counter(
    "weft_ztunnel_inbound_refused",
    "Inbound connections or streams refused at admission, by listener and why.",
    ("listener", "verdict"),
)
CLOSED_BY_POLICY = Counter(
    "weft_ztunnel_connections_closed_by_policy",
    "Open inbound connections closed because a policy change now denies them.",
    ("listener",),
)
UNTRUSTED_FORWARDED = Counter(
    "weft_ztunnel_forwarded_untrusted",
    "HBONE CONNECTs whose forwarded address the peer's certificate does not vouch for.",
)
AUDITED = Counter(
    "weft_ztunnel_connections_audited",
    "Inbound connections that matched an AUDIT AuthorizationPolicy.",
    ("policy",),
)
