"""The lab's redis-server (Global RateLimitPolicy counters): how it is started, and that the
controller hands its address to the waypoints it deploys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.deployer import waypoint_objects
from lab import controlplane
from lab.config import LabConfig
from lab.controlplane import REDIS_PORT, ControlPlane
from lab.naming import LabNames
from lab.state import LabPaths
from tests.unit.controller.test_deployer import CONFIG, _container_env, gateway, the_gateway
from tests.unit.lab.test_controlplane import controller_params


def plane(tmp_path: Path) -> ControlPlane:
    return ControlPlane(LabConfig(), LabNames("abc123"), LabPaths.for_lab("t", tmp_path))


def test_redis_listens_on_the_control_address_without_persistence(tmp_path: Path) -> None:
    p = plane(tmp_path)
    argv = p.redis_argv()
    opts = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert opts["--bind"] == p.ip
    assert opts["--port"] == str(REDIS_PORT)
    assert opts["--save"] == "" and opts["--appendonly"] == "no"


def test_the_controller_gives_the_labs_redis_to_waypoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEFT_WAYPOINT_REDIS_ADDR", raising=False)
    monkeypatch.setattr(controlplane.shutil, "which", lambda _: "/usr/bin/redis-server")
    params = controller_params(LabConfig(), tmp_path)
    assert params["waypoint_redis_addr"] == f"{plane(tmp_path).ip}:{REDIS_PORT}"


def test_without_redis_server_the_controller_gets_no_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEFT_WAYPOINT_REDIS_ADDR", raising=False)
    monkeypatch.setattr(controlplane.shutil, "which", lambda _: None)
    assert controller_params(LabConfig(), tmp_path)["waypoint_redis_addr"] == ""


@pytest.mark.parametrize(
    ("addr", "expected"), [("", None), ("198.18.0.254:6379", "198.18.0.254:6379")]
)
def test_the_deployer_puts_the_redis_address_in_the_waypoints_env(
    addr: str, expected: str | None
) -> None:
    config = dataclasses.replace(CONFIG, redis_addr=addr)
    env = _container_env(waypoint_objects(the_gateway(gateway()), config, 2))
    assert env.get("WEFT_REDIS_ADDR") == expected
