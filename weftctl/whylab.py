"""`weftctl why` on a lab: gather the live state the explanation needs, explain, and (with
`--probe`) send one real connection and compare what each hop reported.

`why_json()` is what `weftctl why SRC DST -o json` prints (the web view calls it too). The
state is read from where the processes serve it: the controller's `/debug/state` (what every
node is sent, parsed back into the same typed values), each node agent's `/debug/status`
(which pods it captures) and each ztunnel's `/config_dump` (which certificates it holds).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from google.protobuf.json_format import ParseDict, ParseError

from lab.config import STATE_ROOT
from lab.state import LabPaths
from meshcore.adminclient import get_json
from meshcore.api import mesh_pb2
from meshcore.api.convert import from_proto
from meshcore.api.errors import ConversionError
from meshcore.meshstate import StateValue, Workload
from meshcore.resources import ResourceKey
from weftctl.explain import engine
from weftctl.explain.model import (
    Certificate,
    Explanation,
    MeshSnapshot,
    NodeFacts,
    RequestSpec,
    TargetError,
)

log = structlog.get_logger("weftctl.why")

READ_TIMEOUT = 10.0
MAX_RESOURCES = 100_000  # a state larger than this is refused rather than parsed


class LabUnreachable(RuntimeError):
    """The lab's controller could not be read: nothing can be explained."""


def lab_paths(lab_name: str) -> LabPaths:
    return LabPaths.for_lab(lab_name, Path(os.environ.get("WEFT_LAB_STATE", STATE_ROOT)))


def parse_state(data: dict[str, Any]) -> tuple[dict[ResourceKey, StateValue], list[str]]:
    """The controller's `/debug/state` JSON as the typed state nodes hold; a resource that
    does not convert is left out and named in the second value."""
    resources = data.get("resources", [])
    if not isinstance(resources, list):
        raise LabUnreachable("the controller's /debug/state has no resources list")
    if len(resources) > MAX_RESOURCES:
        raise LabUnreachable(f"the state has {len(resources)} resources (at most {MAX_RESOURCES})")
    state: dict[ResourceKey, StateValue] = {}
    problems: list[str] = []
    for item in resources:
        try:
            value = from_proto(ParseDict(item, mesh_pb2.Resource()))
        except (ParseError, ConversionError, ValueError, KeyError, TypeError) as err:
            problems.append(f"resource {item.get('key', '?')}: {err}")
            continue
        state[value.key] = value
    return state, problems


async def _node_facts(paths: LabPaths, node: str) -> NodeFacts:
    errors: list[str] = []
    captured: frozenset[str] | None = None
    certs: dict[str, Certificate] | None = None
    try:
        status = await get_json(paths.agent_socket(node), "/debug/status", READ_TIMEOUT)
        captured = frozenset(str(e["pod"]) for e in status.get("enrolled", []))
    except (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError) as err:
        errors.append(f"node agent of {node}: {err or type(err).__name__}")
    try:
        dump = await get_json(paths.ztunnel_socket(node), "/config_dump", READ_TIMEOUT)
        certs = {
            str(c["identity"]): Certificate(
                str(c["identity"]), str(c["not_after"]), int(c["expires_in_s"])
            )
            for c in dump.get("certificates", [])
        }
    except (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError) as err:
        errors.append(f"ztunnel of {node}: {err or type(err).__name__}")
    return NodeFacts(node, captured, certs, tuple(errors))


async def _lagging(paths: LabPaths, version: int) -> list[str]:
    """Subscribers (agents, ztunnels, waypoints) that have not ACKed `version` yet: the data
    plane there may still run an older state than the one explained."""
    try:
        data = await get_json(paths.controller_admin, "/debug/nodes", READ_TIMEOUT)
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        return [f"the controller's subscribers could not be read: {err or type(err).__name__}"]
    out = []
    for n in data.get("nodes", []):
        if n.get("connected") and int(n.get("acked_version") or 0) < version:
            out.append(
                f"{n.get('component', 'subscriber')} of {n.get('node')} has ACKed state version "
                f"{n.get('acked_version')}, not {version} yet: it may still enforce the older state"
            )
    return out


async def snapshot(lab_name: str) -> tuple[MeshSnapshot, list[str]]:
    """The lab's live state, and what could not be read (named)."""
    paths = lab_paths(lab_name)
    try:
        data = await get_json(paths.controller_admin, "/debug/state", READ_TIMEOUT)
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        raise LabUnreachable(
            f"cannot read the controller of lab {lab_name} at {paths.controller_admin} "
            f"({err or type(err).__name__}); is the lab up?"
        ) from None
    state, problems = parse_state(data)
    problems += await _lagging(paths, int(data.get("version", 0)))
    nodes = sorted({v.node for v in state.values() if isinstance(v, Workload) and v.node})
    facts = await asyncio.gather(*(_node_facts(paths, n) for n in nodes))
    for f in facts:
        problems += list(f.errors)
    snap = MeshSnapshot(state, int(data.get("version", 0)), {f.name: f for f in facts})
    return snap, problems


async def explain_lab(
    lab_name: str, src: str, dst: str, request: RequestSpec | None = None
) -> Explanation:
    snap, problems = await snapshot(lab_name)
    found = engine.explain(snap, src, dst, request)
    if problems:
        import dataclasses

        found = dataclasses.replace(found, notes=found.notes + tuple(problems))
    return found


async def why_json(
    lab_name: str,
    src: str,
    dst: str,
    *,
    probe: bool = False,
    method: str = "",
    path: str = "",
    headers: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """Exactly what `weftctl why SRC DST -o json` prints. Raises TargetError (SRC/DST names
    nothing the mesh knows) and LabUnreachable."""
    request = RequestSpec(method.upper(), path, headers)
    found = await explain_lab(lab_name, src, dst, request)
    data = found.to_json()
    if probe:
        from weftctl import whyprobe

        data["probe"] = await whyprobe.probe(lab_name, found, request)
    return data


__all__ = ["LabUnreachable", "TargetError", "explain_lab", "snapshot", "why_json"]
