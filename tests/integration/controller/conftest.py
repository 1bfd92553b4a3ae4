from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from controller_harness import BASE, ControllerProcess


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    ctl = ControllerProcess(tmp_path)
    for name, text in BASE.items():
        ctl.write(name, text)
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()
