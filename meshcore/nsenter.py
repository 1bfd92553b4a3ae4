"""Run a function inside another network namespace, on a throwaway thread.

setns(CLONE_NEWNET) changes only the calling thread, so the caller's threads (and its
asyncio loop) stay where they were. Sockets made inside keep their namespace afterwards.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def run_in_netns(path: Path | str, fn: Callable[[], T]) -> T:
    """Call `fn` in the network namespace at `path` (/run/netns/NAME, /proc/PID/ns/net)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            there = os.open(path, os.O_RDONLY)
            try:
                _setns(there)
            finally:
                os.close(there)
            try:
                result.append(fn())
            finally:
                _setns(own)
        except BaseException as err:  # handed to the caller's thread below
            failure.append(err)
        finally:
            os.close(own)

    thread = threading.Thread(target=target, name=f"netns:{path}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
