"""The pinned maps as Python dictionaries of plain values (I/O over bcc tables)."""

from __future__ import annotations

import ctypes
from typing import Any

from node_agent import bpfmaps as m
from node_agent.reconcile import MapEntry, Plan


class Maps:
    def __init__(self, module: Any) -> None:
        self.enrolled = module["weft_enrolled"]
        self.enrolled_ips = module["weft_enrolled_ips"]
        self.excluded_ports = module["weft_excluded_ports"]
        self.dst_by_peer = module["weft_dst_by_peer"]
        self.dst_by_cookie = module["weft_dst_by_cookie"]
        self.config = module["weft_config"]

    def write_config(
        self, gateway_ip: str, node_ip: str, outbound_port: int, inbound_port: int, mark: int
    ) -> None:
        self.config[ctypes.c_uint32(0)] = m.Config(
            m.ip_to_be32(gateway_ip), m.ip_to_be32(node_ip), outbound_port, inbound_port, mark
        )

    def read_config(self) -> dict[str, Any]:
        c = self.config[ctypes.c_uint32(0)]
        return {
            "gateway_ip": m.be32_to_ip(c.gateway_ip),
            "node_ip": m.be32_to_ip(c.node_ip),
            "outbound_port": c.outbound_port,
            "inbound_port": c.inbound_port,
            "mark": c.mark,
        }

    def read_enrolled(self) -> dict[int, MapEntry]:
        return {
            int(k.value): MapEntry(m.be32_to_ip(v.ip), int(v.flags))
            for k, v in self.enrolled.items()
        }

    def read_enrolled_ips(self) -> dict[str, int]:
        return {m.be32_to_ip(k.value): int(v.flags) for k, v in self.enrolled_ips.items()}

    def read_excluded(self) -> set[tuple[int, int]]:
        return {(int(k.netns), int(k.port)) for k in self.excluded_ports}

    def read_peers(self) -> list[tuple[str, int, str, int]]:
        """(client ip, client port, original ip, original port) of captured connections."""
        return [
            (m.be32_to_ip(k.ip), m.be16_to_port(k.port), m.be32_to_ip(v.ip), m.be16_to_port(v.port))
            for k, v in self.dst_by_peer.items()
        ]

    def apply(self, plan: Plan) -> None:
        # Order matters for a pod moving between states: add before removing.
        for cookie, entry in plan.enroll.items():
            self.enrolled[ctypes.c_uint64(cookie)] = m.Pod(m.ip_to_be32(entry.ip), entry.flags)
        for ip, flags in plan.ips_put.items():
            self.enrolled_ips[ctypes.c_uint32(m.ip_to_be32(ip))] = m.PodIp(flags)
        for cookie, port in plan.ports_put:
            self.excluded_ports[m.PortKey(cookie, port)] = ctypes.c_uint8(1)
        for cookie, port in plan.ports_delete:
            self.excluded_ports.pop(m.PortKey(cookie, port), None)
        for ip in plan.ips_delete:
            self.enrolled_ips.pop(ctypes.c_uint32(m.ip_to_be32(ip)), None)
        for cookie in plan.unenroll:
            self.enrolled.pop(ctypes.c_uint64(cookie), None)
