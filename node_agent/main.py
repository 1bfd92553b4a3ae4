"""`python -m node_agent run ...`: the node agent process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import structlog
import uvloop

from meshcore import nodeoptions
from meshcore.identity.spiffe import node_id
from meshcore.logs import configure_logging
from meshcore.nodebootstrap import ensure_credential
from meshcore.signals import run_until_stopped, stop_requested
from node_agent import pods
from node_agent.agent import AgentConfig, NodeAgent
from node_agent.kubelet import KubeletLayoutError, is_kubelet_root
from node_agent.programs import KernelFeatureError, MapLayoutError, check_kernel

log = structlog.get_logger("node_agent")


@click.group()
def cli() -> None:
    """weft node agent."""


@cli.command()
@click.option("--node", required=True, help="This node's name (spec.nodeName of its pods).")
@click.option("--node-ip", required=True, help="This node's own address.")
@nodeoptions.CONTROLLER
@nodeoptions.CREDENTIAL
@nodeoptions.bootstrap
@click.option(
    "--trust-domain",
    default="cluster.local",
    show_default=True,
    help="The mesh's trust domain (names the node identity a bootstrapped credential is for).",
)
@click.option(
    "--pin-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Where this node's maps and programs are pinned (under /sys/fs/bpf).",
)
@click.option(
    "--pods-cgroup",
    required=True,
    type=click.Path(path_type=Path),
    help="The cgroup v2 subtree of this node's pods; `auto`: the kubelet's (kubepods.slice "
    "or kubepods under a cgroup v2 mount, see node_agent/kubelet.py).",
)
@click.option(
    "--pod-devices",
    type=click.Choice(["auto", "all-veths", "from-netns"]),
    default="auto",
    show_default=True,
    help="Which node devices get the inbound tc programs: every veth but the underlay "
    "(the lab), or each pod's veth peer found from its netns (any veth CNI). auto: "
    "from-netns under a kubelet's pods cgroup, else all-veths.",
)
@click.option(
    "--watch-cgroups/--no-watch-cgroups",
    default=True,
    show_default=True,
    help="Reconcile as soon as a pod or container cgroup appears (inotify), not only every 1 s.",
)
@click.option(
    "--cni-socket",
    type=click.Path(path_type=Path),
    default=None,
    help="Serve the weft-cni plugin here (e.g. /var/run/weft/cni.sock): a new pod's sandbox "
    "is handed back to the runtime only once the pod is in the capture maps.",
)
@click.option(
    "--hold-unknown-pods/--no-hold-unknown-pods",
    default=False,
    show_default=True,
    help="Capture pods running here that the controller has not told about yet, so that "
    "ztunnel refuses their connections until it does (Kubernetes: no pod starts unprotected).",
)
@click.option(
    "--system-cgroup",
    required=True,
    type=click.Path(path_type=Path),
    help="The cgroup v2 subtree where ztunnel runs; `auto`: the pod cgroup the agent runs in "
    "(the node DaemonSet's pod, shared with ztunnel).",
)
@click.option(
    "--underlay-device",
    default=AgentConfig.underlay_device,
    show_default=True,
    help="The node's own network device, where traffic from other nodes comes in.",
)
@nodeoptions.ADMIN_SOCKET
@nodeoptions.admin_addr(AgentConfig.admin_addr)
@nodeoptions.metrics_addr(AgentConfig.metrics_addr)
@click.option(
    "--exclude-port",
    "excluded",
    multiple=True,
    type=click.IntRange(1, 65535),
    help="A destination port no pod's traffic is captured for. Repeatable.",
)
def run(
    node: str,
    node_ip: str,
    controller: str,
    credential: Path,
    bootstrap_token: Path | None,
    bootstrap_controller: str,
    controller_roots: Path | None,
    trust_domain: str,
    pin_dir: Path,
    pods_cgroup: Path,
    pod_devices: str,
    watch_cgroups: bool,
    cni_socket: Path | None,
    hold_unknown_pods: bool,
    system_cgroup: Path,
    underlay_device: str,
    admin_socket: Path | None,
    admin_addr: str,
    metrics_addr: str,
    excluded: tuple[int, ...],
) -> None:
    """Load (or adopt) the eBPF programs and keep this node's pods enrolled."""
    configure_logging()
    try:
        check_kernel()
    except KernelFeatureError as err:
        raise click.ClickException(str(err)) from None
    if str(pods_cgroup) == "auto":
        try:
            pods_cgroup = pods.auto_root()
        except (KubeletLayoutError, OSError) as err:
            raise click.ClickException(str(err)) from None
        log.info("agent.pods_cgroup", path=str(pods_cgroup))
    if str(system_cgroup) == "auto":
        try:
            system_cgroup = pods.own_pod_cgroup(pods_cgroup)
        except KubeletLayoutError as err:
            raise click.ClickException(str(err)) from None
        log.info("agent.system_cgroup", path=str(system_cgroup))
    if pod_devices == "auto":
        pod_devices = "from-netns" if is_kubelet_root(pods_cgroup) else "all-veths"
    config = AgentConfig(
        node=node,
        node_ip=node_ip,
        controller=controller,
        credential=credential,
        pin_dir=pin_dir,
        pods_cgroup=pods_cgroup,
        system_cgroup=system_cgroup,
        admin_socket=admin_socket,
        admin_addr=admin_addr,
        metrics_addr=metrics_addr,
        excluded_ports=frozenset(excluded),
        hold_unknown_pods=hold_unknown_pods,
        watch_cgroups=watch_cgroups,
        cni_socket=cni_socket,
        underlay_device=underlay_device,
        pod_devices=pod_devices,
    )

    how = nodeoptions.bootstrap_from(bootstrap_token, bootstrap_controller, controller_roots)

    async def main() -> int:
        await ensure_credential(credential, node_id(trust_domain, node), how)
        agent = NodeAgent(config)
        try:
            await agent.start()
        except KernelFeatureError as err:
            log.error("agent.kernel_feature_missing", error=str(err))
            return 2
        except MapLayoutError as err:
            log.error("agent.map_layout_mismatch", error=str(err))
            return 2
        await run_until_stopped(asyncio.create_task(agent.run()), stop_requested())
        await agent.stop()
        # Programs and pinned maps stay: capture goes on until the lab or node is torn down.
        log.info("agent.stopped", node=node)
        return 0

    raise SystemExit(uvloop.run(main()))


