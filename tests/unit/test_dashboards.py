"""dashboards/*.json: Grafana dashboards on Istio's metric names, checked without Grafana.

A small PromQL reader pulls every metric and label name out of every query (panels and
variables). Here each must be one weft's code declares (or Prometheus' `up`, or the
prometheus_client process collector's); tests/e2e/test_prometheus.py checks the same names
exist in a live lab's Prometheus.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
EXPECTED = {
    "weft-mesh.json",
    "weft-service.json",
    "weft-workload.json",
    "weft-ztunnel.json",
    "weft-control-plane.json",
}

# PromQL's aggregation operators and functions (Prometheus 2.42), and its keywords
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)
FUNCTIONS = AGGREGATIONS | frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atanh",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "cos",
        "cosh",
        "count_over_time",
        "day_of_month",
        "day_of_week",
        "day_of_year",
        "days_in_month",
        "deg",
        "delta",
        "deriv",
        "exp",
        "floor",
        "histogram_quantile",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max_over_time",
        "min_over_time",
        "minute",
        "month",
        "pi",
        "predict_linear",
        "present_over_time",
        "quantile_over_time",
        "rad",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sin",
        "sinh",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev_over_time",
        "stdvar_over_time",
        "sum_over_time",
        "tan",
        "tanh",
        "time",
        "timestamp",
        "vector",
        "year",
    }
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"offset", "bool", "and", "or", "unless", "inf", "nan", "atan2"})

_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    |(?P<var>\$\{[^}]*\}|\$\w+)
    |(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>{}()\[\],])""",
    re.VERBOSE,
)
_NAME_ALTERNATION = re.compile(r"^[a-zA-Z_:][\w:]*(\|[a-zA-Z_:][\w:]*)*$")


class PromQLError(ValueError):
    pass


@dataclass
class Names:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    # (metric, label) pairs from a selector: the label is matched on that metric
    matchers: set[tuple[str, str]] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"unexpected {expr[pos : pos + 10]!r} at {pos} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, m.group()))
    return out


def promql_names(expr: str) -> Names:
    """Every metric name and label name a PromQL expression uses (Grafana's `$vars` read as
    values). Metric names come from bare selectors and `__name__` matchers (a plain
    alternation only); function names must be PromQL's."""
    names = Names()
    toks = _tokens(expr)
    i = 0
    last_metric = ""
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":
            selector_metrics: set[str] = set()
            pairs: list[str] = []
            i += 1
            while toks[i][1] != "}":
                lkind, label = toks[i]
                if lkind == "op" and label == ",":
                    i += 1
                    continue
                if lkind != "ident":
                    raise PromQLError(f"expected a label name, got {label!r} in {expr!r}")
                op, (vkind, value) = toks[i + 1][1], toks[i + 2]
                if op not in ("=", "!=", "=~", "!~") or vkind not in ("string", "var"):
                    raise PromQLError(f"bad matcher {label}{op}{value} in {expr!r}")
                if label == "__name__":
                    raw = value[1:-1]
                    if op not in ("=", "=~") or not _NAME_ALTERNATION.match(raw):
                        raise PromQLError(f"__name__{op}{value}: only a|b|c is read, {expr!r}")
                    selector_metrics |= set(raw.split("|"))
                else:
                    pairs.append(label)
                    names.labels.add(label)
                i += 3
            i += 1
            owners = selector_metrics or ({last_metric} if last_metric else set())
            names.metrics |= selector_metrics
            names.matchers |= {(m, label) for m in owners for label in pairs}
            last_metric = ""
            continue
        if text == "[":
            while toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if kind == "ident":
            low = text.lower()
            if low in GROUPING:
                if nxt != "(":  # group_left with no labels
                    i += 1
                    continue
                i += 2
                while toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        names.labels.add(toks[i][1])
                    i += 1
                i += 1
                continue
            if nxt == "(" or (text in AGGREGATIONS and nxt in ("by", "without")):
                if text not in FUNCTIONS:
                    raise PromQLError(f"unknown function {text}() in {expr!r}")
            elif low not in KEYWORDS:
                names.metrics.add(text)
                last_metric = text
                i += 1
                continue
        last_metric = ""
        i += 1
    return names


