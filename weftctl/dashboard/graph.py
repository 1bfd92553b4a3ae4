"""The live service graph, from Prometheus instant vectors: pure, no I/O.

A flow is what one series says: source workload -> (Service) -> destination workload, with a
rate. As Kiali draws it, a flow through a Service becomes two edges, source -> Service and
Service -> destination, so a Service's callers and its backends meet at one node.

Who reported a series matters: ztunnel counts a connection at both ends, so each TCP edge
takes the report of one reporter only, the source's when there is one (it knows the Service
that was dialled; the destination's does not), else the waypoint's, else the destination's.
Hops to and from a waypoint are not drawn as their own edges: the waypoint reports the
requests it carried with the original source and the routed destination, and those edges
say which waypoint carried them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from weftctl.dashboard.inventory import Inventory, WorkloadKey
from weftctl.dashboard.promql import Sample

UNKNOWN = "unknown"
REPORTER_PREFERENCE = ("source", "waypoint", "destination")
MTLS = "mutual_tls"
PLAINTEXT = "none"
MIXED = "mixed"
# How many nodes a graph draws at most (the busiest edges win); a picture past this is
# unreadable, and layout is linear in it anyway.
MAX_NODES = 400


@dataclass(frozen=True, slots=True)
class Node:
    id: str  # "workload:ns/name", "service:ns/name" or "unknown"
    kind: str  # "workload" | "service" | "unknown"
    namespace: str
    name: str
    enrolled: bool | None  # None: not known (a Service, or no lab inventory)
    waypoint: bool = False  # a waypoint's own workload
    depth: int = 0  # call depth from the graph's entry points: the layout's column
    # how the traffic it received came: "mutual_tls", "none", "mixed"; "" when it received none
    inbound_security: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "enrolled": self.enrolled,
            "waypoint": self.waypoint,
            "depth": self.depth,
            "inbound_security": self.inbound_security,
        }


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # node ids
    target: str
    protocol: str  # "http" (requests seen) | "tcp"
    request_rate: float  # requests/s
    error_rate: float  # share of requests that failed (5xx or no response), 0..1
    denial_rate: float  # requests/s answered 403 + connections/s refused by policy
    connection_rate: float  # TCP connections/s
    active_connections: int  # TCP connections open now
    bytes_rate: float  # bytes/s, both directions
    security: str  # "mutual_tls" | "none" | "mixed"
    waypoints: tuple[str, ...]  # "ns/name" of the waypoints that carried it
    why_source: str | None  # `weftctl why` arguments that explain it, None if no pod
    why_destination: str | None

    @property
    def id(self) -> str:
        return f"{self.source}->{self.target}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "target": self.target,
            "protocol": self.protocol,
            "request_rate": self.request_rate,
            "error_rate": self.error_rate,
            "denial_rate": self.denial_rate,
            "connection_rate": self.connection_rate,
            "active_connections": self.active_connections,
            "bytes_rate": self.bytes_rate,
            "security": self.security,
            "waypoints": list(self.waypoints),
            "why": (
                {"src": self.why_source, "dst": self.why_destination}
                if self.why_source and self.why_destination
                else None
            ),
        }


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    dropped_nodes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [n.to_json() for n in self.nodes],
            "edges": [e.to_json() for e in self.edges],
            "dropped_nodes": self.dropped_nodes,
        }


@dataclass(frozen=True)
class GraphInput:
    """The answers of `promql.graph_queries`, by name."""

    requests: tuple[Sample, ...] = ()
    request_bytes: tuple[Sample, ...] = ()
    response_bytes: tuple[Sample, ...] = ()
    tcp_opened: tuple[Sample, ...] = ()
    tcp_denied: tuple[Sample, ...] = ()
    tcp_active: tuple[Sample, ...] = ()
    tcp_sent: tuple[Sample, ...] = ()
    tcp_received: tuple[Sample, ...] = ()
    waypoints: tuple[Sample, ...] = ()  # one per waypoint Deployment: namespace, gateway

    def waypoint_workloads(self, inventory: Inventory) -> frozenset[WorkloadKey]:
        """The waypoints' workloads (a waypoint's Deployment is named after its Gateway)."""
        scraped = {
            (s.labels.get("namespace", ""), s.labels.get("gateway", "")) for s in self.waypoints
        }
        return inventory.waypoints | {k for k in scraped if k[0] and k[1]}


# --- flows -------------------------------------------------------------------------------


def _side(labels: Mapping[str, str], side: str) -> WorkloadKey | None:
    name = labels.get(f"{side}_workload", "")
    ns = labels.get(f"{side}_workload_namespace", "")
    if not name or name == UNKNOWN or not ns or ns == UNKNOWN:
        return None
    return (ns, name)


def service_of(hostname: str) -> WorkloadKey | None:
    """(namespace, name) of `name.namespace.svc.<domain>`; None for unknown or other hosts."""
    parts = hostname.split(".")
    if len(parts) >= 3 and parts[2] == "svc" and parts[0] and parts[1]:
        return (parts[1], parts[0])
    return None


@dataclass
class _Flow:
    request_rate: float = 0.0
    errors: float = 0.0
    denials: float = 0.0
    connection_rate: float = 0.0
    active_connections: float = 0.0
    bytes_rate: float = 0.0
    security: dict[str, float] = field(default_factory=dict)
    waypoints: set[str] = field(default_factory=set)

    def add(self, other: _Flow) -> None:
        self.request_rate += other.request_rate
        self.errors += other.errors
        self.denials += other.denials
        self.connection_rate += other.connection_rate
        self.active_connections += other.active_connections
        self.bytes_rate += other.bytes_rate
        for k, v in other.security.items():
            self.security[k] = self.security.get(k, 0.0) + v
        self.waypoints |= other.waypoints

    @property
    def weight(self) -> float:
        return self.request_rate + self.connection_rate + self.active_connections + self.denials


FlowKey = tuple[WorkloadKey | None, WorkloadKey | None, WorkloadKey | None]  # src, svc, dst


def _live(samples: Iterable[Sample]) -> Iterable[Sample]:
    """Series with traffic in the window (rate() of an idle counter is 0)."""
    return (s for s in samples if s.value > 0 and math.isfinite(s.value))


def _chosen_reporters(samples: Iterable[Sample]) -> dict[tuple[Any, Any], str]:
    """For each (source, destination) pair, the one reporter whose series are used."""
    seen: dict[tuple[Any, Any], set[str]] = {}
    for s in samples:
        pair = (_side(s.labels, "source"), _side(s.labels, "destination"))
        seen.setdefault(pair, set()).add(s.labels.get("reporter", ""))
    chosen = {}
    for pair, reporters in seen.items():
        chosen[pair] = next((r for r in REPORTER_PREFERENCE if r in reporters), min(reporters))
    return chosen


def flows(data: GraphInput, inventory: Inventory) -> dict[FlowKey, _Flow]:
    """Every flow with traffic in the window, waypoint hops folded in."""
    out: dict[FlowKey, _Flow] = {}
    waypoints = data.waypoint_workloads(inventory)
    # (source, Service) -> the waypoints its connections to that Service went to
    via: dict[tuple[WorkloadKey | None, WorkloadKey | None], set[WorkloadKey]] = {}

    def flow(labels: Mapping[str, str]) -> _Flow:
        key = (
            _side(labels, "source"),
            service_of(labels.get("destination_service", "")),
            _side(labels, "destination"),
        )
        return out.setdefault(key, _Flow())

    tcp_bytes = (*data.tcp_sent, *data.tcp_received)
    tcp = [*_live((*data.tcp_opened, *data.tcp_active, *data.tcp_denied, *tcp_bytes))]
    chosen = _chosen_reporters(tcp)
    # Pairs a waypoint carried requests for: the destination's ztunnel also counts the
    # waypoint's onward connections under the original source, which are not another edge.
    carried = {
        (_side(s.labels, "source"), _side(s.labels, "destination"))
        for s in _live(data.requests)
        if s.labels.get("reporter") == "waypoint"
    }

    def tcp_series(samples: Iterable[Sample]) -> Iterable[Sample]:
        for s in _live(samples):
            src, dst = _side(s.labels, "source"), _side(s.labels, "destination")
            if chosen.get((src, dst)) != s.labels.get("reporter", ""):
                continue
            if dst is not None and dst in waypoints:
                # a hop into a waypoint: remembered, drawn as the waypoint's own edges
                svc = service_of(s.labels.get("destination_service", ""))
                via.setdefault((src, svc), set()).add(dst)
                continue
            if src is not None and src in waypoints:
                continue  # the waypoint's onward hop: it reports it with the real source
            if s.labels.get("reporter") == "destination" and (src, dst) in carried:
                continue
            yield s

    for s in tcp_series(data.tcp_opened):
        f = flow(s.labels)
        f.connection_rate += s.value
        sec = s.labels.get("connection_security_policy", UNKNOWN)
        f.security[sec] = f.security.get(sec, 0.0) + s.value
    for s in tcp_series(data.tcp_active):
        f = flow(s.labels)
        f.active_connections += s.value
        sec = s.labels.get("connection_security_policy", UNKNOWN)
        f.security[sec] = f.security.get(sec, 0.0) + s.value
    for s in tcp_series(data.tcp_denied):
        flow(s.labels).denials += s.value
    for s in tcp_series(tcp_bytes):
        flow(s.labels).bytes_rate += s.value

    for s in _live(data.requests):
        f = flow(s.labels)
        f.request_rate += s.value
        code = s.labels.get("response_code", "")
        if code.startswith("5") or code == "0":
            f.errors += s.value
        if code == "403" or "UAEX" in s.labels.get("response_flags", ""):
            f.denials += s.value
        sec = s.labels.get("connection_security_policy", UNKNOWN)
        f.security[sec] = f.security.get(sec, 0.0) + s.value
        if s.labels.get("reporter") == "waypoint":
            f.waypoints |= _waypoints_for(s.labels, via)
    for s in _live((*data.request_bytes, *data.response_bytes)):
        flow(s.labels).bytes_rate += s.value
    return out


def _waypoints_for(
    labels: Mapping[str, str],
    via: Mapping[tuple[WorkloadKey | None, WorkloadKey | None], set[WorkloadKey]],
) -> set[str]:
    """The waypoints a request the waypoint reported went through: those its source sent
    connections to, in the routed Service's namespace when any is (a namespace waypoint)."""
    src = _side(labels, "source")
    svc = service_of(labels.get("destination_service", ""))
    candidates = set().union(*(w for (s, _), w in via.items() if s == src)) if via else set()
    same_ns = {w for w in candidates if svc is not None and w[0] == svc[0]}
    return {f"{ns}/{name}" for ns, name in (same_ns or candidates)}


