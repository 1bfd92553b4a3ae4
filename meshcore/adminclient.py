"""GET a weft process's admin API over its unix socket (controller, node agent, ztunnel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp


async def get_json(socket_path: str | Path, path: str, timeout: float = 10) -> Any:
    """The JSON at `path`; raises aiohttp.ClientError or OSError when it cannot be had."""
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with (
        aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session,
        session.get(f"http://weft{path}") as resp,
    ):
        resp.raise_for_status()
        return await resp.json()


async def get_ok(socket_path: str | Path, path: str, timeout: float = 2) -> bool:
    """Does `path` answer 200 (a readiness check)? False on any failure."""
    try:
        connector = aiohttp.UnixConnector(path=str(socket_path))
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session,
            session.get(f"http://weft{path}") as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
