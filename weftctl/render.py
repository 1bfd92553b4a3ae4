"""What `weftctl install` applies: daemonset/'s objects with the user's settings patched in.

Pure: parsed dicts in, new dicts out (the inputs are never changed). Settings are patched on
the fields that carry them (a container's `image`, the controller's `--trust-domain` argument,
ConfigMap weft-system/weft's `mesh` key), never by replacing text, so a value that happens to
appear elsewhere (a comment, a label) is left alone. A setting the manifests have no place for
is an error, not a silent no-op.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from meshcore.identity.spiffe import IdentityError, SpiffeId
from meshcore.resources.errors import ManifestError
from meshcore.resources.meshconfig import parse_mesh_config
from meshcore.resources.security import ROOT_NAMESPACE
from weftctl.manifests import Manifest

WEFT_REPOSITORY = "ghcr.io/weft-mesh/weft"
TRUST_DOMAIN_FLAG = "--trust-domain"
WAYPOINT_IMAGE_FLAG = "--waypoint-image"  # controller/main.py: the image of waypoint pods
CONTROLLER_MODULE = "controller"
MESH_CONFIG_MAP = "weft"
MESH_KEY = "mesh"
CRD_KIND = "CustomResourceDefinition"
CRD_API_GROUP = "apiextensions.k8s.io"


class RenderError(Exception):
    """A manifest or a setting that cannot be rendered; the message names the object."""


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    namespace: str = ""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def is_crd(self) -> bool:
        return self.kind == CRD_KIND and self.group == CRD_API_GROUP

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where}"


@dataclass(frozen=True)
class RenderSettings:
    image: str | None = None  # None: the manifests' own
    trust_domain: str | None = None
    mesh_config: str | None = None  # the text of ConfigMap weft's `mesh` key


@dataclass(frozen=True)
class Rendered:
    source: str
    ref: ObjectRef
    obj: dict[str, Any]


def object_ref(obj: dict[str, Any], source: str) -> ObjectRef:
    meta = obj.get("metadata")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        raise RenderError(f"{source}: apiVersion is missing")
    if not isinstance(kind, str) or not kind:
        raise RenderError(f"{source}: kind is missing")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise RenderError(f"{source}: {kind} has no metadata.name")
    namespace = meta.get("namespace", "")
    if not isinstance(namespace, str):
        raise RenderError(f"{source}: {kind} {meta['name']}: metadata.namespace is not a string")
    return ObjectRef(api_version, kind, meta["name"], namespace)


def repository(image: str) -> str:
    """`ghcr.io/weft-mesh/weft:0.1.0` (or `@sha256:...`) -> `ghcr.io/weft-mesh/weft`."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template's spec of a workload, or a Pod's spec; None for other kinds."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return None
    kind = obj.get("kind")
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"):
        return None
    template = spec.get("template")
    inner = template.get("spec") if isinstance(template, dict) else None
    return inner if isinstance(inner, dict) else None


def containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field path, container) for every container and init container of a workload."""
    spec = pod_spec(obj)
    if spec is None:
        return
    for field in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(field) or ()):
            if isinstance(c, dict):
                yield f"{field}[{i}]", c


def _runs_module(container: dict[str, Any], module: str) -> bool:
    argv = [*(container.get("command") or ()), *(container.get("args") or ())]
    return any(a == "-m" and b == module for a, b in itertools.pairwise(argv))


def _patch_image(items: list[Rendered], image: str) -> None:
    patched = 0
    for item in items:
        for _, c in containers(item.obj):
            current = c.get("image")
            if isinstance(current, str) and repository(current) == WEFT_REPOSITORY:
                c["image"] = image
                patched += 1
                if _runs_module(c, CONTROLLER_MODULE):
                    # The waypoints the controller deploys run the same image.
                    args = c.setdefault("args", [])
                    if not _set_flag(args, WAYPOINT_IMAGE_FLAG, image):
                        args.extend([WAYPOINT_IMAGE_FLAG, image])
    if not patched:
        raise RenderError(
            f"--image: no container in the manifests runs {WEFT_REPOSITORY}, nothing to replace"
        )


def _set_flag(args: list[Any], flag: str, value: str) -> bool:
    found = False
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            args[i + 1] = value
            found = True
        elif isinstance(arg, str) and arg.startswith(flag + "="):
            args[i] = f"{flag}={value}"
            found = True
    return found


def _patch_trust_domain(items: list[Rendered], trust_domain: str) -> None:
    try:
        SpiffeId(trust_domain)
    except IdentityError as err:
        raise RenderError(f"--trust-domain {trust_domain!r}: {err.reason}") from None
    patched = 0
    for item in items:
        for _, c in containers(item.obj):
            for field in ("command", "args"):
                argv = c.get(field)
                if isinstance(argv, list) and _set_flag(argv, TRUST_DOMAIN_FLAG, trust_domain):
                    patched += 1
    if not patched:
        raise RenderError(
            f"--trust-domain: no container in the manifests takes {TRUST_DOMAIN_FLAG} "
            "(the controller Deployment should)"
        )


def _patch_mesh_config(items: list[Rendered], text: str) -> None:
    try:
        parsed = parse_mesh_config(text)
    except ManifestError as err:
        raise RenderError(f"--set-mesh-config: {err}") from None
    if parsed.errors:
        listed = "; ".join(f"{field}: {why}" for field, why in parsed.errors)
        raise RenderError(f"--set-mesh-config: {listed}")
    for item in items:
        ref = item.ref
        if (ref.kind, ref.namespace, ref.name) == ("ConfigMap", ROOT_NAMESPACE, MESH_CONFIG_MAP):
            data = item.obj.setdefault("data", {})
            if not isinstance(data, dict):
                raise RenderError(f"{item.source}: {ref}: data is not a mapping")
            data[MESH_KEY] = text
            return
    raise RenderError(
        f"--set-mesh-config: the manifests have no ConfigMap {ROOT_NAMESPACE}/{MESH_CONFIG_MAP}"
    )


def render(manifests: Sequence[Manifest], settings: RenderSettings) -> list[Rendered]:
    """The objects to apply, in the manifests' order, with the settings patched in."""
    items: list[Rendered] = []
    seen: dict[ObjectRef, str] = {}
    for m in manifests:
        ref = object_ref(m.obj, m.source)
        if ref in seen:
            raise RenderError(f"{m.source}: {ref} is also in {seen[ref]}")
        seen[ref] = m.source
        items.append(Rendered(m.source, ref, copy.deepcopy(m.obj)))
    if settings.image is not None:
        _patch_image(items, settings.image)
    if settings.trust_domain is not None:
        _patch_trust_domain(items, settings.trust_domain)
    if settings.mesh_config is not None:
        _patch_mesh_config(items, settings.mesh_config)
    return items


def install_order(items: Iterable[Rendered]) -> tuple[list[Rendered], list[Rendered]]:
    """(CRDs, the rest): CRDs go first and must be Established before anything uses them;
    then Namespaces, so namespaced objects have somewhere to go; the rest keep their order."""
    items = list(items)
    crds = [i for i in items if i.ref.is_crd]
    namespaces = [i for i in items if i.ref.kind == "Namespace" and i.ref.api_version == "v1"]
    rest = [i for i in items if not i.ref.is_crd and i not in namespaces]
    return crds, namespaces + rest


def uninstall_order(items: Iterable[Rendered], purge_crds: bool) -> list[Rendered]:
    """The reverse of the install; CRDs (last) only when asked, as istioctl keeps them: they
    hold users' policies, which deleting the CRD would delete too."""
    crds, rest = install_order(items)
    ordered = list(reversed(rest))
    if purge_crds:
        ordered.extend(reversed(crds))
    return ordered


def documents(items: Iterable[Rendered]) -> list[dict[str, Any]]:
    crds, rest = install_order(items)
    return [i.obj for i in crds + rest]
