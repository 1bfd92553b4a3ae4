// weft dashboard: draws /api/graph as an SVG, layered left to right by call depth, and shows
// /api/service|workload (golden signals) or /api/why (an edge's explanation) in the side panel.
// No framework, nothing fetched from elsewhere.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLUMN = 190, ROW = 90, MARGIN = 70;
const state = { window: "1m", namespace: "", namespaces: new Set(), refresh: 5, selected: null, timer: null, graph: null };

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function rate(value, unit) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return `0 ${unit}`;
  if (value >= 100) return `${value.toFixed(0)} ${unit}`;
  if (value >= 1) return `${value.toFixed(1)} ${unit}`;
  return `${value.toFixed(2)} ${unit}`;
}

function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return `${value.toFixed(value >= 10 ? 0 : 1)} ${units[i]}`;
}

function setStatus(text, kind = "") {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = kind;
}

async function getJSON(url) {
  const resp = await fetch(url, { cache: "no-store" });
  let body;
  try { body = await resp.json(); } catch (e) { body = { error: `HTTP ${resp.status} from ${url}` }; }
  if (!resp.ok) throw Object.assign(new Error(body.error || `HTTP ${resp.status}`), { code: body.code });
  return body;
}

function health(edge) {
  if (edge.denial_rate > 0 || edge.error_rate > 0.1) return "bad";  // past 10% failing
  if (edge.error_rate > 0) return "warn";
  return "ok";
}

function edgeLabel(edge) {
  const parts = [];
  if (edge.request_rate > 0) parts.push(rate(edge.request_rate, "rps"));
  if (edge.connection_rate > 0) parts.push(rate(edge.connection_rate, "cps"));
  if (edge.active_connections > 0) parts.push(`${edge.active_connections} open`);
  if (edge.error_rate > 0) parts.push(`${(edge.error_rate * 100).toFixed(1)}% err`);
  if (edge.denial_rate > 0) parts.push(`${rate(edge.denial_rate, "denied/s")}`);
  return parts.join(" · ");
}

function layout(graph) {
  const columns = new Map();
  for (const n of graph.nodes) {
    if (!columns.has(n.depth)) columns.set(n.depth, []);
    columns.get(n.depth).push(n);
  }
  const tallest = Math.max(1, ...[...columns.values()].map((c) => c.length));
  const height = MARGIN * 2 + (tallest - 1) * ROW;
  const pos = new Map();
  for (const [depth, nodes] of columns) {
    const top = (height - (nodes.length - 1) * ROW) / 2;
    nodes.forEach((n, i) => pos.set(n.id, { x: MARGIN + depth * COLUMN, y: top + i * ROW }));
  }
  const width = MARGIN * 2 + Math.max(0, ...columns.keys()) * COLUMN + 60;
  return { pos, width, height };
}

function lock(x, y) {
  const g = el("g", { class: "lock", transform: `translate(${x - 5},${y - 22})` });
  g.append(el("title", {}, "mutual TLS"));
  g.append(el("rect", { x: 0, y: 5, width: 10, height: 7, rx: 1 }));
  g.append(el("path", { d: "M2 5 V3 a3 3 0 0 1 6 0 V5" }));
  return g;
}

function drawNode(n, p) {
  const classes = ["node", n.kind];
  if (n.waypoint) classes.push("waypoint");
  if (n.inbound_security && n.inbound_security !== "mutual_tls") classes.push("plaintext-in");
  if (n.enrolled === false) classes.push("unenrolled");
  if (state.selected === `node:${n.id}`) classes.push("selected");
  const g = el("g", { class: classes.join(" "), "data-id": n.id, "data-kind": n.kind, "data-name": n.name, "data-namespace": n.namespace, transform: `translate(${p.x},${p.y})` });
  const what = n.kind === "service" ? "Service" : n.waypoint ? "waypoint" : n.kind;
  const enrolled = n.enrolled === null ? "" : n.enrolled ? ", enrolled" : ", not enrolled";
  const inbound = n.inbound_security ? `, receives ${n.inbound_security === "mutual_tls" ? "mutual TLS" : n.inbound_security === "none" ? "plaintext" : "mutual TLS and plaintext"}` : "";
  g.append(el("title", {}, `${what} ${n.namespace}/${n.name}${enrolled}${inbound}`));
  if (n.kind === "service") g.append(el("polygon", { class: "shape", points: "0,-18 20,0 0,18 -20,0" }));
  else if (n.waypoint) g.append(el("rect", { class: "shape", x: -18, y: -14, width: 36, height: 28, rx: 4 }));
  else g.append(el("circle", { class: "shape", r: 16 }));
  g.append(el("text", { y: 34 }, n.name));
  g.append(el("text", { y: 48, class: "ns", fill: "#777" }, n.namespace));
  if (n.kind !== "unknown") g.addEventListener("click", () => selectNode(n));
  return g;
}

