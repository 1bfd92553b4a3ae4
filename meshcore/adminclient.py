"""GET a weft process's admin API over its unix socket (controller, node agent, ztunnel).
The server side is meshcore.adminserver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp


def _session(socket_path: str | Path, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(socket_path)),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def get_json(socket_path: str | Path, path: str, timeout: float = 10) -> Any:
    """The JSON at `path`; raises aiohttp.ClientError or OSError when it cannot be had."""
    async with _session(socket_path, timeout) as session, session.get(f"http://weft{path}") as resp:
        resp.raise_for_status()
        return await resp.json()


async def get_ok(socket_path: str | Path, path: str, timeout: float = 2) -> bool:
    """Does `path` answer 200 (a readiness check)? False on any failure."""
    try:
        async with (
            _session(socket_path, timeout) as session,
            session.get(f"http://weft{path}") as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
