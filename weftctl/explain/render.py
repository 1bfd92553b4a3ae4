"""An explanation (and a probe's report) as a few lines for people. Pure."""

from __future__ import annotations

from typing import Any


def _side(s: dict[str, Any]) -> str:
    if s["kind"] == "service":
        text = f"service {s['namespace']}/{s['name']} {s['address']}"
        return text + (f", bound to waypoint {s['waypoint']}" if s["waypoint"] else "")
    if s["kind"] == "address":
        return f"{s['address']} (not in the mesh)"
    state = []
    state.append("enrolled" if s["enrolled"] else "NOT enrolled")
    if s["captured"] is None:
        state.append("capture unknown (node agent not read)")
    else:
        state.append("captured" if s["captured"] else "NOT captured")
    text = f"pod {s['namespace']}/{s['name']} {s['address']} on {s['node']}: {', '.join(state)}"
    if s["enrolled"]:
        cert = s.get("certificate")
        if cert:
            hours = int(cert["expires_in_s"]) // 3600
            held = f"certificate held by its ztunnel, expires {cert['not_after']} (in {hours}h)"
        elif s["certificate_held"] is False:
            held = "no certificate held yet by its ztunnel (fetched at the first connection)"
        else:
            held = "certificate unknown (ztunnel not read)"
        text += f"\n               {s['identity']}; {held}"
    return text


def _policy(p: dict[str, Any]) -> str:
    name = p["name"] or "(none)"
    action = f" {p['action']}" if p["action"] else ""
    rule = f" rule {p['rule']}" if p["rule"] is not None else ""
    mark = "  <- decides" if p["decides"] else ""
    detail = f"  ({p['detail']})" if p["detail"] else ""
    return (
        f"    {p['layer']} {p['enforced_by']}: {p['kind']} {name}{action}: "
        f"{p['verdict']}{rule}{mark}{detail}"
    )


def explanation_text(data: dict[str, Any]) -> str:
    """`weftctl why`'s table output from the JSON form (one source for both)."""
    src, dst, path = data["source"], data["destination"], data["path"]
    lines = [
        f"{data['verdict'].upper()}: {src['namespace']}/{src['name']} -> "
        f"{dst['address']} ({dst['kind']})",
        f"  source       {_side(src)}",
        f"  destination  {_side(dst)}",
        f"  path         {path['kind']}: {path['summary']}",
    ]
    lines[3:3] = [
        f"    endpoint   {_side(e)}"
        for e in data.get("endpoints", [])
        if dst["kind"] != "pod" or (e["namespace"], e["name"]) != (dst["namespace"], dst["name"])
    ]
    for replica in path["replicas"]:
        lines.append(f"               waypoint replica {replica}")
    for h in path["hops"]:
        lines.append(
            f"    {h['role']:<11} {h['component']} {h['node']} -> {h['target']}: "
            f"{h['verdict']} ({h['reason']})"
        )
    if data["policies"]:
        lines.append("  policies (in evaluation order)")
        lines += [_policy(p) for p in data["policies"]]
    else:
        lines.append("  policies     none applies on this path")
    for r in data["routes"]:
        backends = ", ".join(r["backends"]) or "-"
        lines.append(f"  route        {r['service']}: {r['decision']}; backends {backends}")
    deciding = data["deciding_policy"] or "none"
    lines.append(
        f"  verdict      {data['verdict']} (deciding policy: {deciding}): {data['reason']}"
    )
    if data["depends_on_request"]:
        lines.append("               depends on the request: see --method/--path/--header")
    lines += [f"  note         {n}" for n in data["notes"]]
    probe = data.get("probe")
    if probe is not None:
        lines += probe_text(probe)
    return "\n".join(lines)


def probe_text(probe: dict[str, Any]) -> list[str]:
    lines = [f"  probe        {probe['summary']}"]
    for e in probe.get("events", []):
        code = f" HTTP {e['response_code']}" if e.get("response_code") else ""
        policy = f" policy {e['policy']}" if e.get("policy") else ""
        reason = f" ({e['reason']})" if e.get("reason") else ""
        lines.append(
            f"    {e['component']} {e['reporter']} {e.get('node') or '-'}: {e['verdict']}{code}"
            f"{policy} {e['source_principal'] or e['source_address']} -> "
            f"{e['destination_principal'] or e['destination_address']}{reason}"
        )
    if probe.get("agrees") is False:
        lines.append(
            "  !!! DISAGREEMENT: the data plane did not do what this explanation says: "
            f"{probe.get('disagreement', '')}"
        )
    return lines