function drawEdge(e, a, b) {
  const kind = health(e);
  const classes = ["edge", kind, e.security === "mutual_tls" ? "mtls" : "plaintext"];
  if (state.selected === `edge:${e.id}`) classes.push("selected");
  const g = el("g", {
    class: classes.join(" "), "data-id": e.id, "data-source": e.source, "data-target": e.target,
    "data-security": e.security, "data-protocol": e.protocol,
    "data-request-rate": e.request_rate, "data-connection-rate": e.connection_rate,
    "data-active-connections": e.active_connections,
    "data-denial-rate": e.denial_rate, "data-error-rate": e.error_rate,
  });
  const x1 = a.x + 20, x2 = b.x - 24, mx = (x1 + x2) / 2;
  const d = b.x > a.x
    ? `M${x1},${a.y} C${mx},${a.y} ${mx},${b.y} ${x2},${b.y}`
    : `M${a.x},${a.y + 18} C${a.x},${a.y + 80} ${b.x},${b.y + 80} ${b.x},${b.y + 18}`;  // backwards
  g.append(el("title", {}, `${e.source} → ${e.target}: ${edgeLabel(e)}, ${e.security}` +
    (e.waypoints.length ? `, via ${e.waypoints.join(", ")}` : "")));
  g.append(el("path", { class: "hit", d }));
  g.append(el("path", { class: "line", d, "marker-end": `url(#arrow-${kind})` }));
  // the label sits past the middle of the curve, where edges fanning out of one node have
  // already parted: (x, y) of the cubic at t = 0.6 (the middle of a straight one)
  const t = a.y === b.y ? 0.5 : 0.6, u = 1 - t;
  const lx = b.x > a.x ? u * u * u * x1 + 3 * u * u * t * mx + 3 * u * t * t * mx + t * t * t * x2 : (a.x + b.x) / 2;
  const ly = b.x > a.x ? u * u * u * a.y + 3 * u * u * t * a.y + 3 * u * t * t * b.y + t * t * t * b.y : Math.max(a.y, b.y) + 70;
  g.append(el("text", { x: lx, y: ly - 6, "text-anchor": "middle" }, edgeLabel(e)));
  if (e.waypoints.length) g.append(el("text", { x: lx, y: ly + 8, "text-anchor": "middle", fill: "#00838f" }, `via ${e.waypoints.join(", ")}`));
  if (e.security === "mutual_tls") g.append(lock(lx, ly - 6));
  g.addEventListener("click", () => selectEdge(e));
  return g;
}

