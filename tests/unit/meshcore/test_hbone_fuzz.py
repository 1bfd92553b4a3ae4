"""The HBONE server fed random frame sequences (fixed seed, bounded count: seconds, not
minutes). Whatever arrives, no exception escapes `HboneServer.receive`/`expire`, and what
the server holds stays bounded: its receive buffer, h2's buffers, what it queues to send,
its streams. The I/O layer is played by plain calls (accept some CONNECTs, refuse others,
give credit back, let time pass), as ztunnel.hbone_conn would make them."""

from __future__ import annotations

import contextlib
import random

import h2.errors
import hpack
import hyperframe.frame
import pytest

from meshcore import hbone
from meshcore.hbone import ConnectRequested, HboneClient, HboneServer, StreamData, StreamGone

SEED = 20261130
SEQUENCES = 2000
FRAMES_PER_SEQUENCE = 40


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frame_bytes(
    ftype: int, flags: int, stream_id: int, payload: bytes, length: int | None = None
) -> bytes:
    n = len(payload) if length is None else length
    return n.to_bytes(3, "big") + bytes([ftype, flags]) + stream_id.to_bytes(4, "big") + payload


class Fuzzer:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.encoder = hpack.Encoder()
        self.next_stream = 1
        self.streams: list[int] = []

    def stream_id(self) -> int:
        """Mostly a stream the peer opened; now and then one that is fatal to name."""
        r = self.rng.random()
        if r < 0.95 and self.streams:
            return self.rng.choice(self.streams)
        if r < 0.98:
            return self.rng.choice([0, 2, 0x7FFFFFFF, self.next_stream + 2])
        return self.rng.randrange(0, 1 << 31)

    def headers_block(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.7:
            authority = rng.choice(["10.0.0.1:80", "[fd00::1]:443", "10.0.0.2:8080"])
        else:
            port = rng.choice(["８０", "²", "0", "65536", "http", ""])  # noqa: RUF001
            authority = rng.choice([f"10.0.0.1:{port}", "host:80", "", "1.2.3.4"])
        headers = [(":method", "CONNECT" if rng.random() < 0.9 else "GET")]
        if rng.random() < 0.9:
            headers.append((":authority", authority))
        if rng.random() < 0.1:
            headers.append((":path", "/"))
        if rng.random() < 0.1:
            headers.append(("x-bin", "é"))
        block = self.encoder.encode(headers)
        if rng.random() < 0.05:
            block = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        return block

    def frame(self) -> bytes:
        rng = self.rng
        # mostly a well-behaved peer's frames, with the hostile ones mixed in
        kind = rng.choices(range(14), weights=[6, 6, 6, 8, 8, 2, 3, 2, 2, 2, 1, 2, 0.3, 0.3])[0]
        if kind <= 2:  # a CONNECT, often followed by its reset
            sid = self.next_stream
            self.next_stream += 2
            self.streams.append(sid)
            block = self.headers_block()
            flags = 0x4 | (0x1 if rng.random() < 0.1 else 0)
            out = frame_bytes(0x1, flags, sid, block)
            if rng.random() < 0.3:
                out += hyperframe.frame.RstStreamFrame(sid, error_code=8).serialize()
            return out
        if kind <= 4:  # DATA, sometimes ending, padded or over the window
            size = rng.choice([0, 1, 100, 5000, 70000])
            flags = rng.choice([0, 0, 0x1, 0x8])
            payload = b"d" * size
            if flags & 0x8:
                payload = b"\x03" + payload + b"\x00" * 3
            return frame_bytes(0x0, flags, self.stream_id(), payload)
        if kind == 5:  # a header block in pieces, maybe never finished
            sid = self.next_stream
            self.next_stream += 2
            block = self.headers_block()
            out = frame_bytes(0x1, 0, sid, block[:2])
            for _ in range(rng.randrange(4)):
                out += frame_bytes(0x9, 0, sid, b"\x00" * rng.choice([10, 20000]))
            if rng.random() < 0.5:
                out += frame_bytes(0x9, 0x4, sid, block[2:])
            return out
        if kind == 6:
            return frame_bytes(0x3, 0, self.stream_id(), (rng.randrange(14)).to_bytes(4, "big"))
        if kind == 7:  # PING floods and ACKs
            return frame_bytes(0x6, rng.choice([0, 1]), 0, b"12345678") * rng.choice([1, 300])
        if kind == 8:  # SETTINGS, sane or not
            code = rng.choice([1, 2, 3, 4, 5, 6, 8, 0x99])
            value = rng.choice([0, 1, 100, 65535, 1 << 24, (1 << 31) - 1, (1 << 32) - 1])
            flags = rng.choice([0, 0, 1])
            return frame_bytes(0x4, flags, 0, code.to_bytes(2, "big") + value.to_bytes(4, "big"))
        if kind == 9:
            inc = rng.choice([0, 1, 65535, (1 << 31) - 1])
            return frame_bytes(0x8, 0, self.stream_id(), inc.to_bytes(4, "big"))
        if kind == 10:
            return frame_bytes(0x7, 0, 0, (1).to_bytes(4, "big") + (0).to_bytes(4, "big"))
        if kind == 11:  # PRIORITY, PUSH_PROMISE, unknown types
            ftype = rng.choice([0x2, 0x5, 0xA, 0xFE])
            return frame_bytes(ftype, rng.randrange(256), self.stream_id(), b"\x00" * 5)
        if kind == 12:  # a header announcing more than it brings, or too much
            return frame_bytes(rng.randrange(10), 0, self.stream_id(), b"", rng.randrange(1 << 24))
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30)))  # garbage


