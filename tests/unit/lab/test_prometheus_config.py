"""The lab's Prometheus configuration (lab.prometheusconfig), its waypoint file_sd, and
`prometheus_url`: pure, plus `promtool check config` (Debian's prometheus ships promtool) on
what the lab writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab.addressing import node_plans
from lab.config import LabConfig, LabConfigError
from lab.naming import LabNames
from lab.prometheus import LabPrometheus, prometheus_url
from lab.prometheusconfig import (
    JOB_AGENT,
    JOB_CONTROLLER,
    JOB_WAYPOINT,
    JOB_ZTUNNEL,
    SAMPLE_LIMIT,
    WAYPOINT_SD_FILE,
    PodTarget,
    PrometheusConfigError,
    config_text,
    controller_target,
    duration,
    file_sd_text,
    node_targets,
    prometheus_argv,
    validate_scrape_interval,
    waypoint_targets,
)
from lab.state import LabPaths, LabRecord
from meshcore.meshstate import GATEWAY_NAME_LABEL, MANAGED_BY_MESH_CONTROLLER, MANAGED_LABEL

NODES = node_plans(LabConfig(nodes=3))
WAYPOINT_LABELS = {GATEWAY_NAME_LABEL: "waypoint", MANAGED_LABEL: MANAGED_BY_MESH_CONTROLLER}


def waypoint(name: str, ip: str = "198.18.128.9", ns: str = "demo") -> PodTarget:
    return PodTarget(ns, name, "node-2", ip, WAYPOINT_LABELS)


def lab_config(tmp_path: Path, interval: float = 5.0, ztunnel: bool = True) -> str:
    return config_text(
        scrape_interval=interval,
        static_jobs={
            JOB_CONTROLLER: [controller_target("198.18.0.254")],
            **node_targets(NODES, ztunnel=ztunnel),
        },
        sd_dir=tmp_path / "sd",
    )


def test_every_mesh_process_is_a_target_labelled_by_component_and_node(tmp_path: Path) -> None:
    config = yaml.safe_load(lab_config(tmp_path))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert list(jobs) == [JOB_CONTROLLER, JOB_AGENT, JOB_ZTUNNEL, JOB_WAYPOINT]
    static = {
        t: group["labels"]
        for job in (JOB_CONTROLLER, JOB_AGENT, JOB_ZTUNNEL)
        for group in jobs[job]["static_configs"]
        for t in group["targets"]
    }
    assert static == {
        "198.18.0.254:15014": {"component": "controller", "node": "control-plane"},
        "198.18.0.1:15014": {"component": "agent", "node": "node-1"},
        "198.18.0.2:15014": {"component": "agent", "node": "node-2"},
        "198.18.0.3:15014": {"component": "agent", "node": "node-3"},
        "198.18.0.1:15020": {"component": "ztunnel", "node": "node-1"},
        "198.18.0.2:15020": {"component": "ztunnel", "node": "node-2"},
        "198.18.0.3:15020": {"component": "ztunnel", "node": "node-3"},
    }
    sd = jobs[JOB_WAYPOINT]["file_sd_configs"]
    assert sd[0]["files"] == [str(tmp_path / "sd" / WAYPOINT_SD_FILE)]


def test_no_ztunnel_job_when_the_lab_runs_none(tmp_path: Path) -> None:
    config = yaml.safe_load(lab_config(tmp_path, ztunnel=False))
    assert JOB_ZTUNNEL not in {j["job_name"] for j in config["scrape_configs"]}


def test_every_job_bounds_what_a_target_may_push(tmp_path: Path) -> None:
    config = yaml.safe_load(lab_config(tmp_path))
    for job in config["scrape_configs"]:
        assert job["sample_limit"] == SAMPLE_LIMIT, job["job_name"]
        assert job["label_limit"] > 0 and job["label_value_length_limit"] > 0
        assert job["body_size_limit"]
    waypoints = next(j for j in config["scrape_configs"] if j["job_name"] == JOB_WAYPOINT)
    assert waypoints["target_limit"] > 0


@pytest.mark.parametrize(
    ("seconds", "text"), [(5.0, "5s"), (2.5, "2500ms"), (1.0, "1s"), (60.0, "60s")]
)
def test_durations_in_prometheus_syntax(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_scrape_interval_sets_interval_and_timeout(tmp_path: Path) -> None:
    glob = yaml.safe_load(lab_config(tmp_path, interval=2.0))["global"]
    assert (glob["scrape_interval"], glob["scrape_timeout"]) == ("2s", "2s")
    glob = yaml.safe_load(lab_config(tmp_path, interval=30.0))["global"]
    assert (glob["scrape_interval"], glob["scrape_timeout"]) == ("30s", "10s")


@pytest.mark.parametrize("seconds", [0.0, 0.5, 60.5, 3600.0])
def test_scrape_interval_out_of_bounds_is_refused_naming_the_option(seconds: float) -> None:
    with pytest.raises(PrometheusConfigError, match="--prometheus-scrape-interval"):
        validate_scrape_interval(seconds)
    with pytest.raises(LabConfigError, match="--prometheus-scrape-interval: must be between"):
        LabConfig(prometheus=True, prometheus_scrape_interval=seconds).validate()


def test_waypoint_targets_are_waypoint_replicas_with_an_address() -> None:
    pods = [
        waypoint("waypoint-b", "198.18.129.2"),
        waypoint("waypoint-a", "198.18.128.7"),
        waypoint("pending", ""),  # no address yet
        PodTarget("demo", "frontend-1", "node-1", "198.18.128.3", {"app": "frontend"}),
        # made by someone else: a Gateway label alone is not the deployer's waypoint
        PodTarget("demo", "impostor", "node-1", "198.18.128.4", {GATEWAY_NAME_LABEL: "w"}),
    ]
    targets = waypoint_targets(pods)
    assert [(t.address, dict(t.labels)) for t in targets] == [
        (
            "198.18.128.7:15020",
            {
                "component": "waypoint",
                "node": "node-2",
                "namespace": "demo",
                "pod": "waypoint-a",
                "gateway": "waypoint",
            },
        ),
        (
            "198.18.129.2:15020",
            {
                "component": "waypoint",
                "node": "node-2",
                "namespace": "demo",
                "pod": "waypoint-b",
                "gateway": "waypoint",
            },
        ),
    ]
    groups = json.loads(file_sd_text(targets))
    assert groups[0] == {"targets": ["198.18.128.7:15020"], "labels": dict(targets[0].labels)}


def test_waypoint_file_is_rewritten_only_when_the_set_changes(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "lab")
    prom = LabPrometheus(
        LabNames("abc123"),
        paths,
        control_ip="198.18.0.254",
        nodes=NODES,
        ztunnel=True,
        scrape_interval=5.0,
    )
    prom.write_config()
    sd_file = prom.sd_dir / WAYPOINT_SD_FILE
    assert json.loads(sd_file.read_text()) == []
    assert prom.set_waypoints([waypoint("w-1")]) is True
    assert prom.set_waypoints([waypoint("w-1")]) is False
    assert prom.set_waypoints([waypoint("w-1"), waypoint("w-2", "198.18.129.3")]) is True
    assert [g["labels"]["pod"] for g in json.loads(sd_file.read_text())] == ["w-1", "w-2"]
    assert prom.set_waypoints([]) is True
    assert json.loads(sd_file.read_text()) == []
    assert not list(prom.sd_dir.glob(".*"))  # no temporary file left behind


def test_command_line_bounds_storage_and_listens_where_told(tmp_path: Path) -> None:
    argv = prometheus_argv(
        "/usr/bin/prometheus",
        config_file=tmp_path / "p.yml",
        data_dir=tmp_path / "data",
        listen="198.18.0.254:9090",
    )
    assert "--web.listen-address=198.18.0.254:9090" in argv
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in argv
    assert any(a.startswith("--storage.tsdb.retention.time=") for a in argv)
    assert any(a.startswith("--storage.tsdb.retention.size=") for a in argv)


def test_prometheus_url_is_none_unless_the_lab_runs_one(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "weft-d-url")
    assert prometheus_url(paths) is None  # no lab at all
    paths.prometheus.mkdir(parents=True)
    (paths.prometheus / "url").write_text("http://127.0.0.1:41234\n")
    assert prometheus_url(paths) is None  # a url left behind, but no lab record
    # A live process whose command line reads as this lab's daemon (as daemon_alive checks)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "lab.daemon", "weft-d-url"]
    )
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 5
        while b"lab.daemon" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # until it has exec'd (before, it reads as this test's process)
        record = LabRecord("weft-d-url", "abc123", LabConfig(), 0.0, daemon_pid=proc.pid)
        record.save(paths)
        assert prometheus_url(paths) == "http://127.0.0.1:41234"
        (paths.prometheus / "url").unlink()
        assert prometheus_url(paths) is None  # the lab runs none
    finally:
        proc.kill()
        proc.wait()
    (paths.prometheus / "url").write_text("http://127.0.0.1:41234\n")
    assert prometheus_url(paths) is None  # the daemon is gone


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="no promtool (Debian's prometheus package)")
@pytest.mark.parametrize("ztunnel", [True, False])
def test_promtool_accepts_the_lab_config_and_its_waypoint_file(
    tmp_path: Path, ztunnel: bool
) -> None:
    prom = LabPrometheus(
        LabNames("abc123"),
        LabPaths(tmp_path / "lab"),
        control_ip="198.18.0.254",
        nodes=NODES,
        ztunnel=ztunnel,
        scrape_interval=2.5,
    )
    prom.write_config()
    prom.set_waypoints([waypoint("w-1"), waypoint("w-2", "198.18.129.3", ns="other")])
    assert PROMTOOL is not None
    proc = subprocess.run(
        [PROMTOOL, "check", "config", str(prom.config_file)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
