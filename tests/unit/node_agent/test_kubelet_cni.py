"""The weft-cni plugin's pure parts (node_agent.cniplugin) and the agent's parse of its
requests (node_agent.cniserver.parse_request): what is asked, what is passed through, and
each bad input's error."""

from __future__ import annotations

import json

import pytest

from node_agent import cniplugin
from node_agent.cniplugin import INVALID_CONFIG, PluginError, request_for
from node_agent.cniserver import CniAdd, CniRequestError, parse_request

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
ARGS = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID={UID}"
ENV = {"CNI_COMMAND": "ADD", "CNI_NETNS": "/var/run/netns/cni-1234", "CNI_ARGS": ARGS}
PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1234"}],
    "ips": [
        {"address": "10.42.0.7/24", "gateway": "10.42.0.1", "interface": 0},
        {"address": "fd00::7/64", "interface": 0},
    ],
}
CONFIG = {"cniVersion": "1.0.0", "name": "cbr0", "type": "weft-cni", "prevResult": PREV}


def test_cni_args_are_split_into_keys_and_values() -> None:
    assert cniplugin.parse_cni_args("A=1;B=x=y; C = 3 ;;junk") == {"A": "1", "B": "x=y", "C": "3"}


def test_the_ipv4_addresses_of_the_previous_result() -> None:
    assert cniplugin.ipv4s(PREV) == ["10.42.0.7"]
    assert cniplugin.ipv4s({"ips": "nope"}) == []
    assert cniplugin.ipv4s(None) == []


def test_an_add_asks_for_the_pods_netns_identity_and_addresses() -> None:
    assert request_for(ENV, CONFIG) == {
        "netns": "/var/run/netns/cni-1234",
        "pod_uid": UID,
        "pod_namespace": "shop",
        "pod_name": "web-1",
        "ips": ["10.42.0.7"],
    }


@pytest.mark.parametrize("namespace", ["weft-system", "kube-system"])
def test_weft_and_kube_system_are_passed_without_asking(namespace: str) -> None:
    env = {
        **ENV,
        "CNI_ARGS": ARGS.replace("K8S_POD_NAMESPACE=shop", f"K8S_POD_NAMESPACE={namespace}"),
    }
    assert request_for(env, CONFIG) is None


def test_the_excluded_namespaces_are_the_configs_when_given() -> None:
    assert request_for(ENV, {**CONFIG, "exclude_namespaces": ["shop"]}) is None
    assert request_for(ENV, {**CONFIG, "exclude_namespaces": []}) is not None


@pytest.mark.parametrize(
    ("env", "config", "message"),
    [
        ({**ENV, "CNI_ARGS": "IgnoreUnknown=1"}, CONFIG, "lacks K8S_POD_NAMESPACE"),
        ({**ENV, "CNI_NETNS": ""}, CONFIG, "CNI_NETNS is empty"),
        (ENV, {**CONFIG, "exclude_namespaces": "weft-system"}, "exclude_namespaces"),
    ],
)
def test_a_call_that_is_not_a_pods_is_an_invalid_config_error(
    env: dict[str, str], config: dict[str, object], message: str
) -> None:
    with pytest.raises(PluginError) as err:
        request_for(env, config)
    assert err.value.code == INVALID_CONFIG and message in err.value.msg


def test_version_lists_the_supported_versions() -> None:
    out = json.loads(cniplugin.run({"CNI_COMMAND": "VERSION"}, ""))
    assert "1.0.0" in out["supportedVersions"] and "0.4.0" in out["supportedVersions"]


@pytest.mark.parametrize("command", ["DEL", "CHECK", "GC", "STATUS"])
def test_other_commands_do_nothing(command: str) -> None:
    assert cniplugin.run({**ENV, "CNI_COMMAND": command}, json.dumps(CONFIG)) == ""


def test_an_excluded_pods_add_prints_the_previous_result_unchanged() -> None:
    env = {**ENV, "CNI_ARGS": ARGS.replace("=shop", "=kube-system")}
    assert json.loads(cniplugin.run(env, json.dumps(CONFIG))) == PREV


def test_an_add_without_an_agent_fails_so_that_the_runtime_retries() -> None:
    config = {**CONFIG, "agent_socket": "/nonexistent/weft/cni.sock", "timeout_seconds": 1}
    with pytest.raises(PluginError) as err:
        cniplugin.run(ENV, json.dumps(config))
    assert err.value.code == cniplugin.TRY_AGAIN and "did not answer" in err.value.msg


@pytest.mark.parametrize("timeout", [0, -1, 500, "10"])
def test_a_bad_timeout_is_refused(timeout: object) -> None:
    with pytest.raises(PluginError, match="timeout_seconds"):
        cniplugin.run(ENV, json.dumps({**CONFIG, "timeout_seconds": timeout}))


@pytest.mark.parametrize("stdin", ["{", "[1]"])
def test_an_unreadable_config_is_an_error(stdin: str) -> None:
    with pytest.raises(PluginError) as err:
        cniplugin.run(ENV, stdin)
    assert err.value.code == INVALID_CONFIG


# --- the agent's parse ------------------------------------------------------------------


def request(**over: object) -> bytes:
    base: dict[str, object] = {
        "netns": "/var/run/netns/cni-1",
        "pod_uid": UID,
        "pod_namespace": "shop",
        "pod_name": "web-1",
        "ips": ["10.42.0.7"],
    }
    return json.dumps({**base, **over}).encode() + b"\n"


def test_a_request_becomes_a_typed_value() -> None:
    assert parse_request(request()) == CniAdd(
        "/var/run/netns/cni-1", UID, "shop", "web-1", ("10.42.0.7",)
    )
    assert parse_request(request(ips=[])).ips == ()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"nope\n", "not JSON"),
        (b"[1]\n", "not a JSON object"),
        (request(netns=""), "netns"),
        (request(netns="relative/path"), "netns: an absolute path"),
        (request(pod_uid=7), "pod_uid"),
        (request(pod_name="x" * 513), "pod_name"),
        (request(ips="10.0.0.1"), "ips"),
        (request(ips=["10.0.0.1"] * 17), "ips"),
    ],
)
def test_a_bad_request_names_its_field(raw: bytes, field: str) -> None:
    with pytest.raises(CniRequestError, match=field):
        parse_request(raw)