# --- nodes, edges, layout ------------------------------------------------------------------


def _workload_id(key: WorkloadKey | None) -> str:
    return UNKNOWN if key is None else f"workload:{key[0]}/{key[1]}"


def _service_id(key: WorkloadKey) -> str:
    return f"service:{key[0]}/{key[1]}"


def _security(weights: Mapping[str, float]) -> str:
    modes = {k for k, v in weights.items() if v > 0}
    if modes == {MTLS}:
        return MTLS
    if modes and MTLS not in modes:
        return PLAINTEXT
    return MIXED if modes else PLAINTEXT


def build(
    data: GraphInput, inventory: Inventory, max_nodes: int = MAX_NODES, namespace: str = ""
) -> Graph:
    """The graph of every flow with traffic in the window; with `namespace`, of the flows
    that start, pass or end in it (and their other ends)."""
    edges: dict[tuple[str, str], _Flow] = {}
    # edge -> its busiest flow's (source workload, Service, destination workload)
    sample_flow: dict[tuple[str, str], tuple[float, FlowKey]] = {}
    nodes: dict[str, Node] = {}
    waypoints = data.waypoint_workloads(inventory)

    def workload_node(key: WorkloadKey | None) -> str:
        nid = _workload_id(key)
        if nid not in nodes:
            if key is None:
                nodes[nid] = Node(nid, UNKNOWN, "", UNKNOWN, None)
            else:
                nodes[nid] = Node(
                    nid,
                    "workload",
                    key[0],
                    key[1],
                    inventory.is_enrolled(key),
                    key in waypoints,
                )
        return nid

    def service_node(key: WorkloadKey) -> str:
        nid = _service_id(key)
        nodes.setdefault(nid, Node(nid, "service", key[0], key[1], None))
        return nid

    def add(edge: tuple[str, str], f: _Flow, key: FlowKey) -> None:
        edges.setdefault(edge, _Flow()).add(f)
        if edge not in sample_flow or f.weight > sample_flow[edge][0]:
            sample_flow[edge] = (f.weight, key)

    for key, f in flows(data, inventory).items():
        src, svc, dst = key
        if namespace and namespace not in {k[0] for k in key if k is not None}:
            continue
        s = workload_node(src)
        if svc is None:
            add((s, workload_node(dst)), f, key)
            continue
        mid = service_node(svc)
        add((s, mid), f, key)
        if dst is not None:  # (no endpoint known: the Service is where it ended)
            add((mid, workload_node(dst)), f, key)

    kept, dropped = _busiest_nodes(nodes, edges, max_nodes)
    edges = {e: f for e, f in edges.items() if e[0] in kept and e[1] in kept}
    depth = layers(kept, edges)
    inbound: dict[str, dict[str, float]] = {}
    for (_, target), f in edges.items():
        weights = inbound.setdefault(target, {})
        for mode, w in f.security.items():
            weights[mode] = weights.get(mode, 0.0) + w
    out_nodes = tuple(
        Node(
            n.id,
            n.kind,
            n.namespace,
            n.name,
            n.enrolled,
            n.waypoint,
            depth[n.id],
            _security(inbound[n.id]) if n.id in inbound else "",
        )
        for n in sorted((nodes[i] for i in kept), key=lambda n: (depth[n.id], n.id))
    )
    out_edges = tuple(_edge(e, f, sample_flow[e][1], inventory) for e, f in sorted(edges.items()))
    return Graph(out_nodes, out_edges, dropped)


