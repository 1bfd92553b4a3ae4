"""Lab settings: how many nodes, which address ranges, where state lives."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from lab.prometheusconfig import PrometheusConfigError, validate_scrape_interval
from meshcore.resources.errors import ManifestError

# RFC 2544's benchmarking block 198.18.0.0/15: never routed on the internet and rarely used
# by hosts, so lab ranges do not shadow anything a user's machine reaches.
DEFAULT_UNDERLAY_CIDR = "198.18.0.0/24"
DEFAULT_POD_CIDR = "198.18.128.0/17"
DEFAULT_SERVICE_CIDR = "198.19.0.0/16"
DEFAULT_NODE_POD_PREFIX = 24
# The pod's default gateway, answered by the node side of every pod veth (as Calico does).
POD_GATEWAY = "169.254.1.1"
STATE_ROOT = Path("/run/weft/labs")
MAX_NODES = 64

_LAB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


SOURCES = ("folder", "kubernetes")


class LabConfigError(ValueError):
    """A lab setting that cannot work; names the setting."""


@dataclass(frozen=True)
class LabConfig:
    name: str = "default"
    nodes: int = 2
    underlay_cidr: str = DEFAULT_UNDERLAY_CIDR
    pod_cidr: str = DEFAULT_POD_CIDR
    service_cidr: str = DEFAULT_SERVICE_CIDR
    node_pod_prefix: int = DEFAULT_NODE_POD_PREFIX
    manifests: tuple[str, ...] = field(default_factory=tuple)
    ztunnel: bool = True  # False: leave 15001/15006 free (capture tests bring their own)
    # worker processes per ztunnel (`ztunnel run --workers`); 1 keeps many-node labs light
    ztunnel_workers: int = 1
    # OTLP/gRPC collector for the waypoints' spans (the controller's --waypoint-otlp-endpoint,
    # which the deployer puts in each waypoint pod's WEFT_OTLP_ENDPOINT); "": none
    otlp_endpoint: str = ""
    # Where the controller reads the cluster: "folder" (the lab's objects as files) or
    # "kubernetes" (a real API server the lab runs, lab.kubeapi)
    source: str = "folder"
    # A Prometheus server scraping every mesh process (lab.prometheus); off unless asked
    prometheus: bool = False
    prometheus_scrape_interval: float = 5.0  # seconds

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise LabConfigError(f"--source: must be {' or '.join(SOURCES)}, got {self.source!r}")
        if not _LAB_NAME.match(self.name):
            raise LabConfigError(
                f"--name: {self.name!r} must be lowercase letters, digits and '-' (at most 32)"
            )
        try:
            validate_scrape_interval(self.prometheus_scrape_interval)
        except PrometheusConfigError as err:
            raise LabConfigError(str(err)) from None
        if not 1 <= self.ztunnel_workers <= 8:
            raise LabConfigError(
                f"--ztunnel-workers: must be between 1 and 8, got {self.ztunnel_workers}"
            )
        if not 1 <= self.nodes <= MAX_NODES:
            raise LabConfigError(f"--nodes: must be between 1 and {MAX_NODES}, got {self.nodes}")
        nets = {}
        for option, value in (
            ("--underlay-cidr", self.underlay_cidr),
            ("--pod-cidr", self.pod_cidr),
            ("--service-cidr", self.service_cidr),
        ):
            try:
                nets[option] = ipaddress.IPv4Network(value)
            except ValueError as err:
                raise LabConfigError(f"{option}: {value!r} is not an IPv4 CIDR ({err})") from None
        items = list(nets.items())
        for i, (opt_a, net_a) in enumerate(items):
            for opt_b, net_b in items[i + 1 :]:
                if net_a.overlaps(net_b):
                    raise LabConfigError(f"{opt_a} {net_a} overlaps {opt_b} {net_b}")
        underlay = nets["--underlay-cidr"]
        if underlay.num_addresses - 3 < self.nodes:  # nodes, plus the control plane
            raise LabConfigError(
                f"--underlay-cidr: {underlay} has no room for {self.nodes} node(s) "
                "and the control plane"
            )
        pods = nets["--pod-cidr"]
        if not pods.prefixlen <= self.node_pod_prefix <= 30:
            raise LabConfigError(
                f"node pod prefix /{self.node_pod_prefix} must lie between "
                f"/{pods.prefixlen} and /30"
            )
        if 2 ** (self.node_pod_prefix - pods.prefixlen) < self.nodes:
            raise LabConfigError(
                f"--pod-cidr: {pods} splits into too few /{self.node_pod_prefix} blocks for "
                f"{self.nodes} nodes"
            )
        if (
            ipaddress.IPv4Address(POD_GATEWAY) in underlay
            or ipaddress.IPv4Address(POD_GATEWAY) in pods
        ):
            raise LabConfigError(f"address ranges must not contain the pod gateway {POD_GATEWAY}")


def config_error_as_manifest_error(err: LabConfigError) -> ManifestError:
    return ManifestError(str(err))
