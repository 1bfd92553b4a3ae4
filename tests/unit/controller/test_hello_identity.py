"""What a subscriber says it is in its Hello (component, weft version), as the controller keeps
it for /debug/nodes: only a component its credential can be, and a bounded version."""

from __future__ import annotations

import pytest

from controller.authz import CallerKind
from controller.server import WEFT_VERSION_MAX, hello_identity


@pytest.mark.parametrize(
    ("kind", "component", "kept"),
    [
        (CallerKind.NODE, "agent", "agent"),
        (CallerKind.NODE, "ztunnel", "ztunnel"),
        (CallerKind.NODE, "", ""),  # an older node that does not say
        (CallerKind.WAYPOINT, "waypoint", "waypoint"),
        (CallerKind.WAYPOINT, "", "waypoint"),  # its credential says it is one
    ],
)
def test_components_a_credential_allows_are_kept(
    kind: CallerKind, component: str, kept: str
) -> None:
    assert hello_identity(kind, component, "0.1.0") == (kept, "0.1.0", [])


@pytest.mark.parametrize(
    ("kind", "component", "kept"),
    [
        (CallerKind.NODE, "waypoint", ""),  # a node's credential cannot be a waypoint's
        (CallerKind.NODE, "controller", ""),
        (CallerKind.WAYPOINT, "ztunnel", "waypoint"),
        (CallerKind.NODE, "agent" * 1000, ""),
    ],
)
def test_a_component_the_credential_cannot_be_is_not_kept_and_counted(
    kind: CallerKind, component: str, kept: str
) -> None:
    assert hello_identity(kind, component, "1") == (kept, "1", ["component"])


def test_the_version_is_cut_past_its_bound() -> None:
    at_bound = "v" * WEFT_VERSION_MAX
    assert hello_identity(CallerKind.NODE, "agent", at_bound) == ("agent", at_bound, [])
    over = "v" * (WEFT_VERSION_MAX + 1)
    assert hello_identity(CallerKind.NODE, "agent", over) == (
        "agent",
        at_bound,
        ["weft_version"],
    )
    huge = "x" * 1_000_000
    component, version, clipped = hello_identity(CallerKind.WAYPOINT, "agent", huge)
    assert (component, len(version), clipped) == (
        "waypoint",
        WEFT_VERSION_MAX,
        ["component", "weft_version"],
    )
