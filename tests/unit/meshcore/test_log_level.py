"""WEFT_LOG_LEVEL, as the manifests and the Helm chart set it."""

from __future__ import annotations

import logging

import pytest

from meshcore.logs import level_from_env


@pytest.mark.parametrize(
    ("value", "level"),
    [("", logging.INFO), ("debug", logging.DEBUG), ("WARNING", logging.WARNING),
     (" error ", logging.ERROR), ("loud", logging.INFO)],
)  # fmt: skip
def test_level_from_env(monkeypatch: pytest.MonkeyPatch, value: str, level: int) -> None:
    monkeypatch.setenv("WEFT_LOG_LEVEL", value)
    assert level_from_env() == level
