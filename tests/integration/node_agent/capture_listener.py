"""A minimal stand-in for ztunnel's outbound listener, for capture tests only.

Accepts on the given port, asks each connection for SO_ORIGINAL_DST, prints one JSON line
per connection, and answers `captured <ip>:<port>`.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

SO_ORIGINAL_DST = 80


def main() -> None:
    port = int(sys.argv[1])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(64)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        conn, peer = server.accept()
        with conn:
            try:
                raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                dport, dip = struct.unpack("!2xH4s8x", raw)
                orig = f"{socket.inet_ntoa(dip)}:{dport}"
            except OSError as err:
                orig = f"error: {err}"
            print(json.dumps({"peer": f"{peer[0]}:{peer[1]}", "orig": orig}), flush=True)
            conn.settimeout(5)
            try:
                while conn.recv(4096):  # drain to EOF: closing with unread data sends RST
                    pass
            except OSError:
                pass
            conn.sendall(f"captured {orig}\n".encode())


if __name__ == "__main__":
    main()