def _edge(edge: tuple[str, str], f: _Flow, key: FlowKey, inventory: Inventory) -> Edge:
    src, svc, dst = key
    why_src = inventory.pod_of(src) if src is not None else None
    if svc is not None:  # what the source dialled; `why` follows it to the pods
        why_dst: str | None = f"{svc[1]}.{svc[0]}"
    else:
        why_dst = inventory.pod_of(dst, with_port=True) if dst is not None else None
    return Edge(
        source=edge[0],
        target=edge[1],
        protocol="http" if f.request_rate > 0 else "tcp",
        request_rate=f.request_rate,
        error_rate=(f.errors / f.request_rate) if f.request_rate > 0 else 0.0,
        denial_rate=f.denials,
        connection_rate=f.connection_rate,
        active_connections=round(f.active_connections),
        bytes_rate=f.bytes_rate,
        security=_security(f.security),
        waypoints=tuple(sorted(f.waypoints)),
        why_source=why_src,
        why_destination=why_dst,
    )


def _busiest_nodes(
    nodes: Mapping[str, Node], edges: Mapping[tuple[str, str], _Flow], limit: int
) -> tuple[set[str], int]:
    """At most `limit` nodes, those of the busiest edges first; and how many were left out."""
    if len(nodes) <= limit:
        return set(nodes), 0
    kept: set[str] = set()
    for (a, b), _ in sorted(edges.items(), key=lambda kv: -kv[1].weight):
        new = {a, b} - kept
        if len(kept) + len(new) > limit:
            continue
        kept |= new
    return kept, len(nodes) - len(kept)


