"""The tc programs' verdicts on crafted packets (BPF_PROG_TEST_RUN: no devices, no traffic).

Runs the real weft_inbound, loaded by the agent's own loader against a scratch pin folder,
on Ethernet frames built here byte by byte, in a scratch network namespace with nothing
listening: a SYN to an enrolled pod that is steered finds no listener and is dropped (fail
closed), which tells "steered or refused" (SHOT) from "let through unexamined" (OK).

weft_guard lets through whatever a socket of the node sent, and a test run's packet always
carries a (dummy) socket; so its verdict on packets (`guard_packet`) is run through an
entry point added to the same source text here.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshcore.nsenter import run_in_netns
from node_agent.maps import Maps
from node_agent.programs import BPF_DIR, Programs
from node_agent.reconcile import Plan
from tests.conftest import RUN_ID

pytestmark = pytest.mark.integration

TC_ACT_OK, TC_ACT_SHOT = 0, 2
ENROLLED, OTHER, CLIENT = "198.18.128.10", "198.18.129.20", "198.18.128.30"
SYN, ACK = 0x02, 0x10

_SYS_BPF = 321  # x86_64
_BPF_PROG_TEST_RUN = 10
_libc = ctypes.CDLL(None, use_errno=True)


class _TestRunAttr(ctypes.Structure):
    """The `test` member of union bpf_attr (uapi/linux/bpf.h)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def run_program(fd: int, frame: bytes) -> int:
    """The program's return code for one frame (BPF_PROG_TEST_RUN)."""
    buf = ctypes.create_string_buffer(frame, len(frame))
    attr = _TestRunAttr(prog_fd=fd, data_size_in=len(frame), data_in=ctypes.addressof(buf))
    attr.repeat = 1
    if _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return int(attr.retval)


# --- frames ------------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(
    dst: str = ENROLLED,
    src: str = CLIENT,
    flags: int = SYN,
    options: bytes = b"",
    ihl: int | None = None,
    proto: int = 6,
    frag_off: int = 0x4000,  # DF
    tot_len: int | None = None,
    tcp_bytes: int = 20,
    ethertype: int = 0x0800,
) -> bytes:
    """Ethernet + IPv4 (with `options`, padded to 32 bits) + the first `tcp_bytes` of a TCP
    header from port 40000 to 8080. `ihl`/`tot_len` override the computed ones (lies)."""
    options += b"\0" * (-len(options) % 4)
    tcp = struct.pack("!HHIIBBHHH", 40000, 8080, 1, 0, 5 << 4, flags, 65535, 0, 0)[:tcp_bytes]
    header_len = 20 + len(options)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        (4 << 4) | (header_len // 4 if ihl is None else ihl),
        0,
        header_len + len(tcp) if tot_len is None else tot_len,
        1,
        frag_off,
        64,
        proto,
        0,
        bytes(int(o) for o in src.split(".")),
        bytes(int(o) for o in dst.split(".")),
    )
    ip += options
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + struct.pack("!H", ethertype)
    return eth + ip + tcp


NOP = b"\x01"
RECORD_ROUTE = bytes([7, 11, 4]) + b"\0" * 8  # room for two addresses
TIMESTAMP = bytes([68, 12, 5, 0]) + b"\0" * 8


def nops(n: int) -> bytes:
    return NOP * n


# --- fixture -----------------------------------------------------------------------------


@dataclass
class Loaded:
    netns: str
    inbound: int
    guard: int

    def verdict(self, program: str, data: bytes) -> int:
        fd = self.inbound if program == "inbound" else self.guard
        return run_in_netns(f"/run/netns/{self.netns}", lambda: run_program(fd, data))


@pytest.fixture(scope="module")
def programs() -> Iterator[Loaded]:
    pin_dir = Path(f"/sys/fs/bpf/weft-{RUN_ID}-tcpackets")
    netns = f"weft-{RUN_ID}-tcpackets"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        progs = Programs(pin_dir, Path("/nonexistent"), Path("/nonexistent"))
        maps = Maps(progs.maps())
        maps.write_config("169.254.1.1", "198.18.0.1", 15001, 15006, 0x2000)
        maps.apply(Plan(ips_put={ENROLLED: 0}))
        inbound, _ = progs.tc_program("weft_inbound")
        yield Loaded(netns, inbound, guard_packet_fd(pin_dir))
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)
        shutil.rmtree(pin_dir, ignore_errors=True)  # unlinking pins is how bpffs removes them


