"""The lab's Prometheus: its configuration, targets and command line. Pure, so every target,
label and bound is unit-tested (and `promtool check config` run on what it writes).

The controller and each node's agent and ztunnel live as long as the lab: they are written as
static targets. Waypoint replicas come and go with their Gateways, so they are read from a
file (file_sd) that the lab daemon rewrites when pods change; Prometheus watches that file and
picks up a change with no restart.

Every target carries `component` (controller|agent|ztunnel|waypoint) and `node`, and a
waypoint also its `namespace`, `pod` and `gateway`, so dashboards can group by them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from meshcore.meshstate import GATEWAY_NAME_LABEL, MANAGED_BY_MESH_CONTROLLER, MANAGED_LABEL

PROMETHEUS_PORT = 9090  # on the control plane namespace's loopback
CONTROLLER_METRICS_PORT = 15014  # controller.app ControllerConfig.metrics_addr
AGENT_METRICS_PORT = 15014  # node_agent.agent AgentConfig.metrics_addr (Istio's CNI agent's)
ZTUNNEL_METRICS_PORT = 15020  # ztunnel.app ZtunnelConfig.metrics_addr
WAYPOINT_METRICS_PORT = 15020  # waypoint.app WaypointProcessConfig.metrics_addr

DEFAULT_SCRAPE_INTERVAL = 5.0  # seconds: short enough for tests to see a rate within ~10 s
MIN_SCRAPE_INTERVAL = 1.0
MAX_SCRAPE_INTERVAL = 60.0
MAX_SCRAPE_TIMEOUT = 10.0

# Bounds on what the lab's Prometheus keeps and on what one target may push at it: a waypoint
# runs a user's image, and every workload's name ends up in label values.
RETENTION_TIME = "2h"
RETENTION_SIZE = "256MB"
SAMPLE_LIMIT = 50_000  # series per scrape; past it the scrape fails ("sample limit exceeded")
LABEL_LIMIT = 32  # labels per series
LABEL_VALUE_LENGTH_LIMIT = 1024  # bytes per label value (a SPIFFE principal is ~100)
BODY_SIZE_LIMIT = "16MB"  # uncompressed bytes per scrape
WAYPOINT_TARGET_LIMIT = 1024  # waypoint replicas scraped; past it the whole job fails, visibly
SD_REFRESH = "30s"  # file_sd re-reads its file this often even if no change was noticed

JOB_CONTROLLER = "weft-controller"
JOB_AGENT = "weft-node-agent"
JOB_ZTUNNEL = "weft-ztunnel"
JOB_WAYPOINT = "weft-waypoint"
WAYPOINT_SD_FILE = "waypoints.json"

if TYPE_CHECKING:  # (lab.addressing imports lab.config, which imports this module)
    from lab.addressing import NodePlan


class PrometheusConfigError(ValueError):
    """A Prometheus setting that cannot work; names the option."""


@dataclass(frozen=True)
class Target:
    """One `/metrics` endpoint and the labels Prometheus attaches to all its series."""

    address: str  # host:port
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodTarget:
    """What the lab knows of a running pod that matters for scraping it."""

    namespace: str
    name: str
    node: str
    ip: str
    labels: Mapping[str, str]


def validate_scrape_interval(seconds: float) -> None:
    if not MIN_SCRAPE_INTERVAL <= seconds <= MAX_SCRAPE_INTERVAL:
        raise PrometheusConfigError(
            f"--prometheus-scrape-interval: must be between {MIN_SCRAPE_INTERVAL:g} and "
            f"{MAX_SCRAPE_INTERVAL:g} seconds, got {seconds:g}"
        )


def duration(seconds: float) -> str:
    """Prometheus' duration syntax, to the millisecond: 5.0 -> "5s", 2.5 -> "2500ms"."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise PrometheusConfigError(f"a duration must be positive, got {seconds:g}s")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def controller_target(control_ip: str) -> Target:
    return Target(
        f"{control_ip}:{CONTROLLER_METRICS_PORT}",
        {"component": "controller", "node": "control-plane"},
    )


