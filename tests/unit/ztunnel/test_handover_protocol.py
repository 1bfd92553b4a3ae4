"""The handover protocol (ztunnel/handover.py) in bytes and tables: messages, what the old
side answers in each phase, what the new side accepts as an Offer."""

from __future__ import annotations

import json

import pytest

from ztunnel.handover import (
    MAX_FDS,
    MAX_MESSAGE,
    PROTOCOL,
    Draining,
    HandoverError,
    Hello,
    Offer,
    Phase,
    Ready,
    Refused,
    Step,
    decode,
    encode,
    judge_hello,
    judge_offer,
    old_side,
)

WANTED = frozenset({"outbound", "hbone", "plaintext"})
OFFER = Offer("node-1", "0.1.0", 42, ("outbound", "hbone", "plaintext"))


@pytest.mark.parametrize(
    "msg",
    [
        Hello("node-1", "0.1.0+b", 1234),
        OFFER,
        Offer("node-1", "0.1.0", 42, ("outbound/0", "outbound/1", "hbone/0", "plaintext")),
        Refused("busy"),
        Ready(30.0),
        Draining(600.0, 17),
        Draining(10, 0),
    ],
)
def test_every_message_survives_encoding(msg: object) -> None:
    assert decode(encode(msg)) == msg  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xff\xfe", "not a JSON message"),
        (b"{", "not a JSON message"),
        (b"[1, 2]", "not a JSON object but list"),
        (b'"hello"', "not a JSON object but str"),
        (b"{}", "type: None"),
        (b'{"type": "takeover"}', "type: 'takeover'"),
        (b'{"type": 7}', "type: 7"),
        (b'{"type": "hello", "node": "n", "version": "v", "pid": 1}', "hello.protocol"),
        (b'{"type": "hello", "node": 3, "version": "v", "pid": 1, "protocol": 1}', "hello.node"),
        (
            b'{"type": "hello", "node": "n", "version": "v", "pid": true, "protocol": 1}',
            "hello.pid",
        ),
        (b'{"type": "draining", "drain_timeout_s": "600", "connections": 1}', "drain_timeout_s"),
        (b'{"type": "refused"}', "refused.reason"),
        (b'{"type": "ready"}', "ready.drain_timeout_s"),
    ],
)
def test_garbage_is_refused_naming_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(HandoverError) as err:
        decode(data)
    assert says in str(err.value)


def _offer(listeners: object) -> bytes:
    body = {"type": "offer", "node": "n", "version": "v", "pid": 1, "protocol": 1}
    return json.dumps({**body, "listeners": listeners}).encode()


@pytest.mark.parametrize(
    "listeners",
    [
        ["outbound", "outbound"],
        ["../etc"],
        ["Outbound"],
        [1],
        ["x" * 40],
        [f"outbound/{i}" for i in range(MAX_FDS + 1)],
    ],
)
def test_an_offer_names_each_listener_once_and_plainly(listeners: object) -> None:
    with pytest.raises(HandoverError, match=r"offer\.listeners"):
        decode(_offer(listeners))


def test_a_message_over_the_bound_is_refused_both_ways() -> None:
    with pytest.raises(HandoverError, match=f"over {MAX_MESSAGE}"):
        decode(b" " * (MAX_MESSAGE + 1))
    with pytest.raises(HandoverError, match=f"over {MAX_MESSAGE}"):
        encode(Refused("x" * MAX_MESSAGE))


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello("node-1", "v", 1), None),
        (Hello("node-2", "v", 1), "hello from a ztunnel for node 'node-2', this is node 'node-1'"),
        (
            Hello("node-1", "v", 1, protocol=PROTOCOL + 1),
            f"handover protocol {PROTOCOL + 1}, this ztunnel speaks {PROTOCOL}",
        ),
        (Ready(30.0), "expected hello, got ready"),
    ],
)
def test_the_old_side_answers_only_a_hello_for_its_node_and_protocol(
    hello: object, reason: str | None
) -> None:
    got = judge_hello(hello, "node-1")  # type: ignore[arg-type]
    assert (got.reason if got else None) == reason


@pytest.mark.parametrize(
    ("phase", "msg", "step"),
    [
        (Phase.HELLO, Hello("node-1", "v", 1), Step(Phase.OFFERED, offer=True)),
        (
            Phase.HELLO,
            Hello("node-9", "v", 1),
            Step(
                Phase.CLOSED,
                Refused("hello from a ztunnel for node 'node-9', this is node 'node-1'"),
            ),
        ),
        (Phase.HELLO, Ready(30.0), Step(Phase.CLOSED, Refused("expected hello, got ready"))),
        (Phase.OFFERED, Ready(30.0), Step(Phase.DRAINING, drain=True)),
        (Phase.OFFERED, Refused("cannot use it"), Step(Phase.CLOSED)),
        (
            Phase.OFFERED,
            Hello("node-1", "v", 1),
            Step(Phase.CLOSED, Refused("hello out of turn in phase offered")),
        ),
        (
            Phase.OFFERED,
            Draining(1, 1),
            Step(Phase.CLOSED, Refused("draining out of turn in phase offered")),
        ),
    ],
)
def test_the_old_side_session_table(phase: Phase, msg: object, step: Step) -> None:
    assert old_side(phase, msg, "node-1") == step  # type: ignore[arg-type]


def test_the_new_side_takes_an_offer_with_a_socket_per_listener() -> None:
    assert judge_offer(OFFER, "node-1", 3, WANTED) is OFFER


@pytest.mark.parametrize(
    ("offer", "fds", "says"),
    [
        (Refused("busy"), 0, "refused: busy"),
        (Ready(30.0), 0, "expected offer, got ready"),
        (Offer("node-2", "v", 1, OFFER.listeners), 3, "node 'node-2'"),
        (OFFER, 2, "2 sockets attached for 3 listeners"),
        (Offer("node-1", "v", 1, ("outbound", "hbone")), 2, "no socket offered for ['plaintext']"),
        (Offer("node-1", "v", 1, OFFER.listeners, protocol=9), 3, "protocol 9"),
    ],
)
def test_the_new_side_refuses_an_offer_it_cannot_serve_from(
    offer: object, fds: int, says: str
) -> None:
    with pytest.raises(HandoverError) as err:
        judge_offer(offer, "node-1", fds, WANTED)  # type: ignore[arg-type]
    assert says in str(err.value)


def test_fields_a_newer_version_adds_are_ignored() -> None:
    data = b'{"type": "ready", "drain_timeout_s": 5, "workers": 4}'
    assert decode(data) == Ready(5)
