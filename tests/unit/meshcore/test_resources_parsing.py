"""Manifests in, typed resources or located errors out: meshcore.resources at its edge."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from meshcore.resources import (
    Container,
    ContainerPort,
    Deployment,
    Document,
    EnvVar,
    ManifestError,
    ManifestErrors,
    Namespace,
    ObjectMeta,
    Pod,
    PodSpec,
    ResourceKey,
    RestartPolicy,
    Service,
    ServiceAccount,
    ServicePort,
    documents_from_text,
    load_documents,
    parse_resource,
)
from meshcore.resources.core import OwnerReference
from meshcore.resources.loader import KINDS
from meshcore.resources.names import (
    check_dns_label,
    check_dns_subdomain,
    check_env_name,
    check_label_key,
    check_label_value,
    check_port_name,
)
from tests.manifest_parsing import ManifestParser

SOURCE = "app.yaml"


_parser = ManifestParser(SOURCE)
parse, parse_one, only_error = _parser.parse, _parser.parse_one, _parser.only_error


def pod_with(spec: str, *, name: str = "web", namespace: str = "") -> str:
    """A Pod manifest around a `spec:` body given at column 0."""
    body = textwrap.indent(textwrap.dedent(spec), "  ")
    meta = f"  name: {name}\n" + (f"  namespace: {namespace}\n" if namespace else "")
    return f"apiVersion: v1\nkind: Pod\nmetadata:\n{meta}spec:\n{body}"


def container_with(fields: str) -> str:
    """A Pod with one container `app` whose fields are given at column 0."""
    body = textwrap.indent(textwrap.dedent(fields), "    ")
    return pod_with(f"containers:\n  - name: app\n{body}")


# --- good manifests ----------------------------------------------------------------------------


def test_namespace_round_trips_with_labels_and_no_namespace() -> None:
    resource = parse_one(
        """
        apiVersion: v1
        kind: Namespace
        metadata:
          name: shop
          labels:
            istio.io/dataplane-mode: ambient
        """
    )

    assert resource == Namespace(ObjectMeta("shop", "", {"istio.io/dataplane-mode": "ambient"}, {}))
    assert resource.key == ResourceKey("Namespace", "", "shop")
    assert str(resource.key) == "Namespace shop"


def test_service_account_defaults_to_the_default_namespace() -> None:
    resource = parse_one(
        """
        apiVersion: v1
        kind: ServiceAccount
        metadata:
          name: reader
        automountServiceAccountToken: false
        """
    )

    assert resource == ServiceAccount(ObjectMeta("reader", "default"))
    assert str(resource.key) == "ServiceAccount default/reader"


def test_minimal_pod_gets_kubernetes_defaults() -> None:
    resource = parse_one(
        """
        apiVersion: v1
        kind: Pod
        metadata:
          name: web
        spec:
          containers:
            - name: app
              image: weft/http-echo
        """
    )

    assert resource == Pod(
        ObjectMeta("web", "default"),
        PodSpec(
            containers=(Container("app", "weft/http-echo"),),
            node_name="",
            service_account_name="default",
            restart_policy=RestartPolicy.ALWAYS,
            termination_grace_period_seconds=5,
        ),
    )


def test_full_pod_round_trips_every_modelled_field() -> None:
    resource = parse_one(
        """
        apiVersion: v1
        kind: Pod
        metadata:
          name: client
          namespace: shop
          labels: {app: client, version: "2"}
          annotations: {note: hello}
        spec:
          nodeName: node-2
          serviceAccountName: reader
          restartPolicy: Never
          terminationGracePeriodSeconds: 0
          containers:
            - name: main
              image: busybox:1.36
              command: [sh, -c]
              args: ["sleep 1", 42]
              env:
                - name: MODE
                  value: fast
                - name: POD_IP
                  valueFrom:
                    fieldRef:
                      fieldPath: status.podIP
                - name: VERSION
                  valueFrom:
                    fieldRef:
                      apiVersion: v1
                      fieldPath: metadata.labels['version']
                - name: EMPTY
              ports:
                - containerPort: 8080
                  name: http
                - containerPort: 5353
                  protocol: UDP
            - name: sidecar
              command: [/bin/true]
        """
    )

    assert resource == Pod(
        ObjectMeta("client", "shop", {"app": "client", "version": "2"}, {"note": "hello"}),
        PodSpec(
            containers=(
                Container(
                    name="main",
                    image="busybox:1.36",
                    command=("sh", "-c"),
                    args=("sleep 1", "42"),
                    env=(
                        EnvVar("MODE", "fast"),
                        EnvVar("POD_IP", field_ref="status.podIP"),
                        EnvVar("VERSION", field_ref="metadata.labels['version']"),
                        EnvVar("EMPTY"),
                    ),
                    ports=(ContainerPort(8080, "http", "TCP"), ContainerPort(5353, "", "UDP")),
                ),
                Container("sidecar", command=("/bin/true",)),
            ),
            node_name="node-2",
            service_account_name="reader",
            restart_policy=RestartPolicy.NEVER,
            termination_grace_period_seconds=0,
        ),
    )


@pytest.mark.parametrize(
    "field_path",
    [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.podIP",
        "status.hostIP",
        "metadata.labels['app.kubernetes.io/name']",
        "metadata.annotations['sidecar.istio.io/status']",
    ],
)
def test_env_field_ref_accepts_every_downward_api_path_the_lab_fills(field_path: str) -> None:
    pod = parse_one(
        container_with(
            f"""
            image: weft/http-echo
            env:
              - name: X
                valueFrom: {{fieldRef: {{fieldPath: "{field_path}"}}}}
            """
        )
    )

    assert isinstance(pod, Pod)
    assert pod.spec.containers[0].env == (EnvVar("X", field_ref=field_path),)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("serviceAccountName: reader", "reader"),
        ("serviceAccount: reader", "reader"),
        # `kubectl get pod -o yaml` prints both; the current name wins, as in the API server.
        ("serviceAccountName: reader\nserviceAccount: reader", "reader"),
        ("serviceAccountName: reader\nserviceAccount: legacy", "reader"),
        ("", "default"),
    ],
)
def test_service_account_name_comes_from_the_field_or_its_deprecated_alias(
    spec: str, expected: str
) -> None:
    pod = parse_one(pod_with(f"{spec}\ncontainers: [{{name: app, image: weft/http-echo}}]"))

    assert isinstance(pod, Pod)
    assert pod.spec.service_account_name == expected


@pytest.mark.parametrize("policy", list(RestartPolicy))
def test_pod_accepts_every_restart_policy(policy: RestartPolicy) -> None:
    pod = parse_one(
        pod_with(f"restartPolicy: {policy.value}\ncontainers: [{{name: a, command: [x]}}]")
    )

    assert isinstance(pod, Pod)
    assert pod.spec.restart_policy is policy


def test_deployment_round_trips_with_template_named_after_it() -> None:
    resource = parse_one(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: backend
          namespace: shop
          labels: {team: payments}
        spec:
          replicas: 3
          selector:
            matchLabels: {app: backend}
          template:
            metadata:
              labels: {app: backend, version: v1}
              annotations: {prometheus.io/scrape: "true"}
            spec:
              containers:
                - name: echo
                  image: weft/http-echo:1.0
                  ports: [{containerPort: 8080, name: http}]
        """
    )

    assert resource == Deployment(
        metadata=ObjectMeta("backend", "shop", {"team": "payments"}, {}),
        replicas=3,
        selector={"app": "backend"},
        template_metadata=ObjectMeta(
            "backend",
            "shop",
            {"app": "backend", "version": "v1"},
            {"prometheus.io/scrape": "true"},
        ),
        template=PodSpec(
            containers=(
                Container("echo", "weft/http-echo:1.0", ports=(ContainerPort(8080, "http"),)),
            )
        ),
    )
    assert str(resource.key) == "Deployment shop/backend"


