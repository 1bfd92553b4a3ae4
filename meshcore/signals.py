"""Stopping a weft process cleanly on SIGTERM (its supervisor, Kubernetes) or SIGINT."""

from __future__ import annotations

import asyncio
import signal


def stop_requested() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (in the running loop), for the process to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_until_stopped(work: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Wait until `work` ends or a stop is requested; `work` is then cancelled if still on."""
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    work.cancel()
