"""The Python mirror of bpf/weft_maps.h: same struct layouts, and values in the kernel's byte order."""

from __future__ import annotations

import ctypes
import re
import struct
import sys
from pathlib import Path

import pytest

from node_agent import bpfmaps as m

HEADER = Path(__file__).resolve().parents[3] / "bpf" / "weft_maps.h"
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "weft_pod": m.Pod,
    "weft_dst": m.Dst,
    "weft_peer": m.Peer,
    "weft_port_key": m.PortKey,
    "weft_config": m.Config,
    "weft_pod_ip": m.PodIp,
}
C_TYPES: dict[str, type[ctypes._SimpleCData[int]]] = {
    "__u8": ctypes.c_uint8,
    "__u16": ctypes.c_uint16,
    "__u32": ctypes.c_uint32,
    "__u64": ctypes.c_uint64,
}
little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="expected values are the little-endian reading"
)


def c_structs() -> dict[str, list[tuple[str, str, int]]]:
    """struct name -> [(field, C type, array length or 0)] as declared in the header."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    out = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, flags=re.S):
        fields = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            found = re.fullmatch(r"(\w+)\s+(\w+)(?:\[(\d+)\])?", decl)
            assert found, f"struct {name}: cannot read field declaration {decl!r}"
            ctype, field, length = found.groups()
            fields.append((field, ctype, int(length or 0)))
        out[name] = fields
    return out


def c_layout(fields: list[tuple[str, str, int]]) -> type[ctypes.Structure]:
    """The header's struct laid out by the C rules (ctypes follows the platform ABI)."""
    members = []
    for field, ctype, length in fields:
        base = C_TYPES[ctype]
        members.append((field, base * length if length else base))
    return type("CStruct", (ctypes.Structure,), {"_fields_": members})


def layout(struct_type: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    return [
        (name, getattr(struct_type, name).offset, getattr(struct_type, name).size)
        for name, *_ in struct_type._fields_
    ]


# --- layouts ------------------------------------------------------------------------------


def test_every_struct_in_the_header_has_a_python_mirror() -> None:
    assert set(c_structs()) == set(MIRRORS)


@pytest.mark.parametrize("c_name", sorted(MIRRORS))
def test_mirror_has_the_headers_fields_offsets_and_size(c_name: str) -> None:
    declared = c_layout(c_structs()[c_name])
    mirror = MIRRORS[c_name]
    assert layout(mirror) == layout(declared)
    assert ctypes.sizeof(mirror) == ctypes.sizeof(declared)
    assert ctypes.alignment(mirror) == ctypes.alignment(declared)


@pytest.mark.parametrize(
    ("mirror", "size"),
    [
        (m.Pod, 8),
        (m.Dst, 8),
        (m.Peer, 8),
        (m.PortKey, 16),
        (m.Config, 16),
        (m.PodIp, 4),
    ],
)
def test_struct_sizes_match_the_kernels(mirror: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(mirror) == size


def test_pod_is_ip_then_flags() -> None:
    assert (m.Pod.ip.offset, m.Pod.flags.offset) == (0, 4)


@pytest.mark.parametrize("mirror", [m.Dst, m.Peer])
def test_address_structs_are_ip_port_pad(mirror: type[ctypes.Structure]) -> None:
    assert layout(mirror) == [("ip", 0, 4), ("port", 4, 2), ("pad", 6, 2)]


def test_port_key_has_the_port_after_the_64_bit_cookie_and_tail_padding() -> None:
    assert layout(m.PortKey) == [("netns", 0, 8), ("port", 8, 2), ("pad", 10, 6)]


def test_config_has_ports_at_8_and_10_and_mark_at_12() -> None:
    assert layout(m.Config) == [
        ("gateway_ip", 0, 4),
        ("node_ip", 4, 4),
        ("outbound_port", 8, 2),
        ("inbound_port", 10, 2),
        ("mark", 12, 4),
    ]


def test_port_key_bytes_are_what_the_kernel_hashes() -> None:
    # A hash map compares whole keys, padding included: it must come out zeroed.
    key = m.PortKey(0x0102030405060708, 5432)
    assert bytes(key) == struct.pack("=QH6x", 0x0102030405060708, 5432)


def test_config_bytes_match_the_c_layout() -> None:
    c = m.Config(m.ip_to_be32("169.254.1.1"), m.ip_to_be32("192.168.50.11"), 15001, 15006, 0x2000)
    assert bytes(c) == (
        bytes([169, 254, 1, 1, 192, 168, 50, 11]) + struct.pack("=HHI", 15001, 15006, 0x2000)
    )


def test_pod_ip_bytes_are_in_network_order_inside_the_struct() -> None:
    assert bytes(m.Pod(m.ip_to_be32("10.244.1.10"), 1)) == bytes([10, 244, 1, 10]) + struct.pack(
        "=I", 1
    )


# --- other header constants ---------------------------------------------------------------


def test_map_names_are_the_pinned_names_in_the_header() -> None:
    pinned = re.findall(r'PINNED\("(\w+)"\)', HEADER.read_text())
    assert sorted(m.MAP_NAMES) == sorted(pinned)


# --- byte order ---------------------------------------------------------------------------


@little_endian_only
def test_ip_to_be32_is_the_native_reading_of_network_order_bytes() -> None:
    assert m.ip_to_be32("1.2.3.4") == 0x04030201


@little_endian_only
def test_port_to_be16_is_the_native_reading_of_network_order_bytes() -> None:
    assert bytes.fromhex("3a99") == struct.pack("!H", 15001)
    assert m.port_to_be16(15001) == struct.unpack("<H", bytes.fromhex("3a99"))[0] == 0x993A


@pytest.mark.parametrize("ip", ["1.2.3.4", "10.244.1.10", "169.254.1.1", "0.0.0.0"])
def test_ip_is_stored_as_its_network_bytes(ip: str) -> None:
    stored = struct.pack("=I", m.ip_to_be32(ip))
    assert stored == bytes(int(octet) for octet in ip.split("."))


@pytest.mark.parametrize("port", [1, 80, 15001, 15006, 65535])
def test_port_is_stored_as_its_network_bytes(port: int) -> None:
    assert struct.pack("=H", m.port_to_be16(port)) == struct.pack("!H", port)


@pytest.mark.parametrize(
    "ip", ["0.0.0.0", "1.2.3.4", "10.244.1.10", "127.0.0.1", "192.168.50.11", "255.255.255.255"]
)
def test_ip_round_trips(ip: str) -> None:
    assert m.be32_to_ip(m.ip_to_be32(ip)) == ip


@pytest.mark.parametrize("value", [0, 1, 0x04030201, 0x0AF4010A, 0xFFFFFFFF])
def test_be32_round_trips(value: int) -> None:
    assert m.ip_to_be32(m.be32_to_ip(value)) == value


@pytest.mark.parametrize("port", [0, 1, 80, 255, 256, 15001, 15006, 65535])
def test_port_round_trips(port: int) -> None:
    assert m.be16_to_port(m.port_to_be16(port)) == port


@pytest.mark.parametrize("value", [0, 1, 0x993A, 0xFF00, 0xFFFF])
def test_be16_round_trips(value: int) -> None:
    assert m.port_to_be16(m.be16_to_port(value)) == value


def test_be32_to_ip_reads_a_kernel_value() -> None:
    assert m.be32_to_ip(struct.unpack("=I", bytes([10, 244, 1, 10]))[0]) == "10.244.1.10"


def test_be16_to_port_reads_a_kernel_value() -> None:
    assert m.be16_to_port(struct.unpack("=H", bytes([0x3A, 0x99]))[0]) == 15001
