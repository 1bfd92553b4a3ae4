"""Which lab pods are given a credential for their service account: a waypoint's replicas."""

from __future__ import annotations

import pytest

from lab.runtime import needs_credential

MANAGED = {"gateway.weft.dev/managed": "weft.dev-mesh-controller"}
GATEWAY = {"gateway.networking.k8s.io/gateway-name": "waypoint"}


@pytest.mark.parametrize(
    ("labels", "given"),
    [
        ({**MANAGED, **GATEWAY, "weft.dev/dataplane-mode": "none"}, True),
        (GATEWAY, False),  # a pod that only claims a gateway name
        (MANAGED, False),
        ({**GATEWAY, "gateway.weft.dev/managed": "someone-else"}, False),
        ({"app": "echo"}, False),
    ],
)
def test_only_a_waypoints_replicas_get_a_credential(labels: dict[str, str], given: bool) -> None:
    assert needs_credential(labels) is given
