"""weft's own examples of its kinds: every YAML document of a weft group found in docs/
(```yaml blocks) and in the tests' source (string literals), each judged by weft's parser.

The CRD schemas must take every example the parser accepts: a schema that refuses what the
controller would run is a broken install. (What the parser refuses, the schema may or may
not refuse: the controller reports the rest as Events.)
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from meshcore.resources import ManifestErrors, documents_from_text, parse_documents
from tests.unit.daemonset.crdschema import ROOT, crd_for, version_schema

GROUPS = ("security.weft.dev/", "networking.weft.dev/", "policy.weft.dev/")
# The parser tests that write a kind's spec alone (wrapped by a helper): their string literals
# that read as such a spec are examples too.
_SPEC_TESTS = {
    "test_virtualservice_parsing.py": (("networking.weft.dev/v1", "VirtualService"),),
    "test_destinationrule_parsing.py": (("networking.weft.dev/v1", "DestinationRule"),),
    "test_ratelimit_parsing.py": (("policy.weft.dev/v1", "RateLimitPolicy"),),
    "test_requestauthn_parsing.py": (("security.weft.dev/v1", "RequestAuthentication"),),
    "test_security_parsing.py": (
        ("security.weft.dev/v1", "AuthorizationPolicy"),
        ("security.weft.dev/v1", "PeerAuthentication"),
    ),
}
_FENCE = re.compile(r"```ya?ml\n(.*?)```", re.S)


@dataclass(frozen=True)
class Example:
    source: str  # file:line
    text: str  # the document's YAML
    doc: dict[str, Any]
    accepted: bool  # by weft's parser


def _weft_docs(text: str) -> list[dict[str, Any]]:
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return []
    return [
        d
        for d in loaded
        if isinstance(d, dict)
        and isinstance(d.get("apiVersion"), str)
        and d["apiVersion"].startswith(GROUPS)
        and isinstance(d.get("metadata"), dict)
    ]


def _spec_docs(text: str, kinds: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    """`text` as the spec of each kind whose schema knows one of its keys."""
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if not isinstance(spec, dict) or not spec or "apiVersion" in spec or "kind" in spec:
        return []
    out = []
    for api_version, kind in kinds:
        crd = crd_for(api_version, kind)
        assert crd is not None, kind
        known = version_schema(crd, "v1")["properties"]["spec"]["properties"]
        if any(key in known for key in spec):
            meta = {"name": "example", "namespace": "foo"}
            out.append({"apiVersion": api_version, "kind": kind, "metadata": meta, "spec": spec})
    return out


def _texts() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for md in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        body = md.read_text()
        for m in _FENCE.finditer(body):
            line = body.count("\n", 0, m.start()) + 2
            out.append((f"{md.relative_to(ROOT)}:{line}", m.group(1)))
    for py in sorted((ROOT / "tests").rglob("*.py")):
        if "daemonset" in py.parts:
            continue
        body = py.read_text()
        if "weft.dev/" not in body:
            continue
        for node in ast.walk(ast.parse(body)):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "weft.dev/" in node.value
                and "kind:" in node.value
            ):
                text = textwrap.dedent(node.value)
                out.append((f"{py.relative_to(ROOT)}:{node.lineno}", text))
    return out


def _spec_texts() -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    out = []
    for name, kinds in _SPEC_TESTS.items():
        py = ROOT / "tests" / "unit" / "meshcore" / name
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = textwrap.dedent(node.value)
                out.append((f"{py.relative_to(ROOT)}:{node.lineno}", text, kinds))
    return out


def _accepted(doc: dict[str, Any]) -> bool:
    text = yaml.safe_dump(doc)
    try:
        parse_documents(documents_from_text(text, "example.yaml"))
    except ManifestErrors:
        return False
    return True


@cache
def examples() -> tuple[Example, ...]:
    out = []
    for source, text in _texts():
        for doc in _weft_docs(text):
            out.append(Example(source, yaml.safe_dump(doc), doc, _accepted(doc)))
    for source, text, kinds in _spec_texts():
        for doc in _spec_docs(text, kinds):
            out.append(Example(source, yaml.safe_dump(doc), doc, _accepted(doc)))
    return tuple(out)
