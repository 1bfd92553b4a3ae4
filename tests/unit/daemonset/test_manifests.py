"""daemonset/: every file parses, the kustomization lists all of them in apply order, and the
objects say what the code expects (the shared Kubernetes contract of issue #14): names,
arguments the processes really take, ports and probe paths the code serves, RBAC that covers
what the controller reads and writes and nothing else, a node with no API access."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from controller.app import ControllerConfig
from controller.deployer import DeployerConfig, waypoint_objects
from controller.kubekinds import KINDS
from controller.kubewriter import ROOT_CONFIGMAP, ROOT_CONFIGMAP_KEY
from meshcore.meshstate import DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE, MESH_CONTROLLER_NAME
from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.gateway import WAYPOINT_CLASS
from meshcore.resources.meshconfig import mesh_config_of, parse_mesh_config
from meshcore.resources.security import ROOT_NAMESPACE
from node_agent.agent import AgentConfig
from tests.unit.daemonset.crdschema import DAEMONSET, ROOT
from tests.unit.daemonset.manifests import container, find, objects, resource_files

NODE_SA = f"{ROOT_NAMESPACE}/weft-node"
CONTROLLER_ADDR = "weft-controller.weft-system.svc:15012"
BOOTSTRAP_ADDR = "weft-controller.weft-system.svc:15013"


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def _yaml_files() -> list[str]:
    return sorted(
        str(p.relative_to(DAEMONSET))
        for p in DAEMONSET.rglob("*.yaml")
        if "templates" not in p.parts  # (Helm's: Go templates, not YAML until rendered)
    )


@pytest.mark.parametrize("name", _yaml_files())
def test_every_yaml_file_parses(name: str) -> None:
    docs = [d for d in yaml.safe_load_all((DAEMONSET / name).read_text()) if d is not None]
    assert docs, f"{name} holds no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{name}: a document that is not a mapping"


def test_the_kustomization_lists_every_manifest_once_in_apply_order() -> None:
    listed = resource_files()
    on_disk = sorted(
        str(p.relative_to(DAEMONSET))
        for p in DAEMONSET.rglob("*.yaml")
        if "helm" not in p.parts and p.name != "kustomization.yaml"
    )
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)
    kinds = [o["kind"] for o in objects()]
    last_crd = max(i for i, k in enumerate(kinds) if k == "CustomResourceDefinition")
    first_other = min(i for i, k in enumerate(kinds) if k != "CustomResourceDefinition")
    assert last_crd < first_other, "CRDs first: they must be Established before their CRs"
    namespace = kinds.index("Namespace")
    namespaced = [i for i, o in enumerate(objects()) if o["metadata"].get("namespace")]
    assert namespace < min(namespaced), "the namespace before what lives in it"
    assert kinds.index("ClusterRole") < kinds.index("Deployment") < kinds.index("DaemonSet")
    assert kinds[-1] == "GatewayClass", "last: it needs the user's Gateway API CRDs"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kubectl_kustomize_renders_the_same_objects() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DAEMONSET)], capture_output=True, text=True, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]

    def key(o: dict) -> tuple[str, str, str]:
        return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])

    assert sorted(rendered, key=key) == sorted(objects(), key=key)


def test_names_are_the_shared_contract() -> None:
    ns = find("Namespace", ROOT_NAMESPACE)
    assert ns["metadata"]["labels"][DATAPLANE_MODE_LABEL] == DATAPLANE_MODE_NONE
    for o in objects():
        if o["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                             "ClusterRoleBinding", "GatewayClass"):  # fmt: skip
            assert o["metadata"]["namespace"] == ROOT_NAMESPACE, o["metadata"]["name"]
    for kind in ("ServiceAccount", "Service", "Deployment"):
        find(kind, "weft-controller")
    find("ServiceAccount", "weft-node")
    for workload in _workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels[DATAPLANE_MODE_LABEL] == DATAPLANE_MODE_NONE  # never captured


def _workloads() -> list[dict]:
    return [
        find("Deployment", "weft-controller"),
        find("DaemonSet", "weft-node"),
        find("DaemonSet", "weft-ztunnel"),
    ]


def test_one_image_of_the_project_version_for_every_container() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for workload in _workloads():
        for c in workload["spec"]["template"]["spec"]["containers"]:
            assert c["image"] == f"ghcr.io/weft-mesh/weft:{version}", c["name"]


def _invoke(command: object, args: list[str]) -> dict:
    """The parameters a click command reads from `args` (parsed, not run)."""
    import click

    assert isinstance(command, click.Command)
    with command.make_context(command.name or "run", list(args)) as ctx:
        return dict(ctx.params)


def test_the_controller_takes_its_arguments() -> None:
    from controller.main import run

    c = container(find("Deployment", "weft-controller"), "controller")
    assert c["command"] == ["python", "-m", "controller"]
    args = c["args"]
    assert args[0] == "run"
    params = _invoke(run, args[1:])
    assert params["source_kind"] == "kubernetes"
    assert params["kubeconfig"] is None  # in-cluster
    assert str(params["state_dir"]) == "/var/lib/weft/controller"
    assert params["node_service_account"] == NODE_SA
    assert params["waypoint_image"] == c["image"]
    assert params["bootstrap_listen"] == "0.0.0.0:15013"
    assert set(params["serving_addresses"]) == {
        "weft-controller.weft-system.svc",
        "weft-controller.weft-system.svc.cluster.local",
    }
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/var/lib/weft/controller" in mounts


def test_the_controller_ports_and_probe_are_those_it_serves() -> None:
    deployment = find("Deployment", "weft-controller")
    c = container(deployment, "controller")
    ports = {p["containerPort"] for p in c["ports"]}
    config = ControllerConfig(trust_domain="cluster.local", state_dir=ROOT)
    assert ports == {
        15012,
        15013,
        _port(config.metrics_addr),
        _port(config.readiness_addr),
    }
    probe = c["readinessProbe"]["httpGet"]
    assert probe["port"] == _port(config.readiness_addr) == 15021
    assert probe["path"] == "/ready"
    assert 'web.get("/ready"' in (ROOT / "controller" / "app.py").read_text()
    service = find("Service", "weft-controller")
    assert {p["port"] for p in service["spec"]["ports"]} == {15012, 15013, 15014}
    selector = service["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def _node_common(args: list[str], params: dict) -> None:
    assert params["node"] == "$(NODE_NAME)"
    assert params["controller"] == CONTROLLER_ADDR
    assert str(params["credential"]) == "/var/run/weft/credential"
    assert str(params["bootstrap_token"]) == "/var/run/secrets/weft/token"
    assert params["bootstrap_controller"] == BOOTSTRAP_ADDR
    assert str(params["controller_roots"]) == f"/var/run/weft/ca/{ROOT_CONFIGMAP_KEY}"


def test_the_node_agent_and_ztunnel_take_their_arguments() -> None:
    from node_agent.main import run as agent_run
    from ztunnel.main import run as ztunnel_run

    agent = container(find("DaemonSet", "weft-node"), "agent")
    ztunnel = container(find("DaemonSet", "weft-ztunnel"), "ztunnel")
    assert agent["command"] == ["python", "-m", "node_agent"]
    assert ztunnel["command"] == ["python", "-m", "ztunnel"]
    params = _invoke(agent_run, agent["args"][1:])
    _node_common(agent["args"], params)
    assert str(params["pods_cgroup"]) == str(params["system_cgroup"]) == "auto"
    # not held: the agent cannot tell a new controller pod from any unknown pod, and holding
    # it would keep the mesh from ever learning of it (daemonset/README.md)
    assert params["hold_unknown_pods"] is False
    assert params["node_ip"] == "$(NODE_IP)"
    assert str(params["pin_dir"]).startswith("/sys/fs/bpf/")
    params = _invoke(ztunnel_run, ztunnel["args"][1:])
    _node_common(ztunnel["args"], params)
    for c in (agent, ztunnel):
        env = {
            e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e
        }
        assert env["NODE_NAME"] == "spec.nodeName"
        for var in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):
            assert var in env, f"{c['name']}: $({var}) has no env"


def test_the_node_pods_mount_what_their_arguments_name() -> None:
    """Both node DaemonSets bootstrap alike: the weft-node ServiceAccount, no API token, the
    projected token (audience weft), the controller's roots, a credential of their own."""
    for name, c in (("weft-node", "agent"), ("weft-ztunnel", "ztunnel")):
        spec = find("DaemonSet", name)["spec"]["template"]["spec"]
        assert spec["hostNetwork"] is True
        assert spec["serviceAccountName"] == "weft-node"
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        (token,) = volumes["token"]["projected"]["sources"]
        assert token["serviceAccountToken"] == {
            "audience": "weft",
            "expirationSeconds": 3600,
            "path": "token",
        }
        assert volumes["controller-roots"]["configMap"]["name"] == ROOT_CONFIGMAP
        assert "emptyDir" in volumes["credential"]
        mounts = {
            m["mountPath"]: m["name"] for m in container(find("DaemonSet", name), c)["volumeMounts"]
        }
        assert mounts["/var/run/weft/credential"] == "credential"
        assert mounts["/var/run/secrets/weft"] == "token"
        assert mounts["/var/run/weft/ca"] == "controller-roots"
    ds = find("DaemonSet", "weft-node")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True  # the agent reaches pods' netns through /proc/<pid>
    volumes = {v["name"]: v for v in spec["volumes"]}
    agent_mounts = {m["mountPath"]: m for m in container(ds, "agent")["volumeMounts"]}
    assert volumes[agent_mounts["/sys/fs/bpf"]["name"]]["hostPath"]["path"] == "/sys/fs/bpf"
    assert agent_mounts["/sys/fs/cgroup"]["readOnly"] is True
    _install_cni_mounts(ds, volumes, agent_mounts)


