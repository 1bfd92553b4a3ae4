"""A minimal stand-in for ztunnel's listeners, for capture tests only.

    capture_listener.py 15001            outbound: SO_ORIGINAL_DST of each connection
    capture_listener.py 15006 inbound    inbound plaintext: IP_TRANSPARENT, and the original
                                         destination is the accepted socket's own address

Prints one JSON line per connection and answers `captured <ip>:<port>`.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19


def main() -> None:
    port = int(sys.argv[1])
    inbound = sys.argv[2:] == ["inbound"]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if inbound:  # answers for addresses that are not the node's, like TPROXY
        server.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    server.bind(("0.0.0.0", port))
    server.listen(64)
    print(json.dumps({"listening": port}), flush=True)
    while True:
        conn, peer = server.accept()
        with conn:
            try:
                if inbound:
                    local = conn.getsockname()
                    orig = f"{local[0]}:{local[1]}"
                else:
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
