"""daemonset/prometheus/prometheus.yml, the scrape config for weft on Kubernetes.

Its relabelling is run here on what Prometheus' pod discovery would find in weft's own
manifests (the controller Deployment, the node DaemonSet, a waypoint the controller deploys):
the targets that come out must be each process's metrics port, labelled as the dashboards
expect. `promtool check config` checks the rest (Debian's build has no Kubernetes discovery,
so there with the discovery swapped for an equivalent file_sd).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.app import ControllerConfig
from controller.deployer import DeployerConfig, waypoint_objects
from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.gateway import Gateway
from node_agent.agent import AgentConfig
from waypoint.app import WaypointProcessConfig
from ztunnel.app import ZtunnelConfig

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "daemonset" / "prometheus" / "prometheus.yml"
NODE_IP = "10.0.0.7"


def _meta_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def discovered(pod: dict[str, Any], ip: str, node: str) -> list[dict[str, str]]:
    """What kubernetes_sd (role pod) finds for a running pod: one target per declared
    container port, or one per container that declares none."""
    meta = pod["metadata"]
    base = {
        "__meta_kubernetes_namespace": meta.get("namespace", "default"),
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_pod_phase": "Running",
    }
    for key, value in meta.get("labels", {}).items():
        base[f"__meta_kubernetes_pod_label_{_meta_name(key)}"] = str(value)
    for key, value in meta.get("annotations", {}).items():
        base[f"__meta_kubernetes_pod_annotation_{_meta_name(key)}"] = str(value)
    out = []
    for container in pod["spec"]["containers"]:
        labels = {**base, "__meta_kubernetes_pod_container_name": container["name"]}
        ports = container.get("ports", [])
        if not ports:
            out.append({**labels, "__address__": ip})
        for port in ports:
            out.append(
                {
                    **labels,
                    "__address__": f"{ip}:{port['containerPort']}",
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
            )
    return out


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (replace, keep, drop): anchored regexes, `;`-joined sources;
    None when the target is dropped. Then the target's own labels, as Prometheus keeps them."""
    labels = {"__metrics_path__": "/metrics", **labels}
    for rule in rules:
        action = rule.get("action", "replace")
        value = ";".join(labels.get(s, "") for s in rule.get("source_labels", []))
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        match = regex.match(value)
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", rule.get("replacement", "$1"))
            replacement = re.sub(r"\$(\d+)", r"\\g<\1>", replacement)
            result = match.expand(replacement)
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
    return {k: v for k, v in labels.items() if not k.startswith("__meta_")}


