"""`weftctl install` / `weftctl uninstall`: weft onto a Kubernetes cluster from daemonset/.

install: the kustomization's objects (weftctl.manifests), with --image, --trust-domain and
--set-mesh-config patched in (weftctl.render), applied server-side (field manager weftctl) in
two phases: CRDs, waited for until Established, then everything else in the kustomization's
order (Namespaces first). Then, unless --no-wait, it waits for the controller Deployment to be
available and the node DaemonSets (weft-node, weft-ztunnel) rolled out, as `istioctl install`
does. `-o yaml|json` prints what would be applied; `--dry-run` has the API server check it all
(dryRun=All) and keep none.

uninstall: the same objects deleted in reverse order; CRDs only with --purge-crds, because
deleting a CRD deletes every policy users wrote of that kind.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from weftctl.kubeapi import KubeApi, KubeError
from weftctl.manifests import ManifestSourceError, load, manifests_dir
from weftctl.render import (
    ObjectRef,
    Rendered,
    RenderError,
    RenderSettings,
    documents,
    install_order,
    render,
    uninstall_order,
)
from weftctl.rollout import READINESS, Readiness, crd_established

GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_HINT = (
    "Gateway API CRDs are not installed (waypoints need them): kubectl apply -f "
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/standard-install.yaml"
    " then run weftctl install again"
)
POLL_SECONDS = 1.0

KUBECONFIG_OPTION = click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).",
)
CONTEXT_OPTION = click.option("--context", default=None, help="Kubeconfig context.")
MANIFESTS_OPTION = click.option(
    "--manifests",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Folder with weft's kustomization.yaml (default: $WEFT_MANIFESTS, else daemonset/).",
)
TIMEOUT_OPTION = click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for CRDs, the controller and the node DaemonSets.",
)


def _rendered(manifests: Path | None, settings: RenderSettings) -> list[Rendered]:
    try:
        return render(load(manifests_dir(manifests)), settings)
    except (ManifestSourceError, RenderError) as err:
        raise click.ClickException(str(err)) from None


def _connect(kubeconfig: Path | None, context: str | None) -> KubeApi:
    try:
        return KubeApi.from_kubeconfig(kubeconfig, context)
    except KubeError as err:
        raise click.ClickException(str(err)) from None


def _say(ref_kind: str, name: str, what: str) -> None:
    click.echo(f"{ref_kind.lower()}/{name} {what}")


def wait_for(
    what: str,
    read: Callable[[], dict[str, Any] | None],
    judge: Callable[[dict[str, Any]], Readiness],
    deadline: float,
) -> Readiness:
    """Poll until `judge` says ready or the deadline passes; print each new reason."""
    last = ""
    while True:
        obj = read()
        state = Readiness(False, "not found") if obj is None else judge(obj)
        if state.ready:
            click.echo(f"{what}: {state.why}")
            return state
        if state.why != last:
            click.echo(f"{what}: waiting ({state.why})")
            last = state.why
        if time.monotonic() >= deadline:
            return state
        time.sleep(POLL_SECONDS)


def _apply_all(
    kube: KubeApi, items: list[Rendered], dry_run: bool, new_namespaces: set[str]
) -> list[str]:
    """Apply each object; the errors, one line each (the others are still applied)."""
    errors: list[str] = []
    suffix = " (server dry run)" if dry_run else ""
    existing: dict[str, bool] = {}
    for item in items:
        ref = item.ref
        try:
            if kube.resource(ref) is None and ref.group == GATEWAY_API_GROUP:
                click.echo(f"{ref}: skipped: {GATEWAY_API_HINT}", err=True)
                continue
            if dry_run and ref.namespace in new_namespaces:
                # A dry run creates no Namespace, so the server would refuse what goes in it.
                if ref.namespace not in existing:
                    ns = kube.get(_namespace_ref(ref.namespace))
                    existing[ref.namespace] = ns is not None
                if not existing[ref.namespace]:
                    _say(ref.kind, ref.name, f"skipped: namespace {ref.namespace} is new{suffix}")
                    continue
            _say(ref.kind, ref.name, kube.apply(ref, item.obj, dry_run) + suffix)
        except KubeError as err:
            errors.append(f"{item.source}: {err}")
            click.echo(f"error: {item.source}: {err}", err=True)
    return errors


def _namespace_ref(name: str) -> ObjectRef:
    return ObjectRef("v1", "Namespace", name)


@click.command("install")
@click.option("--dry-run", is_flag=True, help="Have the API server check everything; keep none.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="Print the objects instead of applying them.",
)
@KUBECONFIG_OPTION
@CONTEXT_OPTION
@MANIFESTS_OPTION
@click.option("--image", default=None, help="weft's image (default: the manifests').")
@click.option("--trust-domain", default=None, help="SPIFFE trust domain (default: cluster.local).")
@click.option(
    "--set-mesh-config",
    "mesh_config",
    type=click.File("r"),
    default=None,
    help="YAML file for ConfigMap weft-system/weft's mesh key (Istio's meshConfig shape).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for the controller to be available and the node DaemonSets rolled out.",
)
@TIMEOUT_OPTION
def install(
    dry_run: bool,
    output: str | None,
    kubeconfig: Path | None,
    context: str | None,
    manifests: Path | None,
    image: str | None,
    trust_domain: str | None,
    mesh_config: Any,
    wait: bool,
    timeout: float,
) -> None:
    """Install weft (CRDs, RBAC, controller, node DaemonSets) with server-side apply."""
    settings = RenderSettings(
        image=image,
        trust_domain=trust_domain,
        mesh_config=mesh_config.read() if mesh_config is not None else None,
    )
    items = _rendered(manifests, settings)
    if output == "yaml":
        click.echo(yaml.safe_dump_all(documents(items), sort_keys=False), nl=False)
        return
    if output == "json":
        listed = {"apiVersion": "v1", "kind": "List", "items": documents(items)}
        click.echo(json.dumps(listed, indent=2))
        return
    crds, rest = install_order(items)
    new_namespaces = {i.ref.name for i in rest if i.ref.kind == "Namespace"}
    kube = _connect(kubeconfig, context)
    deadline = time.monotonic() + timeout
    try:
        errors = _apply_all(kube, crds, dry_run, new_namespaces)
        if errors:
            raise click.ClickException(
                f"{len(errors)} CRD(s) not applied; nothing else was applied"
            )
        if not dry_run:
            for item in crds:
                state = wait_for(
                    str(item.ref), functools.partial(kube.get, item.ref), crd_established, deadline
                )
                if not state.ready:
                    raise click.ClickException(
                        f"{item.ref} not Established after {timeout:g}s ({state.why})"
                    )
            kube.forget_discovery()
        errors = _apply_all(kube, rest, dry_run, new_namespaces)
        if errors:
            raise click.ClickException(f"{len(errors)} object(s) not applied (listed above)")
        if dry_run:
            click.echo("dry run: the API server accepted every object; nothing was kept")
            return
        if wait:
            _wait_rollouts(kube, rest, deadline, timeout)
        click.echo("weft is installed")
    except KubeError as err:  # while waiting: the API server went away, say
        raise click.ClickException(str(err)) from None
    finally:
        kube.close()


def _wait_rollouts(kube: KubeApi, items: list[Rendered], deadline: float, timeout: float) -> None:
    late: list[str] = []
    for item in items:
        judge = READINESS.get(item.ref.kind)
        if judge is None or item.ref.group != "apps":
            continue
        state = wait_for(str(item.ref), functools.partial(kube.get, item.ref), judge, deadline)
        if not state.ready:
            late.append(f"{item.ref}: {state.why}")
    if late:
        raise click.ClickException(
            f"not ready after {timeout:g}s: {'; '.join(late)} (kubectl -n weft-system get pods;"
            " kubectl -n weft-system describe pods)"
        )


@click.command("uninstall")
@KUBECONFIG_OPTION
@CONTEXT_OPTION
@MANIFESTS_OPTION
@click.option(
    "--purge-crds",
    is_flag=True,
    help="Also delete weft's CRDs, and with them every policy of their kinds.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until gone.")
@TIMEOUT_OPTION
def uninstall(
    kubeconfig: Path | None,
    context: str | None,
    manifests: Path | None,
    purge_crds: bool,
    wait: bool,
    timeout: float,
) -> None:
    """Remove weft from a cluster (its CRDs are kept unless --purge-crds)."""
    items = uninstall_order(_rendered(manifests, RenderSettings()), purge_crds)
    kube = _connect(kubeconfig, context)
    deadline = time.monotonic() + timeout
    errors: list[str] = []
    deleted: list[Rendered] = []
    try:
        for item in items:
            try:
                if kube.delete(item.ref):
                    _say(item.ref.kind, item.ref.name, "deleted")
                    deleted.append(item)
                else:
                    _say(item.ref.kind, item.ref.name, "not found")
            except KubeError as err:
                errors.append(str(err))
                click.echo(f"error: {err}", err=True)
        if wait:
            for item in deleted:
                if not _wait_gone(kube, item.ref, deadline):
                    errors.append(f"{item.ref} still there after {timeout:g}s")
                    click.echo(f"error: {errors[-1]} (finalizers: kubectl get -o yaml)", err=True)
        if errors:
            raise click.ClickException(f"{len(errors)} object(s) not removed (listed above)")
        if not purge_crds:
            click.echo("weft's CRDs are kept (weftctl uninstall --purge-crds removes them)")
    except KubeError as err:
        raise click.ClickException(str(err)) from None
    finally:
        kube.close()


def _wait_gone(kube: KubeApi, ref: ObjectRef, deadline: float) -> bool:
    """Poll until the object is gone (finalizers done); False at the deadline."""
    said = False
    while kube.get(ref) is not None:  # None too once its CRD went, and the object with it
        if not said:
            click.echo(f"{ref}: waiting until it is gone")
            said = True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True
