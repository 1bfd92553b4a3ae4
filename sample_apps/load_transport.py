"""How the load client gets one response: HTTP/1.1 through aiohttp, or h2c through h2.

Both transports raise `RequestError` with an `ErrorKind` when no HTTP answer came back;
the caller owns the per-request timeout (it wraps `get()` in `asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from sample_apps.h2client import H2ClientProtocol, Reply, StreamFailed
from sample_apps.httpwire import HttpTarget
from sample_apps.load_stats import ErrorKind

READ_SIZE = 65536


@dataclass(frozen=True)
class HttpReply:
    status: int
    pod: str | None
    version: str | None


class RequestError(Exception):
    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


class Transport(Protocol):
    protocol: str

    async def get(self) -> HttpReply: ...

    async def close(self) -> None: ...


class H1Transport:
    """aiohttp with a kept-alive pool, or one connection per request (`new_connections`)."""

    protocol = "HTTP/1.1"

    def __init__(self, target: HttpTarget, new_connections: bool) -> None:
        self._url = target.url
        self._new_connections = new_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No pool limit: the load client's own schedule decides the concurrency.
            connector = aiohttp.TCPConnector(limit=0, force_close=self._new_connections)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                headers={"user-agent": "weft-load-client"},
            )
        return self._session

    async def get(self) -> HttpReply:
        try:
            async with self._get_session().get(self._url, allow_redirects=False) as resp:
                await resp.read()
                return HttpReply(
                    status=resp.status,
                    pod=resp.headers.get("x-weft-pod"),
                    version=resp.headers.get("x-weft-version"),
                )
        except aiohttp.ClientConnectorError as exc:
            raise RequestError(ErrorKind.CONNECT, str(exc)) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise RequestError(ErrorKind.DISCONNECTED, str(exc) or "server disconnected") from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
            raise RequestError(ErrorKind.PROTOCOL, str(exc)) from exc
        except (aiohttp.ClientOSError, ConnectionError) as exc:
            raise RequestError(ErrorKind.DISCONNECTED, str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise RequestError(ErrorKind.OTHER, f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class H2Connection:
    """One h2c (prior knowledge) connection over asyncio streams, multiplexing requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._proto = H2ClientProtocol()
        self._waiters: dict[int, asyncio.Future[Reply]] = {}
        self._slots = asyncio.Condition()  # signalled whenever a stream ends
        self._proto.initiate()
        self._flush()
        self._read_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(cls, host: str, port: int) -> H2Connection:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise RequestError(ErrorKind.CONNECT, str(exc)) from exc
        return cls(reader, writer)

    @property
    def usable(self) -> bool:
        return self._proto.usable

    async def get(self, authority: str, path: str) -> HttpReply:
        async with self._slots:
            # Respect the server's MAX_CONCURRENT_STREAMS instead of failing with a reset.
            await self._slots.wait_for(lambda: self._proto.can_open_stream or not self.usable)
            if not self._proto.can_open_stream:
                raise RequestError(ErrorKind.DISCONNECTED, "connection closed before sending")
            stream_id = self._proto.send_request("GET", authority, path)
            waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._waiters[stream_id] = waiter
            self._flush()
        try:
            reply = await waiter
        except asyncio.CancelledError:
            self._waiters.pop(stream_id, None)
            self._proto.cancel(stream_id)
            self._flush()
            raise
        return HttpReply(reply.status, reply.header("x-weft-pod"), reply.header("x-weft-version"))

    def _flush(self) -> None:
        data = self._proto.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read_loop(self) -> None:
        try:
            while not self._proto.closed:
                try:
                    data = await self._reader.read(READ_SIZE)
                except OSError:
                    data = b""
                finished = self._proto.receive_data(data)
                self._flush()
                for item in finished:
                    waiter = self._waiters.pop(item.stream_id, None)
                    if waiter is None or waiter.done():
                        continue
                    if isinstance(item, StreamFailed):
                        waiter.set_exception(RequestError(item.kind, item.detail))
                    else:
                        waiter.set_result(item)
                async with self._slots:
                    self._slots.notify_all()
        finally:
            self._fail_all("connection closed")
            self._writer.close()

    def _fail_all(self, detail: str) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(RequestError(ErrorKind.DISCONNECTED, detail))
        self._waiters.clear()

    async def close(self) -> None:
        self._proto.close()
        self._flush()
        self._read_task.cancel()
        # wait(), not await: our own cancellation must still propagate if it arrives now.
        await asyncio.wait([self._read_task])


class H2Transport:
    """h2c with one shared, multiplexed connection (reopened when it dies), or one per request."""

    protocol = "HTTP/2"

    def __init__(self, target: HttpTarget, new_connections: bool) -> None:
        self._target = target
        self._new_connections = new_connections
        self._shared: H2Connection | None = None
        self._connecting = asyncio.Lock()

    async def get(self) -> HttpReply:
        target = self._target
        if self._new_connections:
            conn = await H2Connection.open(target.host, target.port)
            try:
                return await conn.get(target.authority, target.path)
            finally:
                await conn.close()
        async with self._connecting:
            if self._shared is None or not self._shared.usable:
                if self._shared is not None:
                    await self._shared.close()
                self._shared = None
                self._shared = await H2Connection.open(target.host, target.port)
            conn = self._shared
        return await conn.get(target.authority, target.path)

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()


def make_transport(target: HttpTarget, http2: bool, new_connections: bool) -> Transport:
    if http2:
        return H2Transport(target, new_connections)
    return H1Transport(target, new_connections)
