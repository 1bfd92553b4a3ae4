"""Shared test plumbing: a per-run id so parallel runs never collide, root checks."""

from __future__ import annotations

import os
import secrets

import pytest

RUN_ID = secrets.token_hex(2)

# `weftctl lab up` runs a Prometheus by default; the tests' labs go without one (45 MB and a
# process each) unless a test asks with --prometheus, which wins over the environment.
os.environ.setdefault("WEFT_LAB_PROMETHEUS", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: network namespaces, cgroups, eBPF")
    for item in items:
        if "integration" in item.keywords or "e2e" in item.keywords:
            item.add_marker(skip)
