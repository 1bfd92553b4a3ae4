"""The node agent process: controller state in, kernel state out.

It loads (or adopts) the programs, then keeps the pinned maps equal to what the controller
says about this node's pods. It acts only once it holds the controller's state: an agent
that starts while the controller is away changes nothing, and capture goes on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Counter, Gauge
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshcore import adminserver
from meshcore.configclient import ConfigClient, NodeCredential
from meshcore.meshstate import Workload
from node_agent import nft, pods, podscan, reconcile, tc
from node_agent.cgroupwatch import CgroupWatch
from node_agent.cniserver import CniAdd, CniServer
from node_agent.maps import Maps
from node_agent.programs import CGROUP_PROGRAMS, KernelFeatureError, Programs, attached

log = structlog.get_logger("node_agent")

ENROLLED = Gauge("weft_agent_enrolled_pods", "Pods on this node captured by the mesh.")
PENDING = Gauge("weft_agent_pending_pods", "Enrolled pods whose namespace is not found yet.")
HELD = Gauge("weft_agent_held_pods", "Pods running here the controller has not told about yet.")
CNI_POD_TTL = 120.0  # a pod the CNI plugin told about whose sandbox never showed a process

RECONCILES = Counter("weft_agent_reconciles", "Map reconciliations that changed something.")

OUTBOUND_PORT = 15001
INBOUND_PLAINTEXT_PORT = 15006
STEER_MARK = 0x2000


@dataclass(frozen=True)
class AgentConfig:
    node: str
    node_ip: str
    controller: str
    credential: Path
    pin_dir: Path
    pods_cgroup: Path
    system_cgroup: Path
    gateway_ip: str = "169.254.1.1"
    admin_socket: Path | None = None  # the admin routes, for weftctl and the lab
    # host:port ("" is off), see meshcore.adminserver.parse_addr.
    admin_addr: str = "127.0.0.1:15024"  # /debug/status, with readiness and metrics
    metrics_addr: str = "0.0.0.0:15014"  # /metrics only (Istio's CNI agent's port)
    excluded_ports: frozenset[int] = field(default_factory=frozenset)
    underlay_device: str = "eth0"
    # Capture pods running here that the controller has not told about (ztunnel refuses
    # them) until it does: no pod of an enrolled namespace starts unprotected on Kubernetes.
    hold_unknown_pods: bool = False
    # "all-veths": every veth but the underlay (the lab); "from-netns": the node end of each
    # pod's veth, found from its netns (Kubernetes, any veth CNI). See node_agent/veths.py.
    pod_devices: str = "all-veths"
    watch_cgroups: bool = True  # inotify on the pods cgroup tree; off: the 1 s pass only
    cni_socket: Path | None = None  # where the weft-cni plugin waits for new pods (cniserver)


class NodeAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.programs = Programs(config.pin_dir, config.pods_cgroup, config.system_cgroup)
        self.maps: Maps | None = None
        self.cookies: dict[str, int] = {}
        self.names: dict[int, str] = {}  # cookie -> namespace/pod, for people
        self.client = ConfigClient(
            config.node,
            config.controller,
            NodeCredential.load(config.credential),
            on_change=lambda _applied: self._dirty.set(),
            component="agent",
        )
        self.ready = False
        self.tc_done: dict[str, str] = {}  # "device/direction" -> what was done
        self.dnat_steering: dict[str, Any] = {"table": nft.TABLE, "current": False}
        self.last_plan: dict[str, Any] = {}
        self._dirty = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self.found: dict[str, podscan.FoundPod] = {}  # pods running here, by uid
        self.held: dict[str, reconcile.DesiredPod] = {}
        self.host_cookie = pods.own_netns_cookie()
        self.watch = CgroupWatch(config.pods_cgroup, self._dirty.set)
        self.wanted: set[str] = set()  # uids the last pass meant to capture (enrolled or held)
        self.cni_pods: dict[str, tuple[float, podscan.FoundPod]] = {}  # told by the plugin
        self._reconciling = asyncio.Lock()
        self.cni = CniServer(config.cni_socket, self.on_cni_add) if config.cni_socket else None

    async def start(self) -> None:
        done = await asyncio.to_thread(self.programs.ensure_attached)
        self.maps = Maps(self.programs.maps())
        self.maps.write_config(
            self.config.gateway_ip,
            self.config.node_ip,
            OUTBOUND_PORT,
            INBOUND_PLAINTEXT_PORT,
            STEER_MARK,
        )
        log.info("agent.programs", node=self.config.node, programs=done)
        self.found = await asyncio.to_thread(
            podscan.scan, self.config.pods_cgroup, {}, self.host_cookie
        )
        await asyncio.to_thread(self._setup_inbound)
        try:
            if self.config.watch_cgroups:
                self.watch.start()
        except OSError as err:  # pods are still found, by the 1 s pass
            log.warning(
                "cgroupwatch.unavailable", root=str(self.config.pods_cgroup), error=str(err)
            )
        if self.cni is not None:
            await self.cni.start()
        await self._start_http()

    async def on_cni_add(self, request: CniAdd) -> str:
        """The weft-cni plugin's ADD: answer only once the new pod is in the capture maps
        when it should be (enrolled, or held while unknown); "" when done, else why not."""
        if not self.ready or self.maps is None:
            return "the node agent is not synced with the controller yet"
        try:
            pod = await asyncio.to_thread(
                podscan.read_netns, request.pod_uid, request.netns, self.host_cookie
            )
        except (OSError, NetlinkError) as err:
            return f"cannot read the pod's netns {request.netns}: {err}"
        if pod.host_network:
            return ""
        if not pod.ip and request.ips:
            pod = dataclasses.replace(pod, ip=request.ips[0])
        self.cni_pods[request.pod_uid] = (time.monotonic(), pod)
        async with self._reconciling:
            await self.reconcile()
        if request.pod_uid not in self.wanted:
            return ""  # known and not enrolled, or not held: nothing to wait for
        cookie = self.cookies.get(request.pod_uid)
        if cookie is None or cookie not in self.maps.read_enrolled():
            return f"{request.label} is not in the capture maps yet"
        return ""

    def _setup_inbound(self) -> None:
        """Steering route, and the inbound program on the underlay device (traffic from
        other nodes); pod devices are handled as they appear, in `attach_pod_devices`."""
        with IPRoute() as ipr:
            tc.ensure_steer_route(ipr, STEER_MARK)
            index = tc.device_index(ipr, self.config.underlay_device)
            if index is None:
                raise KernelFeatureError(
                    f"no device {self.config.underlay_device!r} on this node (--underlay-device)"
                )
            fd, name = self.programs.tc_program("weft_inbound")
            what = tc.ensure_filter(ipr, index, tc.INGRESS, fd, name)
            self.tc_done[f"{self.config.underlay_device}/ingress"] = what
        self.attach_pod_devices()
        self.steer_after_dnat()

    def steer_after_dnat(self) -> None:
        """The nftables table that steers Service connections DNATed to a pod enrolled
        here (node_agent/nft.py), for the addresses in the pinned enrolled_ips map."""
        assert self.maps is not None
        ips = self.maps.read_enrolled_ips()
        try:
            nft.apply(nft.render(ips, STEER_MARK, INBOUND_PLAINTEXT_PORT))
        except (nft.NftError, OSError) as err:  # retried on every reconcile, logged once
            if self.dnat_steering.get("error") != str(err):
                log.error("nft.apply_failed", node=self.config.node, error=str(err))
            self.dnat_steering = {"table": nft.TABLE, "current": False, "error": str(err)}
            return
        self.dnat_steering = {"table": nft.TABLE, "current": True, "enrolled_ips": len(ips)}

    def _pod_devices(self, ipr: IPRoute) -> list[tuple[str, int]]:
        if self.config.pod_devices == "from-netns":
            return sorted(
                {(p.device.name, p.device.index) for p in self.found.values() if p.device}
            )
        return tc.pod_devices(ipr, self.config.underlay_device)

    def attach_pod_devices(self) -> None:
        with IPRoute() as ipr:
            for device, index in self._pod_devices(ipr):
                for direction, parent, program in (
                    ("ingress", tc.INGRESS, "weft_inbound"),
                    ("egress", tc.EGRESS, "weft_guard"),
                ):
                    key = f"{device}/{direction}"
                    if key in self.tc_done:
                        continue
                    fd, name = self.programs.tc_program(program)
                    try:
                        self.tc_done[key] = tc.ensure_filter(ipr, index, parent, fd, name)
                    except NetlinkError as err:  # the pod (and its veth) just went away
                        log.warning("tc.attach_failed", device=device, error=str(err))
                        continue
                    log.info(
                        "tc.attached", device=device, direction=direction, action=self.tc_done[key]
                    )
            present = {d for d, _ in self._pod_devices(ipr)}
            for key in list(self.tc_done):
                device = key.split("/", 1)[0]
                if device != self.config.underlay_device and device not in present:
                    del self.tc_done[key]

    async def run(self) -> None:
        follower = asyncio.create_task(self.client.run())
        try:
            await self.client.synced.wait()
            log.info("agent.synced", node=self.config.node, version=self.client.version)
            while True:
                async with self._reconciling:
                    await self.reconcile()
                self.ready = True
                # A periodic pass also picks up pods whose processes just started.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), timeout=1.0)
                self._dirty.clear()
        finally:
            follower.cancel()
            await self.client.close()

    async def reconcile(self) -> None:
        assert self.maps is not None
        scanned = await asyncio.to_thread(
            podscan.scan, self.config.pods_cgroup, self.found, self.host_cookie
        )
        now = time.monotonic()
        for uid, (at, _pod) in list(self.cni_pods.items()):
            if uid in scanned or now - at > CNI_POD_TTL:
                del self.cni_pods[uid]
        # Pods the CNI plugin told about count as found until their cgroup shows a process.
        self.found = {**{uid: pod for uid, (_at, pod) in self.cni_pods.items()}, **scanned}
        await asyncio.to_thread(self.attach_pod_devices)
        desired = reconcile.desired_pods(self.client.state, self.config.node)
        # A hostNetwork pod shares the node's netns: enrolling it would capture the node.
        host = {uid for uid, p in self.found.items() if p.host_network}
        desired = {uid: p for uid, p in desired.items() if uid not in host}
        if self.config.hold_unknown_pods:
            known = {v.uid for v in self.client.state.values() if isinstance(v, Workload)}
            self.held = podscan.unknown_pods(self.found, known)
            desired = {**self.held, **desired}
            HELD.set(len(self.held))
        self.wanted = set(desired)
        for uid in list(self.cookies):
            if uid not in desired:
                self.names.pop(self.cookies.pop(uid), None)
        for uid, pod in desired.items():
            found = self.found.get(uid)
            if (
                uid in self.cookies
                and found is not None
                and not found.host_network
                and found.netns_cookie != self.cookies[uid]
            ):
                # Read again and the netns changed: the first read caught the pod's first
                # process before it entered the pod's netns (the lab's container start joins
                # the cgroup first; inotify makes that window visible). Follow the pod, or it
                # would stay uncaptured with a stranger's netns enrolled in its place.
                log.warning(
                    "pod.netns_changed",
                    pod=pod.label,
                    was=self.cookies[uid],
                    now=found.netns_cookie,
                )
                self.names.pop(self.cookies.pop(uid), None)
            if uid not in self.cookies:
                found = self.found.get(uid)
                cookie = found.netns_cookie if found is not None else None
                if cookie is None:
                    cookie = await asyncio.to_thread(
                        pods.netns_cookie, self.config.pods_cgroup, uid
                    )
                if cookie == self.host_cookie:  # hostNetwork: capturing it would take the node's
                    continue
                if cookie is not None:
                    self.cookies[uid] = cookie
            if uid in self.cookies:  # a held pod keeps its cookie and gets its name
                self.names[self.cookies[uid]] = pod.label
        plan = reconcile.plan(
            desired,
            self.cookies,
            self.maps.read_enrolled(),
            self.maps.read_enrolled_ips(),
            self.maps.read_excluded(),
            self.config.excluded_ports,
        )
        PENDING.set(len(plan.pending))
        if plan.empty:
            if not self.dnat_steering["current"]:
                await asyncio.to_thread(self.steer_after_dnat)
            return
        self.maps.apply(plan)
        if plan.ips_put or plan.ips_delete or not self.dnat_steering["current"]:
            await asyncio.to_thread(self.steer_after_dnat)
        RECONCILES.inc()
        ENROLLED.set(len(self.maps.read_enrolled()))
        for cookie in plan.enroll:
            log.info(
                "pod.enrolled",
                node=self.config.node,
                pod=self.names.get(cookie, "?"),
                netns_cookie=cookie,
            )
        for cookie in plan.unenroll:
            log.info("pod.unenrolled", node=self.config.node, netns_cookie=cookie)
        self.last_plan = {
            "at": time.time(),
            "enrolled": len(plan.enroll),
            "unenrolled": len(plan.unenroll),
            "pending": [p.label for p in plan.pending],
        }

    # --- admin, readiness, metrics ---------------------------------------------------------

    async def _start_http(self) -> None:
        """Admin (pod status, maps, programs) on the unix socket and localhost only: pods
        reach their node's addresses, and must not read the mesh's state there."""
        c = self.config
        metrics = web.get("/metrics", adminserver.metrics)
        admin = (web.get("/debug/status", self._status), web.get("/ready", self._ready), metrics)
        self._runners += await adminserver.serve(
            [
                adminserver.Listener("admin", admin, c.admin_addr, c.admin_socket),
                adminserver.Listener("metrics", (metrics,), c.metrics_addr),
            ]
        )

    async def stop(self) -> None:
        self.watch.close()
        if self.cni is not None:
            await self.cni.stop()
        for runner in self._runners:
            await runner.cleanup()

    async def _ready(self, _request: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not synced with the controller yet\n")

    def status(self) -> dict[str, Any]:
        assert self.maps is not None
        by_ip = {}
        for uid, cookie in self.cookies.items():
            by_ip[cookie] = uid
        enrolled = [
            {
                "pod": self.names.get(cookie, "(unknown pod)"),
                "netns_cookie": cookie,
                "ip": entry.ip,
                "flags": entry.flags,
            }
            for cookie, entry in sorted(self.maps.read_enrolled().items())
        ]
        pod_by_ip = {e["ip"]: e["pod"] for e in enrolled}
        programs = []
        for spec in CGROUP_PROGRAMS:
            cgroup = self.programs.cgroups[spec.target]
            ids = [p["id"] for p in attached(cgroup) if spec.is_this(p)]
            programs.append(
                {
                    "program": spec.function,
                    "hook": spec.attach_type,
                    "cgroup": str(cgroup),
                    "attached_ids": ids,
                }
            )
        excluded = [
            {
                "pod": "(all pods)" if cookie == 0 else self.names.get(cookie, str(cookie)),
                "port": port,
            }
            for cookie, port in sorted(self.maps.read_excluded())
        ]
        connections = [
            {
                "client": f"{ip}:{port}",
                "pod": pod_by_ip.get(ip, "?"),
                "original_destination": f"{oip}:{oport}",
            }
            for ip, port, oip, oport in sorted(self.maps.read_peers())
        ]
        return {
            "node": self.config.node,
            "ready": self.ready,
            "controller": {
                "target": self.config.controller,
                "connected": self.client.connected,
                "version": self.client.version,
            },
            "config": self.maps.read_config(),
            "programs": programs,
            "enrolled": enrolled,
            "enrolled_ips": sorted(self.maps.read_enrolled_ips()),
            "excluded_ports": excluded,
            "captured_connections": connections,
            "pending": self.last_plan.get("pending", []),
            "held": sorted(self.held),
            "pods_found": [
                {
                    "uid": p.uid,
                    "cgroup": str(p.cgroup),
                    "netns_cookie": p.netns_cookie,
                    "host_network": p.host_network,
                    "ip": p.ip,
                    "device": p.device.name if p.device else "",
                }
                for p in sorted(self.found.values(), key=lambda p: p.uid)
            ],
            "pin_dir": str(self.config.pin_dir),
            "tc": [
                {"device": k.split("/")[0], "direction": k.split("/")[1], "action": v}
                for k, v in sorted(self.tc_done.items())
            ],
            "dnat_steering": self.dnat_steering,
        }

    async def _status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status())
