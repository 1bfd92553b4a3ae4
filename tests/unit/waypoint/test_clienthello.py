"""The SNI of a TLS ClientHello (`waypoint.clienthello`): real hellos made by Python's ssl
module through memory BIOs (no network), TLS 1.2 and 1.3, with and without SNI, fragmented,
truncated at every length, with lengths past every bound, and garbage: never an exception,
never a name the bytes do not hold."""

from __future__ import annotations

import random
import ssl

import pytest

from waypoint import clienthello
from waypoint.clienthello import MAX_HELLO, MAX_INSPECT, MAX_RECORDS, Hello, State, inspect


def real_hello(server_name: str | None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLO13 = real_hello("api.shop.example")
HELLO12 = real_hello("legacy.shop.example", ssl.TLSVersion.TLSv1_2)
NO_SNI = real_hello(None)
IP_ONLY = real_hello("10.0.0.7")  # an IP address is never sent as SNI (RFC 6066)


def records(message: bytes, size: int) -> bytes:
    """A handshake message fragmented into records of `size` bytes."""
    out = b""
    for i in range(0, len(message), size):
        part = message[i : i + size]
        out += b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
    return out


def message_of(hello: bytes) -> bytes:
    assert hello[0] == 0x16 and int.from_bytes(hello[3:5], "big") == len(hello) - 5
    return hello[5:]


def handshake(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def vec(data: bytes, size: int) -> bytes:
    return len(data).to_bytes(size, "big") + data


def ext(kind: int, payload: bytes) -> bytes:
    return kind.to_bytes(2, "big") + vec(payload, 2)


def sni_ext(*names: tuple[int, bytes]) -> bytes:
    return ext(0, vec(b"".join(bytes([t]) + vec(n, 2) for t, n in names), 2))


def body(*extensions: bytes, tail: bytes = b"") -> bytes:
    head = b"\x03\x03" + bytes(32) + vec(b"", 1) + vec(b"\x13\x01", 2) + vec(b"\x00", 1)
    return head + vec(b"".join(extensions), 2) + tail


def made(*extensions: bytes, tail: bytes = b"") -> bytes:
    return records(handshake(body(*extensions, tail=tail)), 1 << 14)


FOUND = [
    ("tls1.3", HELLO13, "api.shop.example"),
    ("tls1.2", HELLO12, "legacy.shop.example"),
    ("no sni", NO_SNI, ""),
    ("ip address is not sent", IP_ONLY, ""),
    ("fragmented 1 KiB", records(message_of(HELLO13), 1024), "api.shop.example"),
    ("fragmented 100", records(message_of(HELLO13), 100), "api.shop.example"),
    ("upper case is folded", made(sni_ext((0, b"API.Shop.Example"))), "api.shop.example"),
    ("other name types skipped", made(sni_ext((7, b"x"), (0, b"a.example"))), "a.example"),
    ("only another name type", made(sni_ext((7, b"x"))), ""),
    ("no extensions at all", records(handshake(body()[:-2]), 1 << 14), ""),
    ("another extension only", made(ext(0x2B, b"\x02\x03\x04")), ""),
    ("trailing bytes after the hello", HELLO13 + b"\x17\x03\x03\x00\x05hello", "api.shop.example"),
]


@pytest.mark.parametrize(("name", "data", "sni"), FOUND, ids=[f[0] for f in FOUND])
def test_complete_hellos_give_their_server_name(name: str, data: bytes, sni: str) -> None:
    assert inspect(data) == Hello(State.FOUND, sni)


def test_real_hellos_fit_the_bounds() -> None:
    for hello in (HELLO13, HELLO12, NO_SNI):
        assert len(hello) <= MAX_INSPECT
        assert inspect(bytearray(hello)) == inspect(memoryview(hello)) == inspect(hello)


@pytest.mark.parametrize("hello", [HELLO13, HELLO12, records(message_of(HELLO13), 10)])
def test_every_truncation_asks_for_more_and_says_how_much(hello: bytes) -> None:
    for n in range(len(hello)):
        got = inspect(hello[:n])
        assert got.state is State.NEED_MORE, n
        assert n < got.need <= len(hello), (n, got)
        assert got.server_name == ""


def test_waiting_for_need_bytes_reaches_the_hello_in_few_looks() -> None:
    hello = records(message_of(HELLO13), 50)
    have, looks = 0, 0
    while (got := inspect(hello[:have])).state is State.NEED_MORE:
        have, looks = got.need, looks + 1
        assert looks <= 2 * MAX_RECORDS
    assert got.server_name == "api.shop.example"
    assert looks <= 2 * (len(hello) // 55 + 2)  # about two per record, not one per byte


BAD = [
    ("http", b"GET / HTTP/1.1\r\n", State.NOT_TLS),
    ("application data record", b"\x17\x03\x03\x00\x10" + bytes(16), State.NOT_TLS),
    ("ssl2-looking", b"\x80\x2e\x01\x03\x01", State.NOT_TLS),
    ("record version 2", b"\x16\x02\x00\x00\x10", State.NOT_TLS),
    ("record version 2, partial", b"\x16\x02", State.NOT_TLS),
    ("zero-length record", b"\x16\x03\x01\x00\x00", State.NOT_TLS),
    ("record over 2^14", b"\x16\x03\x01\x40\x01" + bytes(10), State.NOT_TLS),
    ("record length 0xffff", b"\x16\x03\x01\xff\xff", State.NOT_TLS),
    ("server hello", records(handshake(body(), kind=2), 1 << 14), State.NOT_TLS),
    (
        "alert between fragments",
        records(message_of(HELLO13), 100)[:105] + b"\x15\x03\x03\x00\x02\x02\x28",
        State.NOT_TLS,
    ),
    (
        "hello over MAX_HELLO",
        b"\x16\x03\x01\x00\x04\x01" + (MAX_HELLO + 1).to_bytes(3, "big"),
        State.TOO_LARGE,
    ),
    ("hello length 2^24-1", b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", State.TOO_LARGE),
    (
        "too many fragments",
        records(message_of(HELLO13), 1)[: 6 * (MAX_RECORDS + 1)],
        State.TOO_LARGE,
    ),
    ("extensions past the end", made(ext(0, b"")[:-2] + b"\xff\xff"), State.NOT_TLS),
    (
        "extensions length past the body",
        records(handshake(body()[:-2] + b"\x7f\xff"), 1 << 14),
        State.NOT_TLS,
    ),
    ("bytes after the extensions", made(sni_ext((0, b"a.example")), tail=b"\x00"), State.NOT_TLS),
    (
        "session id length past the end",
        records(handshake(b"\x03\x03" + bytes(32) + b"\xff"), 99),
        State.NOT_TLS,
    ),
    (
        "no cipher suites",
        records(handshake(b"\x03\x03" + bytes(32) + b"\x00\x00\x00\x01\x00\x00\x00"), 999),
        State.NOT_TLS,
    ),
    (
        "no compression methods",
        records(handshake(b"\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x00\x00\x00"), 999),
        State.NOT_TLS,
    ),
    (
        "duplicate server_name",
        made(sni_ext((0, b"a.example")), sni_ext((0, b"b.example"))),
        State.NOT_TLS,
    ),
    ("empty name list", made(ext(0, vec(b"", 2))), State.NOT_TLS),
    ("name list length past the extension", made(ext(0, b"\x00\x09\x00\x00\x01a")), State.NOT_TLS),
    (
        "bytes after the name list",
        made(ext(0, vec(b"\x00" + vec(b"a", 2), 2) + b"\x00")),
        State.NOT_TLS,
    ),
    ("host name length past the list", made(ext(0, vec(b"\x00\x00\x09a", 2))), State.NOT_TLS),
    ("empty host name", made(sni_ext((0, b""))), State.NOT_TLS),
    ("host name over 255", made(sni_ext((0, b"a" * 256))), State.NOT_TLS),
    ("non-ascii host name", made(sni_ext((0, "é.example".encode()))), State.NOT_TLS),
    ("control byte in host name", made(sni_ext((0, b"evil.example\x00"))), State.NOT_TLS),
    ("space in host name", made(sni_ext((0, b"evil .example"))), State.NOT_TLS),
]


@pytest.mark.parametrize(("name", "data", "state"), BAD, ids=[b[0] for b in BAD])
def test_bad_hellos_give_no_server_name(name: str, data: bytes, state: State) -> None:
    got = inspect(data)
    assert got.state is state
    assert got.server_name == ""


def test_garbage_and_mutated_hellos_never_raise() -> None:
    rng = random.Random(1313)
    for _ in range(300):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        assert inspect(junk).state in State
        assert inspect(b"\x16\x03\x01" + junk).state in State
        mutated = bytearray(HELLO13)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        got = inspect(bytes(mutated))
        assert got.state in State
        if got.state is State.FOUND:  # (a byte of the name may have changed: never raises)
            assert len(got.server_name) <= clienthello.MAX_HOST_NAME