def variable_names(query: str) -> Names:
    """A Grafana Prometheus variable query: `label_values(SELECTOR, label)`,
    `label_values(label)` or `query_result(EXPR)`."""
    m = re.fullmatch(r"\s*label_values\((.*)\)\s*", query, re.S)
    if m:
        inner = m.group(1)
        depth, cut = 0, -1
        for pos, ch in enumerate(inner):
            if ch in "({[":
                depth += 1
            elif ch in ")}]":
                depth -= 1
            if ch == "," and depth == 0:
                cut = pos
        if cut < 0:
            return Names(labels={inner.strip()})
        names = promql_names(inner[:cut])
        label = inner[cut + 1 :].strip()
        names.labels.add(label)
        names.matchers |= {(metric, label) for metric in names.metrics}
        return names
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    if m:
        return promql_names(m.group(1))
    raise PromQLError(f"unsupported variable query {query!r}")


# --- reading the dashboards ------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]


def variable_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            yield f"variable {var['name']}", q["query"] if isinstance(q, dict) else q


def dashboard_names(dashboard: dict[str, Any]) -> Names:
    total = Names()
    for _, expr in queries(dashboard):
        n = promql_names(expr)
        total.metrics |= n.metrics
        total.labels |= n.labels
        total.matchers |= n.matchers
    for _, query in variable_queries(dashboard):
        n = variable_names(query)
        total.metrics |= n.metrics
        total.labels |= n.labels
        total.matchers |= n.matchers
    return total


# --- the reader itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "metrics", "labels"),
    [
        pytest.param("up", {"up"}, set(), id="bare name"),
        pytest.param(
            'sum by (le) (rate(x_bucket{a="}",b=~"$v"}[$__rate_interval]))',
            {"x_bucket"},
            {"le", "a", "b"},
            id="brace in a string, variable, range",
        ),
        pytest.param(
            "histogram_quantile(0.99, sum(rate(a_bucket[5m])) by (le, pod)) / 1e3",
            {"a_bucket"},
            {"le", "pod"},
            id="number with exponent, by after",
        ),
        pytest.param("sum(rate(a_total[1m])) or vector(0)", {"a_total"}, set(), id="or vector(0)"),
        pytest.param(
            "-sum(rate(a_total[1m])) / on (node) group_left() sum(b) offset 5m",
            {"a_total", "b"},
            {"node"},
            id="unary minus, on, group_left(), offset",
        ),
        pytest.param(
            '{__name__=~"a_total|b_total", x!="unknown"}',
            {"a_total", "b_total"},
            {"x"},
            id="__name__ alternation",
        ),
        pytest.param("a and b unless c", {"a", "b", "c"}, set(), id="set operators"),
        pytest.param("rate(ns:a:rate5m[1m])", {"ns:a:rate5m"}, set(), id="recording rule name"),
    ],
)
def test_promql_reader_finds_metric_and_label_names(
    expr: str, metrics: set[str], labels: set[str]
) -> None:
    names = promql_names(expr)
    assert names.metrics == metrics
    assert names.labels == labels


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        pytest.param("histogram_quantil(0.5, a)", "unknown function", id="misspelt function"),
        pytest.param('{__name__=~"a.*"}', "only a|b|c", id="name regex it cannot read"),
        pytest.param("a # b", "unexpected", id="stray character"),
    ],
)
def test_promql_reader_refuses_what_it_cannot_read(expr: str, message: str) -> None:
    with pytest.raises(PromQLError, match=message):
        promql_names(expr)


def test_variable_queries_are_read() -> None:
    n = variable_names('label_values(up{component="ztunnel"}, node)')
    assert (n.metrics, n.labels) == ({"up"}, {"component", "node"})
    assert ("up", "node") in n.matchers
    assert variable_names("label_values(node)").labels == {"node"}
    with pytest.raises(PromQLError, match="unsupported"):
        variable_names("metrics(up)")


