"""Python mirror of bpf/weft_maps.h: the key/value layouts of the pinned maps.

A layout change is made here and in the header, nowhere else.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

MAP_NAMES = ("enrolled", "enrolled_ips", "excluded_ports", "dst_by_cookie", "dst_by_peer", "config")


class Pod(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class Dst(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class Peer(ctypes.Structure):
    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class PortKey(ctypes.Structure):
    _fields_ = [("netns", ctypes.c_uint64), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16 * 3)]


class Config(ctypes.Structure):
    _fields_ = [
        ("gateway_ip", ctypes.c_uint32),
        ("node_ip", ctypes.c_uint32),
        ("outbound_port", ctypes.c_uint16),
        ("inbound_port", ctypes.c_uint16),
        ("mark", ctypes.c_uint32),
    ]


class PodIp(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint32)]


def ip_to_be32(ip: str) -> int:
    """An IPv4 address as the u32 the kernel stores (network order, read natively)."""
    return int(struct.unpack("=I", socket.inet_aton(ip))[0])


def be32_to_ip(value: int) -> str:
    return str(ipaddress.IPv4Address(socket.inet_ntoa(struct.pack("=I", value))))


def port_to_be16(port: int) -> int:
    return int(struct.unpack("=H", struct.pack("!H", port))[0])


def be16_to_port(value: int) -> int:
    return int(struct.unpack("!H", struct.pack("=H", value))[0])
