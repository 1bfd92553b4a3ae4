"""PeerAuthentication precedence at the ztunnel, against Istio's documented examples.

Workload policy (selector, own namespace) > namespace policy > mesh policy (root namespace) >
PERMISSIVE; UNSET defers to the next level; portLevelMtls overrides the workload policy's mode
for its port. The workload is `finance` in namespace `foo` unless a case says otherwise.
"""

from __future__ import annotations

import textwrap

import pytest

from meshcore.resources import MtlsMode, PeerAuthentication, documents_from_text, parse_documents
from ztunnel.peerauthn import effective_mode, governing_policies

STRICT, PERMISSIVE, DISABLE = MtlsMode.STRICT, MtlsMode.PERMISSIVE, MtlsMode.DISABLE
FINANCE = {"app": "finance"}


def peer_policies(text: str) -> list[PeerAuthentication]:
    parsed = parse_documents(documents_from_text(textwrap.dedent(text), "peer.yaml"))
    found = [p.resource for p in parsed]
    assert all(isinstance(p, PeerAuthentication) for p in found)
    return found  # type: ignore[return-value]


def pa(
    name: str, namespace: str, mode: str | None = None, *, selector: str = "", ports: str = ""
) -> str:
    """A PeerAuthentication manifest; `selector` like 'app: finance', `ports` like
    '8080: DISABLE, 9000: UNSET'."""
    lines = [
        "apiVersion: security.weft.dev/v1",
        "kind: PeerAuthentication",
        f"metadata: {{name: {name}, namespace: {namespace}}}",
        "spec:",
    ]
    if selector == "{}":
        lines.append("  selector: {matchLabels: {}}")
    elif selector:
        lines.append(f"  selector: {{matchLabels: {{{selector}}}}}")
    if mode is not None:
        lines.append(f"  mtls: {{mode: {mode}}}")
    if ports:
        lines.append("  portLevelMtls:")
        for item in ports.split(","):
            port, port_mode = (s.strip() for s in item.split(":"))
            lines.append(f"    {port}: {{mode: {port_mode}}}")
    if len(lines) == 4:
        lines[-1] = "spec: {}"
    return "\n".join(lines) + "\n---\n"


# Istio's reference examples, as written there (group changed).
NAMESPACE_STRICT = """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
"""

NAMESPACE_PERMISSIVE_FINANCE_STRICT = """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
"""

FINANCE_STRICT_BUT_8080 = """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
"""

FINANCE_INHERIT_BUT_8080 = """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: UNSET
  portLevelMtls:
    8080:
      mode: DISABLE
"""

MESH_STRICT = """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: weft-system
spec:
  mtls:
    mode: STRICT
"""


