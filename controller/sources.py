"""Where the controller reads the cluster from. Every source yields batches of changes.

`LocalSource` watches a folder of Kubernetes YAML (the lab's, or any). Watching a real
Kubernetes API is one more implementation of the same interface (a later issue).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from meshcore.resources import Document, ManifestError, documents_from_text
from meshcore.resources.loader import MANIFEST_SUFFIXES


@dataclass(frozen=True)
class SourceChange:
    """What one source file (or watch key) now holds: documents, a file-level error, or
    nothing (`removed`)."""

    source: str
    documents: list[Document] | ManifestError | None

    @property
    def removed(self) -> bool:
        return self.documents is None


class Source(Protocol):
    def batches(self) -> AsyncIterator[list[SourceChange]]:
        """Yield the whole current content first, then every later change, in batches."""
        ...


class LocalSource:
    """Polls a folder: a changed directory mtime, or a file's (mtime, size, inode), triggers a
    re-read of that file only. Writers should replace files atomically (write + rename)."""

    # Writers that replace files (rename) change the folder's mtime, which is one stat to
    # check; a full scan (one stat per file) catches in-place edits at this slower pace.
    FULL_SCAN_EVERY = 2.0

    def __init__(self, folder: Path, interval: float = 0.1) -> None:
        self.folder = folder
        self.interval = interval
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._dir_stamp: tuple[int, ...] = ()
        self._last_full = 0.0

    def _dir_stamps(self) -> tuple[int, ...]:
        stamps = []
        for dirpath, _dirs, _files in os.walk(self.folder):
            try:
                stamps.append(os.stat(dirpath).st_mtime_ns)
            except FileNotFoundError:
                continue
        return tuple(stamps)

    def _scan(self) -> dict[str, tuple[int, int, int]]:
        found: dict[str, tuple[int, int, int]] = {}
        if not self.folder.is_dir():
            return found
        for dirpath, _dirs, files in os.walk(self.folder):
            for name in files:
                if not name.endswith(MANIFEST_SUFFIXES):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                found[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return found

    def _read(self, path: str) -> list[Document] | ManifestError:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as err:
            return ManifestError(f"cannot read: {err}", source=path)
        try:
            return documents_from_text(text, path)
        except ManifestError as err:
            return err

    def poll(self) -> list[SourceChange]:
        now = time.monotonic()
        stamp = self._dir_stamps()
        if stamp == self._dir_stamp and now - self._last_full < self.FULL_SCAN_EVERY:
            return []
        # Timestamps are only as fine as the kernel's clock tick: a folder changed in the
        # last few milliseconds may change again without its mtime moving, so trust the
        # stamp only once it is old enough.
        settled = stamp and time.time() - max(stamp) / 1e9 > 0.05
        self._dir_stamp, self._last_full = (stamp if settled else ()), now
        current = self._scan()
        changes = [
            SourceChange(path, self._read(path))
            for path, stamp in sorted(current.items())
            if self._seen.get(path) != stamp
        ]
        changes += [SourceChange(path, None) for path in sorted(self._seen.keys() - current)]
        self._seen = current
        return changes

    async def batches(self) -> AsyncIterator[list[SourceChange]]:
        yield await asyncio.to_thread(self.poll)
        while True:
            await asyncio.sleep(self.interval)
            changes = await asyncio.to_thread(self.poll)
            if changes:
                yield changes
