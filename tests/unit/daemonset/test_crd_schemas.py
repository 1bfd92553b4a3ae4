"""weft's CRDs: one per kind the controller watches, with the versions it serves, structural
schemas, and schemas held to weft's parser: every example the parser accepts validates, and
objects the parser refuses are refused by the schema where a schema can."""

from __future__ import annotations

import pytest
import yaml

from controller.kubekinds import KINDS
from meshcore.resources import ManifestErrors, documents_from_text, parse_documents
from meshcore.resources.groups import NETWORKING, SECURITY
from tests.unit.daemonset import invalid
from tests.unit.daemonset.crdschema import (
    crd_for,
    load_crds,
    structural_problems,
    validate,
    version_schema,
    walk,
)
from tests.unit.daemonset.examples import examples

WEFT_GROUPS = {SECURITY.group, NETWORKING.group, "policy.weft.dev"}
WEFT_KINDS = [k for k in KINDS if k.group in WEFT_GROUPS]
CRDS = load_crds()


def test_one_crd_per_weft_kind_the_controller_watches() -> None:
    assert len(CRDS) == len(WEFT_KINDS) == 6
    for k in WEFT_KINDS:
        crd = crd_for(k.api_version, k.kind)
        assert crd is not None, k.kind
        assert crd["metadata"]["name"] == f"{k.plural}.{k.group}"
        assert crd["spec"]["names"]["plural"] == k.plural
        assert crd["spec"]["scope"] == "Namespaced"
        expected = {"v1": (True, True)}
        if k.group in (SECURITY.group, NETWORKING.group):
            expected["v1beta1"] = (True, False)  # served, not stored
        versions = {v["name"]: (v["served"], v["storage"]) for v in crd["spec"]["versions"]}
        assert versions == expected, k.kind
    for name, crd in CRDS.items():
        names = crd["spec"]["names"]
        assert name == f"{crd['spec']['group']}_{names['plural']}.yaml"


@pytest.mark.parametrize("name", sorted(CRDS))
def test_every_version_is_structural_with_status_and_printer_columns(name: str) -> None:
    crd = CRDS[name]
    first = crd["spec"]["versions"][0]
    for v in crd["spec"]["versions"]:
        schema = v["schema"]["openAPIV3Schema"]
        assert structural_problems(schema) == []
        assert v["subresources"] == {"status": {}}
        assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
        assert v["schema"] == first["schema"], "every version has the same schema"
        for column in v["additionalPrinterColumns"]:
            path = column["jsonPath"]
            if path.startswith(".spec."):
                node = schema["properties"]["spec"]
                for part in path.split(".")[2:]:
                    node = node["properties"][part]
                assert node["type"] in ("string", "array"), path
        assert v["additionalPrinterColumns"][-1]["jsonPath"] == ".metadata.creationTimestamp"


def test_cel_rules_are_bounded_for_the_api_servers_cost_estimate() -> None:
    """A rule in a list's items runs once per item: the API server refuses a CRD whose
    estimated cost is unbounded, so every list above a rule has maxItems."""
    for name, crd in CRDS.items():
        schema = version_schema(crd, "v1")
        for path, node in walk(schema):
            if "x-kubernetes-validations" not in node:
                continue
            parts = path.split("[*]")[:-1]
            prefix = ""
            for part in parts:
                prefix += part
                lists = [n for p, n in walk(schema) if p == prefix]
                assert lists and "maxItems" in lists[0], f"{name}: {prefix} has no maxItems"
                prefix += "[*]"


def test_the_structural_check_catches_what_it_claims() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"description": "no type"},
            "b": {"type": "array"},
            "c": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "d": {"type": "string", "$ref": "#/x"},
        },
        "required": ["e"],
    }
    problems = structural_problems(bad)
    assert [p.split(":")[0] for p in problems] == [
        "<root>",
        ".a",
        ".b",
        ".c",
        ".d",
    ]


def test_examples_are_found() -> None:
    found = examples()
    kinds = {e.doc["kind"] for e in found if e.accepted}
    assert kinds == {k.kind for k in WEFT_KINDS}
    assert sum(e.accepted for e in found) >= 100
    assert sum(not e.accepted for e in found) >= 100


def test_every_example_weft_accepts_validates_against_its_crd() -> None:
    refused = []
    for e in examples():
        if not e.accepted:
            continue
        crd = crd_for(e.doc["apiVersion"], e.doc["kind"])
        assert crd is not None
        errors = validate(e.doc, crd)
        if errors:
            refused.append(f"{e.source}: {errors}")
    assert refused == []


def _parser_refuses(doc: dict) -> bool:
    try:
        parse_documents(documents_from_text(yaml.safe_dump(doc), "bad.yaml"))
    except ManifestErrors:
        return True
    return False


@pytest.mark.parametrize(
    ("kind", "api", "spec", "where"),
    invalid.OPENAPI,
    ids=[f"{k}-{w}-{i}" for i, (k, _, _, w) in enumerate(invalid.OPENAPI)],
)
def test_the_schema_refuses_what_weft_refuses(kind: str, api: str, spec: dict, where: str) -> None:
    doc = invalid.document(kind, api, spec)
    assert _parser_refuses(doc), "not an invalid object to weft either"
    crd = crd_for(api, kind)
    assert crd is not None
    errors = validate(doc, crd)
    assert errors, "the schema takes it"
    assert any(where in e for e in errors), errors


@pytest.mark.parametrize(
    ("kind", "api", "spec", "message"),
    invalid.CEL,
    ids=[f"{k}-{i}" for i, (k, _, _, _) in enumerate(invalid.CEL)],
)
def test_cel_cases_are_refused_by_weft_and_pass_the_openapi_part(
    kind: str, api: str, spec: dict, message: str
) -> None:
    """Each CEL case is one weft refuses, which only a rule can catch (so the server test
    proves the rule): the OpenAPI part takes it, and the rule's message names it."""
    doc = invalid.document(kind, api, spec)
    assert _parser_refuses(doc)
    crd = crd_for(api, kind)
    assert crd is not None
    assert validate(doc, crd) == []
    messages = [
        r["message"]
        for _, node in walk(version_schema(crd, "v1"))
        for r in node.get("x-kubernetes-validations", [])
    ]
    assert any(message in m for m in messages), message