def play(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    client, server = HboneClient(), HboneServer(clock=clock)
    server.receive(client.initiate())
    client.receive(server.initiate())
    server.receive(client.data_to_send())
    server.data_to_send()
    fuzzer = Fuzzer(rng)
    wire = b"".join(fuzzer.frame() for _ in range(rng.randrange(1, FRAMES_PER_SEQUENCE)))
    pos = 0
    while pos < len(wire):
        n = rng.choice([1, 9, 100, 4096, 1 << 20])
        events = server.receive(wire[pos : pos + n])
        pos += n
        for event in events:
            if isinstance(event, ConnectRequested):
                choice = rng.random()
                if choice < 0.4:
                    server.accept(event.stream_id)
                elif choice < 0.7:
                    server.refuse(event.stream_id, 503, "nope")
                # else: left pending, as a slow setup would
            elif isinstance(event, StreamData) and rng.random() < 0.9:
                server.acknowledge(event.stream_id, event.flow_controlled_length)
        if rng.random() < 0.2 and server.conn.streams:
            sid = rng.choice(list(server.conn.streams))
            with contextlib.suppress(StreamGone):
                server.send(sid, b"reply")
            if rng.random() < 0.5:
                server.reset(sid, h2.errors.ErrorCodes.CANCEL)
        if rng.random() < 0.1:
            clock.now += rng.choice([1.0, hbone.HEADER_BLOCK_TIMEOUT_S])
            server.expire()
        check_bounded(server)
        server.data_to_send()
        if rng.random() < 0.7:
            server.output_drained()


def check_bounded(server: HboneServer) -> None:
    assert server.buffered <= 9 + hbone.MAX_FRAME_SIZE  # one frame, never more
    incoming = server.conn.incoming_buffer
    assert len(incoming._data) <= 9 + hbone.MAX_FRAME_SIZE
    assert sum(len(f.data) for f in incoming._headers_buffer) <= hbone.MAX_HEADER_BLOCK
    # ACKs for at most MAX_PENDING_ACKS PINGs, RST_STREAMs and small frames for what arrived
    assert server.queued <= 17 * hbone.MAX_PENDING_ACKS + 64 * 1024
    assert len(server.pending_setup) <= hbone.MAX_PENDING_SETUP
    assert len(server.conn.streams) <= hbone.MAX_CONCURRENT_STREAMS + hbone.MAX_PENDING_SETUP


@pytest.mark.parametrize("part", range(4))
def test_random_frame_sequences_never_raise_and_stay_bounded(part: int) -> None:
    for i in range(part, SEQUENCES, 4):
        try:
            play(SEED + i)
        except Exception as err:  # name the sequence that reproduces it
            raise AssertionError(f"sequence {SEED + i}: {err!r}") from err
