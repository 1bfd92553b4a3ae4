"""Talk to a running lab daemon over its unix socket."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from lab.state import LabPaths


class LabUnavailable(RuntimeError):
    pass


class LabRequestFailed(RuntimeError):
    def __init__(self, status: int, errors: list[dict[str, str]]) -> None:
        self.status = status
        self.errors = errors
        super().__init__("\n".join(e.get("message", "") for e in errors))


async def _request(
    paths: LabPaths, method: str, path: str, body: Any = None, timeout: float = 300
) -> Any:
    if not paths.socket.exists():
        raise LabUnavailable(f"no lab daemon socket at {paths.socket}")
    connector = aiohttp.UnixConnector(path=str(paths.socket))
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as session,
            session.request(method, f"http://lab{path}", json=body) as resp,
        ):
            data = await resp.json()
            if resp.status >= 400:
                raise LabRequestFailed(resp.status, data.get("errors", []))
            return data
    except (aiohttp.ClientConnectionError, FileNotFoundError) as err:
        raise LabUnavailable(f"lab daemon not answering at {paths.socket}: {err}") from None


def request(paths: LabPaths, method: str, path: str, body: Any = None, timeout: float = 300) -> Any:
    return asyncio.run(_request(paths, method, path, body, timeout))
