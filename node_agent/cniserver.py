"""The node agent's end of the CNI plugin (node_agent/cniplugin.py): a unix socket where the
runtime's ADD waits until the new pod's netns is in the capture maps.

One JSON line in (`CniAdd`), one out (`{"ok": true}` or `{"ok": false, "error": ...}`).
Requests are parsed at the edge; their size, the calls in flight and each call's time are
bounded, and every outcome is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter

log = structlog.get_logger("node_agent.cni")

MAX_REQUEST = 16 * 1024
MAX_IN_FLIGHT = 32  # sandboxes the runtime creates at once; past it, "try again"
HANDLE_TIMEOUT = 8.0  # below the plugin's default 10 s, so the plugin hears why

REQUESTS = Counter(
    "weft_agent_cni_requests", "CNI ADD calls from the weft-cni plugin, by result.", ["result"]
)


class CniRequestError(ValueError):
    """A request the plugin should never send; the message names the field."""


@dataclass(frozen=True)
class CniAdd:
    netns: str  # the pod's netns, as the runtime names it (/var/run/netns/cni-..., /proc/N/ns/net)
    pod_uid: str
    pod_namespace: str
    pod_name: str
    ips: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"


def parse_request(raw: bytes) -> CniAdd:
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise CniRequestError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise CniRequestError("not a JSON object")
    fields = {}
    for key in ("netns", "pod_uid", "pod_namespace", "pod_name"):
        value = data.get(key)
        if not isinstance(value, str) or not value or len(value) > 512:
            raise CniRequestError(f"{key}: a non-empty string of at most 512 characters")
        fields[key] = value
    if not os.path.isabs(fields["netns"]):
        raise CniRequestError("netns: an absolute path")
    ips = data.get("ips", [])
    if not isinstance(ips, list) or len(ips) > 16 or not all(isinstance(i, str) for i in ips):
        raise CniRequestError("ips: a list of at most 16 addresses")
    return CniAdd(**fields, ips=tuple(ips))


Handler = Callable[[CniAdd], Awaitable[str]]  # "" when done, else why not


class CniServer:
    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path
        self.handle = handle
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST
        )
        os.chmod(self.path, 0o600)  # the runtime runs the plugin as root; nobody else
        log.info("cni.listening", socket=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reply: dict[str, Any]
        try:
            reply = await self._answer(reader)
        except Exception as err:  # one bad call must not take the listener down
            log.exception("cni.failed_unexpectedly")
            REQUESTS.labels("error").inc()
            reply = {"ok": False, "error": f"node agent error: {err}"}
        with contextlib.suppress(OSError):
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        if self._slots.locked():
            REQUESTS.labels("busy").inc()
            return {"ok": False, "error": f"{MAX_IN_FLIGHT} pods already being set up; retry"}
        async with self._slots:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\n"), 2.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                REQUESTS.labels("bad_request").inc()
                return {"ok": False, "error": "no request line (at most 16 KiB, newline ended)"}
            if len(raw) > MAX_REQUEST:
                REQUESTS.labels("bad_request").inc()
                return {"ok": False, "error": f"request over {MAX_REQUEST} bytes"}
            try:
                request = parse_request(raw)
            except CniRequestError as err:
                REQUESTS.labels("bad_request").inc()
                return {"ok": False, "error": f"bad request: {err}"}
            try:
                error = await asyncio.wait_for(self.handle(request), HANDLE_TIMEOUT)
            except TimeoutError:
                error = f"not done within {HANDLE_TIMEOUT:.0f} s"
            REQUESTS.labels("refused" if error else "done").inc()
            log.info("cni.add", pod=request.label, uid=request.pod_uid, error=error or None)
            return {"ok": True} if not error else {"ok": False, "error": error}
