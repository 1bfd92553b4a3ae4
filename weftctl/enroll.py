"""`weftctl enroll` / `weftctl unenroll`: put a namespace or pod in the mesh (or take it out)
by its `weft.dev/dataplane-mode` label, through the lab's API, then wait until every affected
pod is captured (or released) by its node agent, and say so per pod.

The labels are applied as `weftctl lab apply` would: the lab relabels running pods in place
(no restart), writes the objects the controller watches (and mirrors them to the API server
of a `--source kubernetes` lab), and the node agents follow the controller's state. The plan
is `weftctl.enrollplan`; this module only reads, writes and waits.
"""

from __future__ import annotations

import asyncio
import copy
import sys
import time
from collections.abc import Mapping
from typing import Any, NoReturn

import aiohttp
import click

from lab import client
from lab.state import LabPaths
from meshcore.adminclient import get_json
from meshcore.meshstate import DATAPLANE_MODE_LABEL
from weftctl.enrollplan import (
    EnrollError,
    EnrollPlan,
    LabelChange,
    Mode,
    NodeView,
    PodInfo,
    PodOutcome,
    outcomes,
    plan_namespace,
    plan_pod,
    settled,
    with_label,
    ztunnels_behind,
)
from weftctl.labnodes import lab_paths
from weftctl.output import OUTPUT_OPTION, emit, table

POLL = 0.25  # seconds between reads of the node agents while waiting
AGENT_TIMEOUT = 3.0  # one agent status read


def _fail(message: str) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def _lab(paths: LabPaths, method: str, path: str, body: Any = None) -> Any:
    try:
        return client.request(paths, method, path, body, timeout=120)
    except client.LabUnavailable as err:
        _fail(f"{err}; is the lab up? (`weftctl lab up`)")
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
        _fail(
            f"the lab daemon at {paths.socket} did not answer {path}: {err or type(err).__name__}"
        )


def cluster_view(paths: LabPaths) -> tuple[dict[str, dict[str, str]], list[PodInfo]]:
    """Namespaces (name -> labels) and pods, as the lab has them now."""
    status = _lab(paths, "GET", "/v1/status")
    namespaces = {str(n["name"]): dict(n.get("labels") or {}) for n in status["namespaces"]}
    return namespaces, [PodInfo.from_status(p) for p in status["pods"]]


def _object(paths: LabPaths, change: LabelChange) -> dict[str, Any]:
    """The object to write back with its new label: as the lab holds it, without what the
    cluster adds (status, uid)."""
    query = f"kind={change.kind}&namespace={change.namespace}&name={change.name}"
    items = _lab(paths, "GET", f"/v1/objects?{query}")["items"]
    if items:
        doc: dict[str, Any] = copy.deepcopy(items[0])
    elif change.kind == "Namespace":  # `default` exists without an object of its own
        doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": change.name}}
    else:
        _fail(f"{change.target} is gone")
    doc.pop("status", None)
    meta = doc.setdefault("metadata", {})
    meta.pop("uid", None)
    meta["labels"] = with_label(meta.get("labels") or {}, change.after)
    if not meta["labels"]:
        meta.pop("labels")
    return doc


def _apply(paths: LabPaths, change: LabelChange) -> None:
    doc = _object(paths, change)
    # The lab adds spec.nodeName to a Pod it placed; a Pod's spec cannot change, so it is
    # written back as it was applied: without nodeName unless the manifest pinned it.
    node_name = doc.get("spec", {}).pop("nodeName", None) if change.kind == "Pod" else None
    attempts = [doc]
    if node_name is not None:
        attempts.append({**doc, "spec": {**doc["spec"], "nodeName": node_name}})
    for i, attempt in enumerate(attempts):
        body = {"documents": [{"source": "weftctl enroll", "raw": attempt}]}
        try:
            client.request(paths, "POST", "/v1/apply", body, timeout=120)
            return
        except client.LabUnavailable as err:
            _fail(f"{err}; is the lab up? (`weftctl lab up`)")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            _fail(f"the lab daemon did not answer the label change: {err or type(err).__name__}")
        except client.LabRequestFailed as err:
            spec_changed = any(e.get("field") == "spec" for e in err.errors)
            if not (spec_changed and i + 1 < len(attempts)):
                _fail(f"the lab refused the label change of {change.target}: {err}")


async def _read_agents(paths: LabPaths, nodes: set[str]) -> dict[str, NodeView]:
    async def one(node: str) -> NodeView:
        try:
            data = await get_json(paths.agent_socket(node), "/debug/status", AGENT_TIMEOUT)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            return NodeView(node, error=f"{type(err).__name__}: {err}".rstrip(": "))
        return NodeView.from_status(node, data)

    views = await asyncio.gather(*(one(n) for n in sorted(nodes)))
    return {v.node: v for v in views}


async def _ztunnels_behind(paths: LabPaths) -> list[str]:
    try:
        nodes = await get_json(paths.controller_admin, "/debug/nodes", AGENT_TIMEOUT)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return []  # the controller cannot say: capture is what was asked for, and it is done
    return ztunnels_behind(nodes)


async def wait_settled(
    paths: LabPaths, plan: EnrollPlan, timeout: float
) -> tuple[list[PodOutcome], list[str], float]:
    """Read the node agents until every pod of the plan is where its labels say, then the
    controller until every ztunnel has ACKed its state (which has the change by then), or
    until `timeout`: the outcomes, the ztunnels still behind, and the seconds it took."""
    nodes = {p.pod.node for p in plan.pods}
    start = time.monotonic()
    deadline = start + timeout
    while True:
        views = await _read_agents(paths, nodes)
        if settled(plan, views) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL)
    results = outcomes(plan, views)
    behind: list[str] = []
    if plan.label is not None and all(o.ok for o in results):
        while (behind := await _ztunnels_behind(paths)) and time.monotonic() < deadline:
            await asyncio.sleep(POLL)
    return results, behind, time.monotonic() - start


