"""The revoked-nodes file: parsed strictly enough, re-read when it changes, never emptied by a
read error."""

from __future__ import annotations

from pathlib import Path

from controller.revocation import RevokedNodes, parse_revoked, revoke


def test_the_file_lists_one_node_per_line_with_comments() -> None:
    text = "node-1\n\n  node-2  # lost its disk\n# node-3\n"
    assert parse_revoked(text) == {"node-1", "node-2"}


def test_revoking_adds_a_node_once_and_a_running_controller_sees_it(tmp_path: Path) -> None:
    path = tmp_path / "revoked-nodes"
    revoked = RevokedNodes(path)
    assert "node-1" not in revoked  # no file: nobody is revoked
    revoke(path, "node-1")
    revoke(path, "node-1")
    assert "node-1" in revoked and "node-2" not in revoked
    revoke(path, "node-2")
    assert revoked.current() == {"node-1", "node-2"}
    assert path.read_text() == "node-1\nnode-2\n"


def test_an_unreadable_file_keeps_what_was_revoked(tmp_path: Path) -> None:
    path = tmp_path / "revoked-nodes"
    revoke(path, "node-1")
    revoked = RevokedNodes(path)
    assert "node-1" in revoked
    path.write_bytes(b"\xff\xfe not text")
    assert "node-1" in revoked
