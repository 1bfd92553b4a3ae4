"""The waypoint deployer: a weft-waypoint Gateway becomes a ServiceAccount, a Deployment and a
Service owned by it, and its status says whether it is Programmed and where."""

from __future__ import annotations

import asyncio
import dataclasses
import textwrap
from typing import Any

import pytest

from controller.deployer import (
    Deployer,
    DeployerConfig,
    DeployerLoop,
    KubernetesWaypoints,
    WriteError,
    waypoint_objects,
)
from controller.meshbuilder import MeshBuilder
from meshcore.meshstate import TrustBundle
from meshcore.resources import (
    Deployment,
    Gateway,
    Resource,
    ResourceKey,
    Service,
    ServiceAccount,
    documents_from_text,
    parse_documents,
)
from meshcore.resources.loader import Document, parse_resource

CONFIG = DeployerConfig("cluster.local", "198.18.0.254:15012")
GW_KEY = ResourceKey("Gateway", "shop", "waypoint")


def gateway(
    *, annotations: str = "{}", listeners: str = "[{name: mesh, port: 15008, protocol: HBONE}]"
) -> str:
    return textwrap.dedent(
        f"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {{name: waypoint, namespace: shop, uid: g-1, annotations: {annotations}}}
        spec:
          gatewayClassName: weft-waypoint
          listeners: {listeners}
        """
    )


def parse(text: str) -> dict[ResourceKey, Resource]:
    return {p.resource.key: p.resource for p in parse_documents(documents_from_text(text, "c"))}


def the_gateway(text: str) -> Gateway:
    gw = parse(text)[GW_KEY]
    assert isinstance(gw, Gateway)
    return gw


def typed(objects: list[dict[str, Any]]) -> dict[ResourceKey, Resource]:
    """The generated objects as the lab (or an API server) will parse them."""
    return {
        parsed.resource.key: parsed.resource
        for parsed in (parse_resource(Document("deployer", o)) for o in objects)
    }


def test_a_waypoint_gets_a_service_account_service_and_deployment_owned_by_its_gateway() -> None:
    objects = typed(waypoint_objects(the_gateway(gateway()), CONFIG, 1))

    sa = objects[ResourceKey("ServiceAccount", "shop", "waypoint")]
    svc = objects[ResourceKey("Service", "shop", "waypoint")]
    dep = objects[ResourceKey("Deployment", "shop", "waypoint")]
    assert isinstance(sa, ServiceAccount)
    assert isinstance(svc, Service) and isinstance(dep, Deployment)
    for obj in (sa, svc, dep):
        (owner,) = obj.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (
            "Gateway",
            "waypoint",
            "g-1",
            True,
        )
        assert obj.metadata.labels["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert svc.selector == {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert [(p.name, p.port, p.target_port) for p in svc.ports] == [("mesh", 15008, 15008)]
    assert dep.replicas == 1
    assert dep.selector == {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert dep.template_metadata.labels == {
        "gateway.networking.k8s.io/gateway-name": "waypoint",
        "gateway.weft.dev/managed": "weft.dev-mesh-controller",
        "weft.dev/dataplane-mode": "none",
    }
    assert dep.template.service_account_name == "waypoint"
    (container,) = dep.template.containers
    assert container.image == "weft/waypoint"
    assert container.command == ()
    assert container.args == ("--gateway", "shop/waypoint")
    env = {e.name: e.value or e.field_ref for e in container.env}
    assert env == {
        "WEFT_CONTROLLER_ADDR": "198.18.0.254:15012",
        "WEFT_TRUST_DOMAIN": "cluster.local",
        "WEFT_GATEWAY": "shop/waypoint",
        "NODE_NAME": "spec.nodeName",
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_IP": "status.podIP",
        "HOST_IP": "status.hostIP",
        "SERVICE_ACCOUNT": "spec.serviceAccountName",
    }
    assert [(p.name, p.container_port) for p in container.ports] == [("mesh", 15008)]


def test_the_replicas_come_from_the_annotation() -> None:
    gw = the_gateway(gateway(annotations="{weft.dev/replicas: '3'}"))
    plan = Deployer(CONFIG).plan({GW_KEY: gw})
    dep = typed(plan.apply[GW_KEY])[ResourceKey("Deployment", "shop", "waypoint")]
    assert isinstance(dep, Deployment) and dep.replicas == 3


@pytest.mark.parametrize("bad", ["-1", "three", "101", "²"])
def test_a_bad_replicas_annotation_is_reported_and_one_replica_is_run(bad: str) -> None:
    text = gateway(annotations=f"{{weft.dev/replicas: '{bad}'}}")
    dep = typed(Deployer(CONFIG).plan(parse(text)).apply[GW_KEY])[
        ResourceKey("Deployment", "shop", "waypoint")
    ]
    assert isinstance(dep, Deployment) and dep.replicas == 1
    builder = MeshBuilder("cluster.local")
    state = builder.build(parse(text), TrustBundle("cluster.local", ("r",)))
    assert ResourceKey("Waypoint", "shop", "waypoint") in state  # still a waypoint
    problem = builder.problems()[GW_KEY]
    assert problem.field == "metadata.annotations[weft.dev/replicas]"
    assert problem.reason.endswith("; 1 replica is run")


@pytest.mark.parametrize(
    "listeners",
    [
        "[{name: http, port: 80, protocol: HTTP}]",
        "[{name: mesh, port: 15009, protocol: HBONE}]",
        "[{name: mesh, port: 15008, protocol: HBONE}, {name: http, port: 80, protocol: HTTP}]",
    ],
)
def test_a_waypoint_gateway_with_other_listeners_is_refused_with_a_status_condition(
    listeners: str,
) -> None:
    resources = parse(gateway(listeners=listeners))
    plan = Deployer(CONFIG).plan(resources)
    assert plan.apply == {}
    accepted, programmed = plan.statuses[GW_KEY]["conditions"]
    assert (accepted["type"], accepted["status"], accepted["reason"]) == (
        "Accepted",
        "False",
        "ListenersNotValid",
    )
    assert "exactly one listener, {name: mesh, port: 15008, protocol: HBONE}" in accepted["message"]
    assert (programmed["type"], programmed["status"]) == ("Programmed", "False")
    builder = MeshBuilder("cluster.local")
    state = builder.build(resources, TrustBundle("cluster.local", ("r",)))
    assert ResourceKey("Waypoint", "shop", "waypoint") not in state
    assert builder.problems()[GW_KEY].field == "spec.listeners"


def cluster(*, ready: bool, cluster_ip: str = "198.19.0.40") -> dict[ResourceKey, Resource]:
    """The Gateway, what the deployer made for it, and one waypoint pod."""
    resources = parse(gateway())
    objects = waypoint_objects(the_gateway(gateway()), CONFIG, 1)
    objects[1]["spec"]["clusterIP"] = cluster_ip
    resources.update(typed(objects))
    resources.update(
        parse(
            textwrap.dedent(
                f"""
                apiVersion: v1
                kind: Pod
                metadata:
                  name: waypoint-5d8f7c9b6a-x2k9p
                  namespace: shop
                  labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}
                spec:
                  serviceAccountName: waypoint
                  containers: [{{name: waypoint, image: weft/waypoint}}]
                status:
                  phase: Running
                  podIP: 198.18.128.9
                  conditions: [{{type: Ready, status: "{ready}"}}]
                """
            )
        )
    )
    return resources


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_the_gateway_is_programmed_with_its_service_address_once_a_replica_is_ready() -> None:
    deployer = Deployer(CONFIG, wall_clock=lambda: "2026-11-30T16:00:00Z")
    status = deployer.plan(cluster(ready=True)).statuses[GW_KEY]
    assert conditions(status) == {
        "Accepted": ("True", "Accepted"),
        "Programmed": ("True", "Programmed"),
    }
    assert status["addresses"] == [{"type": "IPAddress", "value": "198.19.0.40"}]


def test_the_gateway_is_pending_until_a_replica_is_ready() -> None:
    status = Deployer(CONFIG).plan(cluster(ready=False)).statuses[GW_KEY]
    assert conditions(status)["Programmed"] == ("False", "Pending")
    assert status["addresses"] == [{"type": "IPAddress", "value": "198.19.0.40"}]


def test_a_status_is_planned_only_when_it_changes_and_keeps_its_transition_time() -> None:
    now = ["2026-11-30T16:00:00Z"]
    deployer = Deployer(CONFIG, wall_clock=lambda: now[0])
    first = deployer.plan(cluster(ready=False)).statuses[GW_KEY]
    deployer.status_written(GW_KEY, first)
    now[0] = "2026-11-30T16:00:05Z"
    assert deployer.plan(cluster(ready=False)).statuses == {}
    became_ready = deployer.plan(cluster(ready=True)).statuses[GW_KEY]
    accepted, programmed = became_ready["conditions"]
    assert accepted["lastTransitionTime"] == "2026-11-30T16:00:00Z"  # unchanged
    assert programmed["lastTransitionTime"] == "2026-11-30T16:00:05Z"


def test_objects_are_applied_once_then_again_only_when_they_change_or_go_missing() -> None:
    clock = [100.0]
    deployer = Deployer(CONFIG, clock=lambda: clock[0])
    first = deployer.plan(parse(gateway()))
    deployer.applied(GW_KEY, first.apply[GW_KEY])
    complete = cluster(ready=True)
    assert deployer.plan(complete).apply == {}
    # Not in the cluster yet: applied again only after a while.
    assert deployer.plan(parse(gateway())).apply == {}
    clock[0] += 5
    assert GW_KEY in deployer.plan(parse(gateway())).apply
    # A changed Gateway is applied at once.
    scaled = parse(gateway(annotations="{weft.dev/replicas: '2'}"))
    assert GW_KEY in deployer.plan({**complete, **scaled}).apply


class FakeWriter:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.applied: list[tuple[str, list[str]]] = []
        self.statuses: list[tuple[str, str, str]] = []

    async def apply(self, source: str, objects: list[dict[str, Any]]) -> None:
        if self.fail:
            raise WriteError("lab API /v1/apply: 500: boom")
        self.applied.append((source, [o["kind"] for o in objects]))

    async def set_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        if self.fail:
            raise WriteError("lab API /v1/objects/status: 404: not found")
        self.statuses.append((kind, namespace, name))


def test_the_loop_writes_the_plan_and_a_failed_write_is_planned_again() -> None:
    async def scenario() -> None:
        writer = FakeWriter(fail=True)
        loop = DeployerLoop(Deployer(CONFIG), writer)
        loop.notify(parse(gateway()))
        await loop.run_once()
        assert (writer.applied, writer.statuses) == ([], [])
        writer.fail = False
        await loop.run_once()
        assert writer.applied == [
            ("deployer:shop/waypoint", ["ServiceAccount", "Service", "Deployment"])
        ]
        assert writer.statuses == [("Gateway", "shop", "waypoint")]
        await loop.run_once()
        assert len(writer.applied) == 1 and len(writer.statuses) == 1

    asyncio.run(scenario())


def test_a_deleted_gateway_is_forgotten() -> None:
    deployer = Deployer(CONFIG)
    plan = deployer.plan(parse(gateway()))
    deployer.applied(GW_KEY, plan.apply[GW_KEY])
    assert deployer.plan({}).empty
    assert GW_KEY in deployer.plan(parse(gateway())).apply  # made again if it comes back


def _container_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    dep = typed(objects)[ResourceKey("Deployment", "shop", "waypoint")]
    assert isinstance(dep, Deployment)
    (container,) = dep.template.containers
    return {e.name: e.value for e in container.env if not e.field_ref}


@pytest.mark.parametrize(
    ("otlp_endpoint", "expected"),
    [
        ("", None),  # no collector: the variable is absent, the waypoint makes no spans
        ("otel-collector.observability:4317", "otel-collector.observability:4317"),
        ("http://198.18.0.1:4317", "http://198.18.0.1:4317"),
        ("https://otel.example.com:4317", "https://otel.example.com:4317"),
    ],
)
def test_the_otlp_endpoint_is_given_to_every_waypoint_pod_when_set(
    otlp_endpoint: str, expected: str | None
) -> None:
    config = dataclasses.replace(CONFIG, otlp_endpoint=otlp_endpoint)
    env = _container_env(waypoint_objects(the_gateway(gateway()), config, 2))
    assert env.get("WEFT_OTLP_ENDPOINT") == expected
    assert env["WEFT_CONTROLLER_ADDR"] == "198.18.0.254:15012"  # the rest as before


@pytest.mark.parametrize(
    ("before", "after", "applied_again"),
    [
        ("", "otel:4317", True),  # set
        ("otel:4317", "otel-2:4317", True),  # changed
        ("otel:4317", "", True),  # unset
        ("otel:4317", "otel:4317", False),  # unchanged
        ("", "", False),
    ],
)
def test_a_changed_otlp_endpoint_updates_the_deployments(
    before: str, after: str, applied_again: bool
) -> None:
    deployer = Deployer(dataclasses.replace(CONFIG, otlp_endpoint=before))
    first = deployer.plan(parse(gateway()))
    deployer.applied(GW_KEY, first.apply[GW_KEY])
    complete = cluster(ready=True)
    assert deployer.plan(complete).apply == {}
    deployer.config = dataclasses.replace(CONFIG, otlp_endpoint=after)
    plan = deployer.plan(complete)
    assert (GW_KEY in plan.apply) is applied_again
    if applied_again:
        assert _container_env(plan.apply[GW_KEY]).get("WEFT_OTLP_ENDPOINT") == (after or None)


def test_on_kubernetes_a_waypoint_pod_trades_its_token_for_its_credential() -> None:
    k8s = KubernetesWaypoints(
        "ghcr.io/weft-mesh/weft:0.1.0", "weft-controller.weft-system.svc:15013", "ROOTS"
    )
    objects = waypoint_objects(
        the_gateway(gateway()), dataclasses.replace(CONFIG, kubernetes=k8s), 1
    )
    config_map = objects[0]
    assert (config_map["kind"], config_map["metadata"]) == (
        "ConfigMap",
        {"name": "weft-ca-root-cert", "namespace": "shop"},
    )
    assert config_map["data"] == {"root-cert.pem": "ROOTS"}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/weft-mesh/weft:0.1.0"
    assert container["command"] == ["python", "-m", "waypoint", "run"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WEFT_BOOTSTRAP_CONTROLLER"] == "weft-controller.weft-system.svc:15013"
    assert env["WEFT_BOOTSTRAP_TOKEN"] == "/var/run/secrets/weft/token"
    (token,) = pod["volumes"][0]["projected"]["sources"]
    assert token["serviceAccountToken"]["audience"] == "weft"
    assert pod["automountServiceAccountToken"] is False
    # and it is still a Deployment weft's own parser accepts
    assert isinstance(typed(objects)[ResourceKey("Deployment", "shop", "waypoint")], Deployment)


def test_in_the_lab_a_waypoint_pod_has_no_token_volume() -> None:
    objects = waypoint_objects(the_gateway(gateway()), CONFIG, 1)
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Service", "Deployment"]
    pod = objects[2]["spec"]["template"]["spec"]
    assert "volumes" not in pod
