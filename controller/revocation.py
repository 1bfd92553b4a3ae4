"""Nodes the controller no longer serves, whatever credential they present.

`<state dir>/revoked-nodes`: one node name per line, `#` starts a comment. Read again when
it changes (one stat per check). A revoked node is refused on every RPC, including the
renewal of its credential, and its open config stream is ended within REVOCATION_CHECK
seconds; its credential then expires within a day and cannot be renewed.
`python -m controller revoke-node` adds a name.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import structlog

log = structlog.get_logger("controller.revocation")

REVOKED_NODES_FILE = "revoked-nodes"
REVOCATION_CHECK = 5.0  # seconds: how long an open stream of a revoked node may go on


def parse_revoked(text: str) -> frozenset[str]:
    """Node names from the file's text: one per line, blank lines and `#` comments skipped."""
    names = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(n for n in names if n)


class RevokedNodes:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._nodes: frozenset[str] = frozenset()

    def __contains__(self, node: object) -> bool:
        return node in self.current()

    def current(self) -> frozenset[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                nodes = parse_revoked(self.path.read_text()) if stamp else frozenset()
            except (OSError, UnicodeDecodeError) as err:
                # Unreadable: keep what was revoked; never let a bad file un-revoke a node.
                log.error("revocation.unreadable", path=str(self.path), reason=str(err))
                self._stamp = stamp  # said once per change of the file
                return self._nodes
            if nodes != self._nodes:
                log.info("revocation.changed", revoked=sorted(nodes))
            self._stamp, self._nodes = stamp, nodes
        return self._nodes


def revoke(path: Path, node: str) -> None:
    """Add `node` to the file (replaced atomically)."""
    text = path.read_text() if path.exists() else ""
    if node in parse_revoked(text):
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text + ("" if not text or text.endswith("\n") else "\n") + node + "\n")
    os.replace(tmp, path)
