"""Errors of the controller's build: a valid resource that cannot become mesh state."""

from __future__ import annotations


class BuildError(Exception):
    """A valid resource that cannot be turned into mesh state: says which field and why."""

    def __init__(self, reason: str, *, field: str = "") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)