def node_targets(nodes: Sequence[NodePlan], *, ztunnel: bool = True) -> dict[str, list[Target]]:
    """Each node's agent and (unless the lab runs none) ztunnel, by job."""
    jobs: dict[str, list[Target]] = {
        JOB_AGENT: [
            Target(f"{n.underlay_ip}:{AGENT_METRICS_PORT}", {"component": "agent", "node": n.name})
            for n in nodes
        ]
    }
    if ztunnel:
        jobs[JOB_ZTUNNEL] = [
            Target(
                f"{n.underlay_ip}:{ZTUNNEL_METRICS_PORT}", {"component": "ztunnel", "node": n.name}
            )
            for n in nodes
        ]
    return jobs


def is_waypoint_pod(labels: Mapping[str, str]) -> bool:
    """A replica the controller's deployer made for a waypoint Gateway."""
    return labels.get(MANAGED_LABEL) == MANAGED_BY_MESH_CONTROLLER and GATEWAY_NAME_LABEL in labels


def waypoint_targets(pods: Iterable[PodTarget]) -> list[Target]:
    """Every waypoint replica with an address, in a stable order (so an unchanged set
    rewrites nothing)."""
    targets = [
        Target(
            f"{p.ip}:{WAYPOINT_METRICS_PORT}",
            {
                "component": "waypoint",
                "node": p.node,
                "namespace": p.namespace,
                "pod": p.name,
                "gateway": p.labels[GATEWAY_NAME_LABEL],
            },
        )
        for p in pods
        if p.ip and is_waypoint_pod(p.labels)
    ]
    return sorted(targets, key=lambda t: (t.labels["namespace"], t.labels["pod"]))


def file_sd_text(targets: Sequence[Target]) -> str:
    """A file_sd file: one group per target (each has labels of its own)."""
    groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
    return json.dumps(groups, indent=1, sort_keys=True) + "\n"


def _static(targets: Sequence[Target]) -> list[dict[str, object]]:
    return [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]


def _limits() -> dict[str, object]:
    return {
        "sample_limit": SAMPLE_LIMIT,
        "label_limit": LABEL_LIMIT,
        "label_value_length_limit": LABEL_VALUE_LENGTH_LIMIT,
        "body_size_limit": BODY_SIZE_LIMIT,
    }


def config_text(
    *,
    scrape_interval: float,
    static_jobs: Mapping[str, Sequence[Target]],
    sd_dir: Path,
) -> str:
    """prometheus.yml for the lab: the static jobs, then the waypoints' file_sd job."""
    validate_scrape_interval(scrape_interval)
    timeout = min(scrape_interval, MAX_SCRAPE_TIMEOUT)
    scrape_configs: list[dict[str, object]] = [
        {"job_name": job, **_limits(), "static_configs": _static(targets)}
        for job, targets in static_jobs.items()
    ]
    scrape_configs.append(
        {
            "job_name": JOB_WAYPOINT,
            **_limits(),
            "target_limit": WAYPOINT_TARGET_LIMIT,
            "file_sd_configs": [
                {"files": [str(sd_dir / WAYPOINT_SD_FILE)], "refresh_interval": SD_REFRESH}
            ],
        }
    )
    config = {
        "global": {
            "scrape_interval": duration(scrape_interval),
            "scrape_timeout": duration(timeout),
            "evaluation_interval": duration(scrape_interval),
        },
        "scrape_configs": scrape_configs,
    }
    header = "# Written by the weft lab (lab/prometheusconfig.py); rewritten at each `lab up`.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def prometheus_argv(binary: str, *, config_file: Path, data_dir: Path, listen: str) -> list[str]:
    """The server's command line: our config and data folder, bounded storage, JSON logs."""
    return [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={RETENTION_TIME}",
        f"--storage.tsdb.retention.size={RETENTION_SIZE}",
        f"--web.listen-address={listen}",
        "--web.max-connections=64",
        "--query.timeout=30s",
        "--log.format=json",
    ]
