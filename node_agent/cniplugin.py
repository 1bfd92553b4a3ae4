"""weft's chained CNI plugin: a new pod's sandbox is not handed back to the runtime until the
node agent has its netns in the capture maps (or has decided to leave it alone).

Installed as the last plugin of the node's CNI chain (after Flannel, Calico, Cilium, kindnet
...), it runs inside the runtime's RunPodSandbox, after the pod's network is set up and before
any container of the pod exists, as Istio's CNI plugin does. On ADD it sends the agent (unix
socket, one JSON line each way) the pod's netns path and identity from CNI_ARGS, waits for
"done", and prints the previous plugin's result unchanged. When the agent does not answer,
or refuses, ADD fails: the kubelet tears the sandbox down and retries, so no pod starts
unprotected. Namespaces in `exclude_namespaces` (weft's own and kube-system by default: the
controller must start before any agent is synced) are passed without asking.

Standard library only, no weft import: the file is copied to the node's CNI bin folder and run
by the host's python3 (see docs/node-agent.md, "On Kubernetes").

Plugin configuration (in the conflist): {"type": "weft-cni", "agent_socket":
"/var/run/weft/cni.sock", "exclude_namespaces": ["weft-system", "kube-system"],
"timeout_seconds": 10}.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_SOCKET = "/var/run/weft/cni.sock"
DEFAULT_EXCLUDED = ("weft-system", "kube-system")
MAX_REPLY = 64 * 1024
# CNI error codes: 7 "invalid network config", 11 "try again later" (the runtime retries).
INVALID_CONFIG, TRY_AGAIN = 7, 11


class PluginError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V` (the kubelet's runtimes pass K8S_POD_NAMESPACE, K8S_POD_NAME,
    K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID)."""
    out = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def ipv4s(prev_result: Any) -> list[str]:
    """The IPv4 addresses of a previous plugin's result (0.3.0 and later: `ips[].address`)."""
    out = []
    if isinstance(prev_result, dict):
        for entry in prev_result.get("ips") or []:
            address = entry.get("address", "") if isinstance(entry, dict) else ""
            ip = str(address).split("/", 1)[0]
            if ip.count(".") == 3:
                out.append(ip)
    return out


def request_for(env: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, Any] | None:
    """What to ask the agent on ADD, or None when there is nothing to ask (an excluded
    namespace). PluginError for a call that is not a Kubernetes pod's."""
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    namespace, name, uid = (
        args.get(k, "") for k in ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID")
    )
    excluded = config.get("exclude_namespaces", list(DEFAULT_EXCLUDED))
    if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
        raise PluginError(INVALID_CONFIG, "weft-cni: exclude_namespaces must be a list of names")
    if namespace in excluded:
        return None
    if not namespace or not name or not uid:
        raise PluginError(
            INVALID_CONFIG,
            "weft-cni: CNI_ARGS lacks K8S_POD_NAMESPACE, K8S_POD_NAME or K8S_POD_UID "
            f"(got {sorted(args)}); is the runtime a Kubernetes CRI?",
        )
    netns = env.get("CNI_NETNS", "")
    if not netns:
        raise PluginError(INVALID_CONFIG, "weft-cni: CNI_NETNS is empty")
    return {
        "netns": netns,
        "pod_uid": uid,
        "pod_namespace": namespace,
        "pod_name": name,
        "ips": ipv4s(config.get("prevResult")),
    }


def ask_agent(path: str, request: Mapping[str, Any], timeout: float) -> None:
    """Send the request and wait for the agent's verdict; PluginError unless it is done."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(json.dumps(request).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < MAX_REPLY:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as err:
        raise PluginError(
            TRY_AGAIN, f"weft-cni: the node agent at {path} did not answer", str(err)
        ) from None
    try:
        verdict = json.loads(reply)
    except ValueError:
        raise PluginError(TRY_AGAIN, "weft-cni: unreadable answer from the node agent") from None
    if not isinstance(verdict, dict) or verdict.get("ok") is not True:
        error = verdict.get("error", "") if isinstance(verdict, dict) else ""
        raise PluginError(TRY_AGAIN, f"weft-cni: the node agent refused the pod: {error}")


def run(env: Mapping[str, str], stdin: str) -> str:
    """The plugin's stdout for one call; PluginError for an error result."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return json.dumps({"cniVersion": SUPPORTED[-1], "supportedVersions": list(SUPPORTED)})
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except ValueError as err:
        raise PluginError(INVALID_CONFIG, f"weft-cni: network configuration: {err}") from None
    if not isinstance(config, dict):
        raise PluginError(INVALID_CONFIG, "weft-cni: network configuration is not an object")
    if command == "ADD":
        request = request_for(env, config)
        if request is not None:
            timeout = config.get("timeout_seconds", 10)
            if not isinstance(timeout, (int, float)) or not 0 < timeout <= 120:
                raise PluginError(INVALID_CONFIG, "weft-cni: timeout_seconds must be in (0, 120]")
            ask_agent(str(config.get("agent_socket", DEFAULT_SOCKET)), request, float(timeout))
        # A chained plugin passes the result on; with none, an empty one of its version.
        result = config.get("prevResult") or {"cniVersion": config.get("cniVersion", "1.0.0")}
        return json.dumps(result)
    return ""  # DEL, CHECK, GC, STATUS: the agent follows the pod's cgroup going away


def main() -> int:
    stdin = sys.stdin.read()
    try:
        out = run(os.environ, stdin)
    except PluginError as err:
        try:
            version = json.loads(stdin).get("cniVersion", "1.0.0")
        except (ValueError, AttributeError):
            version = "1.0.0"
        error = {"cniVersion": version, "code": err.code, "msg": err.msg, "details": err.details}
        sys.stdout.write(json.dumps(error))
        return 1
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