def test_deployment_without_replicas_runs_one_and_zero_is_allowed() -> None:
    template = """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          {replicas}
          selector: {{matchLabels: {{app: x}}}}
          template:
            metadata: {{labels: {{app: x}}}}
            spec: {{containers: [{{name: c, image: weft/tcp-echo}}]}}
        """
    one, zero = (
        parse_one(template.format(name="one", replicas="")),
        parse_one(template.format(name="zero", replicas="replicas: 0")),
    )

    assert isinstance(one, Deployment)
    assert isinstance(zero, Deployment)
    assert (one.replicas, zero.replicas) == (1, 0)


def test_service_round_trips_numeric_named_and_defaulted_target_ports() -> None:
    resource = parse_one(
        """
        apiVersion: v1
        kind: Service
        metadata:
          name: backend
          namespace: shop
        spec:
          type: ClusterIP
          clusterIP: 198.19.0.10
          clusterIPs: [198.19.0.10]
          selector: {app: backend}
          ports:
            - name: http
              port: 80
              targetPort: http
            - name: admin
              port: 9000
              targetPort: 9090
            - name: metrics
              port: 15020
            - name: quoted
              port: 81
              targetPort: "8081"
            - name: dns
              port: 53
              protocol: UDP
            - name: web
              port: 8080
              appProtocol: kubernetes.io/h2c
            - name: rpc
              port: 9090
              appProtocol: grpc
        """
    )

    assert resource == Service(
        metadata=ObjectMeta("backend", "shop"),
        ports=(
            ServicePort(80, "http", "http"),
            ServicePort(9000, 9090, "admin"),
            ServicePort(15020, 15020, "metrics"),
            ServicePort(81, 8081, "quoted"),
            ServicePort(53, 53, "dns", "UDP"),
            ServicePort(8080, 8080, "web", app_protocol="kubernetes.io/h2c"),
            ServicePort(9090, 9090, "rpc", app_protocol="grpc"),
        ),
        selector={"app": "backend"},
        cluster_ip="198.19.0.10",
    )


def test_service_with_one_unnamed_port_and_no_selector_is_accepted() -> None:
    resource = parse_one(
        """
        apiVersion: v1
        kind: Service
        metadata: {name: external}
        spec:
          ports: [{port: 443}]
        """
    )

    assert resource == Service(ObjectMeta("external", "default"), (ServicePort(443, 443),))


def test_owner_references_are_kept_so_deleting_the_owner_can_delete_the_object() -> None:
    resource = parse_one(
        """
        apiVersion: v1
        kind: ServiceAccount
        metadata:
          name: waypoint
          namespace: shop
          ownerReferences:
          - apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            name: waypoint
            uid: 1f2e
            controller: true
            blockOwnerDeletion: true
          - {apiVersion: v1, kind: Service, name: other}
        """
    )

    assert resource.metadata.owner_references == (
        OwnerReference("gateway.networking.k8s.io/v1", "Gateway", "waypoint", "1f2e", True),
        OwnerReference("v1", "Service", "other"),
    )


