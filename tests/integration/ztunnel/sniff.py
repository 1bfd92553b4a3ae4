"""Capture IPv4 TCP payloads on one interface for a while (AF_PACKET), then report whether
a marker ever appeared in clear. Run inside the namespace to watch."""

from __future__ import annotations

import json
import socket
import sys
import time

iface, marker, seconds = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
sock.bind((iface, 0))
sock.settimeout(0.2)
print("ready", flush=True)
seen, packets, tcp_bytes = False, 0, 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        frame = sock.recv(65535)
    except TimeoutError:
        continue
    packets += 1
    if len(frame) > 34 and frame[12:14] == b"\x08\x00" and frame[23] == 6:
        tcp_bytes += len(frame)
        if marker in frame:
            seen = True
print(json.dumps({"packets": packets, "tcp_bytes": tcp_bytes, "marker_seen": seen}), flush=True)