# --- the dashboards ----------------------------------------------------------------------------


def test_every_dashboard_named_in_the_issue_is_there() -> None:
    assert set(load_dashboards()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_is_grafana_json_on_a_datasource_variable(name: str) -> None:
    board = load_dashboards()[name]
    assert board["schemaVersion"] >= 36
    assert board["uid"] == name.removesuffix(".json")
    assert board["title"].startswith("weft / ")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        where = f"{name} panel {panel['title']!r}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, where
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{where} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, where
        assert panel["targets"], f"{where} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE, var["name"]
    # Every $variable a query uses is defined (or one of Grafana's own)
    used = {
        v.strip("${}")
        for _, expr in [*queries(board), *variable_queries(board)]
        for v in re.findall(r"\$\{?\w+\}?", expr)
    }
    assert used - set(variables) - {"__rate_interval", "__interval", "__range"} == set()


DECLARING_MODULES = (
    "controller.app",
    "controller.bootstrap",
    "controller.kubesource",
    "controller.server",
    "node_agent.agent",
    "node_agent.cgroupwatch",
    "node_agent.cniserver",
    "waypoint.extauthz_client",
    "waypoint.outlier_metrics",
    "waypoint.ratelimit",
    "waypoint.telemetry",
    "waypoint.tls_peek",
    "ztunnel.hbone_conn",
    "ztunnel.metrics",
)


def weft_metric_families() -> dict[str, str]:
    """Every metric family weft's processes declare ({name: type}), from prometheus_client's
    registry once the modules that declare them are imported."""
    for module in DECLARING_MODULES:
        importlib.import_module(module)
    return {m.name: m.type for m in REGISTRY.collect()}


def series_names(families: dict[str, str]) -> set[str]:
    """The names Prometheus stores for those families (what a query names)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    out = set()
    for name, kind in families.items():
        out |= {name + s for s in suffixes.get(kind, ("",))}
    return out


def test_dashboards_use_only_metrics_weft_exports() -> None:
    exported = series_names(weft_metric_families()) | {"up"}
    assert "process_resident_memory_bytes" in exported  # prometheus_client's process collector
    for name, board in load_dashboards().items():
        unknown = dashboard_names(board).metrics - exported
        assert not unknown, f"{name}: {sorted(unknown)} are not exported by weft"


def test_istio_metrics_are_queried_by_labels_weft_sets() -> None:
    """Labels on istio_* series: the ones ztunnel and the waypoint declare (Istio's names),
    plus the target labels the lab's and the Kubernetes scrape configs add."""
    from waypoint import telemetry
    from ztunnel import metrics as zmetrics

    target_labels = {"component", "node", "namespace", "pod", "gateway", "job", "instance"}
    http = set(telemetry.LABELS) | target_labels
    tcp = set(zmetrics.LABELS) | target_labels
    for name, board in load_dashboards().items():
        for metric, label in dashboard_names(board).matchers:
            if metric.startswith("istio_tcp_"):
                assert label in tcp, f"{name}: {metric} has no label {label}"
            elif metric.startswith(("istio_request", "istio_response")):
                allowed = http | ({"le"} if metric.endswith("_bucket") else set())
                assert label in allowed, f"{name}: {metric} has no label {label}"


def test_dashboards_query_istio_names_where_istio_has_them() -> None:
    """Istio users' habits carry over: the traffic dashboards are on istio_* names."""
    boards = load_dashboards()
    for name in ("weft-mesh.json", "weft-service.json", "weft-workload.json"):
        metrics = dashboard_names(boards[name]).metrics
        assert "istio_requests_total" in metrics, name
        assert "istio_tcp_connections_opened_total" in metrics, name
    service = dashboard_names(boards["weft-service.json"]).metrics
    assert "istio_request_duration_milliseconds_bucket" in service