def test_known_fields_the_lab_ignores_are_accepted_and_reported_by_path() -> None:
    (parsed,) = parse(
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
          uid: 6f1c
          resourceVersion: "12"
        spec:
          strategy: {type: RollingUpdate}
          selector: {matchLabels: {app: web}}
          template:
            metadata:
              labels: {app: web}
              creationTimestamp: null
            spec:
              dnsPolicy: ClusterFirst
              containers:
                - name: app
                  image: weft/http-echo
                  resources: {limits: {cpu: 100m}}
                  readinessProbe: {httpGet: {port: 8080}}
                  ports: [{containerPort: 8080, hostPort: 80}]
        status:
          replicas: 1
        """
    )

    assert sorted(parsed.ignored_fields) == [
        "metadata.resourceVersion",
        "spec.strategy",
        "spec.template.metadata.creationTimestamp",
        "spec.template.spec.containers[0].ports[0].hostPort",
        "spec.template.spec.containers[0].readinessProbe",
        "spec.template.spec.containers[0].resources",
        "spec.template.spec.dnsPolicy",
        "status",
    ]


@pytest.mark.parametrize(
    ("manifest", "ignored"),
    [
        (
            """
            apiVersion: v1
            kind: Service
            metadata: {name: web}
            spec:
              sessionAffinity: None
              ports: [{port: 80, nodePort: 30080, appProtocol: http}]
            """,
            ["spec.ports[0].nodePort", "spec.sessionAffinity"],
        ),
        (
            pod_with(
                """
                volumes: []
                containers:
                  - name: app
                    image: weft/http-echo
                    imagePullPolicy: IfNotPresent
                """
            ),
            ["spec.containers[0].imagePullPolicy", "spec.volumes"],
        ),
    ],
)
def test_ignored_fields_of_services_ports_and_pod_specs_are_reported(
    manifest: str, ignored: list[str]
) -> None:
    (parsed,) = parse(manifest)

    assert sorted(parsed.ignored_fields) == ignored


# --- documents and sources ---------------------------------------------------------------------


def test_documents_of_one_file_are_numbered_and_empty_ones_skipped() -> None:
    docs = documents_from_text(
        "---\nkind: Namespace\n---\n---\nkind: Pod\n...\n",
        "all.yaml",
    )

    assert docs == [
        Document("all.yaml#1", {"kind": "Namespace"}),
        Document("all.yaml#2", {"kind": "Pod"}),
    ]


def test_a_single_document_is_named_by_its_file_alone() -> None:
    assert documents_from_text("kind: Pod\n", "pod.yaml") == [Document("pod.yaml", {"kind": "Pod"})]


def test_a_list_is_flattened_into_its_items() -> None:
    docs = documents_from_text(
        "kind: List\nitems:\n  - {kind: Namespace}\n  - {kind: Pod}\n---\nkind: Service\n",
        "dump.yaml",
    )

    assert [d.source for d in docs] == [
        "dump.yaml#1 items[0]",
        "dump.yaml#1 items[1]",
        "dump.yaml#2",
    ]


def test_parsed_resources_keep_their_source() -> None:
    parsed = parse(
        """
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: reader, namespace: shop}
        """
    )

    assert [(p.source, str(p.resource.key)) for p in parsed] == [
        ("app.yaml#1", "Namespace shop"),
        ("app.yaml#2", "ServiceAccount shop/reader"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "kind: Pod\nmetadata:\n  name: [a\n",
            "app.yaml: not valid YAML at line 4, column 1: "
            "expected ',' or ']', but got '<stream end>'",
        ),
        (
            "a: b\n c: d\n",
            "app.yaml: not valid YAML at line 2, column 3: mapping values are not allowed here",
        ),
    ],
)
def test_yaml_syntax_errors_name_the_file_line_and_column(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        documents_from_text(text, SOURCE)

    assert str(caught.value) == message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_a_document_that_is_not_a_mapping_is_rejected_naming_the_file(text: str) -> None:
    assert str(only_error(text)) == "app.yaml: a manifest must be a YAML mapping"


def test_load_documents_reads_a_folder_recursively_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "10-svc.yml").write_text("kind: Service\n")
    (tmp_path / "a.yaml").write_text("kind: Namespace\n---\nkind: Pod\n")
    (tmp_path / "c.json").write_text('{"kind": "Deployment"}')
    (tmp_path / "README.md").write_text("kind: ignored\n")

    docs = load_documents([tmp_path])

    assert [(Path(d.source).relative_to(tmp_path).as_posix(), d.raw) for d in docs] == [
        ("a.yaml#1", {"kind": "Namespace"}),
        ("a.yaml#2", {"kind": "Pod"}),
        ("b/10-svc.yml", {"kind": "Service"}),
        ("c.json", {"kind": "Deployment"}),
    ]


def test_load_documents_reports_every_broken_file_together(tmp_path: Path) -> None:
    (tmp_path / "1-bad.yaml").write_text("a: b\n c: d\n")
    (tmp_path / "2-good.yaml").write_text("kind: Pod\n")
    (tmp_path / "3-binary.yaml").write_bytes(b"\xff\xfe\x00kind")

    with pytest.raises(ManifestErrors) as caught:
        load_documents([tmp_path])

    bad, binary = caught.value.errors
    assert str(bad) == (
        f"{tmp_path / '1-bad.yaml'}: not valid YAML at line 2, column 3: "
        "mapping values are not allowed here"
    )
    assert binary.source == str(tmp_path / "3-binary.yaml")
    assert binary.reason.startswith("cannot read: ")


def test_load_documents_of_a_missing_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ManifestError) as caught:
        load_documents([missing])

    assert str(caught.value) == f"{missing}: no such file or folder"


# --- bad manifests: each names file, resource and field path ------------------------------------

BAD_MANIFESTS = [
    # (id, manifest, "resource: field: reason" after the file name)
    (
        "unknown kind",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: cfg}\n",
        "Secret cfg: kind: unknown kind 'Secret' "
        f"(known: {', '.join(sorted(KINDS))})",  # every kind the loader serves
    ),
    (
        "missing kind",
        "apiVersion: v1\nmetadata: {name: x}\n",
        "? x: kind: required field is missing",
    ),
    (
        "deployment served as v1",
        "apiVersion: v1\nkind: Deployment\nmetadata: {name: web}\n",
        "Deployment default/web: apiVersion: Deployment is served as apps/v1, not 'v1'",
    ),
    (
        "pod served as apps/v1",
        "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n",
        "Pod shop/web: apiVersion: Pod is served as v1, not 'apps/v1'",
    ),
    (
        "missing apiVersion",
        "kind: Namespace\nmetadata: {name: shop}\n",
        "Namespace shop: apiVersion: required field is missing",
    ),
    (
        "unknown top-level field",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspce: {}\n",
        "Namespace shop: spce: unknown field",
    ),
    (
        "missing name",
        "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
        "Namespace (unnamed): metadata.name: required field is missing",
    ),
    (
        "metadata not an object",
        "apiVersion: v1\nkind: Namespace\nmetadata: shop\n",
        "Namespace (unnamed): metadata: expected an object, got string",
    ),
    (
        "unknown metadata field",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, lables: {a: b}}\n",
        "Namespace shop: metadata.lables: unknown field",
    ),
    (
        "namespace of a cluster-scoped kind",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: default}\n",
        "Namespace default/shop: metadata.namespace: "
        "this kind is cluster-scoped and takes no namespace",
    ),
    (
        "namespace name with a dot",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop.v1}\n",
        "Namespace shop.v1: metadata.name: 'shop.v1' is not a valid DNS-1123 label "
        "(lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters)",
    ),
    (
        "uppercase namespace of a pod",
        pod_with("containers: [{name: a, image: weft/http-echo}]", namespace="Shop"),
        "Pod Shop/web: metadata.namespace: 'Shop' is not a valid DNS-1123 label "
        "(lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters)",
    ),
    (
        "uppercase pod name",
        pod_with("containers: [{name: a, image: weft/http-echo}]", name="Web"),
        "Pod default/Web: metadata.name: 'Web' is not a valid DNS-1123 subdomain "
        "(lowercase letters, digits, '-' and '.', at most 253 characters)",
    ),
    (
        "service name with a dot",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web.v1}\nspec: {ports: [{port: 80}]}\n",
        "Service default/web.v1: metadata.name: 'web.v1' is not a valid DNS-1123 label "
        "(lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters)",
    ),
    (
        "unquoted boolean label value",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {enabled: true}}\n",
        "Namespace shop: metadata.labels.enabled: expected a string, got boolean "
        "(quote it in YAML)",
    ),
    (
        "label key starting with a dash",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {-app: x}}\n",
        "Namespace shop: metadata.labels: '-app' is not a valid label key (name part: "
        "alphanumerics, '-', '_' or '.', at most 63 characters)",
    ),
    (
        "label key with an uppercase prefix",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {Example.com/app: x}}\n",
        "Namespace shop: metadata.labels (prefix of key 'Example.com/app'): 'Example.com' "
        "is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', "
        "at most 253 characters)",
    ),
    (
        "label key with an empty prefix",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {/app: x}}\n",
        "Namespace shop: metadata.labels (prefix of key '/app'): '' is not a valid DNS-1123 "
        "subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)",
    ),
    (
        "label value with a space",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {app: a b}}\n",
        "Namespace shop: metadata.labels.app: 'a b' is not a valid label value "
        "(alphanumerics, '-', '_' or '.', at most 63 characters)",
    ),
    (
        "annotations not an object",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: [a]}\n",
        "Namespace shop: metadata.annotations: expected an object of strings, got array",
    ),
    (
        "pod without spec",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n",
        "Pod default/web: spec: required field is missing",
    ),
    (
        "pod spec as a list",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: []\n",
        "Pod default/web: spec: expected an object, got array",
    ),
    (
        "pod without containers",
        pod_with("containers: []"),
        "Pod default/web: spec.containers: a pod needs at least one container",
    ),
    (
        "containers not a list",
        pod_with("containers: {name: a}"),
        "Pod default/web: spec.containers: expected an array, got object",
    ),
    (
        "unknown pod spec field",
        pod_with("containers: [{name: a, image: weft/http-echo}]\nhostNetwork: true"),
        "Pod default/web: spec.hostNetwork: unknown field",
    ),
    (
        "container without image or command",
        container_with("args: [x]"),
        "Pod default/web: spec.containers[0].image: required field is missing (or give a command)",
    ),
    (
        "container without name",
        pod_with("containers: [{image: weft/http-echo}]"),
        "Pod default/web: spec.containers[0].name: required field is missing",
    ),
    (
        "container with an empty name",
        pod_with("containers: [{name: '', image: weft/http-echo}]"),
        "Pod default/web: spec.containers[0].name: must not be empty",
    ),
    (
        "container name with an underscore",
        pod_with("containers: [{name: my_app, image: weft/http-echo}]"),
        "Pod default/web: spec.containers[0].name: 'my_app' is not a valid DNS-1123 label "
        "(lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters)",
    ),
    (
        "duplicate container names",
        pod_with("containers: [{name: a, image: weft/http-echo}, {name: a, command: [x]}]"),
        "Pod default/web: spec.containers: duplicate container name 'a'",
    ),
    (
        "misspelt container field",
        container_with("imagee: weft/http-echo\nimage: weft/http-echo"),
        "Pod default/web: spec.containers[0].imagee: unknown field",
    ),
    (
        "command as a string",
        container_with("command: sleep 1"),
        "Pod default/web: spec.containers[0].command: expected an array of strings, got string",
    ),
    (
        "command item as an object",
        container_with("command: [sh, {a: b}]"),
        "Pod default/web: spec.containers[0].command[1]: expected a string, got object",
    ),
    (
        "container port above 65535",
        container_with(
            "image: weft/http-echo\nports: [{containerPort: 80}, {containerPort: 70000}]"
        ),
        "Pod default/web: spec.containers[0].ports[1].containerPort: must be at most 65535, got 70000",
    ),
    (
        "container port zero",
        container_with("image: weft/http-echo\nports: [{containerPort: 0}]"),
        "Pod default/web: spec.containers[0].ports[0].containerPort: must be at least 1, got 0",
    ),
    (
        "container port as a string",
        container_with("image: weft/http-echo\nports: [{containerPort: '80'}]"),
        "Pod default/web: spec.containers[0].ports[0].containerPort: expected an integer, got string",
    ),
    (
        "container port missing",
        container_with("image: weft/http-echo\nports: [{name: http}]"),
        "Pod default/web: spec.containers[0].ports[0].containerPort: required field is missing",
    ),
    (
        "port name longer than 15",
        container_with(
            "image: weft/http-echo\nports: [{containerPort: 80, name: http-frontend-v2}]"
        ),
        "Pod default/web: spec.containers[0].ports[0].name: 'http-frontend-v2' is not a valid port "
        "name (IANA service name: lowercase letters, digits and '-', at least one letter, "
        "at most 15 characters)",
    ),
    (
        "port name with a double dash",
        container_with("image: weft/http-echo\nports: [{containerPort: 80, name: http--x}]"),
        "Pod default/web: spec.containers[0].ports[0].name: 'http--x' is not a valid port "
        "name (IANA service name: lowercase letters, digits and '-', at least one letter, "
        "at most 15 characters)",
    ),
    (
        "port name of digits only",
        container_with("image: weft/http-echo\nports: [{containerPort: 9000, name: '8080'}]"),
        "Pod default/web: spec.containers[0].ports[0].name: '8080' is not a valid port "
        "name (IANA service name: lowercase letters, digits and '-', at least one letter, "
        "at most 15 characters)",
    ),
    (
        "duplicate container port names",
        container_with(
            "image: weft/http-echo\n"
            "ports: [{containerPort: 80, name: http}, {containerPort: 81, name: http}]"
        ),
        "Pod default/web: spec.containers[0].ports: duplicate port name 'http'",
    ),
    (
        "unknown port protocol",
        container_with("image: weft/http-echo\nports: [{containerPort: 80, protocol: HTTP}]"),
        "Pod default/web: spec.containers[0].ports[0].protocol: must be TCP, UDP or SCTP, got 'HTTP'",
    ),
    (
        "env name starting with a digit",
        container_with("image: weft/http-echo\nenv: [{name: 1X, value: a}]"),
        "Pod default/web: spec.containers[0].env[0].name: '1X' is not a valid environment variable name",
    ),
    (
        "env value as a number",
        container_with("image: weft/http-echo\nenv: [{name: A, value: a}, {name: B, value: 3}]"),
        "Pod default/web: spec.containers[0].env[1].value: expected a string, got integer",
    ),
    (
        "env value and valueFrom together",
        container_with(
            "image: weft/http-echo\n"
            "env: [{name: A, value: a, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]"
        ),
        "Pod default/web: spec.containers[0].env[0].value: may not be given together with valueFrom",
    ),
    (
        "env from a secret",
        container_with(
            "image: weft/http-echo\nenv: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]"
        ),
        "Pod default/web: spec.containers[0].env[0].valueFrom.secretKeyRef: "
        "not supported here; use fieldRef or value",
    ),
    (
        "env fieldRef without fieldPath",
        container_with("image: weft/http-echo\nenv: [{name: A, valueFrom: {fieldRef: {}}}]"),
        "Pod default/web: spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: "
        "required field is missing",
    ),
    (
        "env fieldRef to an unsupported path",
        container_with(
            "image: weft/http-echo\n"
            "env: [{name: A, valueFrom: {fieldRef: {fieldPath: spec.hostname}}}]"
        ),
        "Pod default/web: spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: unsupported "
        "fieldPath 'spec.hostname'; supported: metadata.name, metadata.namespace, "
        "metadata.uid, spec.nodeName, spec.serviceAccountName, status.hostIP, status.podIP, "
        "metadata.labels['KEY'], metadata.annotations['KEY']",
    ),
    (
        "env fieldRef with an unknown field",
        container_with(
            "image: weft/http-echo\n"
            "env: [{name: A, valueFrom: {fieldRef: {fieldPath: metadata.name, kind: x}}}]"
        ),
        "Pod default/web: spec.containers[0].env[0].valueFrom.fieldRef.kind: unknown field",
    ),
    (
        "unknown restart policy",
        pod_with("restartPolicy: Sometimes\ncontainers: [{name: a, image: weft/http-echo}]"),
        "Pod default/web: spec.restartPolicy: must be Always, OnFailure or Never, got 'Sometimes'",
    ),
    (
        "negative grace period",
        pod_with(
            "terminationGracePeriodSeconds: -1\ncontainers: [{name: a, image: weft/http-echo}]"
        ),
        "Pod default/web: spec.terminationGracePeriodSeconds: must be at least 0, got -1",
    ),
    (
        "grace period as a boolean",
        pod_with(
            "terminationGracePeriodSeconds: true\ncontainers: [{name: a, image: weft/http-echo}]"
        ),
        "Pod default/web: spec.terminationGracePeriodSeconds: expected an integer, got boolean",
    ),
    (
        "service account name with an underscore",
        pod_with("serviceAccountName: my_sa\ncontainers: [{name: a, image: weft/http-echo}]"),
        "Pod default/web: spec.serviceAccountName: 'my_sa' is not a valid DNS-1123 subdomain "
        "(lowercase letters, digits, '-' and '.', at most 253 characters)",
    ),
]

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {selector}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
{spec}
"""