def _install_cni_mounts(ds: dict, volumes: dict, agent_mounts: dict) -> None:
    """install-cni writes the host's CNI folders and names the agent's socket by its host
    path; the agent serves it on the same host folder and enters the runtime's netns mounts."""
    from node_agent.main import install_cni, run

    c = container(ds, "install-cni")
    assert c["command"] == ["python", "-m", "node_agent"]
    params = _invoke(install_cni, c["args"][1:])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    host = {path: volumes[m["name"]]["hostPath"]["path"] for path, m in mounts.items()}
    assert host[str(params["cni_conf_dir"])] == "/etc/cni/net.d"
    assert host[str(params["cni_bin_dir"])] == "/opt/cni/bin"
    assert {host[str(d)] for d in params["host_bin_dirs"]} == {"/usr/bin"}
    assert mounts[str(params["host_bin_dirs"][0])]["readOnly"] is True
    assert not any("credential" in m["name"] or "token" in m["name"] for m in mounts.values())
    agent = _invoke(run, container(ds, "agent")["args"][1:])
    socket_dir = agent_mounts[str(agent["cni_socket"].parent)]
    on_host = volumes[socket_dir["name"]]["hostPath"]["path"] + "/" + agent["cni_socket"].name
    assert on_host == params["agent_socket"]
    netns = agent_mounts["/var/run/netns"]
    assert volumes[netns["name"]]["hostPath"]["path"] == "/var/run/netns"
    assert netns["mountPropagation"] == "HostToContainer"


