"""Images the lab knows: what a container with `image:` and no `command:` runs in the lab.

The sample apps, and `weft/waypoint` (the mesh's L7 proxy, `python -m waypoint run`), which
the controller's deployer puts in the Deployment it makes for a waypoint Gateway.
"""

from __future__ import annotations

import os
import sys

WAYPOINT_IMAGE = "weft/waypoint"

# image (without registry tag) -> python module of the sample app
SAMPLE_APPS = {
    "weft/http-echo": "sample_apps.http_echo",
    "weft/tcp-echo": "sample_apps.tcp_echo",
    "weft/load-client": "sample_apps.load_client",
    "weft/ext-authz": "sample_apps.extauthz",
    WAYPOINT_IMAGE: "waypoint",
}
# image -> what comes between the module and the container's args
_SUBCOMMANDS = {WAYPOINT_IMAGE: ("run",)}


def image_name(image: str) -> str:
    """`weft/http-echo:1.2` -> `weft/http-echo`; a digest or tag does not change the app."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name


def is_known(image: str) -> bool:
    return image_name(image) in SAMPLE_APPS


def container_path(host_path: str) -> str:
    """PATH inside pods: weft's own interpreter first, so `python3 -m sample_apps...` works."""
    bin_dir = os.path.dirname(sys.executable)
    parts = [p for p in host_path.split(":") if p and p != bin_dir]
    return ":".join([bin_dir, *parts])


def node_process_env() -> dict[str, str]:
    """The environment of the lab's node processes (controller, node agent, ztunnel)."""
    return {
        "PATH": container_path(os.environ.get("PATH", "/usr/bin:/bin")),
        "PYTHONUNBUFFERED": "1",
        "HOME": "/root",
    }


def container_argv(image: str, command: tuple[str, ...], args: tuple[str, ...]) -> list[str]:
    """The argv a container runs: its command, else its image's sample app, plus args."""
    if command:
        return [*command, *args]
    name = image_name(image)
    module = SAMPLE_APPS[name]
    return [sys.executable, "-m", module, *_SUBCOMMANDS.get(name, ()), *args]
