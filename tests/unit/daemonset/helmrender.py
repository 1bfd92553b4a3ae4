"""Render weft's Helm chart without helm (no helm binary can be installed here: Debian
bookworm has no package, PyPI no wheel shipping one).

Only the Go template constructs the chart uses are understood, with Helm's meaning:
`{{ .Values.a.b }}`, `.Chart.AppVersion`, `.Release.Namespace`, `.Release.Service`,
string literals, pipelines `x | f args`, the functions `default`, `quote`, `toYaml`,
`indent`, `nindent`, `ne`, `fail`, `{{ if }} / {{ else }} / {{ end }}`, and `{{-` / `-}}`
whitespace trimming. Anything else is an error, so the chart cannot grow a construct this
renderer would get wrong without a test failing; where helm exists, test_helm_chart.py
compares with `helm template`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(Exception):
    pass


class Fail(TemplateError):
    """The chart's own `fail`."""


@dataclass
class _If:
    cond: str
    then: list[Any] = field(default_factory=list)
    other: list[Any] = field(default_factory=list)
    in_else: bool = False


def _tokens(text: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", body), with {{- and -}} trimming applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if trim_next:
            chunk = chunk.lstrip()
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(("text", chunk))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = text[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]]) -> list[Any]:
    root: list[Any] = []
    stack: list[_If] = []

    def sink() -> list[Any]:
        if not stack:
            return root
        top = stack[-1]
        return top.other if top.in_else else top.then

    for kind, body in tokens:
        if kind == "text":
            sink().append(body)
        elif body.startswith("if "):
            node = _If(body[3:])
            sink().append(node)
            stack.append(node)
        elif body == "else":
            if not stack:
                raise TemplateError("else without if")
            stack[-1].in_else = True
        elif body == "end":
            if not stack:
                raise TemplateError("end without if")
            stack.pop()
        else:
            sink().append(("expr", body))
    if stack:
        raise TemplateError("if without end")
    return root


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", {}, [])


def _to_yaml(value: Any) -> str:
    # sigs.k8s.io/yaml: keys sorted, block style, no trailing newline (Helm trims it)
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _quote(value: Any) -> str:
    return json.dumps("" if value is None else str(value))


def _indent(n: int, text: str) -> str:
    pad = " " * n
    return "\n".join(pad + line for line in str(text).split("\n"))


class Renderer:
    def __init__(self, values: dict[str, Any], chart: dict[str, Any], namespace: str) -> None:
        self.scope = {
            "Values": values,
            "Chart": {"AppVersion": chart["appVersion"], "Version": chart["version"]},
            "Release": {"Namespace": namespace, "Service": "Helm", "Name": "weft"},
        }

    def _value(self, word: str) -> Any:
        if word.startswith('"'):
            return json.loads(word)
        if re.fullmatch(r"-?[0-9]+", word):
            return int(word)
        if not word.startswith("."):
            raise TemplateError(f"unsupported argument {word!r}")
        value: Any = self.scope
        for part in word[1:].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def _command(self, words: list[str], piped: list[Any]) -> Any:
        name, args = words[0], [self._value(w) for w in words[1:]] + piped
        if name.startswith(".") or name.startswith('"'):
            if len(words) != 1 or piped:
                raise TemplateError(f"a value takes no arguments: {words}")
            return self._value(name)
        if name == "default":
            (fallback, value) = args
            return value if _truthy(value) else fallback
        if name == "quote":
            (value,) = args
            return _quote(value)
        if name == "toYaml":
            (value,) = args
            return _to_yaml(value)
        if name in ("indent", "nindent"):
            (n, text) = args
            return ("\n" if name == "nindent" else "") + _indent(n, text)
        if name == "ne":
            (a, b) = args
            return a != b
        if name == "fail":
            (message,) = args
            raise Fail(message)
        raise TemplateError(f"unsupported function {name!r}")

    def evaluate(self, pipeline: str) -> Any:
        value: list[Any] = []
        for i, command in enumerate(pipeline.split("|")):
            words = shlex.split(command, posix=False)
            if not words:
                raise TemplateError(f"empty command in {pipeline!r}")
            value = [self._command(words, value if i else [])]
        return value[0]

    def _render(self, nodes: list[Any]) -> str:
        out = []
        for node in nodes:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _If):
                chosen = node.then if _truthy(self.evaluate(node.cond)) else node.other
                out.append(self._render(chosen))
            else:
                value = self.evaluate(node[1])
                out.append("" if value is None else str(value))
        return "".join(out)

    def render(self, text: str) -> str:
        return self._render(_parse(_tokens(text)))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's values merge: maps deep-merged, anything else replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def render_chart(
    chart_dir: Path, overrides: dict[str, Any] | None = None, namespace: str = "weft-system"
) -> list[dict[str, Any]]:
    """The objects `helm template` would give (CRDs from crds/ first, then the templates in
    file-name order), as parsed YAML."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    values = merge(yaml.safe_load((chart_dir / "values.yaml").read_text()), overrides or {})
    renderer = Renderer(values, chart, namespace)
    docs: list[dict[str, Any]] = []
    for path in sorted((chart_dir / "crds").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for path in sorted((chart_dir / "templates").glob("*.yaml")):
        text = renderer.render(path.read_text())
        try:
            docs += [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as err:
            raise TemplateError(f"{path.name} does not render to YAML: {err}\n{text}") from None
    return docs
