"""Reading a weft process's admin API from the CLI: a clear error, not a traceback, when
the process cannot be reached."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiohttp
import click


def fetch(get: Coroutine[Any, Any, Any], what: str, where: object) -> Any:
    """Run `get` (an admin API call) for the CLI; ClickException naming `what` (the
    controller, a node's agent...) and `where` it was looked for when it fails."""
    try:
        return asyncio.run(get)
    except (aiohttp.ClientError, OSError) as err:
        raise click.ClickException(
            f"cannot reach {what} at {where} ({err}); is the lab up?"
        ) from None
