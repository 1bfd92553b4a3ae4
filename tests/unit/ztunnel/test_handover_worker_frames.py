"""The parent <-> worker channel of `ztunnel run --workers N` (ztunnel/workerproto.py) in
bytes, and which worker serves which listening socket, including sockets handed over by a
predecessor with another number of workers."""

from __future__ import annotations

import pytest

from ztunnel.workerproto import (
    MAX_FRAME,
    Frame,
    FrameError,
    FrameReader,
    Kind,
    assign,
    encode,
    encode_json,
    to_bind,
)


def test_frames_come_out_whole_however_the_bytes_are_cut() -> None:
    data = encode(Kind.STATE, b"x" * 1000) + encode_json(Kind.CERT, {"identity": "a"})
    data += encode(Kind.STATS_REQUEST)
    for cut in (1, 3, 5, 7, 999, len(data)):
        reader = FrameReader()
        frames: list[Frame] = []
        for i in range(0, len(data), cut):
            frames += reader.feed(data[i : i + cut])
        assert [f.kind for f in frames] == [Kind.STATE, Kind.CERT, Kind.STATS_REQUEST]
        assert frames[0].payload == b"x" * 1000 and frames[1].json() == {"identity": "a"}
        assert reader.buffered == 0


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x00\x00\x00\x00\x01", "a frame of 0 bytes"),
        ((MAX_FRAME + 1).to_bytes(4, "big") + b"\x01", f"a frame of {MAX_FRAME + 1} bytes"),
        (b"\x00\x00\x00\x01\x63", "unknown frame kind 99"),
    ],
)
def test_a_frame_that_breaks_the_protocol_ends_the_channel(data: bytes, says: str) -> None:
    with pytest.raises(FrameError, match=says):
        FrameReader().feed(data)


def test_a_frame_longer_than_the_reader_allows_is_refused_before_it_is_buffered() -> None:
    reader = FrameReader(max_frame=100)
    with pytest.raises(FrameError, match="a frame of 201 bytes"):
        reader.feed(encode(Kind.EVENT, b"e" * 200)[:10])


def test_a_json_frame_that_is_not_json_is_named() -> None:
    with pytest.raises(FrameError, match="EVENT: not JSON"):
        Frame(Kind.EVENT, b"{nope").json()


def test_encoding_past_the_bound_is_refused() -> None:
    with pytest.raises(FrameError, match="over"):
        encode(Kind.STATE, bytes(MAX_FRAME))


FRESH = ["outbound/0", "outbound/1", "hbone/0", "hbone/1", "plaintext"]


@pytest.mark.parametrize(
    ("names", "workers", "expected"),
    [
        # each worker its own reuseport sockets; 15006 shared
        (FRESH, 2, {0: ["hbone/0", "outbound/0", "plaintext"], 1: ["hbone/1", "outbound/1", "plaintext"]}),
        # fewer workers than the predecessor's sockets: every socket still served
        (FRESH, 1, {0: ["hbone/0", "hbone/1", "outbound/0", "outbound/1", "plaintext"]}),
        # taken from a single-process ztunnel: its sockets are shared by all
        (
            ["outbound", "hbone", "plaintext"],
            2,
            {0: ["hbone", "outbound", "plaintext"], 1: ["hbone", "outbound", "plaintext"]},
        ),
    ],
)  # fmt: skip
def test_which_worker_serves_which_socket(
    names: list[str], workers: int, expected: dict[int, list[str]]
) -> None:
    got = assign(names, workers)
    assert got == expected
    served = {n for socks in got.values() for n in socks}
    assert served == set(names)  # none left unserved: its queue would strand connections


@pytest.mark.parametrize(
    ("names", "workers", "missing"),
    [
        (FRESH, 2, []),
        (FRESH, 4, ["outbound/2", "outbound/3", "hbone/2", "hbone/3"]),
        (FRESH, 1, []),
        (["outbound", "hbone", "plaintext"], 4, []),  # not reuseport: cannot join, shared
    ],
)
def test_the_reuseport_sockets_a_successor_with_more_workers_adds(
    names: list[str], workers: int, missing: list[str]
) -> None:
    assert to_bind(names, workers, ("outbound", "hbone")) == missing