@cli.command("install-cni")
@click.option(
    "--cni-conf-dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The node's CNI conf folder as mounted here (host /etc/cni/net.d).",
)
@click.option(
    "--cni-bin-dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="The node's CNI bin folder as mounted here (host /opt/cni/bin).",
)
@click.option(
    "--agent-socket",
    default="/var/run/weft/cni.sock",
    show_default=True,
    help="The agent's --cni-socket as a path on the node (the plugin runs on the host).",
)
@click.option(
    "--exclude-namespace",
    "exclude_namespaces",
    multiple=True,
    default=("weft-system", "kube-system"),
    show_default=True,
    help="A namespace whose pods the plugin passes without asking the agent. Repeatable.",
)
@click.option(
    "--timeout-seconds",
    type=click.FloatRange(0.1, 120),
    default=10.0,
    show_default=True,
    help="How long the plugin waits for the agent before failing the pod's sandbox.",
)
@click.option(
    "--host-bin-dir",
    "host_bin_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="A host bin folder as mounted here, looked in for python3 (the plugin's interpreter). "
    "Repeatable; none: not checked.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.05, 60),
    default=2.0,
    show_default=True,
    help="Seconds between checks that the conflist still carries weft-cni.",
)
@click.option(
    "--remove-binary-on-stop/--keep-binary-on-stop",
    default=False,
    show_default=True,
    help="On SIGTERM, also delete the weft-cni binary (the chain entry is always removed). "
    "Kept by default: pods added through it still need it for their DEL.",
)
def install_cni(
    cni_conf_dir: Path,
    cni_bin_dir: Path,
    agent_socket: str,
    exclude_namespaces: tuple[str, ...],
    timeout_seconds: float,
    host_bin_dirs: tuple[Path, ...],
    poll_interval: float,
    remove_binary_on_stop: bool,
) -> None:
    """Install weft-cni on this node, keep it chained, and unchain it on SIGTERM."""
    import signal
    import threading

    from node_agent import cniinstall

    configure_logging()
    if host_bin_dirs:
        found = cniinstall.host_python(host_bin_dirs)
        if found is None:
            # The plugin is a Python file: without python3 on the host every ADD would fail.
            log.error(
                "cni.host_python_missing",
                looked_in=[str(d) for d in host_bin_dirs],
                hint="this node's OS has no python3; weft-cni is not installed here",
            )
            raise SystemExit(3)
        log.info("cni.host_python", path=str(found))
    else:
        log.warning("cni.host_python_unchecked")
    try:
        entry = cniinstall.WeftEntry(agent_socket, exclude_namespaces, timeout_seconds)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    for folder in (cni_conf_dir, cni_bin_dir):
        if not folder.is_dir():
            raise click.ClickException(f"{folder}: no such folder (is the host path mounted?)")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    installer = cniinstall.Installer(cni_conf_dir, cni_bin_dir, entry)
    cniinstall.watch(installer, stop, poll_interval, remove_binary_on_stop)


if __name__ == "__main__":
    cli()