def deployment(
    *,
    replicas: str = "2",
    selector: str = "{matchLabels: {app: web}}",
    spec: str = "containers: [{name: a, image: weft/http-echo}]",
) -> str:
    return DEPLOYMENT.format(
        replicas=replicas, selector=selector, spec=textwrap.indent(spec, "      ")
    )


SERVICE = """\
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
{spec}
"""


def service(spec: str) -> str:
    return SERVICE.format(spec=textwrap.indent(textwrap.dedent(spec), "  "))


BAD_MANIFESTS += [
    (
        "deployment selector not matching the template",
        deployment(selector="{matchLabels: {app: web, tier: front}}"),
        "Deployment default/web: spec.template.metadata.labels: "
        "selector tier=front does not match the template's labels",
    ),
    (
        "deployment without selector",
        deployment(selector="{}"),
        "Deployment default/web: spec.selector.matchLabels: required field is missing",
    ),
    (
        "deployment with matchExpressions",
        deployment(selector="{matchExpressions: [{key: app, operator: In, values: [web]}]}"),
        "Deployment default/web: spec.selector.matchExpressions: not supported here; use matchLabels",
    ),
    (
        "deployment selector with a bad label value",
        deployment(selector="{matchLabels: {app: 'a b'}}"),
        "Deployment default/web: spec.selector.matchLabels.app: 'a b' is not a valid label value "
        "(alphanumerics, '-', '_' or '.', at most 63 characters)",
    ),
    (
        "deployment with negative replicas",
        deployment(replicas="-1"),
        "Deployment default/web: spec.replicas: must be at least 0, got -1",
    ),
    (
        "deployment replicas as a string",
        deployment(replicas="'3'"),
        "Deployment default/web: spec.replicas: expected an integer, got string",
    ),
    (
        "deployment pods that do not restart",
        deployment(spec="restartPolicy: OnFailure\ncontainers: [{name: a, image: weft/http-echo}]"),
        "Deployment default/web: spec.template.spec.restartPolicy: "
        "a Deployment's pods must use restartPolicy Always",
    ),
    (
        "deployment template container without image",
        deployment(spec="containers: [{name: a}]"),
        "Deployment default/web: spec.template.spec.containers[0].image: "
        "required field is missing (or give a command)",
    ),
    (
        "deployment template without spec",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
        "spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}}}\n",
        "Deployment default/web: spec.template.spec: required field is missing",
    ),
    (
        "deployment template with an unknown field",
        deployment().replace("    metadata:", "    spce: {}\n    metadata:"),
        "Deployment default/web: spec.template.spce: unknown field",
    ),
    (
        "deployment spec with an unknown field",
        deployment().replace("  replicas:", "  replica: 3\n  replicas:"),
        "Deployment default/web: spec.replica: unknown field",
    ),
    (
        "deployment template label key invalid",
        deployment().replace("{labels: {app: web}}", "{labels: {app: web, _x: y}}"),
        "Deployment default/web: spec.template.metadata.labels: '_x' is not a valid label key "
        "(name part: alphanumerics, '-', '_' or '.', at most 63 characters)",
    ),
    (
        "service of type ExternalName",
        service("type: ExternalName\nexternalName: example.com"),
        "Service default/web: spec.type: ExternalName Services are not supported yet: weft "
        "leaves this Service out of the mesh (DNS still answers its name with the external one)",
    ),
    (
        "service of an unknown type",
        service("type: Internal\nports: [{port: 80}]"),
        "Service default/web: spec.type: must be ClusterIP, NodePort or LoadBalancer, "
        "got 'Internal'",
    ),
    (
        "service without ports",
        service("selector: {app: web}"),
        "Service default/web: spec.ports: a Service needs at least one port",
    ),
    (
        "owner reference without a name",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n"
        "  ownerReferences: [{apiVersion: v1, kind: Service}]\n",
        "ServiceAccount default/web: metadata.ownerReferences[0].name: required field is missing",
    ),
    (
        "owner reference whose controller is not a boolean",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: web\n"
        "  ownerReferences: [{apiVersion: v1, kind: Service, name: s, controller: 'yes'}]\n",
        "ServiceAccount default/web: metadata.ownerReferences[0].controller: expected true or "
        "false",
    ),
    (
        "service port with an appProtocol that is not a qualified name",
        service("ports: [{port: 80, appProtocol: 'h2 c'}]"),
        "Service default/web: spec.ports[0].appProtocol: 'h2 c' is not a valid label key "
        "(name part: alphanumerics, '-', '_' or '.', at most 63 characters)",
    ),
    (
        "service with two ports, one unnamed",
        service("ports: [{port: 80, name: http}, {port: 443}]"),
        "Service default/web: spec.ports: every port needs a name when a Service has more than one",
    ),
    (
        "service with a duplicate port name",
        service("ports: [{port: 80, name: http}, {port: 81, name: http}]"),
        "Service default/web: spec.ports: duplicate port name 'http'",
    ),
    (
        "service with a duplicate port and protocol",
        service("ports: [{port: 80, name: a}, {port: 80, name: b}]"),
        "Service default/web: spec.ports: duplicate port '80/TCP'",
    ),
    (
        "service port missing",
        service("ports: [{targetPort: 80}]"),
        "Service default/web: spec.ports[0].port: required field is missing",
    ),
    (
        "service target port zero",
        service("ports: [{port: 80, targetPort: 0}]"),
        "Service default/web: spec.ports[0].targetPort: must be between 1 and 65535, got 0",
    ),
    (
        "service target port zero as a string",
        service("ports: [{port: 80, targetPort: '0'}]"),
        "Service default/web: spec.ports[0].targetPort: must be between 1 and 65535, got 0",
    ),
    (
        "service target port above 65535 as a string",
        service("ports: [{port: 80, targetPort: '70000'}]"),
        "Service default/web: spec.ports[0].targetPort: must be between 1 and 65535, got 70000",
    ),
    (
        "service target port in non-ascii digits",
        service("ports: [{port: 80, targetPort: '²'}]"),
        "Service default/web: spec.ports[0].targetPort: '²' is not a valid port name (IANA service "
        "name: lowercase letters, digits and '-', at least one letter, at most 15 characters)",
    ),
    (
        "service target port as an uppercase name",
        service("ports: [{port: 80, targetPort: HTTP}]"),
        "Service default/web: spec.ports[0].targetPort: 'HTTP' is not a valid port name (IANA service "
        "name: lowercase letters, digits and '-', at least one letter, at most 15 characters)",
    ),
    (
        "service target port as a boolean",
        service("ports: [{port: 80, targetPort: true}]"),
        "Service default/web: spec.ports[0].targetPort: expected a port number or a port name",
    ),
    (
        "service target port as a float",
        service("ports: [{port: 80, targetPort: 80.5}]"),
        "Service default/web: spec.ports[0].targetPort: expected a port number or a port name",
    ),
    (
        "service port protocol in lowercase",
        service("ports: [{port: 53, protocol: udp}]"),
        "Service default/web: spec.ports[0].protocol: must be TCP, UDP or SCTP, got 'udp'",
    ),
    (
        "headless service (without ports, as Kubernetes allows)",
        service("clusterIP: None\nselector: {app: web}"),
        "Service default/web: spec.clusterIP: headless Services are not supported yet: weft "
        "leaves this Service out of the mesh; its pods are still in it and reachable by their "
        "own addresses",
    ),
    (
        "service cluster IP not an address",
        service("clusterIP: 10.0.0.300\nports: [{port: 80}]"),
        "Service default/web: spec.clusterIP: '10.0.0.300' is not an IPv4 address",
    ),
    (
        "service cluster IP in IPv6",
        service("clusterIP: 'fd00::1'\nports: [{port: 80}]"),
        "Service default/web: spec.clusterIP: 'fd00::1' is not an IPv4 address",
    ),
    (
        "service dual-stack cluster IPs",
        service("clusterIP: 198.19.0.5\nclusterIPs: [198.19.0.5, 'fd00::5']\nports: [{port: 80}]"),
        "Service default/web: spec.clusterIPs: must equal clusterIP (single-stack only)",
    ),
    (
        "service selector with a bad value",
        service("selector: {app: 'web!'}\nports: [{port: 80}]"),
        "Service default/web: spec.selector.app: 'web!' is not a valid label value "
        "(alphanumerics, '-', '_' or '.', at most 63 characters)",
    ),
    (
        "service with an unknown spec field",
        service("externalName: example.com\nports: [{port: 80}]"),
        "Service default/web: spec.externalName: unknown field",
    ),
    (
        "service port with an unknown field",
        service("ports: [{port: 80, tagetPort: 8080}]"),
        "Service default/web: spec.ports[0].tagetPort: unknown field",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [pytest.param(m, e, id=i) for i, m, e in BAD_MANIFESTS],
)
def test_bad_manifest_is_rejected_naming_file_resource_and_field(
    manifest: str, expected: str
) -> None:
    error = only_error(manifest)

    assert str(error) == f"{SOURCE}: {expected}"
    assert error.source == SOURCE


@pytest.mark.parametrize(
    ("manifest", "field"),
    [pytest.param(m, e.split(": ", 2)[1], id=i) for i, m, e in BAD_MANIFESTS],
)
def test_bad_manifest_error_carries_the_field_path_on_its_own(manifest: str, field: str) -> None:
    assert only_error(manifest).field == field


def test_every_bad_document_is_reported_not_just_the_first() -> None:
    with pytest.raises(ManifestErrors) as caught:
        parse(
            """
            apiVersion: v1
            kind: Namespace
            metadata: {name: Shop}
            ---
            apiVersion: v1
            kind: Namespace
            metadata: {name: fine}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: web}
            """
        )

    assert [(e.source, e.resource, e.field) for e in caught.value.errors] == [
        ("app.yaml#1", "Namespace Shop", "metadata.name"),
        ("app.yaml#3", "Service default/web", "spec.ports"),
    ]
    assert str(caught.value).splitlines() == [str(e) for e in caught.value.errors]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("{name: web}", "{name: web}"),
        ("{name: web}", "{name: web, namespace: default}"),
    ],
)
def test_duplicate_resource_is_rejected_naming_where_it_was_first_defined(
    first: str, second: str
) -> None:
    manifest = (
        f"apiVersion: v1\nkind: ServiceAccount\nmetadata: {first}\n---\n"
        f"apiVersion: v1\nkind: ServiceAccount\nmetadata: {second}\n"
    )

    assert str(only_error(manifest)) == (
        "app.yaml#2: ServiceAccount default/web: metadata.name: "
        "duplicate: ServiceAccount default/web is also defined in app.yaml#1"
    )


