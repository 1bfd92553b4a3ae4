"""Reading a passed-through stream's ClientHello for `connection.sni` (`waypoint.tls_peek`)
on a real `BufferedEnd`: a buffered hello costs no wait, a split one is waited for, a silent
client is judged without SNI after the bounded wait, a trickled or cut hello cannot be
evaluated (None), and every byte read is left for the relay."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from waypoint import tls_peek
from waypoint.streamio import BufferedEnd

TIMEOUT = 0.3


def hello(server_name: str | None = "db.shop.example") -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_bio(ssl.MemoryBIO(), (out := ssl.MemoryBIO()), server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


HELLO = hello()


def outcome(label: str) -> float:
    return tls_peek.HELLOS.labels(label)._value.get()


async def peek(end: BufferedEnd) -> tuple[str | None, float, bytes]:
    started = time.monotonic()
    sni = await tls_peek.client_sni(end, TIMEOUT)
    took = time.monotonic() - started
    left = b""
    while not end.at_eof and end._buffer:
        left += await end.read()
    return sni, took, left


def test_buffered_hello_is_read_without_waiting_and_left_for_the_relay() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        end.send(HELLO + b"more")
        before = outcome("found")
        sni, took, left = await peek(end)
        assert sni == "db.shop.example" and took < 0.1
        assert left == HELLO + b"more"
        assert outcome("found") == before + 1

    asyncio.run(scenario())


def test_split_hello_is_waited_for() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        end.send(HELLO[:3])
        asyncio.get_running_loop().call_later(0.05, end.send, HELLO[3:100])
        asyncio.get_running_loop().call_later(0.1, end.send, HELLO[100:])
        sni, took, left = await peek(end)
        assert sni == "db.shop.example" and 0.09 < took < TIMEOUT
        assert left == HELLO

    asyncio.run(scenario())


def test_not_tls_is_no_sni_at_once() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        end.send(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # a PostgreSQL SSLRequest
        before = outcome("not_tls")
        sni, took, left = await peek(end)
        assert sni == "" and took < 0.1 and left.startswith(b"\x00\x00\x00\x08")
        assert outcome("not_tls") == before + 1

    asyncio.run(scenario())


def test_silent_client_is_no_sni_after_the_bounded_wait() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        before = outcome("silent")
        sni, took, _ = await peek(end)
        assert sni == "" and TIMEOUT * 0.9 <= took < TIMEOUT + 0.2
        assert outcome("silent") == before + 1

    asyncio.run(scenario())


def test_trickled_hello_cannot_be_evaluated() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        end.send(HELLO[:50])  # the rest comes after the wait
        before = outcome("incomplete")
        sni, took, left = await peek(end)
        assert sni is None and took < TIMEOUT + 0.2
        assert left == HELLO[:50]
        assert outcome("incomplete") == before + 1

    asyncio.run(scenario())


def test_hello_cut_by_end_of_stream_cannot_be_evaluated() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        end.send(HELLO[:50])
        end.send_eof()
        sni, took, _ = await peek(end)
        assert sni is None and took < 0.1

    asyncio.run(scenario())


def test_oversized_hello_cannot_be_evaluated() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        end.send(b"\x16\x03\x01\x00\x04\x01\x01\x00\x00")  # a 64 KiB ClientHello announced
        sni, took, _ = await peek(end)
        assert sni is None and took < 0.1

    asyncio.run(scenario())


def test_reset_stream_gives_no_sni() -> None:
    async def scenario() -> None:
        end = BufferedEnd("client")
        end.send(HELLO[:10])
        asyncio.get_running_loop().call_later(0.05, end.abort)
        assert await tls_peek.client_sni(end, TIMEOUT) == ""

    asyncio.run(scenario())
