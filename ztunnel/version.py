"""The ztunnel's code version, reported in its handover hello and /config_dump.

The package's version, plus BUILD when set: an upgrade test runs a copy of the tree whose
BUILD differs, a real other code version, and checks which one serves after the handover.
"""

from __future__ import annotations

from meshcore.configclient import WEFT_VERSION

BUILD = ""
VERSION = f"{WEFT_VERSION}+{BUILD}" if BUILD else WEFT_VERSION