def layers(node_ids: Iterable[str], edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Each node's column: the longest call chain that reaches it from an entry point (a
    node nobody calls). Edges that close a cycle are ignored (found by depth-first search),
    so a cycle still lays out left to right. Linear in nodes + edges."""
    ids = sorted(set(node_ids))
    out: dict[str, list[str]] = {n: [] for n in ids}
    indegree = dict.fromkeys(ids, 0)
    for a, b in edges:
        if a in out and b in out and a != b:
            out[a].append(b)
    for n in ids:
        out[n] = sorted(set(out[n]))
        for m in out[n]:
            indegree[m] += 1
    # Depth-first from entry points first (then from whatever is left: pure cycles), keeping
    # the forward edges only.
    order = [n for n in ids if indegree[n] == 0] + [n for n in ids if indegree[n] > 0]
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    forward: dict[str, list[str]] = {n: [] for n in ids}
    postorder: list[str] = []
    for root in order:
        if root in state:
            continue
        stack = [(root, iter(out[root]))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                state[node] = 2
                postorder.append(node)
            elif state.get(child) == 1:
                continue  # a back edge: it closes a cycle
            else:
                forward[node].append(child)
                if child not in state:
                    state[child] = 1
                    stack.append((child, iter(out[child])))
    depth = dict.fromkeys(ids, 0)
    for node in reversed(postorder):  # a topological order of the forward edges
        for child in forward[node]:
            depth[child] = max(depth[child], depth[node] + 1)
    return depth
