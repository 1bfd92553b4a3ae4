"""Attach the inbound tc programs to the node's devices, and route steered packets locally.

Wired with pyroute2 in the agent's own (the node's) network namespace. A filter carries the
program's version in its name, so a restarted agent keeps filters of its own version and
replaces others in place (same handle and priority: no gap).
"""

from __future__ import annotations

import errno
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = structlog.get_logger("node_agent.tc")

INGRESS = "ffff:fff2"
EGRESS = "ffff:fff3"
STEER_TABLE = 15006
FILTER_PRIO = 1


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if hasattr(msg, "get_attr") else None


def _filters(ipr: IPRoute, index: int, parent: str) -> list[Any]:
    try:
        return list(ipr.get_filters(index=index, parent=parent))
    except NetlinkError:
        return []


def filter_names(ipr: IPRoute, index: int, parent: str) -> list[str]:
    names = []
    for f in _filters(ipr, index, parent):
        options = _attr(f, "TCA_OPTIONS")
        name = options.get_attr("TCA_BPF_NAME") if options is not None else None
        if name:
            names.append(name)
    return names


def ensure_clsact(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise


def ensure_filter(ipr: IPRoute, index: int, parent: str, fd: int, name: str) -> str:
    """Attach program `fd` named `name` unless a filter of that very name is there."""
    existing = filter_names(ipr, index, parent)
    if name in existing:
        return "adopted"
    ensure_clsact(ipr, index)
    action = "replace-filter" if existing else "add-filter"
    ipr.tc(
        action,
        "bpf",
        index,
        ":1",
        fd=fd,
        name=name,
        parent=parent,
        classid=1,
        direct_action=True,
        prio=FILTER_PRIO,
    )
    return "replaced" if existing else "attached"


def pod_devices(ipr: IPRoute, underlay: str) -> list[tuple[str, int]]:
    """The node's pod-facing devices: every veth but the underlay one."""
    out = []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind == "veth" and name != underlay:
            out.append((name, int(link["index"])))
    return out


def device_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def ensure_steer_route(ipr: IPRoute, mark: int) -> None:
    """Packets marked by weft_inbound go to the node's own stack (where their socket is):
    `ip rule fwmark MARK/MARK lookup 15006` + `ip route local 0.0.0.0/0 dev lo table 15006`."""
    lo = device_index(ipr, "lo")
    try:
        ipr.route("add", dst="0.0.0.0/0", type="local", oif=lo, table=STEER_TABLE, scope=254)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise
    for rule in ipr.get_rules(family=2):
        if rule.get_attr("FRA_FWMARK") == mark and rule.get_attr("FRA_TABLE") == STEER_TABLE:
            return
    ipr.rule("add", fwmark=mark, fwmask=mark, table=STEER_TABLE, priority=100)