def test_same_name_in_other_namespace_or_kind_is_not_a_duplicate() -> None:
    parsed = parse(
        """
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: web}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: web, namespace: shop}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: 80}]}
        """
    )

    assert [str(p.resource.key) for p in parsed] == [
        "ServiceAccount default/web",
        "ServiceAccount shop/web",
        "Service default/web",
    ]


def test_parse_resource_raises_a_single_located_error() -> None:
    doc = Document("inline", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})

    with pytest.raises(ManifestError) as caught:
        parse_resource(doc)

    assert (caught.value.source, caught.value.resource, caught.value.field) == (
        "inline",
        "Pod default/p",
        "spec",
    )


# --- ManifestError -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "rendered"),
    [
        ({"source": "a.yaml", "resource": "Pod x", "field": "spec"}, "a.yaml: Pod x: spec: bad"),
        ({"source": "a.yaml", "resource": "Pod x"}, "a.yaml: Pod x: bad"),
        ({"source": "a.yaml"}, "a.yaml: bad"),
        ({"resource": "Pod x", "field": "spec"}, "Pod x: spec: bad"),
        ({"field": "spec"}, "spec: bad"),
        ({}, "bad"),
    ],
)
def test_manifest_error_renders_source_resource_field_and_reason(
    kwargs: dict[str, str], rendered: str
) -> None:
    assert str(ManifestError("bad", **kwargs)) == rendered


