"""weft's CRD schemas as a Kubernetes API server reads them, for the daemonset tests.

- `structural_problems`: the rules of a structural schema (apiextensions.k8s.io/v1 refuses a
  CRD whose schema breaks them; see the Kubernetes docs "Specifying a structural schema").
- `validate`: an object against a CRD version's schema, with OpenAPI v3 turned into JSON
  Schema (`nullable`, the `x-kubernetes-*` extensions) and unknown fields refused, as the API
  server does under strict field validation (kubectl's default). CEL rules
  (`x-kubernetes-validations`) are not evaluated here: the server-side tests
  (tests/integration/kube/test_manifests.py) check them against a real API server.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[3]
DAEMONSET = ROOT / "daemonset"
CRDS = DAEMONSET / "crds"

# The keywords a structural schema may use (apiextensions v1 JSONSchemaProps, minus those
# structural schemas forbid: $ref, definitions, additionalItems, patternProperties, ...).
_ALLOWED = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "default",
        "enum",
        "nullable",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "maxLength",
        "minLength",
        "pattern",
        "maximum",
        "minimum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "multipleOf",
        "maxItems",
        "minItems",
        "maxProperties",
        "minProperties",
        "example",
        "allOf",
        "anyOf",
        "oneOf",
        "not",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
        "x-kubernetes-embedded-resource",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-validations",
    }
)
_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})


@cache
def load_crds() -> dict[str, dict[str, Any]]:
    """file name -> CRD document (one read per run: callers must not change them)."""
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))}


def _untyped_ok(node: dict[str, Any]) -> bool:
    return bool(
        node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    )


def structural_problems(schema: dict[str, Any], path: str = "") -> list[str]:
    """What makes `schema` not structural (empty when it is), each with its path."""
    out: list[str] = []
    here = path or "<root>"
    for key in schema:
        if key not in _ALLOWED:
            out.append(f"{here}: keyword {key!r} is not allowed in a structural schema")
    typ = schema.get("type")
    if typ is None and not _untyped_ok(schema):
        out.append(f"{here}: no type")
    elif typ is not None and typ not in _TYPES:
        out.append(f"{here}: type {typ!r} is not one of {sorted(_TYPES)}")
    for combinator in ("allOf", "anyOf", "oneOf", "not"):
        if combinator in schema:
            out.append(f"{here}: {combinator} is not used by weft's CRDs (keep them simple)")
    if "properties" in schema and "additionalProperties" in schema:
        out.append(f"{here}: properties and additionalProperties together")
    if "additionalProperties" in schema and not isinstance(schema["additionalProperties"], dict):
        out.append(f"{here}: additionalProperties must be a schema, not a boolean")
    if ("properties" in schema or "additionalProperties" in schema) and typ != "object":
        out.append(f"{here}: properties on a node of type {typ!r}")
    if "items" in schema and typ != "array":
        out.append(f"{here}: items on a node of type {typ!r}")
    if typ == "array" and not isinstance(schema.get("items"), dict):
        out.append(f"{here}: an array needs one items schema")
    for name in schema.get("required", []):
        if name not in schema.get("properties", {}):
            out.append(f"{here}: required field {name!r} is not in properties")
    if schema.get("x-kubernetes-list-type") == "map":
        item = schema.get("items", {})
        for key in schema.get("x-kubernetes-list-map-keys", []):
            if key not in item.get("required", []):
                out.append(f"{here}: list-map key {key!r} must be required in the items")
    for rule in schema.get("x-kubernetes-validations", []):
        if not isinstance(rule.get("rule"), str) or not rule.get("message"):
            out.append(f"{here}: a validation needs a rule and a message")
    for name, sub in schema.get("properties", {}).items():
        out += structural_problems(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        out += structural_problems(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), dict):
        out += structural_problems(schema["items"], f"{path}[*]")
    return out


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of a schema with its path."""
    yield path or "<root>", schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[*]")


def to_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI v3 (Kubernetes flavour) to JSON Schema draft 2020-12, unknown fields refused."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description", "example"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") == "object" and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False  # strict field validation: unknown is an error
    return out


def version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def crd_for(api_version: str, kind: str) -> dict[str, Any] | None:
    group = api_version.partition("/")[0]
    for crd in load_crds().values():
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            return crd
    return None


def prune_nulls(value: Any, schema: dict[str, Any]) -> Any:
    """As the API server does before validating: a null object field whose schema is not
    nullable is dropped (`spec:` with nothing after it is no spec)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            if item is None and not sub.get("nullable"):
                continue
            out[key] = prune_nulls(item, sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune_nulls(item, schema["items"]) for item in value]
    return value


def validate(obj: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """The schema errors of `obj` (metadata and apiVersion/kind are the server's to check)."""
    version = obj["apiVersion"].partition("/")[2]
    openapi = version_schema(crd, version)
    schema = to_json_schema(openapi)
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    body = prune_nulls(body, openapi)
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(
        f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
        for e in validator.iter_errors(body)
    )
