"""HBONE connections to other nodes, shared by streams, keyed by
(source identity, destination node address, destination identity).

States: a key has zero or more connections and at most one *dial* in flight; a connection is
*usable* while it is open and below the peer's stream limit, *idle* while it has no stream,
and is closed after IDLE_TIMEOUT of idleness or when the peer goes away. Opening is
single-flight per key: every request that finds no usable connection waits for the one dial,
and gets its connection or its error when it ends, all at once (a failing peer costs one
CONNECT_TIMEOUT for all of them, not one each, in turn).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from meshcore import hbone
from meshcore.identity.certs import CertificateError
from meshcore.identity.spiffe import SpiffeId
from ztunnel import tls
from ztunnel.hbone_conn import HboneConnection
from ztunnel.identity import IdentityManager

log = structlog.get_logger("ztunnel.pool")

IDLE_TIMEOUT = 60.0
CONNECT_TIMEOUT = 5.0


# SNI names. A server picks the certificate to present from the name the client asks for, so
# the name must tell identities apart: `<sa>.<ns>.sa.weft`, read from the right. A namespace
# is a DNS label (no dots), so the label before `sa.weft` is the namespace and everything
# before it the service account, dots and all (`a.b.shop.sa.weft` is shop's `a.b`). A name
# that would not be a valid host name this way (a label over 63 characters, more than 253 in
# all, or characters a host name cannot hold) becomes `<hash of the ID>.id.weft`, which the
# server resolves among the identities it holds. The two suffixes never overlap.
SNI_SUFFIX = "sa.weft"
SNI_HASHED_SUFFIX = "id.weft"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_MAX_HOST_NAME = 253


def sni_for(identity: str) -> str:
    """The SNI name that asks a peer for `identity`'s certificate (a workload SPIFFE ID);
    ValueError for anything else."""
    spiffe_id = SpiffeId.parse(identity)
    ns, sa = spiffe_id.namespace, spiffe_id.service_account
    if ns is None or sa is None:
        raise ValueError(f"{identity!r} is not a workload identity (/ns/<ns>/sa/<sa>)")
    name = f"{sa}.{ns}.{SNI_SUFFIX}"
    if (
        len(name) <= _MAX_HOST_NAME
        and _DNS_LABEL.fullmatch(ns)
        and all(_DNS_LABEL.fullmatch(label) for label in sa.split("."))
    ):
        return name
    return _hashed_sni(str(spiffe_id))


def _hashed_sni(identity: str) -> str:
    digest = hashlib.sha256(identity.encode()).digest()
    return f"{base64.b32encode(digest).decode().rstrip('=').lower()}.{SNI_HASHED_SUFFIX}"


def identity_from_sni(name: str, trust_domain: str, held: Iterable[str] = ()) -> str | None:
    """The workload identity an SNI name asks for, in `trust_domain`; None if the name is not
    one of ours. A hashed name is looked up among `held` (the identities this node holds)."""
    name = name.lower()
    if name.endswith("." + SNI_HASHED_SUFFIX):
        return next((i for i in held if _hashed_sni(i) == name), None)
    prefix, dot, suffix = name.rpartition(".sa.weft")
    if suffix or not dot:
        return None
    sa, dot, ns = prefix.rpartition(".")
    if not dot or not sa:
        return None
    identity = f"spiffe://{trust_domain}/ns/{ns}/sa/{sa}"
    try:
        return identity if sni_for(identity) == name else None
    except ValueError:
        return None


@dataclass(frozen=True)
class PoolKey:
    source_identity: str
    node_address: str
    destination_identity: str


class Pooled(enum.Enum):
    """What a pooled connection is good for, from facts read off it (`pooled_state`)."""

    ACTIVE = "active"  # carrying streams, room for more: usable
    IDLE = "idle"  # no stream: usable; closed once idle for IDLE_TIMEOUT
    FULL = "full"  # at the peer's SETTINGS_MAX_CONCURRENT_STREAMS: wait or dial another
    DRAINING = "draining"  # the peer sent GOAWAY (or we did): its streams finish, no new ones
    CLOSED = "closed"  # the transport is gone: forget it


def pooled_state(
    *,
    transport_closed: bool,
    protocol_closed: bool,
    open_streams: int,
    max_streams: int,
) -> Pooled:
    """The state of a pooled connection; pure, so every case is a row in a test table."""
    if transport_closed:
        return Pooled.CLOSED
    if protocol_closed:
        return Pooled.DRAINING
    if open_streams >= max_streams:
        return Pooled.FULL
    return Pooled.ACTIVE if open_streams else Pooled.IDLE


USABLE = frozenset({Pooled.ACTIVE, Pooled.IDLE})


def reapable(state: Pooled, idle_for: float, idle_timeout: float = IDLE_TIMEOUT) -> bool:
    """Close it now? An idle connection past its timeout, or a draining one with no streams
    left (GOAWAY received: it will never carry another)."""
    return (state is Pooled.IDLE and idle_for > idle_timeout) or state is Pooled.DRAINING


def state_of(conn: HboneConnection) -> Pooled:
    proto = conn.proto
    assert isinstance(proto, hbone.HboneClient)
    return pooled_state(
        transport_closed=conn.closed.is_set(),
        protocol_closed=proto.closed or proto.draining,  # a GOAWAY: no new stream here
        open_streams=proto.open_streams,
        max_streams=int(proto.conn.remote_settings.max_concurrent_streams),
    )


class Pool:
    def __init__(self, identities: IdentityManager, port: int = hbone.HBONE_PORT) -> None:
        self.identities = identities
        self.port = port
        self._conns: dict[PoolKey, list[HboneConnection]] = {}
        self._dials: dict[PoolKey, asyncio.Task[HboneConnection]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "source": k.source_identity,
                "node": k.node_address,
                "destination": k.destination_identity,
                "connections": len(v),
                "streams": sum(len(c.streams) for c in v),
                "states": sorted(state_of(c).value for c in v),
            }
            for k, v in self._conns.items()
        ]

    def _usable(self, key: PoolKey) -> HboneConnection | None:
        """An open connection for `key` with room for one more stream."""
        for conn in self._conns.get(key, []):
            if state_of(conn) in USABLE:
                return conn
        return None

    async def get(self, key: PoolKey) -> HboneConnection:
        """A usable connection for `key`: a pooled one, else the one being dialled (joining
        it, or starting it). The dial's error is raised to every request that waited for it."""
        if (conn := self._usable(key)) is not None:
            return conn
        dial = self._dials.get(key)
        if dial is None:
            dial = asyncio.create_task(self._dial(key))
            self._dials[key] = dial
            dial.add_done_callback(lambda done: self._dial_ended(key, done))
        # shield: a request that gives up (cancelled) leaves the dial to the others.
        conn = await asyncio.shield(dial)
        return self._usable(key) or conn

    def _dial_ended(self, key: PoolKey, dial: asyncio.Task[HboneConnection]) -> None:
        if self._dials.get(key) is dial:
            del self._dials[key]
        if not dial.cancelled() and (err := dial.exception()) is not None:
            log.debug("pool.dial_failed", node=key.node_address, reason=str(err) or repr(err))

    async def _dial(self, key: PoolKey) -> HboneConnection:
        conn = await self._open(key)
        self._conns.setdefault(key, []).append(conn)
        return conn

    async def _open(self, key: PoolKey) -> HboneConnection:
        ctx = await self.identities.context(key.source_identity, server=False)
        label = f"{key.node_address}->{key.destination_identity}"
        transport, conn = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                lambda: HboneConnection(hbone.HboneClient(), label=label),
                key.node_address,
                self.port,
                ssl=ctx,
                server_hostname=sni_for(key.destination_identity),
            ),
            CONNECT_TIMEOUT,
        )
        try:
            peer = tls.peer_identity(transport.get_extra_info("ssl_object"))
        except CertificateError as err:
            transport.close()
            raise ConnectionRefusedError(f"peer at {key.node_address}: {err.reason}") from None
        if peer != key.destination_identity:
            transport.close()
            raise ConnectionRefusedError(
                f"peer at {key.node_address} is {peer}, not {key.destination_identity}"
            )
        conn.start()
        task = asyncio.create_task(self._forget_when_closed(key, conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info(
            "pool.connected", node=key.node_address, source=key.source_identity, destination=peer
        )
        return conn

    async def _forget_when_closed(self, key: PoolKey, conn: HboneConnection) -> None:
        try:
            await conn.closed.wait()
        finally:
            conns = self._conns.get(key, [])
            if conn in conns:
                conns.remove(conn)
            if not conns:
                self._conns.pop(key, None)

    async def reap(self) -> None:
        """Close connections idle for IDLE_TIMEOUT; run forever."""
        while True:
            await asyncio.sleep(IDLE_TIMEOUT / 4)
            now = asyncio.get_running_loop().time()
            for conns in list(self._conns.values()):
                for conn in list(conns):
                    if not conn.streams and reapable(state_of(conn), now - conn.last_used):
                        conn.close()

    async def close(self) -> None:
        for dial in list(self._dials.values()):
            dial.cancel()
        for conns in list(self._conns.values()):
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.close()
