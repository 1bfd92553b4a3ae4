"""The pure half of h2c/gRPC in the waypoint (waypoint.h2wire): request heads, what goes to a
backend and back, gRPC answers made here, and the bounds h2 does not keep."""

from __future__ import annotations

import struct

import pytest

from waypoint import routing
from waypoint.h2wire import (
    MAX_HEADER_BLOCK,
    PREFACE,
    FrameGuard,
    H2RequestError,
    ResetBudget,
    backend_request,
    client_response,
    grpc_answer,
    grpc_status,
    http_answer,
    is_grpc,
    parse_request,
    trailers,
)


def frame(ftype: int, length: int, flags: int = 0, stream: int = 1) -> bytes:
    return struct.pack(">BHBBI", length >> 16, length & 0xFFFF, ftype, flags, stream) + (
        b"\x00" * length
    )


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [
        ("application/grpc", True),
        ("application/grpc+proto", True),
        ("Application/GRPC; charset=utf-8", True),
        ("application/grpc-web", False),
        ("application/grpc-web+proto", False),
        ("application/json", False),
        (None, False),
        ("", False),
    ],
)
def test_grpc_is_told_by_its_content_type(content_type: str | None, grpc: bool) -> None:
    assert is_grpc(content_type) is grpc


def test_a_request_head_splits_pseudo_headers_from_the_rest() -> None:
    request = parse_request(
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"grpc.shop:50051"),
            (b":path", b"/echo.Echo/A"),
            (b"content-type", b"application/grpc"),
            (b"X-Tenant", b"a"),
        ]
    )
    assert (request.method, request.path, request.authority) == (
        "POST",
        "/echo.Echo/A",
        "grpc.shop:50051",
    )
    assert request.headers == (("content-type", "application/grpc"), ("x-tenant", "a"))
    assert request.grpc
    routed = request.route_request("shop")
    assert routed.authority == "grpc.shop:50051" and routed.client_namespace == "shop"


def test_a_request_without_authority_takes_its_host_header() -> None:
    request = parse_request([(b":method", b"GET"), (b":path", b"/"), (b"host", b"web")])
    assert request.authority == "web"


@pytest.mark.parametrize(
    "raw",
    [
        [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80")],
        [(b":path", b"/")],
        [(b":method", b"GET")],
    ],
)
def test_requests_the_waypoint_cannot_route_are_refused(raw: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(H2RequestError):
        parse_request(raw)


def test_the_backend_gets_the_routed_path_authority_and_headers_without_hop_headers() -> None:
    decision = routing.Forward(
        "shop",
        "grpc-b",
        50051,
        "/echo.Echo/B",
        "grpc-b.shop",
        (
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("connection", "keep-alive"),
            ("host", "grpc"),
            ("X-Filter", "b"),
        ),
    )
    assert backend_request("POST", decision) == [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "grpc-b.shop"),
        (":path", "/echo.Echo/B"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-filter", "b"),
    ]


def test_te_other_than_trailers_does_not_cross_an_http2_hop() -> None:
    decision = routing.Forward("", "", 80, "/", "h", (("te", "gzip"),))
    assert ("te", "gzip") not in backend_request("GET", decision)


def test_response_header_operations_apply_to_the_head_and_the_status_stays_first() -> None:
    ops = (routing.HeaderOps(set=(("X-Set", "1"),), add=(("x-add", "w"),), remove=("server",)),)
    status, head = client_response(
        [(b":status", b"200"), (b"server", b"echo"), (b"x-add", b"v"), (b"connection", b"x")],
        ops,
    )
    assert status == 200
    assert head == [(":status", "200"), ("x-add", "v,w"), ("x-set", "1")]


def test_a_response_without_a_status_is_the_backends_fault() -> None:
    with pytest.raises(H2RequestError):
        client_response([(b"content-type", b"text/plain")], ())


def test_trailers_and_grpc_status() -> None:
    tail = trailers([(b"grpc-status", b"5"), (b"grpc-message", b"not%20found")])
    assert tail == [("grpc-status", "5"), ("grpc-message", "not%20found")]
    assert grpc_status(tail) == "5"
    assert grpc_status([("content-type", "application/grpc")]) == ""


def test_a_grpc_answer_made_here_is_trailers_only_with_an_encoded_message() -> None:
    head = grpc_answer(12, "no route rule matched: 100% é", (("x-extra", "1"),))
    assert head[:3] == [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "12"),
    ]
    assert head[3] == ("grpc-message", "no route rule matched: 100%25 %C3%A9")
    assert head[4] == ("x-extra", "1")


def test_an_http_answer_made_here_says_why_in_its_body() -> None:
    head, body = http_answer(404, "no route rule matched")
    assert body == b"404 no route rule matched\n"
    assert head[0] == (":status", "404") and ("content-length", str(len(body))) in head
    head, body = http_answer(301, "", (("location", "http://x/new"),))
    assert body == b"" and ("location", "http://x/new") in head


def test_the_frame_guard_lets_ordinary_traffic_through_in_any_split() -> None:
    data = PREFACE + frame(4, 18, stream=0) + frame(1, 300, flags=0x4) + frame(0, 70000)
    data += frame(1, 100, flags=0x0, stream=3) + frame(9, 200, flags=0x4, stream=3)
    for step in (1, 7, 9, 1000, len(data)):
        guard = FrameGuard()
        for at in range(0, len(data), step):
            assert guard.feed(data[at : at + step]) is None


def test_a_header_block_past_the_bound_is_refused_before_it_ends() -> None:
    guard = FrameGuard()
    assert guard.feed(PREFACE + frame(1, 16384)) is None
    refusals = [guard.feed(frame(9, 16384)) for _ in range(4)]
    assert refusals[:3] == [None, None, None]
    assert refusals[3] is not None and str(MAX_HEADER_BLOCK) in refusals[3]


def test_one_large_headers_frame_past_the_bound_is_refused() -> None:
    guard = FrameGuard(max_header_block=1000, preface=False)
    assert guard.feed(frame(1, 1001, flags=0x4)[:9]) is not None


def test_header_blocks_are_counted_each_on_their_own() -> None:
    guard = FrameGuard(max_header_block=1000, preface=False)
    for _ in range(10):
        assert guard.feed(frame(1, 600, flags=0x4)) is None


def test_resets_past_the_budget_within_the_window_and_not_after() -> None:
    now = [0.0]
    budget = ResetBudget(lambda: now[0], max_resets=3, window_s=10)
    assert [budget.count() for _ in range(4)] == [False, False, False, True]
    now[0] = 11.0
    assert budget.count() is False
