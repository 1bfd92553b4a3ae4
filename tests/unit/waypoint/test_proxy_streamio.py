"""BufferedEnd, the relay end the waypoint's code reads: buffering, backpressure both ways,
half-closes, resets, and the hand-over to a second relay for TCP passthrough. No sockets:
the partners are recording ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from waypoint.streamio import READ_HIGH, BufferedEnd, EndClosed
from ztunnel.relay import Chunk, Relay


class Recorder:
    """A network end that records what is written out of it."""

    def __init__(self) -> None:
        self.relay: Relay | None = None
        self.received = 0
        self.sent = 0
        self.out = bytearray()
        self.eof = False
        self.aborted = False
        self.paused = False

    def send(self, data: Chunk) -> None:
        self.sent += len(data)
        self.out += data

    def send_eof(self) -> None:
        self.eof = True
        assert self.relay is not None
        self.relay.eof_sent()

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    # --- as if from its network peer ---------------------------------------------------

    def deliver(self, data: bytes) -> None:
        assert self.relay is not None
        self.received += len(data)
        self.relay.other(self).send(data)

    def deliver_eof(self) -> None:
        assert self.relay is not None
        self.relay.other(self).send_eof()

    def fail(self) -> None:
        assert self.relay is not None
        self.relay.failed(self)


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 5))


def joined() -> tuple[Recorder, BufferedEnd, Relay]:
    stream, end = Recorder(), BufferedEnd("test")
    relay = Relay(stream, end)
    relay.start()
    return stream, end, relay


def test_reads_get_what_arrived_then_empty_at_the_end() -> None:
    async def body() -> None:
        stream, end, _ = joined()
        stream.deliver(b"ab")
        stream.deliver(b"cd")
        assert await end.read() == b"abcd"
        reader = asyncio.ensure_future(end.read())
        await asyncio.sleep(0)
        assert not reader.done()  # waits for data
        stream.deliver(b"e")
        assert await reader == b"e"
        stream.deliver_eof()
        assert await end.read() == b""
        assert end.at_eof

    run(body)


def test_unread_bytes_come_first() -> None:
    async def body() -> None:
        stream, end, _ = joined()
        stream.deliver(b"tail")
        end.unread(b"head-")
        assert await end.read() == b"head-tail"

    run(body)


def test_a_reader_that_falls_behind_pauses_the_stream() -> None:
    async def body() -> None:
        stream, end, _ = joined()
        stream.deliver(b"x" * READ_HIGH)
        assert not stream.paused
        stream.deliver(b"x")
        assert stream.paused  # no more window credit until we read
        await end.read()
        assert not stream.paused

    run(body)


def test_writes_go_out_and_drain_waits_while_the_stream_cannot_send() -> None:
    async def body() -> None:
        stream, end, _ = joined()
        end.write(b"hello")
        assert bytes(stream.out) == b"hello" and end.sent == 5
        end.pause_reading()  # the stream has no window
        drain = asyncio.ensure_future(end.drain())
        await asyncio.sleep(0.01)
        assert not drain.done()
        end.resume_reading()
        await drain

    run(body)


def test_a_reset_stream_fails_readers_and_writers() -> None:
    async def body() -> None:
        stream, end, relay = joined()
        end.pause_reading()
        reader = asyncio.ensure_future(end.read())
        drain = asyncio.ensure_future(end.drain())
        await asyncio.sleep(0)
        stream.fail()
        with pytest.raises(EndClosed):
            await reader
        with pytest.raises(EndClosed):
            await drain
        with pytest.raises(EndClosed):
            end.write(b"x")
        assert await relay.done is True

    run(body)


def test_both_half_closes_end_the_relay() -> None:
    async def body() -> None:
        stream, end, relay = joined()
        stream.deliver_eof()
        assert not relay.done.done()
        end.write_eof()
        assert stream.eof
        assert await relay.done is False  # a clean end

    run(body)


def test_reset_from_our_side_aborts_the_stream() -> None:
    async def body() -> None:
        stream, end, relay = joined()
        end.reset()
        assert stream.aborted and await relay.done is True

    run(body)


def test_splice_passes_held_bytes_first_then_relays_both_ways() -> None:
    async def body() -> None:
        client, end, first = joined()
        client.deliver(b"sniffed")
        end.unread(await end.read())  # read for sniffing, put back
        outbound = Recorder()
        second = end.splice(outbound)
        assert bytes(outbound.out) == b"sniffed"
        client.deliver(b" more")
        assert bytes(outbound.out) == b"sniffed more"
        outbound.deliver(b"reply")
        assert bytes(client.out) == b"reply"
        # backpressure across: the client's stream cannot send -> the outbound stops
        end.pause_reading()
        assert outbound.paused
        end.resume_reading()
        assert not outbound.paused
        # half-closes both ways end both relays cleanly
        client.deliver_eof()
        assert outbound.eof
        outbound.deliver_eof()
        assert client.eof
        assert await first.done is False and await second.done is False

    run(body)


def test_splice_after_the_client_half_closed_carries_the_eof() -> None:
    async def body() -> None:
        client, end, _ = joined()
        client.deliver(b"req")
        client.deliver_eof()
        outbound = Recorder()
        end.splice(outbound)
        assert bytes(outbound.out) == b"req" and outbound.eof

    run(body)


@pytest.mark.parametrize("side", ["client", "outbound"])
def test_a_reset_on_either_side_of_a_splice_resets_the_other(side: str) -> None:
    async def body() -> None:
        client, end, first = joined()
        outbound = Recorder()
        second = end.splice(outbound)
        (client if side == "client" else outbound).fail()
        other = outbound if side == "client" else client
        assert other.aborted
        assert await first.done is True and await second.done is True

    run(body)
