"""`weftctl why --probe`: one real connection from SRC, and what each hop reported of it.

The tap (weftctl.tap.LabTap, filtered to the source pod) is opened first; then one connection
is made from inside the source pod (its netns and cgroup, as `weftctl lab exec` runs a
command: so the node agent captures it as it would the app's) with one HTTP request
(`--method/--path`, default GET /) on it; then the events the hops report are collected for
at most EVENT_WAIT seconds. The client's own outcome (an HTTP status, or a reset) and every
hop's verdict are compared with the explanation: `agrees` is False when any differs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from typing import Any

from lab import client
from lab.cgroups import path as cgroup_path
from lab.images import container_path
from lab.processes import ENTER_CGROUP
from meshcore.accessevents import TapFilter
from weftctl.explain.model import ALLOW, DENY, Explanation, RequestSpec
from weftctl.whylab import lab_paths

EVENT_WAIT = 2.0  # seconds to collect the hops' events after the connection ended
CONNECT_TIMEOUT = 5.0
RUN_TIMEOUT = 20.0  # the whole in-pod client, bounded
MAX_EVENTS = 64  # events kept per probe; more are counted

# Run inside the source pod: one connection to argv[1]:argv[2], one request on it; prints
# {"outcome": "response"|"data"|"open"|"reset"|"refused"|"timeout", "status": N, "body": ".."}.
CLIENT = textwrap.dedent("""
    import json, socket, sys
    ip, port, method, path, host, headers = sys.argv[1], int(sys.argv[2]), sys.argv[3], \\
        sys.argv[4], sys.argv[5], json.loads(sys.argv[6])
    out = {"outcome": "", "status": 0, "body": ""}
    try:
        s = socket.create_connection((ip, port), timeout=float(sys.argv[7]))
    except ConnectionRefusedError:
        out["outcome"] = "refused"
    except OSError as err:
        out["outcome"] = "timeout" if isinstance(err, TimeoutError) else "refused"
        out["body"] = repr(err)
    else:
        out["local_port"] = s.getsockname()[1]
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        data, failed, waited = b"", "", False
        try:
            s.sendall(("\\r\\n".join(lines) + "\\r\\n\\r\\n").encode("latin-1"))
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if not data.startswith(b"HTTP/"):
                    s.settimeout(0.5)  # not HTTP (an echo...): no need to wait for its close
        except TimeoutError:
            waited = True
        except OSError as err:
            failed = repr(err)
        finally:
            s.close()
        if data.startswith(b"HTTP/"):
            out["outcome"] = "response"
            out["status"] = int(data.split(b" ", 2)[1])
            out["body"] = data.partition(b"\\r\\n\\r\\n")[2][:200].decode("latin-1")
        elif data:
            out["outcome"] = "data"  # bytes came back: the connection was carried
            out["body"] = data[:200].decode("latin-1")
        elif waited and not failed:
            out["outcome"] = "open"  # held open, silent: carried, nothing answered yet
        else:
            out["outcome"] = "reset"  # reset, or closed before any answer
            out["body"] = failed
    print(json.dumps(out))
""")

RBAC_DENIED = "RBAC: access denied"


class ProbeError(RuntimeError):
    """The probe could not be sent (the source pod is gone); the message says which."""


def observed_verdict(result: dict[str, Any]) -> str:
    """What the client saw, as a verdict: an HTTP response is an allow unless it is the
    waypoint's RBAC 403; bytes that are not HTTP, or a connection held open, were carried
    (allow); a reset, a close before any answer, or a refused or timed-out connect is a deny."""
    outcome = result.get("outcome")
    if outcome == "response":
        body = str(result.get("body", ""))
        if int(result.get("status", 0)) == 403 and body.startswith(RBAC_DENIED):
            return DENY
        return ALLOW
    return ALLOW if outcome in ("data", "open") else DENY


def compare(
    explanation: dict[str, Any], result: dict[str, Any], events: list[dict[str, Any]]
) -> tuple[bool, list[str]]:
    """Whether the client's outcome and every hop's reported verdict agree with the
    explanation; the differences, named."""
    differences: list[str] = []
    seen = observed_verdict(result)
    if seen != explanation["verdict"]:
        status = f" {result['status']}" if result.get("status") else ""
        differences.append(
            f"explained {explanation['verdict']}, the client saw {seen} "
            f"({result.get('outcome')}{status})"
        )
    expected = expected_by_reporter(explanation)
    for e in events:
        verdict = e.get("verdict")
        if verdict == "error":
            continue  # a failure to connect is not a policy verdict; shown, not compared
        wanted = expected.get((str(e.get("component")), str(e.get("reporter"))))
        if wanted is not None and wanted != verdict:
            differences.append(
                f"{e.get('component')} {e.get('reporter')} on {e.get('node') or '?'} reported "
                f"{verdict} ({e.get('reason') or e.get('policy') or '-'}), explained {wanted}"
            )
        policy, deciding = e.get("policy") or "", explanation.get("deciding_policy") or ""
        if verdict == DENY and policy and deciding and policy != deciding:
            differences.append(
                f"{e.get('component')} {e.get('reporter')} denied by {policy}, explained {deciding}"
            )
    return not differences, differences


def expected_by_reporter(explanation: dict[str, Any]) -> dict[tuple[str, str], str]:
    """The verdict each reporter should log, by (component, reporter). The waypoint and the
    destination ztunnel report their own decision. The source ztunnel reports its connection:
    denied when it refused it or the destination ztunnel refused the stream, allowed when a
    waypoint answered (even with a 403: that is a request, reported by the waypoint)."""
    hops = {(h["component"], h["role"]): h["verdict"] for h in explanation["path"]["hops"]}
    out = {k: v for k, v in hops.items() if k[1] != "source" and v in (ALLOW, DENY)}
    source = hops.get(("ztunnel", "source"))
    if source is not None:
        refused = DENY in (source, hops.get(("ztunnel", "destination")))
        out[("ztunnel", "source")] = DENY if refused else ALLOW
    return out


async def _pod(lab_name: str, namespace: str, name: str) -> dict[str, Any]:
    status = await asyncio.to_thread(client.request, lab_paths(lab_name), "GET", "/v1/status")
    for p in status["pods"]:
        if p["name"] == name and p["namespace"] == namespace:
            return dict(p)
    raise ProbeError(f"pod {namespace}/{name} is not in lab {lab_name}")


async def connect_from(
    lab_name: str, namespace: str, name: str, ip: str, port: int, request: RequestSpec,
    host: str,
) -> dict[str, Any]:  # fmt: skip
    """One connection + request from inside pod `namespace/name`: the client's outcome."""
    pod = await _pod(lab_name, namespace, name)
    if not pod["containers"]:
        return {"outcome": "error", "status": 0, "body": f"pod {namespace}/{name} has no container"}
    target = pod["containers"][0]
    argv = [
        "sh", "-c", ENTER_CGROUP, str(cgroup_path(target["cgroup"])),
        "ip", "netns", "exec", pod["netns"],
        sys.executable, "-c", CLIENT, ip, str(port), request.method or "GET",
        request.path or "/", host, json.dumps(list(request.headers)), str(CONNECT_TIMEOUT),
    ]  # fmt: skip
    env = {**os.environ, **pod.get("env", {}), "PATH": container_path(os.environ.get("PATH", ""))}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"outcome": "timeout", "status": 0, "body": "the probe client did not finish"}
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        text = err.decode(errors="replace")[-300:]
        return {"outcome": "error", "status": 0, "body": f"the probe client failed: {text}"}
    return result