def _plan_json(plan: EnrollPlan) -> dict[str, Any]:
    return {
        "mode": plan.mode.value,
        "change": plan.label.to_json() if plan.label else None,
        "pods": [
            {
                "pod": p.pod.ref,
                "node": p.pod.node,
                "enrolled_before": p.before,
                "enrolled_after": p.after,
                "note": p.note,
            }
            for p in plan.pods
        ],
    }


def _run(
    paths: LabPaths,
    make_plan: Any,
    dry_run: bool,
    timeout: float,
    output: str,
) -> None:
    namespaces, pods = cluster_view(paths)
    try:
        plan: EnrollPlan = make_plan(namespaces, pods)
    except EnrollError as err:
        _fail(str(err))
    if dry_run:
        data = {**_plan_json(plan), "dry_run": True}
        if emit(data, output):
            return
        click.echo(plan.label.describe() if plan.label else "no label to change")
        rows = [
            [
                p.pod.ref,
                p.pod.node,
                ("would be captured" if p.after else "would be released")
                if p.changes
                else ("stays captured" if p.after else "stays out"),
                p.note,
            ]
            for p in plan.pods
        ]
        if rows:
            click.echo(table(["POD", "NODE", "CHANGE", "NOTE"], rows))
        click.echo("(dry run: nothing was changed)")
        return
    if plan.label is not None:
        _apply(paths, plan.label)
    results, behind, took = asyncio.run(wait_settled(paths, plan, timeout if plan.label else 0))
    ok = all(o.ok for o in results) and not behind
    data = {
        **_plan_json(plan),
        "dry_run": False,
        "outcomes": [o.to_json() for o in results],
        "ztunnels_behind": behind,
        "complete": ok,
        "seconds": round(took, 2),
    }
    if not emit(data, output):
        click.echo(plan.label.describe() if plan.label else "labels unchanged: already so")
        if results:
            click.echo(
                table(
                    ["POD", "NODE", "RESULT", "REASON"],
                    [[o.pod.ref, o.pod.node, o.result.value, o.reason] for o in results],
                )
            )
        bad = sum(not o.ok for o in results)
        if bad:
            click.echo(
                f"{bad} pod(s) not as asked after {took:.1f}s: see `weftctl agent status "
                "--node NODE` and `weftctl controller problems`",
                err=True,
            )
        elif behind:
            click.echo(
                f"pods captured as asked, but after {took:.1f}s not every ztunnel has the new "
                f"state yet: {', '.join(behind)}; see `weftctl controller nodes`",
                err=True,
            )
    if not ok:
        sys.exit(1)


def _options(f: Any) -> Any:
    f = OUTPUT_OPTION(f)
    f = click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=30.0,
        show_default=True,
        help="Seconds to wait for the node agents to capture (or release) the pods.",
    )(f)
    f = click.option(
        "--dry-run", is_flag=True, help="Print what would change, and change nothing."
    )(f)
    return f


def _group(mode: Mode) -> click.Group:
    verb = "Enroll" if mode is Mode.ENROLL else "Unenroll"

    @click.group(mode.value)
    @click.option(
        "--lab",
        "lab_name",
        default="default",
        envvar="WEFT_LAB",
        show_default=True,
        help="The lab to change. Env: WEFT_LAB.",
    )
    @click.pass_context
    def group(ctx: click.Context, lab_name: str) -> None:
        ctx.obj = lab_paths(lab_name)

    done = "captured" if mode is Mode.ENROLL else "released"
    group.help = (
        f"{verb} a namespace or a pod: set its {DATAPLANE_MODE_LABEL} label and wait until its "
        f"pods are {done} by their node agents (running pods change live, without a restart). "
        "Exit code 1 when a pod is not as asked in time; each such pod is named with the reason."
    )

    @group.command("namespace")
    @click.argument("namespace")
    @_options
    @click.pass_obj
    def namespace_command(
        paths: LabPaths, namespace: str, dry_run: bool, timeout: float, output: str
    ) -> None:
        def make(ns: Mapping[str, Mapping[str, str]], pods: list[PodInfo]) -> EnrollPlan:
            return plan_namespace(mode, namespace, ns, pods)

        _run(paths, make, dry_run, timeout, output)

    namespace_command.help = (
        "Label the namespace weft.dev/dataplane-mode=ambient: all its pods join the mesh, "
        "but those labeled none."
        if mode is Mode.ENROLL
        else "Remove the namespace's weft.dev/dataplane-mode label: its pods leave the mesh, "
        "but those labeled ambient."
    )

    @group.command("pod")
    @click.argument("pod")
    @click.option("-n", "--namespace", default="default", show_default=True)
    @_options
    @click.pass_obj
    def pod_command(
        paths: LabPaths, pod: str, namespace: str, dry_run: bool, timeout: float, output: str
    ) -> None:
        def make(ns: Mapping[str, Mapping[str, str]], pods: list[PodInfo]) -> EnrollPlan:
            return plan_pod(mode, namespace, pod, ns, pods)

        _run(paths, make, dry_run, timeout, output)

    pod_command.help = (
        "Enroll one pod: label it ambient (its namespace is not enrolled) or remove its none "
        "label (its namespace is)."
        if mode is Mode.ENROLL
        else "Unenroll one pod: label it none (its namespace is enrolled) or remove its "
        "ambient label (its namespace is not)."
    )
    return group


enroll = _group(Mode.ENROLL)
unenroll = _group(Mode.UNENROLL)
