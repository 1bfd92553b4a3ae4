"""Tapping a lab: every node's ztunnel (its admin socket) and every waypoint replica (its
admin listener, 127.0.0.1:15000 inside the pod's network namespace) streamed at once and
merged into one series of access events (meshcore.accessevents, served by meshcore.tapserver).

Each source is read with a plain HTTP/1.0 GET (the response is the ndjson body until the
server closes it, no chunking). The lab is looked at again every REFRESH seconds: a new
waypoint replica or node is tapped when it appears, one that went away is dropped, and a
source whose stream ended is dialled again until it is gone from the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import structlog

from lab import client
from lab.config import STATE_ROOT
from lab.state import LabPaths
from meshcore.accessevents import TapFilter
from meshcore.meshstate import GATEWAY_NAME_LABEL
from meshcore.nsenter import run_in_netns

log = structlog.get_logger("weftctl.tap")

WAYPOINT_ADMIN = ("127.0.0.1", 15000)
REFRESH = 2.0  # seconds between looks at the lab's nodes and waypoint replicas
HELLO_TIMEOUT = 10.0  # for every source to say hello when the tap starts
RETRY = 1.0  # seconds before dialling a source whose stream ended again
MAX_MERGED = 4096  # events waiting for the reader; past it, dropped and counted
MAX_LINE = 64 * 1024  # an ndjson line longer than this ends that source's stream
MAX_ERROR_BODY = 4096


class TapError(Exception):
    """The tap could not start; the message names the source and what to do."""


@dataclass(frozen=True)
class TapSource:
    """One process to tap: a ztunnel by its admin socket, or a waypoint replica by its pod's
    network namespace (its admin listener is on the pod's loopback)."""

    name: str  # "ztunnel node-1", "waypoint demo/waypoint-7f9c"
    component: str
    socket: Path | None = None
    netns: str = ""  # /run/netns/<name>


def lab_sources(status: dict[str, Any], paths: LabPaths) -> list[TapSource]:
    """What to tap in a lab, from its `/v1/status`: each node's ztunnel and each running
    waypoint replica."""
    out = [
        TapSource(f"ztunnel {n['name']}", "ztunnel", socket=paths.ztunnel_socket(n["name"]))
        for n in status.get("nodes", [])
    ]
    for pod in status.get("pods", []):
        if GATEWAY_NAME_LABEL not in pod.get("labels", {}) or not pod.get("netns"):
            continue
        if pod.get("phase") != "Running":
            continue
        out.append(
            TapSource(
                f"waypoint {pod['namespace']}/{pod['name']}",
                "waypoint",
                netns=f"/run/netns/{pod['netns']}",
            )
        )
    return out


def _dial_in_netns(netns: str, timeout: float) -> socket.socket:
    def dial() -> socket.socket:
        return socket.create_connection(WAYPOINT_ADMIN, timeout=timeout)

    sock = run_in_netns(netns, dial)  # the socket stays in the pod's namespace
    sock.setblocking(False)
    return sock


async def open_tap(
    source: TapSource, flt: TapFilter, timeout: float = HELLO_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
    """Subscribe to one source: its stream, after the hello line (returned). TapError when
    it refuses (the server's reason) or cannot be reached."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if source.socket is not None:
                reader, writer = await asyncio.open_unix_connection(
                    str(source.socket), limit=MAX_LINE
                )
            else:
                sock = await asyncio.to_thread(_dial_in_netns, source.netns, timeout)
                reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
            query = urlencode(flt.to_query())
            writer.write(f"GET /tap?{query} HTTP/1.0\r\nHost: weft\r\n\r\n".encode())
            status_line = (await reader.readline()).decode("latin-1")
            while (await reader.readline()).strip():  # headers
                pass
            parts = status_line.split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if status != 200:
                body = (await reader.read(MAX_ERROR_BODY)).decode("utf-8", "replace")
                try:
                    reason = json.loads(body).get("error", body)
                except (ValueError, AttributeError):
                    reason = body.strip() or status_line.strip() or "no answer"
                raise TapError(f"{source.name} refused the tap ({status}): {reason}")
            hello = json.loads(await reader.readline())
            if not isinstance(hello, dict) or hello.get("type") != "hello":
                raise TapError(f"{source.name}: no hello line; is it a weft {source.component}?")
            return reader, writer, hello
    except TapError:
        if writer is not None:
            writer.close()
        raise
    except (OSError, TimeoutError, ValueError) as err:
        if writer is not None:
            writer.close()
        where = source.socket or f"{WAYPOINT_ADMIN[0]}:{WAYPOINT_ADMIN[1]} in {source.netns}"
        raise TapError(
            f"cannot tap {source.name} at {where} ({err or type(err).__name__}); is the lab up?"
        ) from None


Notice = Callable[[str], None]


class LabTap:
    """Taps every node's ztunnel and every waypoint replica of a lab and merges their events.

    `async with LabTap(lab, flt) as tap: async for event in tap: ...` where each event is the
    `{"type": "event", ...AccessEvent}` dict a source sent. Entering returns once every
    source said hello (TapError naming those that did not). `dropped` counts events lost,
    by source (a source's queue, or this merge, was full); `notice` is told when that
    happens and when sources come and go."""

    def __init__(
        self,
        lab_name: str,
        flt: TapFilter,
        *,
        state_root: Path | None = None,
        notice: Notice | None = None,
        refresh: float = REFRESH,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        root = state_root or Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT))
        self.paths = LabPaths.for_lab(lab_name, root)
        self.lab_name = lab_name
        self.filter = flt
        self.notice = notice or (lambda _text: None)
        self.refresh = refresh
        self.hello_timeout = hello_timeout
        self.dropped: dict[str, int] = {}
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_MERGED)
        self._tasks: dict[TapSource, asyncio.Task[None]] = {}
        self._refresher: asyncio.Task[None] | None = None

    @property
    def sources(self) -> list[str]:
        return sorted(s.name for s in self._tasks)

    async def _discover(self) -> list[TapSource]:
        try:
            status = await asyncio.to_thread(client.request, self.paths, "GET", "/v1/status")
        except (client.LabUnavailable, client.LabRequestFailed) as err:
            raise TapError(f"lab {self.lab_name!r}: {err}; is it up? (`weftctl lab up`)") from None
        return lab_sources(status, self.paths)

    async def __aenter__(self) -> LabTap:
        sources = await self._discover()
        # a source that refuses or is not listening yet (a replica starting) is asked again
        # until hello_timeout; then the tap fails, naming each one that never said hello
        deadline = asyncio.get_running_loop().time() + self.hello_timeout
        pending, errors = list(sources), {}
        while pending:
            opened = await asyncio.gather(
                *(open_tap(s, self.filter) for s in pending), return_exceptions=True
            )
            for source, result in zip(pending, opened, strict=True):
                if isinstance(result, TapError):
                    errors[source] = str(result)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    errors.pop(source, None)
                    self._start(source, result[0], result[1])
            pending = [s for s in pending if s in errors]
            if pending and asyncio.get_running_loop().time() + RETRY > deadline:
                await self.__aexit__()
                raise TapError("\n".join(errors[s] for s in pending))
            if pending:
                await asyncio.sleep(RETRY / 2)
        self._refresher = asyncio.create_task(self._refresh())
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [*self._tasks.values(), *([self._refresher] if self._refresher else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self._queue.get()

    # --- sources --------------------------------------------------------------------------

    def _start(
        self,
        source: TapSource,
        reader: asyncio.StreamReader | None = None,
        writer: asyncio.StreamWriter | None = None,
    ) -> None:
        self._tasks[source] = asyncio.create_task(self._follow(source, reader, writer))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)
            try:
                wanted = set(await self._discover())
            except TapError as err:
                self.notice(str(err))
                continue
            for source in wanted - set(self._tasks):
                self.notice(f"tapping {source.name}")
                self._start(source)
            for source in set(self._tasks) - wanted:
                self.notice(f"{source.name} is gone")
                self._tasks.pop(source).cancel()

    async def _follow(
        self,
        source: TapSource,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter | None,
    ) -> None:
        """Read one source for as long as it is wanted, dialling it again when its stream
        ends."""
        while True:
            if reader is None or writer is None:
                try:
                    reader, writer, _hello = await open_tap(source, self.filter)
                except TapError as err:
                    log.debug("tap.source_unreachable", source=source.name, error=str(err))
                    await asyncio.sleep(RETRY)
                    continue
            try:
                await self._read(source, reader)
            except (OSError, ValueError) as err:
                log.debug("tap.source_failed", source=source.name, error=str(err))
            finally:
                writer.close()
            reader = writer = None
            await asyncio.sleep(RETRY)

    async def _read(self, source: TapSource, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            item = json.loads(line)
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "event":
                try:
                    self._queue.put_nowait(item)
                except asyncio.QueueFull:
                    self._lost(source, 1)
            elif kind == "dropped":
                self._lost(source, int(item.get("count", 0)))

    def _lost(self, source: TapSource, count: int) -> None:
        first = source.name not in self.dropped
        self.dropped[source.name] = self.dropped.get(source.name, 0) + count
        if first or self.dropped[source.name] % 1000 < count:
            self.notice(f"{source.name}: {self.dropped[source.name]} events dropped so far")