def guard_packet_fd(pin_dir: Path) -> int:
    from bcc import BPF

    text = (BPF_DIR / "tc_inbound.c").read_text() + (
        "\nint weft_guard_packet(struct __sk_buff *skb) { return guard_packet(skb); }\n"
    )
    module = BPF(text=text, cflags=[f'-DWEFT_PIN_DIR="{pin_dir}"', f"-I{BPF_DIR}"])
    _modules.append(module)  # its programs live as long as the module
    return int(module.load_func("weft_guard_packet", BPF.SCHED_CLS).fd)


_modules: list[object] = []
BOTH = ("inbound", "guard")

# (what, frame, verdict of both programs)
CASES = [
    ("a SYN to an enrolled pod", frame(), TC_ACT_SHOT),
    *(
        (
            f"a SYN to an enrolled pod with {4 * n} bytes of IP options",
            frame(options=nops(4 * n)),
            TC_ACT_SHOT,
        )
        for n in range(1, 11)
    ),
    ("a SYN with record-route", frame(options=RECORD_ROUTE), TC_ACT_SHOT),
    ("a SYN with a timestamp option", frame(options=TIMESTAMP), TC_ACT_SHOT),
    ("ihl below 5", frame(ihl=4), TC_ACT_SHOT),
    ("ihl 0", frame(ihl=0), TC_ACT_SHOT),
    ("ihl 15 past the end of the packet", frame(ihl=15), TC_ACT_SHOT),
    ("a TCP header cut short", frame(tcp_bytes=12), TC_ACT_SHOT),
    ("a TCP header cut short after options", frame(options=nops(8), tcp_bytes=16), TC_ACT_SHOT),
    ("no TCP header at all", frame(tcp_bytes=0), TC_ACT_SHOT),
    ("tot_len shorter than the headers", frame(tot_len=30), TC_ACT_SHOT),
    ("a first fragment", frame(frag_off=0x2000), TC_ACT_SHOT),
    ("a later fragment", frame(frag_off=0x0010), TC_ACT_SHOT),
    ("a later fragment that looks like an ACK", frame(flags=ACK, frag_off=0x0010), TC_ACT_SHOT),
    ("a SYN to a pod that is not enrolled", frame(dst=OTHER), TC_ACT_OK),
    (
        "a SYN with options to a pod that is not enrolled",
        frame(dst=OTHER, options=nops(8)),
        TC_ACT_OK,
    ),
    ("a broken packet to a pod that is not enrolled", frame(dst=OTHER, ihl=3), TC_ACT_OK),
    ("a fragment to a pod that is not enrolled", frame(dst=OTHER, frag_off=0x2000), TC_ACT_OK),
    ("UDP to an enrolled pod", frame(proto=17), TC_ACT_OK),
    ("not IPv4", frame(ethertype=0x0806), TC_ACT_OK),
]


@pytest.mark.parametrize(
    ("what", "data", "verdict"), CASES, ids=[c[0].replace(" ", "-") for c in CASES]
)
@pytest.mark.parametrize("program", BOTH)
def test_verdicts(programs: Loaded, program: str, what: str, data: bytes, verdict: int) -> None:
    assert programs.verdict(program, data) == verdict, what


@pytest.mark.parametrize("options", [b"", nops(4), nops(40), RECORD_ROUTE])
def test_mid_flow_packets_to_an_enrolled_pod_pass_the_guard_with_or_without_options(
    programs: Loaded, options: bytes
) -> None:
    """(a connection from before enrollment goes on; a new one is refused)"""
    assert programs.verdict("guard", frame(flags=ACK, options=options)) == TC_ACT_OK
    assert programs.verdict("inbound", frame(flags=ACK, options=options)) == TC_ACT_OK


def test_a_reply_from_an_enrolled_pod_to_a_client_of_no_socket_here_passes(
    programs: Loaded,
) -> None:
    reply = frame(dst=CLIENT, src=ENROLLED, flags=SYN | ACK, options=nops(8))
    assert programs.verdict("inbound", reply) == TC_ACT_OK