CASES: list[tuple[str, str, dict[str, object], MtlsMode]] = [
    ("no policy: PERMISSIVE", "", {}, PERMISSIVE),
    ("namespace STRICT (Istio example)", NAMESPACE_STRICT, {}, STRICT),
    ("namespace STRICT covers every workload of it", NAMESPACE_STRICT, {"labels": {}}, STRICT),
    ("namespace STRICT of another namespace", NAMESPACE_STRICT, {"namespace": "bar"}, PERMISSIVE),
    (
        "namespace PERMISSIVE, finance STRICT (Istio example): finance",
        NAMESPACE_PERMISSIVE_FINANCE_STRICT,
        {},
        STRICT,
    ),
    (
        "namespace PERMISSIVE, finance STRICT (Istio example): another workload",
        NAMESPACE_PERMISSIVE_FINANCE_STRICT,
        {"labels": {"app": "reviews"}},
        PERMISSIVE,
    ),
    (
        "finance STRICT but 8080 DISABLE: port 8080",
        FINANCE_STRICT_BUT_8080,
        {"port": 8080},
        DISABLE,
    ),
    ("finance STRICT but 8080 DISABLE: other port", FINANCE_STRICT_BUT_8080, {"port": 80}, STRICT),
    (
        "finance UNSET but 8080 DISABLE: 8080",
        FINANCE_INHERIT_BUT_8080,
        {"port": 8080},
        DISABLE,
    ),
    (
        "finance UNSET but 8080 DISABLE: other ports inherit the default",
        FINANCE_INHERIT_BUT_8080,
        {"port": 80},
        PERMISSIVE,
    ),
    (
        "finance UNSET but 8080 DISABLE: other ports inherit the mesh",
        FINANCE_INHERIT_BUT_8080 + "---\n" + MESH_STRICT,
        {"port": 80},
        STRICT,
    ),
    ("mesh STRICT", MESH_STRICT, {"namespace": "anywhere"}, STRICT),
    (
        "mesh STRICT, namespace PERMISSIVE: the namespace wins",
        MESH_STRICT + "---\n" + pa("default", "foo", "PERMISSIVE"),
        {},
        PERMISSIVE,
    ),
    (
        "mesh PERMISSIVE, namespace STRICT",
        pa("default", "weft-system", "PERMISSIVE") + pa("default", "foo", "STRICT"),
        {},
        STRICT,
    ),
    (
        "namespace UNSET inherits the mesh",
        MESH_STRICT + "---\n" + pa("default", "foo", "UNSET"),
        {},
        STRICT,
    ),
    (
        "namespace with no mtls at all inherits the mesh",
        MESH_STRICT + "---\n" + pa("default", "foo"),
        {},
        STRICT,
    ),
    (
        "mesh UNSET: PERMISSIVE",
        pa("default", "weft-system", "UNSET"),
        {},
        PERMISSIVE,
    ),
    (
        "workload PERMISSIVE beats namespace and mesh STRICT",
        MESH_STRICT
        + "---\n"
        + pa("default", "foo", "STRICT")
        + pa("finance", "foo", "PERMISSIVE", selector="app: finance"),
        {},
        PERMISSIVE,
    ),
    (
        "workload UNSET inherits the namespace",
        pa("default", "foo", "STRICT") + pa("finance", "foo", "UNSET", selector="app: finance"),
        {},
        STRICT,
    ),
    (
        "workload UNSET, namespace UNSET: the mesh",
        MESH_STRICT
        + "---\n"
        + pa("default", "foo", "UNSET")
        + pa("finance", "foo", "UNSET", selector="app: finance"),
        {},
        STRICT,
    ),
    (
        "selector must match every label",
        pa("finance", "foo", "STRICT", selector="app: finance, tier: gold"),
        {},
        PERMISSIVE,
    ),
    (
        "selector of another namespace does not reach the workload",
        pa("finance", "bar", "STRICT", selector="app: finance"),
        {},
        PERMISSIVE,
    ),
    (
        "a selector policy in the root namespace is ignored (Istio)",
        pa("finance", "weft-system", "STRICT", selector="app: finance"),
        {},
        PERMISSIVE,
    ),
    (
        "a selector policy in the root namespace is ignored even for root-namespace workloads",
        pa("finance", "weft-system", "STRICT", selector="app: finance"),
        {"namespace": "weft-system"},
        PERMISSIVE,
    ),
    (
        "a mesh policy governs workloads of the root namespace",
        MESH_STRICT,
        {"namespace": "weft-system"},
        STRICT,
    ),
    (
        "matchLabels {} is a namespace-wide policy",
        pa("all", "foo", "STRICT", selector="{}"),
        {"labels": {}},
        STRICT,
    ),
    (
        "matchLabels {} yields to a real workload policy",
        pa("all", "foo", "STRICT", selector="{}")
        + pa("finance", "foo", "PERMISSIVE", selector="app: finance"),
        {},
        PERMISSIVE,
    ),
    (
        "port level STRICT over a PERMISSIVE workload policy: that port",
        pa("finance", "foo", "PERMISSIVE", selector="app: finance", ports="9000: STRICT"),
        {"port": 9000},
        STRICT,
    ),
    (
        "port level STRICT over a PERMISSIVE workload policy: other ports",
        pa("finance", "foo", "PERMISSIVE", selector="app: finance", ports="9000: STRICT"),
        {"port": 9001},
        PERMISSIVE,
    ),
    (
        "port level PERMISSIVE under a STRICT namespace, workload UNSET",
        pa("default", "foo", "STRICT")
        + pa("finance", "foo", selector="app: finance", ports="8080: PERMISSIVE"),
        {"port": 8080},
        PERMISSIVE,
    ),
    (
        "port level PERMISSIVE under a STRICT namespace, workload UNSET: other port",
        pa("default", "foo", "STRICT")
        + pa("finance", "foo", selector="app: finance", ports="8080: PERMISSIVE"),
        {"port": 80},
        STRICT,
    ),
    (
        "port level UNSET inherits the workload policy's mode",
        pa("default", "foo", "PERMISSIVE")
        + pa("finance", "foo", "STRICT", selector="app: finance", ports="8080: UNSET"),
        {"port": 8080},
        STRICT,
    ),
    (
        "port level UNSET under an UNSET workload policy inherits the namespace",
        pa("default", "foo", "DISABLE")
        + pa("finance", "foo", "UNSET", selector="app: finance", ports="8080: UNSET"),
        {"port": 8080},
        DISABLE,
    ),
    (
        "port level of a policy that does not select the workload is not used",
        pa("default", "foo", "STRICT")
        + pa("reviews", "foo", "STRICT", selector="app: reviews", ports="8080: DISABLE"),
        {"port": 8080},
        STRICT,
    ),
    (
        "two namespace policies: the first by name wins",
        pa("b-permissive", "foo", "PERMISSIVE") + pa("a-strict", "foo", "STRICT"),
        {},
        STRICT,
    ),
    (
        "two namespace policies: the chosen one being UNSET defers to the mesh, not the other",
        MESH_STRICT + "---\n" + pa("a-unset", "foo", "UNSET") + pa("b-disable", "foo", "DISABLE"),
        {},
        STRICT,
    ),
    (
        "two workload policies: the first by name wins, with its port levels",
        pa("z-strict", "foo", "STRICT", selector="app: finance")
        + pa("a-permissive", "foo", "PERMISSIVE", selector="app: finance", ports="8080: STRICT"),
        {"port": 80},
        PERMISSIVE,
    ),
    (
        "two workload policies: the loser's port levels are not used",
        pa("a-strict", "foo", "STRICT", selector="app: finance")
        + pa("z-permissive", "foo", "PERMISSIVE", selector="app: finance", ports="8080: DISABLE"),
        {"port": 8080},
        STRICT,
    ),
    (
        "two mesh policies: the first by name wins",
        pa("b", "weft-system", "STRICT") + pa("a", "weft-system", "PERMISSIVE"),
        {"namespace": "anywhere"},
        PERMISSIVE,
    ),
    (
        "another root namespace: weft-system policies are plain namespace policies",
        MESH_STRICT,
        {"namespace": "anywhere", "root_namespace": "istio-system"},
        PERMISSIVE,
    ),
    (
        "another root namespace: its policies are the mesh's",
        pa("default", "istio-system", "STRICT"),
        {"namespace": "anywhere", "root_namespace": "istio-system"},
        STRICT,
    ),
]