async def probe(lab_name: str, found: Explanation, request: RequestSpec) -> dict[str, Any]:
    """Send one connection for `found` and report what happened and each hop saw."""
    from weftctl.tap import LabTap, TapError

    src, dst = found.source, found.destination
    ip, _, port_text = dst.address.rpartition(":")
    host = f"{dst.name}.{dst.namespace}.svc.cluster.local" if dst.kind == "service" else dst.address
    events: list[dict[str, Any]] = []
    dropped = 0
    tap_error = ""
    started = time.time()
    try:
        async with LabTap(lab_name, TapFilter(pod=src.name)) as tap:
            result = await connect_from(
                lab_name, src.namespace, src.name, ip, int(port_text), request, host
            )
            deadline = time.monotonic() + EVENT_WAIT
            iterator = tap.__aiter__()
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(anext(iterator), left)
                except TimeoutError:
                    break
                if event.get("time", 0) < started - 1 or not _ours(event, src.namespace, src.name):
                    continue
                if not same_connection(event, result.get("local_port"), host):
                    continue
                if len(events) < MAX_EVENTS:
                    events.append(_brief(event))
                else:
                    dropped += 1
    except TapError as err:
        tap_error = str(err)
        result = await connect_from(
            lab_name, src.namespace, src.name, ip, int(port_text), request, host
        )
    explanation = found.to_json()
    agrees, differences = compare(explanation, result, events)
    seen = observed_verdict(result)
    code = f" HTTP {result['status']}" if result.get("status") else ""
    summary = (
        f"one connection from {src.namespace}/{src.name} to {dst.address}: "
        f"{result.get('outcome')}{code} -> {seen}; {len(events)} hop event(s) within "
        f"{EVENT_WAIT:.0f}s; " + ("agrees with the explanation" if agrees else "DISAGREES")
    )
    report: dict[str, Any] = {
        "agrees": agrees,
        "observed": seen,
        "client": result,
        "events": events,
        "summary": summary,
    }
    if differences:
        report["disagreement"] = "; ".join(differences)
    if dropped:
        report["events_dropped"] = dropped
    if tap_error:
        report["tap_error"] = tap_error
    if not events:
        report["note"] = "no hop reported an access event (tap unavailable, or nothing tapped)"
    return report


def same_connection(event: dict[str, Any], local_port: object, host: str) -> bool:
    """Could `event` be the probe's own connection, rather than other traffic of the same pod
    in the window? The source ztunnel names the client's port; the waypoint the Host the
    probe sent. The destination ztunnel cannot tell (its source is the waypoint's or the
    source node's stream), so its events of the same pair are kept: the same policy judges
    them."""
    if (event.get("component"), event.get("reporter")) == ("ztunnel", "source") and local_port:
        address = str(event.get("source_address", ""))
        return ":" not in address or address.endswith(f":{local_port}")  # ip alone: can't tell
    if event.get("component") == "waypoint" and event.get("kind") == "request":
        authority = str(event.get("authority", "")).lower()
        name, _, port = authority.rpartition(":")
        return not authority or (name if port.isdigit() else authority) == host.lower()
    return True


def _ours(event: dict[str, Any], namespace: str, name: str) -> bool:
    return (event.get("source_namespace"), event.get("source_workload")) == (namespace, name) or (
        event.get("source_workload") == name and not event.get("source_namespace")
    )


_KEPT = (
    "component", "reporter", "kind", "node", "verdict", "policy", "reason", "security",
    "source_principal", "source_address", "destination_principal", "destination_address",
    "destination_workload", "response_code", "response_flags", "method", "path",
)  # fmt: skip


def _brief(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event.get(k, "") for k in _KEPT}
