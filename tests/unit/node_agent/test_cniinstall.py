"""weft-cni's place in a node's CNI chain (node_agent/cniinstall.py): which file is the
primary network, the entry appended last and only once, taken out again, and the conflists it
refuses. The conflists are shaped as each CNI writes them (written here, not downloaded)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from node_agent import cniinstall, cniplugin
from node_agent.cniinstall import CniConfigError, Installer, WeftEntry, chain, unchain

ENTRY = WeftEntry("/var/run/weft/cni.sock", ("weft-system", "kube-system"), 10)

FLANNEL: dict[
    str, Any
] = {  # kube-flannel's cni-conf.json as its install-cni init container writes it
    "name": "cbr0",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
K3S_FLANNEL: dict[
    str, Any
] = {  # k3s's /var/lib/rancher/k3s/agent/etc/cni/net.d/10-flannel.conflist
    "name": "cbr0",
    "cniVersion": "1.0.0",
    "plugins": [
        {
            "type": "flannel",
            "delegate": {"hairpinMode": True, "forceAddress": True, "isDefaultGateway": True},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ],
}
CALICO: dict[str, Any] = {  # calico-node's 10-calico.conflist
    "name": "k8s-pod-network",
    "cniVersion": "0.3.1",
    "plugins": [
        {
            "type": "calico",
            "log_level": "info",
            "datastore_type": "kubernetes",
            "nodename": "node-1",
            "mtu": 0,
            "ipam": {"type": "calico-ipam"},
            "policy": {"type": "k8s"},
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"},
        },
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ],
}
CILIUM_CHAINED: dict[str, Any] = {  # Cilium in generic-veth chaining mode on top of another CNI
    "name": "generic-veth",
    "cniVersion": "0.3.1",
    "plugins": [
        {
            "type": "ptp",
            "ipMasq": True,
            "ipam": {"type": "host-local", "subnet": "10.10.0.0/16"},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "cilium-cni"},
    ],
}
KINDNET: dict[str, Any] = {  # kind's kindnetd writes 10-kindnet.conflist
    "cniVersion": "0.3.1",
    "name": "kindnet",
    "plugins": [
        {
            "type": "ptp",
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "dataDir": "/run/cni-ipam-state",
                "routes": [{"dst": "0.0.0.0/0"}],
                "ranges": [[{"subnet": "10.244.1.0/24"}]],
            },
            "mtu": 1500,
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
CHAINS: dict[str, dict[str, Any]] = {
    "10-flannel.conflist": FLANNEL,
    "10-flannel.conflist (k3s)": K3S_FLANNEL,
    "10-calico.conflist": CALICO,
    "05-cilium.conflist": CILIUM_CHAINED,
    "10-kindnet.conflist": KINDNET,
}


def _text(data: Any) -> str:
    return json.dumps(data, indent=2)


@pytest.mark.parametrize("name", CHAINS)
def test_weft_cni_is_appended_last_and_the_rest_is_unchanged(name: str) -> None:
    original = CHAINS[name]
    out = json.loads(chain(_text(original), name.split()[0], ENTRY))
    assert out["plugins"][:-1] == original["plugins"]
    assert out["plugins"][-1] == {
        "type": "weft-cni",
        "agent_socket": "/var/run/weft/cni.sock",
        "exclude_namespaces": ["weft-system", "kube-system"],
        "timeout_seconds": 10,
    }
    assert {k: v for k, v in out.items() if k != "plugins"} == {
        k: v for k, v in original.items() if k != "plugins"
    }


@pytest.mark.parametrize("name", CHAINS)
def test_chaining_twice_is_chaining_once_and_unchaining_gives_the_original(name: str) -> None:
    file = name.split()[0]
    once = chain(_text(CHAINS[name]), file, ENTRY)
    twice = chain(once, file, ENTRY)
    assert once == twice
    assert [p["type"] for p in json.loads(twice)["plugins"]].count("weft-cni") == 1
    assert cniinstall.is_chained(once, file, ENTRY)
    assert not cniinstall.is_chained(_text(CHAINS[name]), file, ENTRY)
    assert json.loads(unchain(twice, file)) == CHAINS[name]


def test_an_older_or_misplaced_weft_entry_is_replaced_and_moved_last() -> None:
    old = {"type": "weft-cni", "agent_socket": "/old.sock"}
    plugins = [FLANNEL["plugins"][0], old, FLANNEL["plugins"][1]]
    text = _text({**FLANNEL, "plugins": plugins})
    assert not cniinstall.is_chained(text, "10-flannel.conflist", ENTRY)
    out = json.loads(chain(text, "10-flannel.conflist", ENTRY))
    assert out["plugins"] == [*FLANNEL["plugins"], ENTRY.as_plugin()]
    other = WeftEntry("/run/other.sock", (), 2.5)
    assert json.loads(chain(_text(out), "x.conflist", other))["plugins"][-1] == {
        "type": "weft-cni",
        "agent_socket": "/run/other.sock",
        "exclude_namespaces": [],
        "timeout_seconds": 2.5,
    }


def test_a_single_plugin_conf_becomes_a_list() -> None:
    bridge = {
        "cniVersion": "0.4.0",
        "name": "mynet",
        "type": "bridge",
        "bridge": "cni0",
        "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"},
    }
    out = json.loads(chain(_text(bridge), "10-bridge.conf", ENTRY))
    assert out == {
        "cniVersion": "0.4.0",
        "name": "mynet",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "ipam": bridge["ipam"]},
            ENTRY.as_plugin(),
        ],
    }
    assert cniinstall.conflist_name("10-bridge.conf") == "10-bridge.conflist"
    assert cniinstall.conflist_name("99-x.json") == "99-x.conflist"
    assert cniinstall.conflist_name("10-a.conflist") == "10-a.conflist"


def test_the_primary_network_is_the_lexically_first_conf_file() -> None:
    names = ["99-loopback.conf", "10-flannel.conflist", "calico-kubeconfig", "05-cilium.conflist"]
    assert cniinstall.primary_conf(names) == "05-cilium.conflist"
    # .conf sorts before .conflist of the same stem, .json counts, other files and hidden
    # (our own temp files) do not
    assert cniinstall.primary_conf(["10-a.conflist", "10-a.conf"]) == "10-a.conf"
    assert cniinstall.primary_conf(["20-b.conflist", "15-x.json"]) == "15-x.json"
    assert cniinstall.primary_conf([".00-a.conflist.weft-tmp", "README", "x.yaml"]) is None
    assert cniinstall.primary_conf([]) is None


@pytest.mark.parametrize(
    ("text", "name", "says"),
    [
        ("{not json", "10-a.conflist", "10-a.conflist: not JSON"),
        ("[1, 2]", "10-a.conflist", "10-a.conflist: not a JSON object"),
        (_text({"cniVersion": "1.0.0", "name": "n"}), "10-a.conflist", "no `plugins` list"),
        (_text({"cniVersion": "1.0.0", "plugins": {}}), "10-a.conflist", "no `plugins` list"),
        (_text({"cniVersion": "1.0.0", "plugins": []}), "10-a.conflist", "an empty one"),
        (_text({"cniVersion": "1.0.0", "plugins": [3]}), "10-a.conflist", "plugins[0] is not"),
        (_text({**FLANNEL, "cniVersion": "0.2.0"}), "10-a.conflist", "cniVersion '0.2.0'"),
        (_text({**FLANNEL, "cniVersion": "2.0.0"}), "10-a.conflist", "cniVersion '2.0.0'"),
        (_text({"name": "n", "plugins": FLANNEL["plugins"]}), "10-a.conflist", "cniVersion None"),
        (_text(FLANNEL), "10-a.conf", "10-a.conf: a plugin list in a single-plugin file"),
        (_text({"cniVersion": "1.0.0", "name": "n"}), "10-a.conf", "10-a.conf: no plugin `type`"),
    ],
)
def test_a_conflist_weft_cannot_chain_is_refused_naming_the_file(
    text: str, name: str, says: str
) -> None:
    with pytest.raises(CniConfigError) as err:
        chain(text, name, ENTRY)
    assert says in str(err.value)
    assert str(err.value).startswith(name)


def test_every_supported_version_is_the_plugins() -> None:
    for version in cniplugin.SUPPORTED:
        chain(_text({**FLANNEL, "cniVersion": version}), "a.conflist", ENTRY)


def test_a_chain_of_weft_cni_alone_is_not_emptied() -> None:
    only = _text({"cniVersion": "1.0.0", "name": "n", "plugins": [ENTRY.as_plugin()]})
    with pytest.raises(CniConfigError, match="only plugin"):
        unchain(only, "10-a.conflist")


def test_entry_bounds() -> None:
    with pytest.raises(ValueError, match="absolute"):
        WeftEntry("cni.sock")
    with pytest.raises(ValueError, match="timeout_seconds"):
        WeftEntry(timeout_seconds=0)
    with pytest.raises(ValueError, match="timeout_seconds"):
        WeftEntry(timeout_seconds=121)


def test_the_plugin_file_is_cniplugin_with_a_python3_shebang() -> None:
    content = cniinstall.plugin_file()
    assert content.startswith("#!/usr/bin/env python3\n")
    assert content.endswith(Path(cniplugin.__file__).read_text())


# --- the I/O, on a tmp folder pair (the integration test runs the process) ---------------


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    conf, bin_ = tmp_path / "net.d", tmp_path / "bin"
    conf.mkdir()
    bin_.mkdir()
    return conf, bin_


def test_sync_installs_chains_converts_and_uninstall_undoes(tmp_path: Path) -> None:
    conf, bin_ = _dirs(tmp_path)
    installer = Installer(conf, bin_, ENTRY)
    assert installer.sync() is None  # nothing to chain yet, binary already there
    assert stat.S_IMODE((bin_ / "weft-cni").stat().st_mode) == 0o755
    bridge = {"cniVersion": "1.0.0", "name": "b", "type": "bridge"}
    (conf / "10-bridge.conf").write_text(_text(bridge))
    os.chmod(conf / "10-bridge.conf", 0o600)
    assert installer.sync() == conf / "10-bridge.conflist"
    assert sorted(p.name for p in conf.iterdir()) == ["10-bridge.conflist"]
    assert stat.S_IMODE((conf / "10-bridge.conflist").stat().st_mode) == 0o600
    before = (conf / "10-bridge.conflist").stat().st_mtime_ns
    assert installer.sync() == conf / "10-bridge.conflist"
    assert (conf / "10-bridge.conflist").stat().st_mtime_ns == before  # nothing rewritten
    installer.uninstall()
    assert json.loads((conf / "10-bridge.conflist").read_text())["plugins"] == [{"type": "bridge"}]
    assert sorted(p.name for p in bin_.iterdir()) == []


def test_a_new_primary_takes_the_entry_from_the_old_one(tmp_path: Path) -> None:
    conf, bin_ = _dirs(tmp_path)
    (conf / "10-flannel.conflist").write_text(_text(FLANNEL))
    installer = Installer(conf, bin_, ENTRY)
    installer.sync()
    (conf / "05-cilium.conflist").write_text(_text(CILIUM_CHAINED))
    assert installer.sync() == conf / "05-cilium.conflist"
    assert json.loads((conf / "10-flannel.conflist").read_text()) == FLANNEL
    assert json.loads((conf / "05-cilium.conflist").read_text())["plugins"][-1]["type"] == (
        "weft-cni"
    )


def test_a_refused_primary_is_left_alone_and_the_pass_goes_on(tmp_path: Path) -> None:
    conf, bin_ = _dirs(tmp_path)
    (conf / "10-odd.conflist").write_text("{broken")
    installer = Installer(conf, bin_, ENTRY)
    assert installer.sync() is None
    assert (conf / "10-odd.conflist").read_text() == "{broken"
    (conf / "10-odd.conflist").write_bytes(b" " * (cniinstall.MAX_CONF_BYTES + 1))
    assert installer.sync() is None
    (conf / "10-odd.conflist").write_text(_text(KINDNET))
    assert installer.sync() == conf / "10-odd.conflist"


def test_host_python_is_looked_for_as_an_entry(tmp_path: Path) -> None:
    usr, local = tmp_path / "usr-bin", tmp_path / "local-bin"
    usr.mkdir()
    local.mkdir()
    assert cniinstall.host_python([usr, local]) is None
    (local / "python3").symlink_to("/nonexistent/in/this/container/python3.11")
    assert cniinstall.host_python([usr, local]) == local / "python3"


def test_stopping_unchains_but_keeps_the_binary_by_default(tmp_path: Path) -> None:
    import threading

    from node_agent.cniinstall import watch

    conf, bin_ = _dirs(tmp_path)
    (conf / "10-flannel.conflist").write_text(_text(FLANNEL))
    stop = threading.Event()
    stop.set()  # (one sync, then stop)
    watch(Installer(conf, bin_, ENTRY), stop, 0.05)
    assert "weft-cni" not in (conf / "10-flannel.conflist").read_text()
    assert (bin_ / "weft-cni").exists()  # pods chained through it still DEL with it
