from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab

MANIFESTS = Path(__file__).parent / "manifests"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """One two-node lab per test module, removed even when a test fails."""
    lab = Lab(f"weft-it-{RUN_ID}-{abs(hash(request.module.__name__)) % 1000}")
    try:
        lab.run(
            "up", "--nodes", "2", "--manifests", str(MANIFESTS / "cluster.yaml"), "--wait", "60"
        )
        yield lab
    finally:
        lab.force_down()