def pod_template(path: Path, kind: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == kind:
            template: dict[str, Any] = doc["spec"]["template"]
            meta = {**template["metadata"], "namespace": doc["metadata"]["namespace"]}
            return {**template, "metadata": {**meta, "name": f"{doc['metadata']['name']}-x1"}}
    raise AssertionError(f"no {kind} in {path}")


def waypoint_pod() -> dict[str, Any]:
    gw = parse_documents(
        documents_from_text(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n"
            "  name: waypoint\n  namespace: shop\n  uid: g-1\nspec:\n"
            "  gatewayClassName: weft-waypoint\n"
            "  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
            "gw.yaml",
        )
    )[0].resource
    assert isinstance(gw, Gateway)
    (deployment,) = [
        o for o in waypoint_objects(gw, DeployerConfig(), 1) if o["kind"] == "Deployment"
    ]
    template = deployment["spec"]["template"]
    meta = {**template["metadata"], "namespace": "shop", "name": "waypoint-5f7d-abcde"}
    return {"metadata": meta, "spec": template["spec"]}


def targets(extra: tuple[tuple[dict[str, Any], str], ...] = ()) -> dict[str, list[dict[str, str]]]:
    """job -> the targets it keeps, from the controller, one node's two pods, one waypoint
    pod and `extra` (pod, ip); identical targets counted once, as Prometheus keeps them."""
    config = yaml.safe_load(CONFIG.read_text())
    pods = [
        *extra,
        (pod_template(ROOT / "daemonset" / "controller.yaml", "Deployment"), "10.1.0.5"),
        (pod_template(ROOT / "daemonset" / "node.yaml", "DaemonSet"), NODE_IP),
        (pod_template(ROOT / "daemonset" / "ztunnel.yaml", "DaemonSet"), NODE_IP),
        (waypoint_pod(), "10.1.2.3"),
    ]
    out: dict[str, list[dict[str, str]]] = {}
    for job in config["scrape_configs"]:
        kept = []
        for pod, ip in pods:
            for found in discovered(pod, ip, "worker-1"):
                result = relabel(found, job["relabel_configs"])
                if result is not None and result not in kept:
                    kept.append(result)
        out[job["job_name"]] = kept
    return out


def _port(addr: str) -> str:
    return addr.rpartition(":")[2]


def test_every_weft_process_is_scraped_once_on_its_metrics_port() -> None:
    jobs = targets()
    found = {
        (t["component"], t["__address__"]): t["__metrics_path__"]
        for job in jobs.values()
        for t in job
    }
    assert found == {
        ("controller", f"10.1.0.5:{_port(ControllerConfig.metrics_addr)}"): "/metrics",
        ("agent", f"{NODE_IP}:{_port(AgentConfig.metrics_addr)}"): "/metrics",
        ("ztunnel", f"{NODE_IP}:{_port(ZtunnelConfig.metrics_addr)}"): "/metrics",
        ("waypoint", f"10.1.2.3:{_port(WaypointProcessConfig.metrics_addr)}"): "/metrics",
    }
    assert sum(len(j) for j in jobs.values()) == 4  # nothing scraped twice


def test_targets_carry_the_labels_the_dashboards_group_by() -> None:
    jobs = targets()
    for target in jobs["weft"]:
        assert target["node"] == "worker-1"
        assert target["namespace"] == "weft-system"
        assert target["pod"].startswith(("weft-controller-", "weft-node-"))
    (zt,) = jobs["weft-ztunnel"]
    assert (zt["component"], zt["node"], zt["namespace"]) == ("ztunnel", "worker-1", "weft-system")
    assert "pod" not in zt  # the node's port: see the next test
    (wp,) = jobs["weft-waypoint"]
    assert (wp["component"], wp["namespace"], wp["pod"], wp["gateway"], wp["node"]) == (
        "waypoint",
        "shop",
        "waypoint-5f7d-abcde",
        "waypoint",
        "worker-1",
    )


def test_a_ztunnel_draining_beside_its_successor_is_scraped_once() -> None:
    """During a rolling update two ztunnel pods run on the node (docs/ztunnel-restart.md);
    both name the node's 15020, held by one process: one target, not two counting it twice."""
    old = pod_template(ROOT / "daemonset" / "ztunnel.yaml", "DaemonSet")
    old = {**old, "metadata": {**old["metadata"], "name": "weft-ztunnel-old"}}
    jobs = targets(((old, NODE_IP),))
    assert len(jobs["weft-ztunnel"]) == 1
    assert (
        jobs["weft-ztunnel"][0]["__address__"] == f"{NODE_IP}:{_port(ZtunnelConfig.metrics_addr)}"
    )


def test_the_relabelling_reader_drops_and_keeps_as_prometheus_does() -> None:
    """The reader above, on its own: a wrong regex must drop the target."""
    rules = [{"source_labels": ["a"], "regex": "x|y", "action": "keep"}]
    assert relabel({"a": "x"}, rules) is not None
    assert relabel({"a": "xy"}, rules) is None  # anchored
    rule = {"source_labels": ["ip"], "regex": "(.+)", "replacement": "${1}:9", "target_label": "t"}
    assert relabel({"ip": "1.2.3.4"}, [rule]) == {
        "ip": "1.2.3.4",
        "t": "1.2.3.4:9",
        "__metrics_path__": "/metrics",
    }


def test_manifests_announce_their_metrics_to_annotation_scrapers() -> None:
    """prometheus.io/scrape, port and path on the controller and node pods (plain manifests
    and the Helm chart alike), for scrapers that read only the annotations."""
    for path, kind, port in (
        ("daemonset/controller.yaml", "Deployment", ControllerConfig.metrics_addr),
        ("daemonset/node.yaml", "DaemonSet", AgentConfig.metrics_addr),
        ("daemonset/ztunnel.yaml", "DaemonSet", ZtunnelConfig.metrics_addr),
    ):
        annotations = pod_template(ROOT / path, kind)["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": _port(port),
            "prometheus.io/path": "/metrics",
        }, path
    for template in ("controller.yaml", "node.yaml", "ztunnel.yaml"):
        text = (ROOT / "daemonset" / "helm" / "weft" / "templates" / template).read_text()
        assert "prometheus.io/path: /metrics" in text, template


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="no promtool (Debian's prometheus package)")
def test_promtool_accepts_the_kubernetes_scrape_config(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "config", str(CONFIG)], capture_output=True, text=True
    )
    if "field kubernetes_sd_configs not found" not in proc.stdout + proc.stderr:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    # Debian's prometheus is built without Kubernetes discovery: check everything else with
    # an equivalent discovery in its place
    config = yaml.safe_load(CONFIG.read_text())
    empty = tmp_path / "pods.json"
    empty.write_text("[]")
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}], job["job_name"]
        job["file_sd_configs"] = [{"files": [str(empty)]}]
    swapped = tmp_path / "prometheus.yml"
    swapped.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [PROMTOOL, "check", "config", str(swapped)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
