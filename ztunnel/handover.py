"""The handover protocol, sans I/O: how a new ztunnel takes the listening sockets of the one
it replaces, so that no connection is refused and none is reset (docs/ztunnel-restart.md).

The running ztunnel listens on a node-local unix socket (SOCK_SEQPACKET: one message per
read, its file descriptors with it). A new one connects and the two talk:

    new -> old   Hello     protocol version, node, code version, pid
    old -> new   Offer     the listeners' names, their sockets attached (SCM_RIGHTS)
                 (or Refused, with the reason: wrong node, other protocol, busy, garbage)
    new -> old   Ready     the new one synced its config, fetched its certificates and serves;
                           with how long the old one may drain (the operator's latest word)
    old -> new   Draining  the old one stopped accepting and let go of its HTTP listeners

If the new one goes away (crash, timeout) before Ready, the old one never stopped serving and
waits for the next. Every message is a small JSON object; what a peer sends is bounded in
size, in file descriptors and in time (handoverio), and a bad one is refused by name. Fields
a message does not know are ignored (a newer version may add some); a change an older
version cannot read bumps PROTOCOL, and a hello of another protocol is refused.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

PROTOCOL = 1
MAX_MESSAGE = 4096  # bytes of one message; a longer one is refused
MAX_FDS = 64  # sockets in one Offer: 3 listeners, or 2 per worker (8 at most) plus one
HELLO_TIMEOUT_S = 5.0  # a client that says nothing is dropped
# Ready, after the Offer: the new ztunnel syncs its config and fetches its certificates first
READY_TIMEOUT_S = 120.0
DRAINING_TIMEOUT_S = 15.0  # the old one answers Ready once its listeners are let go
# a listener's name: outbound, hbone, plaintext (and outbound/1... with workers), admin...
_LISTENER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}(/[0-9]{1,3})?")


class HandoverError(ValueError):
    """A handover message that is not one, or a refusal, with the reason."""


@dataclass(frozen=True)
class Hello:
    node: str
    version: str
    pid: int
    protocol: int = PROTOCOL


@dataclass(frozen=True)
class Offer:
    node: str
    version: str
    pid: int
    listeners: tuple[str, ...]  # one name per socket attached, in order
    protocol: int = PROTOCOL


@dataclass(frozen=True)
class Refused:
    reason: str


@dataclass(frozen=True)
class Ready:
    drain_timeout_s: float


@dataclass(frozen=True)
class Draining:
    drain_timeout_s: float
    connections: int  # relayed by the old one when it started to drain


Message = Hello | Offer | Refused | Ready | Draining
_TYPES: dict[str, type[Message]] = {
    "hello": Hello,
    "offer": Offer,
    "refused": Refused,
    "ready": Ready,
    "draining": Draining,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}
# field -> the JSON types it may take
_FIELDS: dict[type[Message], dict[str, tuple[type, ...]]] = {
    Hello: {"node": (str,), "version": (str,), "pid": (int,), "protocol": (int,)},
    Offer: {
        "node": (str,),
        "version": (str,),
        "pid": (int,),
        "listeners": (list,),
        "protocol": (int,),
    },
    Refused: {"reason": (str,)},
    Ready: {"drain_timeout_s": (int, float)},
    Draining: {"drain_timeout_s": (int, float), "connections": (int,)},
}


def encode(msg: Message) -> bytes:
    body: dict[str, Any] = {"type": _NAMES[type(msg)], **msg.__dict__}
    if isinstance(msg, Offer):
        body["listeners"] = list(msg.listeners)
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise HandoverError(f"a {body['type']} message of {len(data)} bytes, over {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> Message:
    """One message from its bytes; HandoverError naming what is wrong."""
    if len(data) > MAX_MESSAGE:
        raise HandoverError(f"a message of {len(data)} bytes, over {MAX_MESSAGE}")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HandoverError(f"not a JSON message: {err}") from None
    if not isinstance(body, dict):
        raise HandoverError(f"not a JSON object but {type(body).__name__}")
    kind = body.pop("type", None)
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise HandoverError(f"type: {kind!r} is not one of {sorted(_TYPES)}")
    fields = _FIELDS[cls]
    for name, types in fields.items():
        value = body.get(name)
        if name not in body or not isinstance(value, types) or isinstance(value, bool):
            want = " or ".join(t.__name__ for t in types)
            raise HandoverError(f"{kind}.{name}: want {want}, got {value!r}")
    for name in set(body) - set(fields):  # a newer version's addition: an upgrade must work
        del body[name]
    if cls is Offer:
        names = body["listeners"]
        if not all(isinstance(n, str) and _LISTENER_NAME.fullmatch(n) for n in names):
            raise HandoverError(f"offer.listeners: {names!r} are not all listener names")
        if len(set(names)) != len(names) or len(names) > MAX_FDS:
            raise HandoverError(f"offer.listeners: {len(names)} names, repeated or over {MAX_FDS}")
        body["listeners"] = tuple(names)
    return cls(**body)


def judge_hello(hello: Message, node: str) -> Refused | None:
    """The old side: a Hello it may answer with its sockets, else why not."""
    if not isinstance(hello, Hello):
        return Refused(f"expected hello, got {_NAMES[type(hello)]}")
    if hello.protocol != PROTOCOL:
        return Refused(f"handover protocol {hello.protocol}, this ztunnel speaks {PROTOCOL}")
    if hello.node != node:
        return Refused(f"hello from a ztunnel for node {hello.node!r}, this is node {node!r}")
    return None


def judge_offer(offer: Message, node: str, fds: int, wanted: frozenset[str]) -> Offer:
    """The new side: the Offer it can start from (one socket per name, every listener it
    needs among them), else HandoverError."""
    if isinstance(offer, Refused):
        raise HandoverError(f"refused: {offer.reason}")
    if not isinstance(offer, Offer):
        raise HandoverError(f"expected offer, got {_NAMES[type(offer)]}")
    if offer.protocol != PROTOCOL:
        raise HandoverError(f"handover protocol {offer.protocol}, this ztunnel speaks {PROTOCOL}")
    if offer.node != node:
        raise HandoverError(f"offer from the ztunnel of node {offer.node!r}, this is {node!r}")
    if fds != len(offer.listeners):
        raise HandoverError(f"{fds} sockets attached for {len(offer.listeners)} listeners")
    missing = sorted(wanted - {n.split("/")[0] for n in offer.listeners})
    if missing:
        raise HandoverError(f"no socket offered for {missing}")
    return offer


class Phase(enum.Enum):
    """The old side of one handover session."""

    HELLO = "hello"  # connected, waiting for its Hello
    OFFERED = "offered"  # sockets sent, waiting for Ready (both serve meanwhile)
    DRAINING = "draining"  # Ready came: this process stops accepting and drains
    CLOSED = "closed"  # refused or aborted: this process serves on as before


@dataclass(frozen=True)
class Step:
    """What the old side does with one message: its next phase and the reply to send
    (`offer`: send the Offer with the sockets; `drain`: start draining, then reply)."""

    phase: Phase
    reply: Message | None = None
    offer: bool = False
    drain: bool = False


def old_side(phase: Phase, msg: Message, node: str) -> Step:
    """The old ztunnel's session as a table: phase + message in, phase + action out."""
    if phase is Phase.HELLO:
        refusal = judge_hello(msg, node)
        if refusal is not None:
            return Step(Phase.CLOSED, refusal)
        return Step(Phase.OFFERED, offer=True)
    if phase is Phase.OFFERED and isinstance(msg, Ready):
        return Step(Phase.DRAINING, drain=True)
    if phase is Phase.OFFERED and isinstance(msg, Refused):
        return Step(Phase.CLOSED)  # the new one could not use the Offer
    return Step(Phase.CLOSED, Refused(f"{_NAMES[type(msg)]} out of turn in phase {phase.value}"))