function render(graph) {
  const root = document.getElementById("graph");
  root.replaceChildren();
  if (!graph.nodes.length) {
    const where = state.namespace ? ` in namespace ${state.namespace}` : "";
    root.append(html("p", { class: "empty" }, `No traffic in the last ${state.window}${where}: nothing to draw yet. The graph fills in as workloads talk.`));
    return;
  }
  const { pos, width, height } = layout(graph);
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  const defs = el("defs");
  for (const kind of ["ok", "warn", "bad"]) {
    const m = el("marker", { id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 12, markerHeight: 12, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
    m.append(el("path", { d: "M0,0 L10,5 L0,10 z" }));
    defs.append(m);
  }
  svg.append(defs);
  const edges = el("g", { class: "edges" }), nodes = el("g", { class: "nodes" });
  for (const e of graph.edges) {
    if (pos.has(e.source) && pos.has(e.target)) edges.append(drawEdge(e, pos.get(e.source), pos.get(e.target)));
  }
  for (const n of graph.nodes) nodes.append(drawNode(n, pos.get(n.id)));
  svg.append(edges, nodes);
  root.append(svg);
}

// The namespace filter offers every namespace seen since the page was loaded.
function learnNamespaces(graph) {
  const before = state.namespaces.size;
  for (const n of graph.nodes) if (n.namespace) state.namespaces.add(n.namespace);
  if (state.namespaces.size === before) return;
  const select = document.getElementById("namespace");
  select.replaceChildren(html("option", { value: "" }, "all"),
    ...[...state.namespaces].sort().map((ns) => html("option", { value: ns }, ns)));
  select.value = state.namespace;
}

async function refresh() {
  try {
    const data = await getJSON(`/api/graph?window=${encodeURIComponent(state.window)}&namespace=${encodeURIComponent(state.namespace)}`);
    state.graph = data.graph;
    learnNamespaces(data.graph);
    render(data.graph);
    document.getElementById("updated").textContent = `updated ${new Date(data.time * 1000).toLocaleTimeString()}`;
    if (data.warnings.length) setStatus(data.warnings.join("; "), "warning");
    else setStatus(data.graph.edges.length ? `${data.graph.nodes.length} nodes, ${data.graph.edges.length} edges` : "");
  } catch (err) {
    setStatus(err.message, "error");
    if (err.code === "no_prometheus") {
      state.graph = null;
      document.getElementById("graph").replaceChildren(html("p", { class: "empty" }, "No rates to show without Prometheus."));
    }
  }
}

function panel(...children) {
  document.getElementById("panel").replaceChildren(...children);
}

async function selectNode(n) {
  state.selected = `node:${n.id}`;
  if (state.graph) render(state.graph);
  const kind = n.kind === "service" ? "service" : "workload";
  panel(html("h2", {}, `${kind === "service" ? "Service" : "Workload"} ${n.namespace}/${n.name}`), html("p", { class: "hint" }, "loading…"));
  try {
    const data = await getJSON(`/api/${kind}/${encodeURIComponent(n.namespace)}/${encodeURIComponent(n.name)}?window=${encodeURIComponent(state.window)}`);
    const s = data.signals;
    const rows = [
      ["requests", rate(s.request_rate, "rps")],
      ["errors (5xx)", s.error_ratio === null ? "–" : `${(s.error_ratio * 100).toFixed(1)}%`],
      ["denied (403)", rate(s.denial_rate, "rps")],
      ["latency p50", s.p50_ms === null ? "–" : `${s.p50_ms.toFixed(1)} ms`],
      ["latency p90", s.p90_ms === null ? "–" : `${s.p90_ms.toFixed(1)} ms`],
      ["latency p99", s.p99_ms === null ? "–" : `${s.p99_ms.toFixed(1)} ms`],
      ["TCP connections", rate(s.connection_rate, "cps")],
      ["TCP open now", s.active_connections === null ? "–" : String(Math.round(s.active_connections))],
      ["TCP denied", rate(s.denied_connection_rate, "cps")],
      ["TCP bytes", bytes(s.tcp_bytes_rate)],
    ];
    const table = html("table", { class: "signals" });
    for (const [k, v] of rows) table.append(html("tr", { "data-signal": k }, html("td", {}, k), html("td", {}, v)));
    const enrolled = [n.enrolled === null ? "" : n.enrolled ? "enrolled in the mesh" : "not enrolled",
      n.inbound_security === "mutual_tls" ? "receives mutual TLS only" : n.inbound_security === "none" ? "receives plaintext" : n.inbound_security === "mixed" ? "receives mutual TLS and plaintext" : ""].filter(Boolean).join(", ");
    panel(html("h2", {}, `${kind === "service" ? "Service" : "Workload"} ${n.namespace}/${n.name}`),
      html("p", { class: "hint" }, `golden signals over ${data.window}${enrolled ? ", " + enrolled : ""}`), table);
  } catch (err) {
    panel(html("h2", {}, `${n.namespace}/${n.name}`), html("p", { class: "error" }, err.message));
  }
}

function describe(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "object") return String(value);
  return JSON.stringify(value);
}

async function selectEdge(e) {
  state.selected = `edge:${e.id}`;
  if (state.graph) render(state.graph);
  const title = html("h2", {}, `${e.source} → ${e.target}`);
  const facts = html("p", { class: "hint" }, `${edgeLabel(e) || "no rate"}; ${e.security === "mutual_tls" ? "mutual TLS" : e.security}` +
    (e.waypoints.length ? `; via waypoint ${e.waypoints.join(", ")}` : ""));
  if (!e.why) {
    panel(title, facts, html("p", { class: "hint" }, "No pod of this edge's workloads is known, so there is nothing to ask `why` about."));
    return;
  }
  panel(title, facts, html("p", { class: "hint" }, `weftctl why ${e.why.src} ${e.why.dst} …`));
  try {
    const data = await getJSON(`/api/why?src=${encodeURIComponent(e.why.src)}&dst=${encodeURIComponent(e.why.dst)}`);
    const w = data.why;
    const list = html("ol", { class: "policies" });
    for (const p of w.policies || []) {
      const name = p.name || "(no policy)";
      const where = p.enforced_by ? ` at ${p.enforced_by}` : "";
      const rule = p.rule !== undefined && p.rule !== null ? `, rule ${describe(p.rule)}` : "";
      const detail = p.detail ? `: ${p.detail}` : "";
      list.append(html("li", {}, `${p.kind || "policy"} ${name}${where}: ${p.verdict || "–"}${rule}${detail}`));
    }
    const raw = html("details", {}, html("summary", {}, "everything why said"), html("pre", {}, JSON.stringify(w, null, 2)));
    panel(title, facts,
      html("p", { class: `verdict ${w.verdict}`, id: "why-verdict", "data-verdict": w.verdict }, w.verdict),
      html("p", {}, `deciding policy: ${w.deciding_policy || "none"}`),
      html("p", {}, w.reason || ""),
      html("p", {}, `path: ${w.path && w.path.summary ? w.path.summary : describe(w.path)}`),
      html("p", {}, `weftctl why ${data.src} ${data.dst}`),
      list, raw);
  } catch (err) {
    panel(title, facts, html("p", { class: "error", id: "why-error" }, err.message));
  }
}

async function start() {
  try {
    const config = await getJSON("/api/config");
    state.refresh = config.refresh_seconds;
    state.window = config.window;
    document.getElementById("lab").textContent = `lab ${config.lab}`;
  } catch (err) {
    setStatus(err.message, "error");
  }
  const select = document.getElementById("window");
  select.value = state.window;
  select.addEventListener("change", () => { state.window = select.value; refresh(); });
  const nsSelect = document.getElementById("namespace");
  nsSelect.addEventListener("change", () => { state.namespace = nsSelect.value; refresh(); });
  await refresh();
  state.timer = setInterval(refresh, state.refresh * 1000);
}

start();