def test_the_node_ports_and_probes_are_those_the_code_serves() -> None:
    ds = find("DaemonSet", "weft-node")
    assert [c["name"] for c in ds["spec"]["template"]["spec"]["containers"]] == [
        "agent",
        "install-cni",
    ], "ztunnel is DaemonSet weft-ztunnel's"
    assert '"/healthz/ready"' in (ROOT / "meshcore" / "adminserver.py").read_text()
    agent = container(ds, "agent")
    aconfig = AgentConfig(
        node="n", node_ip="", controller="", credential=ROOT, pin_dir=ROOT,
        pods_cgroup=ROOT, system_cgroup=ROOT,
    )  # fmt: skip
    probe = agent["readinessProbe"]["httpGet"]
    host, _, port = aconfig.admin_addr.rpartition(":")
    assert (probe["host"], probe["port"], probe["path"]) == (host, int(port), "/ready")
    assert {p["containerPort"] for p in agent["ports"]} == {_port(aconfig.metrics_addr)}


def test_node_containers_add_only_the_capabilities_listed_in_the_readme() -> None:
    readme = (DAEMONSET / "README.md").read_text()
    expected = {
        "agent": {"BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"},
        "ztunnel": {"NET_RAW"},
        "install-cni": set(),
    }
    pods = [find("DaemonSet", n)["spec"]["template"]["spec"] for n in ("weft-node", "weft-ztunnel")]
    for c in [c for pod in pods for c in pod["containers"]]:
        sc = c["securityContext"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) == expected[c["name"]]
        assert sc.get("privileged") is False
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        for cap in sc["capabilities"].get("add", []):
            assert f"`CAP_{cap}`" in readme, f"README does not say why {c['name']} has {cap}"
    for v in [v for pod in pods for v in pod["volumes"]]:
        if "hostPath" in v:
            assert f"`{v['hostPath']['path']}`" in readme, f"README does not list {v['name']}"


