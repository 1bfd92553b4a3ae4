"""HBONE connections to other nodes, shared by streams, keyed by
(source identity, destination node address, destination identity).

States: a key has zero or more connections; a connection is *usable* while it is open and
below the peer's stream limit, *idle* while it has no stream, and is closed after
IDLE_TIMEOUT of idleness or when the peer goes away. Opening is single-flight per key.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog

from meshcore import hbone
from meshcore.identity.certs import CertificateError
from ztunnel import tls
from ztunnel.hbone_conn import HboneConnection
from ztunnel.identity import IdentityManager

log = structlog.get_logger("ztunnel.pool")

IDLE_TIMEOUT = 60.0
CONNECT_TIMEOUT = 5.0


def sni_for(identity: str) -> str:
    """An SNI name for a workload identity (`<sa>.<ns>.sa.weft`): the server picks the
    certificate to present from it."""
    parts = identity.split("/")
    ns, sa = parts[parts.index("ns") + 1], parts[parts.index("sa") + 1]
    return f"{sa}.{ns}.sa.weft"


def identity_from_sni(name: str, trust_domain: str) -> str | None:
    labels = name.split(".")
    if len(labels) != 4 or labels[2:] != ["sa", "weft"]:
        return None
    return f"spiffe://{trust_domain}/ns/{labels[1]}/sa/{labels[0]}"


@dataclass(frozen=True)
class PoolKey:
    source_identity: str
    node_address: str
    destination_identity: str


class Pool:
    def __init__(self, identities: IdentityManager, port: int = hbone.HBONE_PORT) -> None:
        self.identities = identities
        self.port = port
        self._conns: dict[PoolKey, list[HboneConnection]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "source": k.source_identity,
                "node": k.node_address,
                "destination": k.destination_identity,
                "connections": len(v),
                "streams": sum(len(c.streams) for c in v),
            }
            for k, v in self._conns.items()
        ]

    def _usable(self, key: PoolKey) -> HboneConnection | None:
        """An open connection for `key` with room for one more stream."""
        for conn in self._conns.get(key, []):
            if (
                not conn.closed.is_set()
                and isinstance(conn.proto, hbone.HboneClient)
                and conn.proto.can_open_stream
            ):
                return conn
        return None

    async def get(self, key: PoolKey) -> HboneConnection:
        if (conn := self._usable(key)) is not None:
            return conn
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if (conn := self._usable(key)) is not None:
                return conn
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
                    if not conn.streams and now - conn.last_used > IDLE_TIMEOUT:
                        conn.close()

    async def close(self) -> None:
        for conns in list(self._conns.values()):
            for conn in conns:
                with contextlib.suppress(Exception):
                    conn.close()
