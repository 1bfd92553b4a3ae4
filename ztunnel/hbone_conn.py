"""An HBONE connection over asyncio streams: the I/O around meshcore.hbone.

One reader task per TLS connection turns bytes into events and hands each stream its data;
`Stream` gives a TCP-like async API (read, write with flow control, half-close, abort).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from meshcore import hbone

log = structlog.get_logger("ztunnel.hbone")

READ_SIZE = 1024 * 1024


class StreamClosed(ConnectionError):
    pass


class Stream:
    def __init__(self, conn: HboneConnection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.response: asyncio.Future[hbone.ConnectResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self.was_reset = False
        self.bytes_in = 0
        self.bytes_out = 0

    async def read(self) -> bytes:
        """Next chunk; b"" once the peer half-closed; StreamClosed if it was reset."""
        chunk = await self._chunks.get()
        if chunk is None:
            raise StreamClosed(f"stream {self.id} was reset")
        if chunk:
            self.bytes_in += len(chunk)
            self.conn.proto.acknowledge(self.id, len(chunk))
            self.conn.flush()
        return chunk

    async def write(self, data: bytes) -> None:
        while data:
            if self.was_reset or self.conn.proto.closed:
                raise StreamClosed(f"stream {self.id} is closed")
            sent = self.conn.proto.send(self.id, data) if self.conn.proto.window(self.id) else 0
            if sent:
                self.bytes_out += sent
                data = data[sent:] if sent < len(data) else b""
                self.conn.flush()
                await self.conn.drain()
            else:
                await self.conn.window_opened()

    def end(self) -> None:
        self.conn.proto.end(self.id)
        self.conn.flush()

    def abort(self) -> None:
        self.conn.proto.reset(self.id)
        self.conn.flush()

    # called by the connection's reader
    def _data(self, chunk: bytes) -> None:
        self._chunks.put_nowait(chunk)

    def _ended(self) -> None:
        self._chunks.put_nowait(b"")

    def _reset(self) -> None:
        self.was_reset = True
        self._chunks.put_nowait(None)
        if not self.response.done():
            self.response.set_exception(StreamClosed(f"stream {self.id} was reset"))


OnConnect = Callable[[Stream, hbone.Target, dict[str, str]], Awaitable[None]]


class HboneConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        proto: hbone.HboneClient | hbone.HboneServer,
        *,
        on_connect: OnConnect | None = None,
        label: str = "",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.proto = proto
        self.on_connect = on_connect
        self.label = label
        self.streams: dict[int, Stream] = {}
        self._window = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.last_used = asyncio.get_running_loop().time()

    def flush(self) -> None:
        data = self.proto.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def window_opened(self) -> None:
        self._window.clear()
        await self._window.wait()

    def open(self, target: hbone.Target, headers: dict[str, str]) -> Stream:
        assert isinstance(self.proto, hbone.HboneClient)
        stream_id = self.proto.connect(target, headers)
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.last_used = asyncio.get_running_loop().time()
        self.flush()
        return stream

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.last_used = asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Read until the connection ends; then every open stream is reset."""
        try:
            while not self.proto.closed:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                for event in self.proto.receive(data):
                    self._dispatch(event)
                self.flush()
        except (ConnectionError, OSError) as err:
            log.debug("hbone.read_failed", connection=self.label, error=str(err))
        finally:
            for stream in list(self.streams.values()):
                stream._reset()
            self.streams.clear()
            self._window.set()
            self.closed.set()
            self.writer.close()

    def _dispatch(self, event: hbone.Event) -> None:
        if isinstance(event, hbone.ConnectRequested):
            new_stream = Stream(self, event.stream_id)
            self.streams[event.stream_id] = new_stream
            if self.on_connect is not None:
                task: asyncio.Task[None] = asyncio.ensure_future(
                    self.on_connect(new_stream, event.target, event.headers)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        if isinstance(event, hbone.WindowOpened):
            self._window.set()
            return
        if isinstance(event, hbone.BadRequest):
            log.warning("hbone.bad_request", connection=self.label, reason=event.reason)
            return
        if isinstance(event, hbone.ConnectionClosed):
            if event.error:
                log.warning("hbone.connection_error", connection=self.label, reason=event.reason)
            return
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        if isinstance(event, hbone.StreamData):
            stream._data(event.data)
        elif isinstance(event, hbone.StreamEnded):
            stream._ended()
        elif isinstance(event, hbone.StreamReset):
            self.streams.pop(event.stream_id, None)
            stream._reset()
        elif isinstance(event, hbone.ConnectResponse) and not stream.response.done():
            stream.response.set_result(event)

    def close(self) -> None:
        self.proto.close()
        self.flush()
        self.writer.close()


async def relay(
    tcp_reader: asyncio.StreamReader, tcp_writer: asyncio.StreamWriter, stream: Stream
) -> None:
    """Splice a TCP connection and an HBONE stream both ways, half-closes included. A reset
    on either side resets the other."""

    async def tcp_to_stream() -> None:
        while data := await tcp_reader.read(READ_SIZE):
            await stream.write(data)
        stream.end()

    async def stream_to_tcp() -> None:
        while data := await stream.read():
            tcp_writer.write(data)
            await tcp_writer.drain()
        if tcp_writer.can_write_eof():
            tcp_writer.write_eof()

    up = asyncio.create_task(tcp_to_stream())
    down = asyncio.create_task(stream_to_tcp())
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(up, down)
    except (ConnectionError, OSError, StreamClosed):
        stream.abort()
        tcp_writer.transport.abort()
    finally:
        up.cancel()
        down.cancel()
        stream.conn.forget(stream)
        tcp_writer.close()
