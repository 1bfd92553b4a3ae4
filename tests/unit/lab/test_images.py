"""Sample-app images: which images the lab can run and the argv a container gets."""

from __future__ import annotations

import sys

import pytest

from lab.images import container_argv, container_path, image_name, is_known


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("weft/http-echo", "weft/http-echo"),
        ("weft/http-echo:1.2", "weft/http-echo"),
        ("weft/http-echo@sha256:0123abcd", "weft/http-echo"),
        ("weft/http-echo:1.2@sha256:0123abcd", "weft/http-echo"),
        ("localhost:5000/weft/tcp-echo", "localhost:5000/weft/tcp-echo"),
        ("localhost:5000/weft/tcp-echo:2", "localhost:5000/weft/tcp-echo"),
        ("busybox", "busybox"),
        ("", ""),
    ],
)
def test_image_name_drops_tag_and_digest_but_keeps_a_registry_port(image: str, name: str) -> None:
    assert image_name(image) == name


@pytest.mark.parametrize(
    ("image", "known"),
    [
        ("weft/http-echo", True),
        ("weft/tcp-echo:latest", True),
        ("weft/load-client@sha256:abcd", True),
        ("weft/http-echo-v2", False),
        ("docker.io/weft/http-echo", False),
        ("nginx", False),
        ("", False),
    ],
)
def test_only_the_sample_app_images_are_known(image: str, known: bool) -> None:
    assert is_known(image) is known


@pytest.mark.parametrize(
    ("image", "command", "args", "argv"),
    [
        ("nginx", ("sleep",), ("5",), ["sleep", "5"]),
        ("weft/http-echo", ("/bin/sh", "-c"), ("echo hi",), ["/bin/sh", "-c", "echo hi"]),
        (
            "weft/http-echo:1.0",
            (),
            ("--port", "8080"),
            [sys.executable, "-m", "sample_apps.http_echo", "--port", "8080"],
        ),
        ("weft/tcp-echo", (), (), [sys.executable, "-m", "sample_apps.tcp_echo"]),
        ("weft/load-client", (), (), [sys.executable, "-m", "sample_apps.load_client"]),
    ],
)
def test_container_runs_its_command_else_its_images_sample_app(
    image: str, command: tuple[str, ...], args: tuple[str, ...], argv: list[str]
) -> None:
    assert container_argv(image, command, args) == argv


@pytest.mark.parametrize(
    ("host_path", "path"),
    [
        ("/usr/bin:/bin", "/opt/weft/bin:/usr/bin:/bin"),
        ("/usr/bin:/opt/weft/bin:/bin", "/opt/weft/bin:/usr/bin:/bin"),
        ("/usr/bin::/bin:", "/opt/weft/bin:/usr/bin:/bin"),
        ("", "/opt/weft/bin"),
    ],
)
def test_pods_find_the_labs_interpreter_first_on_path(
    monkeypatch: pytest.MonkeyPatch, host_path: str, path: str
) -> None:
    monkeypatch.setattr(sys, "executable", "/opt/weft/bin/python3")

    assert container_path(host_path) == path


def test_the_waypoint_image_runs_python_m_waypoint_run_with_the_containers_args() -> None:
    assert is_known("weft/waypoint:1.0")
    argv = container_argv("weft/waypoint", (), ("--gateway", "shop/waypoint"))
    assert argv == [sys.executable, "-m", "waypoint", "run", "--gateway", "shop/waypoint"]