@pytest.mark.parametrize(
    ("manifests", "where", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_istio_precedence(manifests: str, where: dict[str, object], expected: MtlsMode) -> None:
    namespace = str(where.get("namespace", "foo"))
    labels = where.get("labels", FINANCE)
    port = where.get("port", 8000)
    root = str(where.get("root_namespace", "weft-system"))
    assert isinstance(labels, dict) and isinstance(port, int)
    mode = effective_mode(peer_policies(manifests), namespace, labels, port, root_namespace=root)
    assert mode is expected


def test_never_returns_unset() -> None:
    policies = peer_policies(
        pa("default", "weft-system", "UNSET")
        + pa("default", "foo", "UNSET")
        + pa("finance", "foo", "UNSET", selector="app: finance", ports="8080: UNSET")
    )
    for port in (80, 8080):
        assert effective_mode(policies, "foo", FINANCE, port) is PERMISSIVE


def test_governing_policies_names_each_level() -> None:
    policies = peer_policies(
        MESH_STRICT
        + "---\n"
        + NAMESPACE_PERMISSIVE_FINANCE_STRICT
        + "---\n"
        + pa("x", "bar", "STRICT")
    )
    workload, namespace, mesh = governing_policies(policies, "foo", FINANCE)
    assert workload is not None and workload.metadata.name == "finance"
    assert namespace is not None and namespace.key.namespace == "foo"
    assert namespace.metadata.name == "default"
    assert mesh is not None and mesh.metadata.namespace == "weft-system"
    assert governing_policies(policies, "bar", FINANCE)[0] is None


def test_input_order_does_not_matter() -> None:
    policies = peer_policies(
        pa("b", "foo", "PERMISSIVE") + pa("a", "foo", "STRICT") + pa("c", "foo", "DISABLE")
    )
    for ordering in (policies, list(reversed(policies)), policies[1:] + policies[:1]):
        assert effective_mode(ordering, "foo", {}, 80) is STRICT
