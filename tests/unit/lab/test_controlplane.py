"""The lab's controller command line: what `weftctl lab up` settings reach the controller."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.main import run
from lab.config import LabConfig
from lab.controlplane import ControlPlane
from lab.naming import LabNames
from lab.state import LabPaths, LabRecord


def controller_params(config: LabConfig, tmp_path: Path) -> dict[str, object]:
    """The controller's options as its own command line parses the lab's argv."""
    plane = ControlPlane(config, LabNames("abc123"), LabPaths.for_lab("t", tmp_path))
    argv = plane.controller_argv()
    assert argv[1:4] == ["-m", "controller", "run"]
    with run.make_context("run", argv[4:]) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize(
    ("otlp_endpoint", "expected"),
    [
        ("", ""),  # not given: the controller's default, no tracing
        ("198.18.0.254:4317", "198.18.0.254:4317"),
        ("http://collector:4317", "http://collector:4317"),
    ],
)
def test_the_labs_otlp_endpoint_is_the_controllers_waypoint_otlp_endpoint(
    otlp_endpoint: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEFT_WAYPOINT_OTLP_ENDPOINT", raising=False)
    params = controller_params(LabConfig(otlp_endpoint=otlp_endpoint), tmp_path)
    assert params["waypoint_otlp_endpoint"] == expected
    assert params["lab_api"] == tmp_path / "t" / "api.sock"


def test_the_controllers_waypoint_otlp_endpoint_can_come_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEFT_WAYPOINT_OTLP_ENDPOINT", "otel:4317")
    assert controller_params(LabConfig(), tmp_path)["waypoint_otlp_endpoint"] == "otel:4317"


def test_the_otlp_endpoint_is_kept_in_the_lab_record(tmp_path: Path) -> None:
    paths = LabPaths.for_lab("t", tmp_path)
    record = LabRecord("t", "abc123", LabConfig(otlp_endpoint="otel:4317"), created=1.0)
    record.save(paths)
    loaded = LabRecord.load(paths)
    assert loaded is not None and loaded.config.otlp_endpoint == "otel:4317"
