"""Port numbers from text: the one parser for manifests, annotations and CONNECT authorities.

Only ASCII digits are a port. `str.isdigit()` also accepts `²` (which `int()` then refuses)
and fullwidth or Arabic-Indic digits (which `int()` accepts), so a check built on it either
crashes or lets through text that no other mesh component would read as the same port.
"""

from __future__ import annotations

import re

MIN_PORT = 1
MAX_PORT = 65535

# At most five ASCII digits: 65535 has five, and a longer run is never a port.
_PORT = re.compile(r"[0-9]{1,5}")


class PortError(ValueError):
    """Text that is not a port number; the message names the text."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"{text!r} is not a port number: {reason}")


def parse_port(text: str) -> int:
    """`"8080"` -> 8080. ASCII digits only, no sign or spaces, 1 to 65535; else PortError."""
    if not _PORT.fullmatch(text):
        raise PortError(text, "expected 1 to 5 ASCII digits (0-9)")
    port = int(text)
    if not MIN_PORT <= port <= MAX_PORT:
        raise PortError(text, f"must be between {MIN_PORT} and {MAX_PORT}")
    return port


def parse_port_list(text: str) -> tuple[int, ...]:
    """`"80, 443,80"` -> (80, 443): comma separated, spaces around items allowed, sorted and
    without duplicates; empty text is no ports. A bad or empty item raises PortError."""
    if not text.strip(" \t"):
        return ()
    return tuple(sorted({parse_port(item.strip(" \t")) for item in text.split(",")}))
