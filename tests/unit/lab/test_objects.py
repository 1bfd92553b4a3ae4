"""The cluster objects the lab writes for the controller: what an API server would hold."""

from __future__ import annotations

import random
import textwrap

import yaml

from lab.addressing import node_plans
from lab.config import LabConfig
from lab.model import ClusterModel
from lab.objects import cluster_docs, cluster_objects, file_name
from meshcore.resources import ResourceKey, Service, documents_from_text, parse_documents

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: rpc, port: 9090, appProtocol: kubernetes.io/h2c}
"""


def test_a_service_is_written_with_its_vip_and_keeps_each_ports_app_protocol() -> None:
    model = ClusterModel(node_plans(LabConfig(nodes=1)), "198.19.0.0/24", rng=random.Random(0))
    docs = documents_from_text(textwrap.dedent(SERVICE), "svc.yaml")
    parsed = parse_documents(docs)
    model.commit(model.plan_apply([p.resource for p in parsed]))
    raw = {p.resource.key: d.raw for p, d in zip(parsed, docs, strict=True)}

    files = cluster_objects(model, raw, {})

    doc = yaml.safe_load(files[file_name("Service", "default", "web")])
    assert doc["spec"]["clusterIP"] == model.services[("default", "web")].vip
    written = parse_documents(documents_from_text(yaml.safe_dump(doc), "obj.yaml"))[0].resource
    assert isinstance(written, Service)
    assert [p.app_protocol for p in written.ports] == ["http", "kubernetes.io/h2c"]
    assert ResourceKey("Service", "default", "web") in model.resources


def test_a_status_written_by_a_controller_is_part_of_the_object_and_not_of_others() -> None:
    model = ClusterModel(node_plans(LabConfig(nodes=1)), "198.19.0.0/24", rng=random.Random(0))
    docs = documents_from_text(textwrap.dedent(SERVICE), "svc.yaml")
    parsed = parse_documents(docs)
    model.commit(model.plan_apply([p.resource for p in parsed]))
    raw = {p.resource.key: d.raw for p, d in zip(parsed, docs, strict=True)}
    key = ResourceKey("Service", "default", "web")
    status = {"conditions": [{"type": "Programmed", "status": "True"}]}

    docs_out = cluster_docs(model, raw, {}, {key: status})

    assert docs_out[file_name("Service", "default", "web")]["status"] == status
    assert "status" not in raw[key]  # what the user applied is left as it was
