"""LabConfig.validate: every setting that cannot work is refused, naming the option."""

from __future__ import annotations

import pytest

from lab.config import (
    MAX_NODES,
    LabConfig,
    LabConfigError,
    config_error_as_manifest_error,
)
from meshcore.resources import ManifestError


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(LabConfig(), id="defaults"),
        pytest.param(LabConfig(name="a", nodes=1), id="one node, one-letter name"),
        pytest.param(LabConfig(name="lab-2", nodes=MAX_NODES), id="most nodes"),
        pytest.param(LabConfig(name="a" * 32), id="32-character name"),
        pytest.param(
            LabConfig(
                underlay_cidr="10.0.0.0/29",
                pod_cidr="10.1.0.0/16",
                service_cidr="10.2.0.0/16",
                nodes=5,  # 6 host addresses: 5 nodes and the control plane
            ),
            id="underlay just big enough",
        ),
        pytest.param(
            LabConfig(pod_cidr="10.1.0.0/23", node_pod_prefix=24, nodes=2),
            id="pod range just big enough",
        ),
        pytest.param(
            LabConfig(pod_cidr="10.1.0.0/24", node_pod_prefix=30, nodes=64),
            id="smallest node blocks",
        ),
        pytest.param(
            LabConfig(pod_cidr="10.1.0.0/24", node_pod_prefix=24, nodes=1),
            id="node block as big as the pod range",
        ),
    ],
)
def test_workable_config_passes_validation(config: LabConfig) -> None:
    config.validate()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            LabConfig(name="Lab"),
            "--name: 'Lab' must be lowercase letters, digits and '-' (at most 32)",
            id="uppercase name",
        ),
        pytest.param(
            LabConfig(name="-lab"),
            "--name: '-lab' must be lowercase letters, digits and '-' (at most 32)",
            id="name starting with a dash",
        ),
        pytest.param(
            LabConfig(name="a" * 33),
            f"--name: {'a' * 33!r} must be lowercase letters, digits and '-' (at most 32)",
            id="33-character name",
        ),
        pytest.param(
            LabConfig(name=""),
            "--name: '' must be lowercase letters, digits and '-' (at most 32)",
            id="empty name",
        ),
        pytest.param(
            LabConfig(nodes=0),
            "--nodes: must be between 1 and 64, got 0",
            id="no nodes",
        ),
        pytest.param(
            LabConfig(nodes=MAX_NODES + 1),
            "--nodes: must be between 1 and 64, got 65",
            id="too many nodes",
        ),
        pytest.param(
            LabConfig(underlay_cidr="198.18.0.1/24"),
            "--underlay-cidr: '198.18.0.1/24' is not an IPv4 CIDR "
            "(198.18.0.1/24 has host bits set)",
            id="underlay with host bits",
        ),
        pytest.param(
            LabConfig(pod_cidr="fd00::/64"),
            "--pod-cidr: 'fd00::/64' is not an IPv4 CIDR (Expected 4 octets in 'fd00::')",
            id="IPv6 pod range",
        ),
        pytest.param(
            LabConfig(service_cidr="198.19.0.0/33"),
            "--service-cidr: '198.19.0.0/33' is not an IPv4 CIDR ('33' is not a valid netmask)",
            id="impossible prefix",
        ),
        pytest.param(
            LabConfig(underlay_cidr="198.18.128.0/24"),
            "--underlay-cidr 198.18.128.0/24 overlaps --pod-cidr 198.18.128.0/17",
            id="underlay inside pods",
        ),
        pytest.param(
            LabConfig(service_cidr="198.18.0.0/15"),
            "--underlay-cidr 198.18.0.0/24 overlaps --service-cidr 198.18.0.0/15",
            id="services around everything",
        ),
        pytest.param(
            LabConfig(pod_cidr="198.19.0.0/17"),
            "--pod-cidr 198.19.0.0/17 overlaps --service-cidr 198.19.0.0/16",
            id="pods inside services",
        ),
        pytest.param(
            LabConfig(underlay_cidr="10.0.0.0/30", nodes=3),
            "--underlay-cidr: 10.0.0.0/30 has no room for 3 node(s) and the control plane",
            id="underlay too small",
        ),
        pytest.param(
            LabConfig(underlay_cidr="10.0.0.0/32", nodes=1),
            "--underlay-cidr: 10.0.0.0/32 has no room for 1 node(s) and the control plane",
            id="underlay of one address",
        ),
        pytest.param(
            LabConfig(node_pod_prefix=16),
            "node pod prefix /16 must lie between /17 and /30",
            id="node block bigger than the pod range",
        ),
        pytest.param(
            LabConfig(node_pod_prefix=31),
            "node pod prefix /31 must lie between /17 and /30",
            id="node block too small for pods",
        ),
        pytest.param(
            LabConfig(pod_cidr="10.1.0.0/23", node_pod_prefix=24, nodes=3),
            "--pod-cidr: 10.1.0.0/23 splits into too few /24 blocks for 3 nodes",
            id="pod range too small for the nodes",
        ),
        pytest.param(
            LabConfig(underlay_cidr="169.254.1.0/24"),
            "address ranges must not contain the pod gateway 169.254.1.1",
            id="underlay holding the pod gateway",
        ),
        pytest.param(
            LabConfig(pod_cidr="169.254.0.0/16"),
            "address ranges must not contain the pod gateway 169.254.1.1",
            id="pods holding the pod gateway",
        ),
    ],
)
def test_unworkable_config_is_refused_naming_the_setting(config: LabConfig, message: str) -> None:
    with pytest.raises(LabConfigError) as caught:
        config.validate()

    assert str(caught.value) == message


def test_config_errors_become_manifest_errors_with_the_same_text() -> None:
    error = config_error_as_manifest_error(LabConfigError("--nodes: must be between 1 and 64"))

    assert isinstance(error, ManifestError)
    assert str(error) == "--nodes: must be between 1 and 64"