def test_located_fills_in_only_what_was_not_known() -> None:
    inner = ManifestError("bad", resource="Pod x", field="spec")

    located = inner.located(source="a.yaml", resource="Pod y")

    assert (located.source, located.resource, located.field, located.reason) == (
        "a.yaml",
        "Pod x",
        "spec",
        "bad",
    )
    assert str(located) == "a.yaml: Pod x: spec: bad"


# --- names -------------------------------------------------------------------------------------

NameCheck = Callable[[str, str], None]

NAME_CHECKS: list[tuple[NameCheck, list[str], list[str]]] = [
    # (check, valid values, invalid values)
    (
        check_dns_label,
        ["a", "web", "web-1", "1web", "a" * 63],
        ["", "Web", "web.v1", "-web", "web-", "web_1", "a" * 64],
    ),
    (
        check_dns_subdomain,
        ["a", "web.v1", "a-b.c-d", ".".join(["a" * 63] * 3) + "." + "a" * 61],
        ["", "Web", ".web", "web.", "web..v1", "web_1", ".".join(["a" * 63] * 4)],
    ),
    (
        check_label_key,
        ["app", "App_Name.v-1", "example.com/app", "a" * 63, "k8s.io/" + "a" * 63],
        ["", "-app", "app-", "a b", "example.com/", "Example.com/app", "/app", "a" * 64],
    ),
    (
        check_label_value,
        ["", "web", "Web_1.v-2", "a" * 63],
        ["-web", "web-", "a b", "a/b", "a" * 64],
    ),
    (
        check_port_name,
        ["http", "grpc-web", "h2c", "8080-web", "a" * 15],
        ["", "HTTP", "http_1", "-http", "http-", "http--x", "8080", "80-443", "a" * 16],
    ),
    (
        check_env_name,
        ["HOME", "_x", "my.var-1", "-a"],
        ["", "1X", "A B", "A=B"],
    ),
]


@pytest.mark.parametrize(
    ("check", "value"),
    [
        pytest.param(check, value, id=f"{check.__name__}-{value[:20]!r}")
        for check, valid, _ in NAME_CHECKS
        for value in valid
    ],
)
def test_valid_names_pass_their_check(check: NameCheck, value: str) -> None:
    check(value, "f")


@pytest.mark.parametrize(
    ("check", "value"),
    [
        pytest.param(check, value, id=f"{check.__name__}-{value[:20]!r}")
        for check, _, invalid in NAME_CHECKS
        for value in invalid
    ],
)
def test_invalid_names_are_rejected_naming_the_field(check: NameCheck, value: str) -> None:
    with pytest.raises(ManifestError) as caught:
        check(value, "spec.x")

    assert caught.value.field.startswith("spec.x")
