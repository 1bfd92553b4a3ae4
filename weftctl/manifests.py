"""Where `weftctl install` finds weft's manifests, and reading them in kustomization order.

`daemonset/kustomization.yaml` is the install's source of truth: its `resources:` list, in
order, is what `weftctl install` applies (and `kubectl apply -k daemonset/` would). weftctl is
installed from a checkout (`pip install -e .`), so the folder is found beside the package, as
`node_agent.programs` finds `bpf/`; `--manifests DIR` or `$WEFT_MANIFESTS` point elsewhere
(an unpacked release, a fork's manifests).

Only the plain part of kustomize is understood (resources: files, or folders with their own
kustomization.yaml). A kustomization that asks for more (patches, generators, images...) is
refused by name rather than installed differently from `kubectl apply -k`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MANIFESTS_ENV = "WEFT_MANIFESTS"
DEFAULT_DIR = Path(__file__).resolve().parent.parent / "daemonset"
KUSTOMIZATION = "kustomization.yaml"
# Keys that do not change what is applied; anything else would make us differ from kustomize.
_PLAIN_KEYS = frozenset({"apiVersion", "kind", "metadata", "resources"})
MAX_DEPTH = 4  # folders of folders of kustomizations
MAX_OBJECTS = 500  # weft ships a few dozen; more is a wrong folder
MAX_FILE_BYTES = 4 << 20


class ManifestSourceError(Exception):
    """The manifests folder or one of its files cannot be used; the message names the file."""


@dataclass(frozen=True)
class Manifest:
    source: str  # file, relative to the manifests folder, and document index: "crds/x.yaml#0"
    obj: dict[str, Any]


def manifests_dir(given: Path | None = None) -> Path:
    """The folder to install from: --manifests, else $WEFT_MANIFESTS, else the checkout's."""
    if given is not None:
        folder = given
    elif os.environ.get(MANIFESTS_ENV):
        folder = Path(os.environ[MANIFESTS_ENV])
    else:
        folder = DEFAULT_DIR
    if not (folder / KUSTOMIZATION).is_file():
        raise ManifestSourceError(
            f"{folder}: no {KUSTOMIZATION}; point --manifests (or ${MANIFESTS_ENV}) at weft's "
            "daemonset/ folder"
        )
    return folder


def _read_yaml(path: Path, root: Path) -> list[Any]:
    name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ManifestSourceError(f"{name}: larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text()
    except OSError as err:
        raise ManifestSourceError(f"{name}: cannot read ({err.strerror})") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise ManifestSourceError(f"{name}: not valid YAML: {err}") from None


def _resources(folder: Path, root: Path) -> list[str]:
    path = folder / KUSTOMIZATION
    where = str(path.relative_to(root))
    docs = _read_yaml(path, root)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ManifestSourceError(f"{where}: expected one mapping")
    doc = docs[0]
    extra = sorted(set(doc) - _PLAIN_KEYS)
    if extra:
        raise ManifestSourceError(
            f"{where}: {', '.join(extra)} not supported by weftctl install (only resources:); "
            "use `kubectl apply -k` for such a kustomization"
        )
    resources = doc.get("resources")
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise ManifestSourceError(f"{where}: resources must be a list of paths")
    return resources


def load(folder: Path) -> list[Manifest]:
    """Every object the kustomization lists, in its order."""
    out: list[Manifest] = []
    _load_into(folder, folder.resolve(), out, 0)
    return out


def _load_into(folder: Path, root: Path, out: list[Manifest], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ManifestSourceError(f"{folder}: kustomizations nested deeper than {MAX_DEPTH}")
    folder = folder.resolve()
    for entry in _resources(folder, root):
        path = (folder / entry).resolve()
        if not path.is_relative_to(root):
            raise ManifestSourceError(
                f"{(folder / KUSTOMIZATION).relative_to(root)}: resource {entry} is outside {root}"
            )
        if path.is_dir():
            _load_into(path, root, out, depth + 1)
            continue
        if not path.is_file():
            raise ManifestSourceError(
                f"{(folder / KUSTOMIZATION).relative_to(root)}: resource {entry} does not exist"
            )
        rel = str(path.relative_to(root))
        for i, doc in enumerate(_read_yaml(path, root)):
            if not isinstance(doc, dict):
                raise ManifestSourceError(f"{rel}#{i}: not a mapping")
            out.append(Manifest(f"{rel}#{i}", doc))
            if len(out) > MAX_OBJECTS:
                raise ManifestSourceError(f"{root}: more than {MAX_OBJECTS} objects")