def _rules(kind: str, name: str) -> list[dict]:
    return find(kind, name)["rules"]


def _allows(rules: list[dict], group: str, resource: str, verb: str, name: str = "") -> bool:
    for r in rules:
        if group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]:
            names = r.get("resourceNames")
            if not names or (name and name in names):
                return True
    return False


def test_controller_rbac_covers_every_kind_it_watches() -> None:
    cluster = _rules("ClusterRole", "weft-controller")
    local = _rules("Role", "weft-controller")
    for k in KINDS:
        rules = local if k.namespace else cluster
        name = k.field_selector.partition("=")[2] if k.field_selector else ""
        for verb in ("list", "watch"):
            assert _allows(rules, k.group, k.plural, verb, name), f"{verb} {k.plural}"


def test_controller_rbac_covers_what_it_writes() -> None:
    cluster = _rules("ClusterRole", "weft-controller")
    local = _rules("Role", "weft-controller")
    from meshcore.resources.gateway import Gateway  # noqa: F401 (the kinds below are its)

    plural = {"ServiceAccount": ("", "serviceaccounts"), "Service": ("", "services"),
              "Deployment": ("apps", "deployments")}  # fmt: skip
    gw = parse_documents(
        documents_from_text(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n"
            "  name: wp\n  namespace: shop\nspec:\n  gatewayClassName: weft-waypoint\n"
            "  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
            "gw.yaml",
        )
    )[0].resource
    written = waypoint_objects(gw, DeployerConfig(), 1)  # type: ignore[arg-type]
    assert {o["kind"] for o in written} == set(plural)
    for o in written:
        group, resource = plural[o["kind"]]
        for verb in ("create", "patch"):  # server-side apply of a new object
            assert _allows(cluster, group, resource, verb), f"{verb} {resource}"
    for kind in ("gateways", "httproutes", "grpcroutes"):
        assert _allows(cluster, "gateway.networking.k8s.io", f"{kind}/status", "patch")
    assert _allows(cluster, "", "events", "create")
    assert _allows(cluster, "authentication.k8s.io", "tokenreviews", "create")
    assert _allows(local, "", "configmaps", "create")
    assert _allows(local, "", "configmaps", "patch", ROOT_CONFIGMAP)
    assert not _allows(local, "", "configmaps", "patch", "weft")  # read-only mesh config


def test_rbac_grants_no_wildcards_secrets_or_deletes_and_nothing_to_the_node() -> None:
    for o in objects():
        if o["kind"] in ("ClusterRole", "Role"):
            for r in o["rules"]:
                assert "*" not in r["verbs"] + r["resources"] + r["apiGroups"]
                assert "secrets" not in r["resources"]
                assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(
                    r["verbs"]
                )
        if o["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            for s in o["subjects"]:
                assert s["name"] != "weft-node", "the node has no API access"
    assert find("ServiceAccount", "weft-node")["automountServiceAccountToken"] is False


def test_the_gateway_class_is_the_waypoint_class_of_the_controller() -> None:
    gc = find("GatewayClass", WAYPOINT_CLASS)
    assert gc["spec"]["controllerName"] == MESH_CONTROLLER_NAME


def test_the_mesh_config_parses_empty_and_its_commented_example_parses_whole() -> None:
    (parsed,) = parse_documents(
        documents_from_text((DAEMONSET / "meshconfig.yaml").read_text(), "meshconfig.yaml")
    )
    cm = parsed.resource
    config = mesh_config_of(cm)  # type: ignore[arg-type]
    assert config.errors == () and not config.settings.ext_authz_providers
    example = "\n".join(
        line.removeprefix("# ")
        for line in cm.data["mesh"].splitlines()  # type: ignore[attr-defined]
        if line.startswith("# ") and not line.startswith("# An ")
    )
    example_config = parse_mesh_config(example)
    assert example_config.errors == ()
    assert set(example_config.settings.ext_authz_providers) == {"ext-authz", "ext-authz-grpc"}
